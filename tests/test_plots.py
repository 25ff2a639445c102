"""ebpfkit.plots and TraceResult's plot methods: what is drawn, read back from the Axes.

The checks are on content, not pixels: each bar's height against the map it
came from, each bucket's label against its bounds, each flame graph
rectangle's width against the folded stacks, the rate bins against the number
of events. Two tests draw real traces of this kernel: a tracepoint histogram of
``dd``'s read sizes (checked against the events of the same run and the sizes
dd was asked for), and cpu-clock samples of a program of our own pinned to
CPU 0 (checked against the sample counts of the map and against taskset).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import textwrap

import matplotlib
import numpy as np
import pandas as pd
import pytest
from helpers import needs_root, prog_ids

matplotlib.use("Agg")  # headless: no display, figures only in memory

import matplotlib.pyplot as plt  # noqa: E402

from ebpfkit import Session, plots  # noqa: E402
from ebpfkit.errors import BadArguments  # noqa: E402
from ebpfkit.result import TraceResult  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def heights(ax) -> list[int]:
    return [int(round(p.get_height())) for p in ax.patches]


def ticks(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def assert_labelled(ax) -> None:
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def our_prog_ids(session) -> set[int]:
    """The kernel's IDs of the session's loaded programs (from /proc/self/fdinfo)."""
    ids = set()
    for fn in session.bpf.funcs.values():
        with open(f"/proc/self/fdinfo/{fn.fd}") as f:
            ids.update(int(line.split()[1]) for line in f if line.startswith("prog_id:"))
    return ids


def covers(rect_path: str, stack: str) -> bool:
    return stack == rect_path or stack.startswith(rect_path + ";")


def assert_flame_matches(ax, stacks: pd.DataFrame) -> None:
    """Every rectangle as wide as the samples of the stacks through it; roots sum to all."""
    rects = [p for p in ax.patches if p.get_gid()]
    assert rects
    total = int(stacks["count"].sum())
    roots = [r for r in rects if ";" not in r.get_gid()]
    assert sum(r.get_width() for r in roots) == total
    for r in rects:
        through = stacks[[covers(r.get_gid(), s) for s in stacks["stack"]]]["count"].sum()
        assert r.get_width() == through, r.get_gid()
    # a callee sits within its caller
    by_path = {r.get_gid(): r for r in rects}
    for path, r in by_path.items():
        if ";" in path:
            parent = by_path[path.rsplit(";", 1)[0]]
            right = parent.get_x() + parent.get_width()
            assert parent.get_x() <= r.get_x() <= r.get_x() + r.get_width() <= right


# ------------------------------------------------------------------ histograms


def test_log2_buckets_follow_bpf_log2l():
    # bpf_log2l(v) is v's bit length (and 1 for 0): 0,1 -> 1; 2,3 -> 2; 4..7 -> 3; 8..15 -> 4
    h = plots.log2_hist([0, 1, 1, 2, 3, 4, 7, 7, 7, 12, 40])
    assert list(zip(h.low, h.high, h["count"])) == [
        (0, 1, 3),
        (2, 3, 2),
        (4, 7, 4),
        (8, 15, 1),
        (16, 31, 0),
        (32, 63, 1),
    ]


def test_hist_bars_are_the_map_counts_with_bucket_labels():
    h = pd.DataFrame({"low": [0, 2, 4, 8], "high": [1, 3, 7, 15], "count": [5, 0, 17, 2]})
    ax = plots.hist(h, unit="us", title="read latency")
    assert heights(ax) == [5, 0, 17, 2]
    assert ticks(ax) == ["0-1", "2-3", "4-7", "8-15"]
    assert ax.get_title() == "read latency"
    assert "µs" not in ax.get_xlabel() and "(us)" in ax.get_xlabel()
    assert ax.get_ylabel() == "count"


def test_hist_labels_big_buckets_in_the_next_unit():
    h = pd.DataFrame({"low": [512, 1024], "high": [1023, 2047], "count": [1, 1]})
    assert plots.bucket_labels(h, "us") == ["512-1023", "1.02-2.05 ms"]
    assert plots.bucket_labels(h, "ns") == ["512-1023", "1.02-2.05 µs"]
    assert plots.bucket_labels(h.assign(low=[1024, 2048], high=[2047, 4095]), "B") == [
        "1-2 KiB",
        "2-4 KiB",
    ]


def test_linear_hist_labels_each_value():
    h = pd.DataFrame({"low": [3, 4, 5], "high": [3, 4, 5], "count": [1, 9, 4]})
    ax = plots.hist(h)
    assert ticks(ax) == ["3", "4", "5"]
    assert heights(ax) == [1, 9, 4]
    assert "linear" in ax.get_xlabel()


def test_hist_sections_are_series_of_their_own_counts():
    a = plots.log2_hist([1, 2, 2, 5, 9]).assign(id=0)
    b = plots.log2_hist([4, 4, 4, 100] * 3).assign(id=1)
    c = plots.log2_hist([3]).assign(id=2)
    ax = plots.hist(pd.concat([a, b, c]), top=2)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["1 (12)", "0 (5)"]  # the two with the most counts, most first
    assert ax.get_legend().get_title().get_text() == "id (2 of 3)"
    buckets = sorted(set(zip(a.low, a.high)) | set(zip(b.low, b.high)))
    assert ticks(ax) == [f"{lo}-{hi}" for lo, hi in buckets]
    n = len(buckets)
    bars = heights(ax)
    for series, frame in zip((bars[:n], bars[n:]), (b, a)):
        counts = dict(zip(zip(frame.low, frame.high), frame["count"]))
        assert series == [counts.get(k, 0) for k in buckets]
    ax = plots.hist(pd.concat([a, b, c]), sections=[2, 0], names={0: "read", 2: "openat"})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["openat (1)", "read (5)"]
    assert sum(heights(ax)) == 1 + 5
    with pytest.raises(BadArguments, match="no section '7'"):
        plots.hist(pd.concat([a, b, c]), sections=[7])


def test_hist_of_nothing_says_so():
    ax = plots.hist(pd.DataFrame(columns=["low", "high", "count"]))
    assert "nothing was counted" in [t.get_text() for t in ax.texts]


# ------------------------------------------------------------------ rate


def events(n: int, seconds: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ns = np.sort(rng.integers(0, int(seconds * 1e9), n)) + 1_764_000_000_000_000_000
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(ns),
            "comm": rng.choice(["cat", "dd", "ls", "sh"], n, p=[0.5, 0.3, 0.15, 0.05]),
            "cpu": rng.integers(0, 2, n),
            "pid": rng.integers(100, 110, n),
        }
    )


def test_rate_bins_hold_every_event_once():
    ev = events(3000, 2.0)
    ax = plots.rate(ev, "100ms")
    span = (ev.ts.max() - ev.ts.min()).value
    assert len(ax.patches) == span // 100_000_000 + 1
    # heights are events per second: times the interval, they are the events of each bin
    per_bin = [round(p.get_height() * 0.1) for p in ax.patches]
    assert sum(per_bin) == len(ev)
    assert per_bin[0] == ((ev.ts - ev.ts.min()) < pd.Timedelta("100ms")).sum()
    assert "100 ms" in ax.get_title() and "3,000 events" in ax.get_title()
    assert ax.get_xlabel() == "time since the first event (ms)"
    assert ax.get_ylabel() == "events per second"


def test_rate_picks_an_interval_and_splits_by_comm():
    ev = events(2000, 3.0, seed=1)
    counts = plots.rate_frame(ev, by="comm", top=2)
    assert counts.attrs["every"] == pd.Timedelta("50ms")  # 3 s in about 60 bins
    assert list(counts.columns) == ["cat", "dd", "other"]
    assert counts["cat"].sum() == (ev.comm == "cat").sum()
    assert counts["other"].sum() == ev.comm.isin(["ls", "sh"]).sum()
    ax = plots.rate(ev, by="comm", top=2)
    lines = ax.get_lines()
    assert [line.get_label().split(" (")[0] for line in lines] == ["cat", "dd", "other"]
    per_line = [round(sum(line.get_ydata()[:-1]) * 0.05) for line in lines]
    assert sum(per_line) == len(ev)
    chosen = plots.rate_frame(ev, "1s", by="comm", series=["sh"])
    assert list(chosen.columns) == ["sh", "other"]
    assert chosen["sh"].sum() == (ev.comm == "sh").sum()
    by_cpu = plots.rate_frame(ev, "1s", by="cpu")
    assert sorted(by_cpu.columns) == ["CPU 0", "CPU 1"] and by_cpu.to_numpy().sum() == len(ev)


def test_rate_needs_a_time_and_a_real_interval():
    with pytest.raises(BadArguments, match="no time"):
        plots.rate(pd.DataFrame({"pid": [1, 2]}))
    with pytest.raises(BadArguments, match="not an interval"):
        plots.rate(events(10, 1), "soon")
    with pytest.raises(BadArguments, match="longer than zero"):
        plots.rate(events(10, 1), 0)


# ------------------------------------------------------------------ top N


def test_top_of_a_count_map_is_its_largest_values():
    counts = pd.DataFrame({"key": [0, 1, 257, 3, 9, 110], "value": [40, 7, 20, 90, 1, 5]})
    ax = plots.top(counts, n=3, names={257: "openat", 3: "close", 0: "read"})
    bars = ax.patches
    assert [int(b.get_width()) for b in bars] == [20, 40, 90]  # drawn bottom up: largest on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["openat", "read", "close"]
    assert ax.get_title() == "Top 3 of 6 key by value"
    assert_labelled(ax)


def test_top_of_events_counts_rows_per_value():
    ev = events(500, 1.0)
    ax = plots.top(ev, by="comm", n=2, ylabel="command")
    assert ax.get_ylabel() == "command"
    truth = ev.comm.value_counts()
    assert [int(b.get_width()) for b in ax.patches][::-1] == list(truth.iloc[:2])
    assert [t.get_text() for t in ax.get_yticklabels()][::-1] == list(truth.index[:2])
    assert ax.get_xlabel() == "events"


def test_top_without_counts_says_what_it_needs():
    with pytest.raises(BadArguments, match="by=COLUMN"):
        plots.top(pd.DataFrame({"comm": ["a"]}))


# ------------------------------------------------------------------ per CPU


def test_cpus_from_a_per_cpu_map_and_from_events():
    percpu = pd.DataFrame({"key": [1, 2], "cpu0": [5, 6], "cpu1": [0, 9], "value": [5, 15]})
    ax = plots.cpus(percpu, expected=20, cpus=[0, 1, 2])
    assert heights(ax) == [11, 9, 0]
    assert ticks(ax) == ["0", "1", "2"]
    assert ax.get_lines()[0].get_ydata()[0] == 20  # the expected line
    assert_labelled(ax)
    ev = events(400, 1.0)
    ax = plots.cpus(ev, by="comm", top=1)
    stacked = np.array(heights(ax)).reshape(2, -1)  # series x CPU
    assert list(stacked.sum(axis=0)) == [(ev.cpu == c).sum() for c in (0, 1)]
    assert list(stacked[0]) == [((ev.cpu == c) & (ev.comm == "cat")).sum() for c in (0, 1)]
    who = pd.DataFrame(  # a map keyed by (cpu, comm), as lesson 07's `who`
        {"cpu": [0, 0, 1, 1], "comm": ["burn", "sh", "swapper/1", "burn"], "value": [50, 9, 90, 0]}
    )
    ax = plots.cpus(who, by="comm", series=["burn"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["burn", "other"]
    assert heights(ax) == [50, 0, 9, 90]  # burn on CPU 0, 1; other on CPU 0, 1
    keyed = pd.DataFrame({"key": [1, 0], "value": [30, 70]})  # BPF_HASH(cpu_samples, u32, u64)
    assert heights(plots.cpus(keyed)) == [70, 30]


# ------------------------------------------------------------------ stacks


def sample_map() -> pd.DataFrame:
    """A samples map as frames.add_stacks leaves it: ids and frames, user and kernel."""
    return pd.DataFrame(
        {
            "pid": [7, 7, 7, 8],
            "user_stack_id": [1, 2, 1, -14],
            "kernel_stack_id": [-14, 3, -14, 4],
            "comm": ["burn", "burn", "burn", "kworker/0:1"],
            "value": [10, 4, 5, 2],
            "user_stack_frames": [
                "main;work_a",
                "main;[unknown];[unknown];work_io",
                "main;work_a",
                "[kernel thread: no user stack]",
            ],
            "kernel_stack_frames": [
                "[user mode: no kernel stack]",
                "vfs_read;read_zero",
                "[user mode: no kernel stack]",
                "worker_thread;process_one_work",
            ],
        }
    )


def test_folded_joins_command_user_and_kernel_frames():
    stacks = plots.folded(sample_map())
    assert list(zip(stacks["stack"], stacks["count"])) == [
        ("burn;main;work_a", 15),
        ("burn;main;[unknown];work_io;vfs_read;read_zero", 4),
        ("kworker/0:1;worker_thread;process_one_work", 2),
    ]
    text = plots.folded_text(stacks)
    assert text.splitlines()[0] == "burn;main;work_a 15"
    assert sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()) == 21
    bare = plots.folded(sample_map(), root=None)
    assert bare["stack"].iloc[0] == "main;work_a"


def test_folded_events_count_one_each():
    ev = pd.DataFrame({"stack_id": [3, 3, 5], "stack": ["a;b", "a;b", "a;c"]})
    stacks = plots.folded(ev)
    assert dict(zip(stacks["stack"], stacks["count"])) == {"a;b": 2, "a;c": 1}


def test_flame_widths_are_the_folded_counts(tmp_path):
    stacks = pd.DataFrame(
        {
            "stack": ["a;b;c", "a;b", "a;b;d", "a;e", "x;y;z"],
            "count": [5, 3, 2, 7, 4],
        }
    )
    ax = plots.flame(stacks)
    assert_flame_matches(ax, stacks)
    assert {p.get_gid() for p in ax.patches} == {
        "a",
        "a;b",
        "a;b;c",
        "a;b;d",
        "a;e",
        "x",
        "x;y",
        "x;y;z",
    }
    assert "21 samples" in ax.get_title()
    assert_labelled(ax)
    # flame: callees above their callers; icicle: below
    y = {p.get_gid(): p.get_y() for p in ax.patches}
    assert y["a"] < y["a;b"] < y["a;b;c"]
    ice = plots.flame(stacks, icicle=True)
    y = {p.get_gid(): p.get_y() for p in ice.patches}
    assert y["a"] > y["a;b"] > y["a;b;c"]
    path = plots.write_folded(stacks, tmp_path / "s.folded")
    assert path.read_text().splitlines()[0] == "a;b;c 5"


def test_flame_of_a_sample_map_folds_it_and_colours_the_kernel():
    m = sample_map()
    ax = TraceResult(maps={"samples": m}).plot_flame()
    assert_flame_matches(ax, plots.folded(m))
    colours = {p.get_gid().rsplit(";", 1)[-1]: p.get_facecolor()[:3] for p in ax.patches}
    kernel, user = colours["vfs_read"], colours["work_a"]
    assert kernel[2] > kernel[0] and user[0] > user[2]  # blue for the kernel, warm for the rest
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["user (and command)", "kernel"]


# ------------------------------------------------------------------ latency


def test_latency_pairs_each_exit_with_the_latest_enter_of_its_key():
    t = pd.to_datetime
    enter = pd.DataFrame({"ts": t([100, 200, 300, 310, 500]), "tid": [1, 2, 1, 1, 3]})
    exit_ = pd.DataFrame(
        {"ts": t([150, 260, 330, 400, 900]), "tid": [1, 2, 1, 9, 3], "ret": [0, 1, 2, 3, 4]}
    )
    pairs = plots.latency(enter, exit_, key="tid")
    assert list(pairs.latency_ns) == [50, 60, 20, 400]  # tid 1's second exit: enter at 310
    assert list(pairs.ret) == [0, 1, 2, 4]  # the exit's own columns come along
    assert pairs.attrs["unpaired"] == {"enter": 1, "exit": 1}  # enter 300 and tid 9's exit
    ax = plots.latency_hist(pairs, unit="ns")
    assert sum(heights(ax)) == 4
    assert ticks(ax) == ["16-31", "32-63", "64-127", "128-255", "256-511"]
    assert heights(ax) == [1, 2, 0, 0, 1]
    assert "1 enters, 1 exits unpaired" in ax.get_title()
    assert ax.get_xlabel() == "latency (ns)" and ax.get_ylabel() == "calls"


def test_trace_result_latency_takes_conditions_on_the_events():
    t = pd.to_datetime
    ev = pd.DataFrame(
        {
            "ts": t([0, 3_000, 10_000, 15_000]),
            "pid": [5, 5, 6, 6],
            "kind": [0, 1, 0, 1],
        }
    )
    r = TraceResult(events=ev, channels={"events": ev})
    pairs = r.latency("kind == 0", "kind == 1")
    assert list(pairs.latency_ns) == [3_000, 5_000]
    ax = r.plot_latency("kind == 0", "kind == 1")
    assert ax.get_xlabel() == "latency (µs)" and sum(heights(ax)) == 2
    with pytest.raises(BadArguments, match="neither a buffer"):
        r.latency("kind ==", "kind == 1")


# ------------------------------------------------------------------ TraceResult, errors, saving


def test_trace_result_finds_its_maps_and_names_the_missing():
    h = plots.log2_hist([1, 2, 3, 900])
    counts = pd.DataFrame({"key": [1, 2], "value": [3, 4]})
    r = TraceResult(maps={"counts": counts, "dist": h})
    ax = r.plot_hist()
    assert heights(ax) == list(h["count"]) and ax.get_title().startswith("dist: 4 counts")
    assert [int(b.get_width()) for b in r.plot_top("counts").patches] == [3, 4]
    with pytest.raises(BadArguments, match="no map or buffer named 'dsit'.*dist"):
        r.plot_hist("dsit")
    with pytest.raises(BadArguments, match="no stacks"):
        r.folded()
    with pytest.raises(BadArguments, match="needs the column"):
        plots.hist(counts)


def test_draws_into_a_given_axes_and_saves_for_a_handout(tmp_path):
    fig, (left, right) = plt.subplots(1, 2)
    h = plots.log2_hist([1, 5, 5])
    assert plots.hist(h, ax=left) is left
    assert plots.top(pd.DataFrame({"key": [1], "value": [2]}), ax=right) is right
    for name in ("handout.png", "handout.pdf"):
        path = plots.save(fig, tmp_path / name)
        assert path.stat().st_size > 1000
    assert plots.save(left, tmp_path / "one.svg").read_text().count("<svg") == 1


# ------------------------------------------------------------------ real traces

READS = """
struct event_t {
    u64 ts;
    u32 pid;
    u32 tid;
    u32 kind;    /* 0 enter, 1 exit */
    u32 cpu;
    s64 ret;
    char comm[16];
};
BPF_RINGBUF_OUTPUT(events, 64);
BPF_HISTOGRAM(sizes);

static inline void send(u32 kind, s64 ret) {
    struct event_t *e = events.ringbuf_reserve(sizeof(*e));
    if (!e)
        return;
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->kind = kind;
    e->cpu = bpf_get_smp_processor_id();
    e->ret = ret;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) {
    send(0, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_read) {
    if (args->ret >= 0)
        sizes.increment(bpf_log2l(args->ret));
    send(1, args->ret);
    return 0;
}
"""


@needs_root
def test_real_read_sizes_histogram_latency_and_rate_of_dd():
    with Session(READS, comm="dd") as s:
        ours = our_prog_ids(s)
        assert ours <= prog_ids()  # the IDs are the kernel's, as bpftool lists them
        r = s.run(workload="dd if=/dev/zero of=/dev/null bs=3000 count=300")
    assert r.exit_code == 0 and r.total_lost == 0, r
    assert len(ours) == 2 and not ours & prog_ids()  # both loaded, neither left behind
    ev = r.events
    exits = ev[ev.kind == 1]

    # the kernel's buckets (bpf_log2l in the map) and ours (log2_hist of the events) agree
    dist = r.maps["sizes"]
    ours = plots.log2_hist(exits.ret[exits.ret >= 0])
    assert dist.reset_index(drop=True).equals(ours.astype(dist.dtypes.to_dict()))
    ax = r.plot_hist("sizes", unit="B")
    assert heights(ax) == list(dist["count"])
    assert ticks(ax) == plots.bucket_labels(dist, "B")
    bucket = ticks(ax).index("2-4 KiB")  # 2048-4095 bytes: dd's 3000-byte reads
    assert heights(ax)[bucket] >= 300
    assert ax.get_title().startswith(f"sizes: {int(dist['count'].sum()):,} counts")

    # every read entered and returned under the probes: one pair per read
    pairs = r.latency("kind == 0", "kind == 1", key="tid")
    assert len(pairs) == len(exits) == (ev.kind == 0).sum()
    assert pairs.attrs["unpaired"] == {"enter": 0, "exit": 0}
    assert (pairs.latency_ns > 0).all() and (pairs.comm == "dd").all()
    ax = r.plot_latency("kind == 0", "kind == 1", key="tid")
    assert sum(heights(ax)) == len(pairs)

    ax = r.plot_rate(every="1ms")
    assert round(sum(p.get_height() for p in ax.patches) * 0.001) == len(ev)
    ax = r.plot_top(by="comm")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dd"]
    assert [int(b.get_width()) for b in ax.patches] == [len(ev)]
    ax = r.plot_cpus()
    assert sum(heights(ax)) == len(ev)


BURN_C = textwrap.dedent(
    """\
    #include <stdio.h>
    #include <stdlib.h>
    #include <time.h>
    #include <unistd.h>
    volatile unsigned long sink;
    void inner(void) { for (long i = 0; i < 2000000; i++) sink += i * i; }
    void outer(void) { for (long i = 0; i < 1000000; i++) sink += i; inner(); }
    int main(int argc, char **argv) {
        time_t end = time(NULL) + atoi(argv[1]);
        printf("pid=%d\\n", getpid());
        fflush(stdout);
        while (time(NULL) < end) { outer(); inner(); }
        return 0;
    }
    """
)
BURN = "ebpfkit-pflame"  # its command name: under 16 characters


@needs_root
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the sampled program")
@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset pins it to CPU 0")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="user stacks via x86-64 frame pointers")
def test_real_cpu_samples_flame_graph_and_folded_stacks(tmp_path):
    from ebpfkit import tools

    (tmp_path / "burn.c").write_text(BURN_C)
    binary = tmp_path / BURN
    subprocess.run(
        ["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(tmp_path / "burn.c")],
        check=True,
    )
    burn = subprocess.Popen(["taskset", "-c", "0", str(binary), "30"], stdout=subprocess.PIPE)
    try:
        assert burn.stdout.readline().startswith(b"pid=")
        # The program runs on while its stacks are named (through its /proc/PID/maps).
        with Session(tools.bpf_source("cpu_sample.c"), perf="cpu-clock:99", comm=BURN) as s:
            ours = our_prog_ids(s)
            r = s.run(duration=1.5)
    finally:
        burn.kill()
        burn.wait()
    assert len(ours) == 1 and not ours & prog_ids()
    samples = r.maps["samples"]
    total = int(samples["value"].sum())
    assert total >= 10, samples  # CPU 0 is shared with other tests: far fewer than 99 x 1.5

    # samples per CPU: the map's counts, all on CPU 0 (--comm counts only the pinned program)
    cpu_samples = dict(zip(r.maps["cpu_samples"]["key"], r.maps["cpu_samples"]["value"]))
    ax = r.plot_cpus("cpu_samples", hz=99)
    drawn = dict(zip(map(int, ticks(ax)), heights(ax)))
    assert drawn == {cpu: cpu_samples.get(cpu, 0) for cpu in drawn}
    assert drawn[0] == total and sum(drawn.values()) == total
    assert ax.get_lines()[0].get_ydata()[0] == pytest.approx(99 * r.duration)

    # folded stacks: every sample once, under the command, through its own functions
    stacks = r.folded()
    assert int(stacks["count"].sum()) == total
    assert stacks["stack"].str.startswith(f"{BURN};").all()
    frames = {f for s in stacks["stack"] for f in s.split(";")}
    assert {"main", "outer", "inner"} <= frames, frames
    path = r.write_folded(tmp_path / "burn.folded")
    lines = path.read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == total

    ax = r.plot_flame()
    assert_flame_matches(ax, stacks)
    root = [p for p in ax.patches if p.get_gid() == BURN]
    assert len(root) == 1 and root[0].get_width() == total
