"""Events into DataFrames: ebpfkit's buffer readers against bcc's documented loops.

One run, one table (issue 8). A small C program calls getppid() N times and prints
its own ns per call; a tracepoint program on syscalls:sys_enter_getppid counts each
call in the kernel and sends a 32-byte event (ts, pid, tid, comm) through:

  - nothing (an in-kernel counter probe only),
  - bcc's perf-buffer loop (``open_perf_buffer``, ``b["events"].event(data)`` per event),
  - bcc's ring-buffer loop (``open_ring_buffer``, the same callback),
  - ebpfkit (``Session``), ring buffer and perf buffer.

Then, from a buffer filled before anyone reads it, decode capacity: events per second
from the buffer to a finished DataFrame, ebpfkit against bcc's callback; the memory of a
10 M-event DataFrame against the events' raw bytes; and the median time a lesson-sized
program takes from the start of its cell to attached.

    sudo .venv/bin/python benchmarks/ingest.py            # 1,000,000 calls
    sudo .venv/bin/python benchmarks/ingest.py --calls 200000 --frame-events 1000000

Timing on a shared machine is noisy: compare the ratios of one run, not absolute times.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ebpfkit import channels, frames  # noqa: E402
from ebpfkit._bcc import bcc as load_bcc  # noqa: E402
from ebpfkit.session import Session  # noqa: E402

COMM = "ebpfkit-bench"
# The workload the tests use too: an exact number of getppid() calls, timed.
LOOP_C = Path(__file__).resolve().parent.parent / "tests" / "workloads" / "getppid_loop.c"

# The same probe for every contender; {decl} and {send} say where the event goes.
# Only the workload's calls count: its name starts with "ebpfkit-" (8 bytes, one compare).
PROBE = """
struct event { u64 ts; u32 pid; u32 tid; char comm[16]; };
{decl}
BPF_ARRAY(produced, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct event e = {};
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    if (*(u64 *)e.comm != 0x2d74696b66706265ULL) return 0;  /* "ebpfkit-" */
    int zero = 0;
    produced.atomic_increment(zero);
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    {send}
    return 0;
}
"""
RING_PAGES = 4096  # 16 MiB, as in ../shared/KERNEL.md's baseline
PERF_PAGES = 256  # per CPU, bcc's loop and ebpfkit's default alike
EVENT_BYTES = 32


def probe(kind: str, pages: int = RING_PAGES) -> str:
    decl, send = {
        "none": ("", ""),
        "perf": ("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, sizeof(e));"),
        "ring": (
            f"BPF_RINGBUF_OUTPUT(events, {pages});",
            "events.ringbuf_output(&e, sizeof(e), 0);",
        ),
    }[kind]
    return PROBE.replace("{decl}", decl).replace("{send}", send)


def build(tmp: Path) -> str:
    """The getppid() workload, named COMM: run as ``f"{loop} CALLS"``, it prints ns per call."""
    subprocess.run(["gcc", "-O2", "-o", str(tmp / "loop"), str(LOOP_C)], check=True)
    return f"{tmp / 'loop'} {COMM}"


def produced(b) -> int:
    return int(b["produced"][0].value)


# ---------------------------------------------------------------- bcc's documented loops


def bcc_loop(bcc, loop: str, calls: int, kind: str) -> dict:
    b = bcc.BPF(text=probe(kind), cflags=["-w"])
    try:
        rows: list[tuple] = []
        lost = [0]
        if kind == "none":
            out = subprocess.run([*loop.split(), str(calls)], capture_output=True, text=True).stdout
            return row("in-kernel counter probe", out, produced(b), None, 0, None)

        def on_event(*args):
            e = b["events"].event(args[1])
            rows.append((e.ts, e.pid, e.tid, e.comm))

        if kind == "perf":
            b["events"].open_perf_buffer(
                on_event, page_cnt=PERF_PAGES, lost_cb=lambda n: lost.__setitem__(0, lost[0] + n)
            )
            wait, rest = b.perf_buffer_poll, b.perf_buffer_consume
        else:
            b["events"].open_ring_buffer(on_event)
            wait, rest = b.ring_buffer_poll, b.ring_buffer_consume
        proc = subprocess.Popen([*loop.split(), str(calls)], stdout=subprocess.PIPE, text=True)
        while proc.poll() is None:
            wait(100)
        rest()
        df = bcc_frame(rows)
        made = produced(b)
        # bcc's perf loop reports its drops; its ring loop says nothing: the rest is lost.
        gone = lost[0] if kind == "perf" else made - len(df)
        name = f"bcc {kind}-buffer loop (callback)"
        return row(name, proc.stdout.read(), made, len(df), gone, df)
    finally:
        b.cleanup()


def bcc_frame(rows: list[tuple]):
    ts, pid, tid, comm = zip(*rows) if rows else ((), (), (), ())
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(np.array(ts, dtype="i8") + frames.monotonic_to_wall_ns()),
            "pid": np.array(pid, dtype="u4"),
            "tid": np.array(tid, dtype="u4"),
            "comm": pd.Series([c.decode() for c in comm], dtype="category"),
        }
    )


# ---------------------------------------------------------------- ebpfkit


def ebpfkit_stream(loop: str, calls: int, kind: str) -> dict:
    with Session(probe(kind), perf_pages=PERF_PAGES) as s:
        r = s.run(workload=f"{loop} {calls}")
    made = int(r.maps["produced"].value.iloc[0])
    return row(f"ebpfkit {kind} buffer", r.output, made, len(r.events), r.lost["events"], r.events)


def row(name, out, made, delivered, lost, df) -> dict:
    return {
        "contender": name,
        "ns/call": float(out.strip().splitlines()[-1]) if out.strip() else float("nan"),
        "produced": made,
        "delivered": delivered,
        "lost": lost,
        "DataFrame bytes/event": (
            df.memory_usage(deep=True).sum() / max(len(df), 1) if df is not None else None
        ),
    }


# ---------------------------------------------------------------- decode capacity


def decode_ebpfkit(loop: str, calls: int) -> float:
    pages = fill_pages(calls)
    s = Session(probe("ring", pages)).start()
    try:
        subprocess.run([*loop.split(), str(calls)], check=True, capture_output=True)
        s.detach()
        start = time.perf_counter()
        channels.drain(s.bpf, s.channels)
        df = s.channels[0].frame(s.wall_offset)
        took = time.perf_counter() - start
        assert len(df) == calls, (len(df), calls)
        return len(df) / took
    finally:
        s.close()


def decode_bcc(bcc, loop: str, calls: int) -> float:
    b = bcc.BPF(text=probe("ring", fill_pages(calls)), cflags=["-w"])
    try:
        rows: list[tuple] = []

        def on_event(ctx, data, size):
            e = b["events"].event(data)
            rows.append((e.ts, e.pid, e.tid, e.comm))

        b["events"].open_ring_buffer(on_event)
        subprocess.run([*loop.split(), str(calls)], check=True, capture_output=True)
        start = time.perf_counter()
        b.ring_buffer_consume()
        df = bcc_frame(rows)
        took = time.perf_counter() - start
        assert len(df) == calls, (len(df), calls)
        return len(df) / took
    finally:
        b.cleanup()


def fill_pages(calls: int) -> int:
    """Ring pages (a power of two) holding ``calls`` 40-byte slots."""
    need = calls * 40 * 2 // 4096
    return 1 << max(need, 1).bit_length()


def frame_memory(n: int) -> tuple[float, float]:
    """A DataFrame of ``n`` decoded events: its bytes per event, and seconds to build it."""
    dtype = frames.event_dtype(
        [("ts", "u64"), ("pid", "u32"), ("tid", "u32"), ("comm", "char[16]")]
    )
    records = np.zeros(n, dtype)
    records["ts"] = np.arange(n, dtype="u8") * 300
    records["pid"] = 4242 + np.arange(n) % 7
    records["tid"] = records["pid"]
    names = np.array([b"bash", b"python3", b"ebpfkit-bench", b"sshd", b"systemd"], "S16")
    records["comm"] = names[np.arange(n) % len(names)]
    start = time.perf_counter()
    df = frames.records_frame(records, frames.monotonic_to_wall_ns())
    took = time.perf_counter() - start
    return df.memory_usage(deep=True).sum() / n, took


LESSON = Path(__file__).resolve().parent.parent / "bpf" / "getppid_stream.c"


def time_to_attach(repeats: int) -> float:
    source = LESSON.read_text()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with Session(source, comm="nobody-at-all"):
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- a long trace

# A machine-wide trace of every system call, a 16-byte event each, in a child process of
# its own so that its peak memory (VmHWM, reset once the program is attached) is the
# trace's; the getppid() loop runs over and over meanwhile. It gives events, peak / final
# DataFrame, and the seconds from the end of the trace to the finished result.
LONG_CHILD = r'''
import json, sys, time
from ebpfkit.session import Session

PROGRAM = """
struct event { u64 ts; u32 pid; u32 nr; };
BPF_RINGBUF_OUTPUT(events, 4096);
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    struct event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.nr = args->id;
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
"""


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


class Timed(Session):
    def collect(self):
        start = time.monotonic()  # the trace ends here: collect() detaches first
        result = super().collect()
        self.collect_s = time.monotonic() - start
        return result


seconds, workload = float(sys.argv[1]), sys.argv[2]
session = Timed(PROGRAM)
with session:
    import pandas  # noqa: F401

    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    r = session.run(duration=seconds, workload=workload)
df = r.events
print(json.dumps({
    "events": len(df), "lost": r.lost["events"],
    "frame": int(df.memory_usage(index=False, deep=True).sum()),
    "grew": status("VmHWM") - base, "collect_s": session.collect_s,
}))
'''


def long_trace(loop: str, seconds: float) -> dict:
    workload = f"while :; do {loop} 10000000 >/dev/null; done"
    done = subprocess.run(
        [sys.executable, "-c", LONG_CHILD, str(seconds), workload],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1_000_000, help="getppid() calls per run")
    p.add_argument("--decode-calls", type=int, default=1_000_000, help="events pre-filled")
    p.add_argument("--frame-events", type=int, default=10_000_000, help="events in the frame")
    p.add_argument("--attach-runs", type=int, default=5, help="runs for the attach time")
    p.add_argument(
        "--long-seconds", type=float, default=20.0, help="the long machine-wide trace (0: skip)"
    )
    a = p.parse_args()
    bcc = load_bcc()
    with tempfile.TemporaryDirectory() as tmp:
        loop = build(Path(tmp))
        untraced = float(
            subprocess.run([*loop.split(), str(a.calls)], capture_output=True, text=True).stdout
        )
        rows = [
            row("untraced", f"{untraced}", None, None, None, None),
            bcc_loop(bcc, loop, a.calls, "none"),
            bcc_loop(bcc, loop, a.calls, "perf"),
            bcc_loop(bcc, loop, a.calls, "ring"),
            ebpfkit_stream(loop, a.calls, "ring"),
            ebpfkit_stream(loop, a.calls, "perf"),
        ]
        # Median of three: the first run in a process also pays for fresh memory pages.
        ours = statistics.median(decode_ebpfkit(loop, a.decode_calls) for _ in range(3))
        theirs = statistics.median(decode_bcc(bcc, loop, a.decode_calls) for _ in range(3))
        long = long_trace(loop, a.long_seconds) if a.long_seconds > 0 else None
    per_event, frame_s = frame_memory(a.frame_events)
    attach_s = time_to_attach(a.attach_runs)

    table = pd.DataFrame(rows).set_index("contender")
    for col in ("produced", "delivered", "lost"):
        table[col] = table[col].astype("Int64")
    with pd.option_context("display.width", 140, "display.max_columns", 10):
        print(f"getppid() x {a.calls:,}, a {EVENT_BYTES}-byte event per call\n")
        print(table.to_string(float_format=lambda v: f"{v:,.1f}", na_rep="-"))
    counter = table.loc["in-kernel counter probe", "ns/call"]
    print(
        "\ndecode capacity, pre-filled ring buffer -> finished DataFrame "
        f"({a.decode_calls:,} events, median of 3):"
    )
    print(f"  ebpfkit            {ours / 1e6:6.2f} M events/s")
    print(f"  bcc callback       {theirs / 1e6:6.2f} M events/s")
    print(
        f"{a.frame_events:,}-event DataFrame: {per_event:.1f} bytes/event "
        f"({EVENT_BYTES} raw), built in {frame_s:.2f} s"
    )
    print(
        f"cell start -> attached, lesson program ({LESSON.name}), median of "
        f"{a.attach_runs}: {attach_s:.2f} s"
    )

    if long is not None:
        long["ratio"] = long["grew"] / max(long["frame"], 1)
        long["per_million"] = long["collect_s"] / max(long["events"], 1) * 1e6
        print(
            f"long trace, raw_syscalls:sys_enter machine-wide for {a.long_seconds:g} s, 16-byte "
            f"events: {long['events']:,} events (lost {long['lost']:,}), "
            f"{long['frame'] / 2**20:,.0f} MiB DataFrame, peak memory / DataFrame "
            f"{long['ratio']:.2f}, {long['per_million']:.3f} s from trace end to result "
            "per M events"
        )

    print("\ntargets (ratios from this run):")
    for kind in ("ring", "perf"):
        r = table.loc[f"ebpfkit {kind} buffer"]
        ratio = r["ns/call"] / counter
        ok(
            f"ebpfkit {kind}: streaming ns/call / counter probe = {ratio:.2f}",
            ratio <= 1.5,
            "<= 1.5",
        )
        ok(
            f"ebpfkit {kind}: lost at the default buffer = {int(r['lost']):,}",
            r["lost"] == 0,
            "== 0",
        )
        exact = r["delivered"] + r["lost"] == r["produced"]
        ok(f"ebpfkit {kind}: delivered + lost == produced", exact, "exact")
    ok(f"decode capacity {ours / 1e6:.2f} M events/s", ours >= 5e6, ">= 5 M/s")
    ok(f"decode vs bcc callback = {ours / theirs:.1f}x", ours >= 8 * theirs, ">= 8x")
    ratio = per_event / EVENT_BYTES
    ok(f"DataFrame memory / raw bytes = {ratio:.2f}", ratio <= 1, "<= 1")
    if long is not None:
        ok(f"long trace: peak / DataFrame = {long['ratio']:.2f}", long["ratio"] <= 1.5, "<= 1.5")
        ok(
            f"long trace: trace end to result = {long['per_million']:.3f} s per M events",
            long["per_million"] <= 0.05,
            "<= 0.05",
        )


def ok(what: str, good: bool, target: str) -> None:
    print(f"  [{'met ' if good else 'MISS'}] {what} (target {target})")


if __name__ == "__main__":
    main()
