"""``%%bpf`` end to end: a real IPython shell, the real kernel, real processes.

One test (or a few) per probe type this kernel offers: tracepoints, uprobes,
uretprobes, software perf events; then maps, histograms, stacks, printk and the
options. Every test starts its own workload, learns its PID from the workload
itself (its own output), and checks that the events carry exactly what the
workload did. kprobes are checked by loading only (this kernel has none) and,
on a kernel with kprobes, by a real attach (skipped here with the reason).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from helpers import bpf, needs_kprobes, needs_root, prog_ids

# Each test that loads programs says so: the others run without root too.

PY = sys.executable
AT_FDCWD = -100


# --------------------------------------------------------------------------- helpers


def _bpf_prog_ids_held(pid: int | str) -> set[int]:
    """Program ids that process ``pid`` holds open (from /proc/PID/fdinfo)."""
    out = set()
    try:
        entries = list(Path(f"/proc/{pid}/fdinfo").iterdir())
    except OSError:
        return out
    for entry in entries:
        try:
            text = entry.read_text()
        except OSError:
            continue
        m = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if m:
            out.add(int(m.group(1)))
    return out


def _held_by_others() -> set[int]:
    """Program ids held by processes other than this one (other test lanes, daemons)."""
    me = os.getpid()
    out = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != me:
            out |= _bpf_prog_ids_held(proc.name)
    return out


def _tracing_fds() -> dict[str, int]:
    """How many BPF program, BPF map and perf event descriptors this process holds."""
    counts = {"bpf-prog": 0, "bpf-map": 0, "perf_event": 0}
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        for kind in counts:
            if target.startswith("anon_inode:") and kind in target:
                counts[kind] += 1
    return counts


def _programs() -> dict[int, dict]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


def _our_function_names() -> set[str]:
    """The names this module's C functions get in the kernel (bpftool shows them)."""
    text = Path(__file__).read_text()
    names = set(re.findall(r"^int (\w+)\(", text, re.M))
    names |= {
        f"tracepoint__{c}__{e}" for c, e in re.findall(r"TRACEPOINT_PROBE\((\w+), (\w+)\)", text)
    }
    return names


@pytest.fixture(scope="module", autouse=True)
def no_programs_left_behind():
    """After the module, bpftool lists no new program of ours, and no descriptor is left.

    The machine is shared with other test lanes: a new program that another process
    holds open, or whose name is none of this module's functions, is not ours.
    The kernel frees a closed program a moment after the last reference goes: wait.
    """
    if os.geteuid() != 0:  # nothing can be loaded, and bpftool lists programs for root only
        yield
        return
    before, fds_before = prog_ids(), _tracing_fds()
    yield
    names = _our_function_names()
    deadline = time.monotonic() + 3
    while True:
        progs = _programs()
        new = set(progs) - before
        held_here = _bpf_prog_ids_held(os.getpid())
        others = _held_by_others()
        leaked = {
            i for i in new if i in held_here or (i not in others and progs[i]["name"] in names)
        }
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not leaked, "programs still loaded after the module: " + "; ".join(
        f"id {i} {progs[i]['type']} {progs[i]['name']}" for i in sorted(leaked)
    )
    assert not held_here, f"this process still holds BPF programs: ids {sorted(held_here)}"
    assert _tracing_fds() == fds_before, "descriptors of programs, maps or perf events leaked"


def run_line(*options: str, run: str | None = None) -> str:
    """A %%bpf line; ``run`` is a shell command, quoted the way a user would."""
    parts = list(options)
    if run is not None:
        parts += ["--run", shlex.quote(run)]
    return " ".join(parts)


def py_script(tmp_path: Path, code: str, name: str = "workload.py") -> str:
    """A shell command that runs ``code`` with this interpreter."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return f"{shlex.quote(PY)} {shlex.quote(str(path))}"


def pid_from_output(output: str, key: str = "pid") -> int:
    """The ``key=NNN`` the workload printed about itself."""
    m = re.search(rf"^{key}=(\d+)$", output, re.M)
    assert m, f"the workload did not print {key}=...; its output: {output!r}"
    return int(m.group(1))


def is_text(column: pd.Series) -> bool:
    """A column of Python strings (object, category or pandas' string dtype), not bytes."""
    kind_ok = (
        column.dtype == object
        or isinstance(column.dtype, pd.CategoricalDtype)
        or isinstance(column.dtype, pd.StringDtype)
    )
    return kind_ok and all(isinstance(v, str) for v in column)


class Background:
    """Processes the test starts and keeps alive while a trace runs (killed at the end)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, tmp_path: Path, code: str, name: str) -> subprocess.Popen:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(code))
        proc = subprocess.Popen(
            [PY, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.procs.append(proc)
        line = proc.stdout.readline()  # "ready": the loop is running
        assert line.strip() == "ready", f"background workload {name} said {line!r}"
        return proc

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
            p.stdout.close()


@pytest.fixture
def background():
    bg = Background()
    yield bg
    bg.stop()


# A process that calls getpid() in a loop until killed, under a chosen command name.
GETPID_LOOP = """
    import os, sys, time
    with open("/proc/self/comm", "w") as f:
        f.write({comm!r})
    print("ready", flush=True)
    while True:
        for _ in range(50):
            os.getpid()
        time.sleep(0.005)
"""


# --------------------------------------------------------------------------- tracepoints

OPENAT_FIELDS = """
struct event {
    u32 pid;
    char comm[16];
    char filename[128];
    int dfd;
    u64 ts;
};
"""

OPENAT_FILL = """
    e->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    bpf_probe_read_user_str(&e->filename, sizeof(e->filename), args->filename);
    e->dfd = args->dfd;
    e->ts = bpf_ktime_get_ns();
"""

OPENAT_PROGRAMS = {
    "perf_submit": OPENAT_FIELDS
    + """
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct event ev = {};
    struct event *e = &ev;
"""
    + OPENAT_FILL
    + """
    events.perf_submit(args, e, sizeof(*e));
    return 0;
}
""",
    "ringbuf_output": OPENAT_FIELDS
    + """
BPF_RINGBUF_OUTPUT(events, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct event ev = {};
    struct event *e = &ev;
"""
    + OPENAT_FILL
    + """
    events.ringbuf_output(e, sizeof(*e), 0);
    return 0;
}
""",
    "ringbuf_reserve": OPENAT_FIELDS
    + """
BPF_RINGBUF_OUTPUT(events, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e)
        return 0;
    __builtin_memset(e, 0, sizeof(*e));
"""
    + OPENAT_FILL
    + """
    events.ringbuf_submit(e, 0);
    return 0;
}
""",
}


@needs_root
@pytest.mark.parametrize("channel", list(OPENAT_PROGRAMS))
def test_tracepoint_openat_event_content(ip, tmp_path, channel):
    target = tmp_path / f"ebpfkit-{uuid.uuid4().hex[:12]}.txt"
    target.write_text("hello\n")
    # `exec` keeps the shell's PID, so $$ is cat's PID
    workload = f"echo pid=$$; exec cat {target}"
    t0 = pd.Timestamp.now()
    r = bpf(ip, run_line(run=workload), OPENAT_PROGRAMS[channel])
    t1 = pd.Timestamp.now()

    assert r.exit_code == 0, r.output
    assert "hello" in r.output
    cat_pid = pid_from_output(r.output)
    ev = r.events
    assert list(ev.columns) == ["pid", "comm", "filename", "dfd", "ts"]
    rows = ev[ev.filename == str(target)]
    assert len(rows) == 1, f"opens of {target}: {rows}"
    row = rows.iloc[0]
    assert row.comm == "cat"
    assert row.pid == cat_pid
    assert row.dfd == AT_FDCWD
    assert t0 - pd.Timedelta("1s") <= row.ts <= t1 + pd.Timedelta("1s")

    # dtypes: char arrays are text, u32 stays uint32, int int32, ts a datetime
    assert ev.pid.dtype == "uint32"
    assert ev.dfd.dtype == "int32"
    assert is_text(ev.comm) and is_text(ev.filename)
    assert str(ev.ts.dtype).startswith("datetime64")
    # every event of the trace is near now, not garbage
    assert ev.ts.min() >= t0 - pd.Timedelta("1s") and ev.ts.max() <= t1 + pd.Timedelta("1s")
    assert r.lost == {"events": 0}
    assert r.received["events"] == len(ev)
    assert r.stopped_by == "workload exit"


@needs_root
def test_tracepoint_sees_the_pid_of_a_started_python(ip, tmp_path):
    marker = tmp_path / f"marker-{uuid.uuid4().hex[:8]}"
    cmd = py_script(
        tmp_path,
        f"""
        import os
        print(f"pid={{os.getpid()}}", flush=True)
        for _ in range(3):
            try:
                open({str(marker)!r}).close()
            except FileNotFoundError:
                pass
        """,
    )
    r = bpf(ip, run_line(run=cmd), OPENAT_PROGRAMS["perf_submit"])
    pid = pid_from_output(r.output)
    mine = r.events[r.events.pid == pid]
    assert len(mine) > 0, f"no event from the workload's PID {pid}"
    opens = mine[mine.filename == str(marker)]
    assert len(opens) == 3
    assert (opens.dfd == AT_FDCWD).all()
    # the workload renames nothing: its command name is the name it was started by
    assert set(opens.comm) == {Path(PY).name[:15]}


# --------------------------------------------------------------------------- uprobes

GETPID_CALLS = 2000

GETPID_WORKLOAD = f"""
    import os
    print(f"pid={{os.getpid()}}", flush=True)
    for _ in range({GETPID_CALLS}):
        os.getpid()
"""


@needs_root
def test_uprobe_counts_getpid_calls_per_pid(ip, tmp_path):
    cell = """
BPF_HASH(calls, u32, u64);
int count(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}
"""
    r = bpf(ip, run_line("-u c:getpid", run=py_script(tmp_path, GETPID_WORKLOAD)), cell)
    pid = pid_from_output(r.output)
    calls = r.maps["calls"]
    assert list(calls.columns) == ["key", "value"]
    counts = dict(zip(calls.key, calls.value))
    assert pid in counts, f"no getpid() calls counted for the workload {pid}: {counts}"
    # the loop's calls, plus the print's one, plus whatever the interpreter does itself
    assert GETPID_CALLS <= counts[pid] < GETPID_CALLS + 100
    # sorted by value, largest first
    assert list(calls.value) == sorted(calls.value, reverse=True)


@needs_root
def test_uretprobe_sees_getpid_return_value(ip, tmp_path):
    cell = """
struct event { u32 pid; s64 ret; };
BPF_PERF_OUTPUT(events);
BPF_HASH(returned, s64, u64);
int on_return(struct pt_regs *ctx) {
    struct event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.ret = PT_REGS_RC(ctx);
    returned.increment(e.ret);
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
"""
    code = """
        import os
        print(f"pid={os.getpid()}", flush=True)
        for _ in range(20):
            os.getpid()
    """
    r = bpf(ip, run_line("-U c:getpid", run=py_script(tmp_path, code)), cell)
    pid = pid_from_output(r.output)
    mine = r.events[r.events.pid == pid]
    assert len(mine) >= 20
    # what getpid() returned, read from the return register, is the real PID
    assert set(mine.ret) == {pid}
    returned = dict(zip(r.maps["returned"].key, r.maps["returned"].value))
    assert returned.get(pid, 0) >= 20
    assert r.lost == {"events": 0}


# --------------------------------------------------------------------------- perf events


@needs_root
def test_perf_cpu_clock_samples_per_cpu(ip, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    ncpus = len(os.sched_getaffinity(0))
    busy = cpus[-1]
    code = f"""
        import os, time
        os.sched_setaffinity(0, {{{busy}}})
        print(f"pid={{os.getpid()}}", flush=True)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
    """
    cell = """
BPF_HASH(samples, u32, u64);
BPF_PERCPU_ARRAY(per_cpu, u64, 1);
BPF_HASH(busy_pid, u32, u64);
int on_sample(struct bpf_perf_event_data *ctx) {
    u32 cpu = bpf_get_smp_processor_id();
    samples.increment(cpu);
    int zero = 0;
    u64 *n = per_cpu.lookup(&zero);
    if (n)
        (*n)++;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    busy_pid.increment(pid);
    return 0;
}
"""
    r = bpf(ip, run_line("-P cpu-clock:99", "-d 1", run=py_script(tmp_path, code)), cell)
    assert r.stopped_by == "duration"
    pid = pid_from_output(r.output)
    seconds = r.duration
    samples = dict(zip(r.maps["samples"].key, r.maps["samples"].value))
    total = sum(samples.values())

    # the busy CPU was sampled at about 99 Hz for about the whole second
    assert samples.get(busy, 0) >= 0.6 * 99 * seconds, samples
    assert total <= 99 * seconds * ncpus * 1.3 + 10, samples
    assert set(samples) <= set(range(os.cpu_count()))
    # the busy process was on CPU for many of the samples
    by_pid = dict(zip(r.maps["busy_pid"].key, r.maps["busy_pid"].value))
    # (other processes may share the CPU on a busy machine: a quarter is a safe floor)
    assert by_pid.get(pid, 0) >= 0.25 * 99 * seconds, by_pid

    # a per-CPU array: one column per CPU and their sum in `value`
    pc = r.maps["per_cpu"]
    cpu_cols = [c for c in pc.columns if re.fullmatch(r"cpu\d+", c)]
    assert len(cpu_cols) >= ncpus
    assert list(pc.columns) == ["key", *cpu_cols, "value"]
    assert len(pc) == 1 and pc.key.iloc[0] == 0
    row = pc.iloc[0]
    assert row.value == sum(row[c] for c in cpu_cols)
    # the same samples as the hash map, CPU by CPU
    assert row.value == total
    for cpu, n in samples.items():
        assert row[f"cpu{cpu}"] == n


# --------------------------------------------------------------------------- printk


@needs_root
def test_printk_lines_have_pid_comm_and_exact_message(ip, tmp_path):
    target = tmp_path / f"printk-{uuid.uuid4().hex[:8]}"
    target.write_text("x\n")
    cell = """
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char name[160] = {};
    bpf_probe_read_user_str(name, sizeof(name), args->filename);
    bpf_trace_printk("opened %s dfd=%d\\n", name, args->dfd);
    return 0;
}
"""
    r = bpf(ip, run_line("--comm cat", run=f"echo pid=$$; exec cat {target}"), cell)
    pid = pid_from_output(r.output)
    pk = r.printk
    assert {"pid", "comm", "message"} <= set(pk.columns)
    mine = pk[pk.message == f"opened {target} dfd={AT_FDCWD}"]
    assert len(mine) == 1, pk.to_string()
    assert mine.pid.iloc[0] == pid
    assert mine.comm.iloc[0] == "cat"
    # --comm cat: the shell that started cat printed nothing
    ours = pk[pk.message.str.startswith("opened ")]
    assert set(ours.comm) == {"cat"}
    assert str(pk.time.dtype).startswith("datetime64")


# --------------------------------------------------------------------------- maps


@needs_root
def test_hash_with_struct_key_and_array(ip, tmp_path):
    cell = """
struct key_t { char comm[16]; u32 pid; };
BPF_HASH(by_comm, struct key_t, u64);
BPF_ARRAY(dfds, u64, 4);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct key_t k = {};
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    k.pid = bpf_get_current_pid_tgid() >> 32;
    by_comm.increment(k);
    // syscall arguments are 8-byte fields: the int is the low half
    int slot = (int)args->dfd == -100 ? 1 : 2;
    dfds.increment(slot);
    return 0;
}
"""
    code = """
        import os
        with open("/proc/self/comm", "w") as f:
            f.write("ebpfkit-opener")
        print(f"pid={os.getpid()}", flush=True)
        for _ in range(7):
            open("/dev/null").close()
    """
    r = bpf(ip, run_line(run=py_script(tmp_path, code)), cell)
    pid = pid_from_output(r.output)
    by_comm = r.maps["by_comm"]
    assert list(by_comm.columns) == ["comm", "pid", "value"]
    mine = by_comm[(by_comm.comm == "ebpfkit-opener") & (by_comm.pid == pid)]
    assert len(mine) == 1, by_comm.to_string()
    assert 7 <= mine.value.iloc[0] < 7 + 5  # the seven opens, with few others

    dfds = r.maps["dfds"]
    assert list(dfds.columns) == ["key", "value"]
    assert list(dfds.key) == [0, 1, 2, 3]  # an array lists every slot, in order
    assert dfds.value.iloc[0] == 0 and dfds.value.iloc[3] == 0
    assert dfds.value.iloc[1] >= 7  # relative opens, the workload's among them
    assert dfds.value.sum() == by_comm.value.sum()


WRITER = """
    import os
    print(f"pid={{os.getpid()}}", flush=True)
    with open("/proc/self/comm", "w") as f:
        f.write({comm!r})
    fd = os.open("/dev/null", os.O_WRONLY)
    for size, times in {sizes!r}:
        for _ in range(times):
            os.write(fd, b"x" * size)
    os.close(fd)
"""


@needs_root
def test_log2_and_linear_histograms(ip, tmp_path):
    comm = "ebpfkit-writer"
    sizes = [(1, 2), (3, 4), (100, 3), (1000, 5), (5000, 1)]
    cell = """
BPF_HISTOGRAM(sizes);
BPF_HISTOGRAM(small, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    sizes.increment(bpf_log2l(args->count));
    if (args->count < 10)
        small.increment(args->count);
    return 0;
}
"""
    cmd = py_script(tmp_path, WRITER.format(comm=comm, sizes=sizes))
    r = bpf(ip, run_line(f"--comm {comm}", "--hist small=linear", run=cmd), cell)
    assert r.exit_code == 0, r.output

    h = r.maps["sizes"]
    assert list(h.columns) == ["low", "high", "count"]
    counts = {(int(lo), int(hi)): int(c) for lo, hi, c in zip(h.low, h.high, h["count"])}
    assert counts[(0, 1)] == 2  # size 1
    assert counts[(2, 3)] == 4  # size 3
    assert counts[(64, 127)] == 3  # 100
    assert counts[(512, 1023)] == 5  # 1000
    assert counts[(4096, 8191)] == 1  # 5000
    assert h["count"].sum() == 15  # nothing else: --comm kept other writers out
    # buckets are contiguous, from the first used to the last
    assert (h.low.iloc[1:].values == h.high.iloc[:-1].values + 1).all()

    lin = r.maps["small"]
    assert list(lin.columns) == ["low", "high", "count"]
    assert (lin.low == lin.high).all()
    lin_counts = dict(zip(lin.low, lin["count"]))
    assert lin_counts == {1: 2, 2: 0, 3: 4}


@needs_root
def test_plain_histogram_is_linear(ip, tmp_path):
    comm = "ebpfkit-lin"
    cell = """
BPF_HISTOGRAM(dist);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    dist.increment(args->count);
    return 0;
}
"""
    cmd = py_script(tmp_path, WRITER.format(comm=comm, sizes=[(5, 3), (7, 1)]))
    r = bpf(ip, run_line(f"--comm {comm}", run=cmd), cell)
    d = r.maps["dist"]
    assert dict(zip(d.low, d["count"])) == {5: 3, 6: 0, 7: 1}
    assert (d.low == d.high).all()


# --------------------------------------------------------------------------- stacks


@needs_root
def test_user_stacks_from_a_uprobe_are_symbolized(ip, tmp_path, background):
    proc = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-stack"), "stacker")
    cell = """
struct key_t { u32 pid; int user_stack_id; };
BPF_HASH(counts, struct key_t, u64);
BPF_STACK_TRACE(stacks, 1024);
int on_getpid(struct pt_regs *ctx) {
    struct key_t k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    k.user_stack_id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    counts.increment(k);
    return 0;
}
"""
    r = bpf(ip, f"-u c:getpid --pid {proc.pid} -d 0.5", cell)
    counts = r.maps["counts"]
    assert "user_stack_frames" in counts.columns, list(counts.columns)
    assert len(counts) > 0
    assert set(counts.pid) == {proc.pid}
    assert (counts.user_stack_id >= 0).any()
    good = counts[counts.user_stack_id >= 0]
    for stack in good.user_stack_frames:
        assert isinstance(stack, str) and stack
        assert all(frame for frame in stack.split(";"))
    frames = {f for s in good.user_stack_frames for f in s.split(";")}
    # the probed function is the top frame; the interpreter's caller is below it
    assert any("getpid" in f for f in frames), frames
    leaves = {s.split(";")[-1] for s in good.user_stack_frames}
    assert any("getpid" in leaf for leaf in leaves), leaves


# --------------------------------------------------------------------------- options

GETPID_EVENTS = """
struct event { u32 pid; char comm[16]; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    struct event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""


@needs_root
def test_pid_filter(ip, tmp_path, background):
    a = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-a"), "a")
    b = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-b"), "b")
    r = bpf(ip, f"--pid {a.pid} -d 0.5", GETPID_EVENTS)
    assert len(r.events) > 10
    assert set(r.events.pid) == {a.pid}
    assert set(r.events.comm) == {"ebpfkit-a"}
    # the same without the filter sees both
    r2 = bpf(ip, "-d 0.5", GETPID_EVENTS)
    assert {a.pid, b.pid} <= set(r2.events.pid)


@needs_root
def test_pid_filter_on_a_uprobe(ip, tmp_path, background):
    a = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-ua"), "ua")
    b = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-ub"), "ub")
    cell = """
BPF_HASH(calls, u32, u64);
int count(struct pt_regs *ctx) {
    calls.increment(bpf_get_current_pid_tgid() >> 32);
    return 0;
}
"""
    r = bpf(ip, f"-u c:getpid --pid {b.pid} -d 0.5", cell)
    calls = dict(zip(r.maps["calls"].key, r.maps["calls"].value))
    assert set(calls) == {b.pid}, calls
    assert calls[b.pid] > 10
    assert a.pid not in calls


@needs_root
def test_comm_filter(ip, tmp_path, background):
    a = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-ca"), "ca")
    background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-cb"), "cb")
    r = bpf(ip, "--comm ebpfkit-ca -d 0.5", GETPID_EVENTS)
    assert len(r.events) > 10
    assert set(r.events.comm) == {"ebpfkit-ca"}
    assert set(r.events.pid) == {a.pid}


GETPID_EVENTS_RING = GETPID_EVENTS.replace(
    "BPF_PERF_OUTPUT(events);", "BPF_RINGBUF_OUTPUT(events, 16);"
).replace("events.perf_submit(args, &e, sizeof(e));", "events.ringbuf_output(&e, sizeof(e), 0);")
CHANNEL_CELLS = {"perf": GETPID_EVENTS, "ring": GETPID_EVENTS_RING}


@needs_root
@pytest.mark.parametrize("channel", list(CHANNEL_CELLS))
def test_max_events(ip, tmp_path, background, channel):
    proc = background.start(tmp_path, GETPID_LOOP.format(comm="ebpfkit-max"), "max")
    r = bpf(ip, "--max-events 7 --comm ebpfkit-max -d 5", CHANNEL_CELLS[channel])
    assert len(r.events) == 7
    assert r.stopped_by == "max events"
    assert r.duration < 4  # stopped early, not by the 5 s
    assert set(r.events.comm) == {"ebpfkit-max"}
    assert set(r.events.pid) == {proc.pid}


# A producer far faster than Python can read: getpid() in a tight loop, in two
# processes (one per CPU), for at most a few seconds.
HOT_LOOP = """
    import os, sys, time
    with open("/proc/self/comm", "w") as f:
        f.write("ebpfkit-hot")
    print("ready", flush=True)
    end = time.monotonic() + {seconds}
    while time.monotonic() < end:
        for _ in range(1000):
            os.getpid()
"""


@needs_root
@pytest.mark.parametrize("channel", list(CHANNEL_CELLS))
def test_duration_is_kept_with_a_fast_producer(ip, tmp_path, background, channel):
    """-d 0.5 means half a second of tracing, however fast the events come.

    The records beyond what Python can read are lost (and counted), but the
    trace must not go on reading for as long as the producer keeps producing.
    """
    for i in range(2):
        # long enough to outlast a compile on a loaded machine; the fixture stops them
        background.start(tmp_path, HOT_LOOP.format(seconds=15), f"hot{i}")
    # big buffers (2 MiB): a reader that drains until empty never catches up
    cell = CHANNEL_CELLS[channel].replace(
        "BPF_RINGBUF_OUTPUT(events, 16)", "BPF_RINGBUF_OUTPUT(events, 512)"
    )
    r = bpf(ip, "--comm ebpfkit-hot -d 0.5 --buffer-pages 512", cell)
    assert r.stopped_by == "duration"
    assert len(r.events) > 0
    assert r.duration < 1.5, (
        f"asked for 0.5 s, traced {r.duration:.2f} s "
        f"({r.received['events']} events read, {r.lost['events']} lost)"
    )


CTRL_C_SCRIPT = """
import json, sys, time
from IPython.testing.globalipapp import start_ipython

ip = start_ipython()
ip.run_line_magic("load_ext", "ebpfkit")
line, cell = sys.argv[1], sys.argv[2]
t = time.monotonic()
r = ip.run_cell_magic("bpf", line, cell)
print(json.dumps({
    "stopped_by": r.stopped_by,
    "duration": r.duration,
    "wall": time.monotonic() - t,
    "events": len(r.events),
    "pids": sorted({int(p) for p in r.events.pid}),
    "output": r.output,
}))
"""

# Renames itself, calls getpid() a known number of times, then sends SIGINT to the
# shell (as Ctrl-C or the notebook's stop button would), then goes on for 4 s.
INTERRUPTER = """
    import os, signal, sys, time
    with open("/proc/self/comm", "w") as f:
        f.write("ebpfkit-intr")
    print(f"pid={{os.getpid()}}", flush=True)
    for _ in range(25):
        os.getpid()
    time.sleep(0.3)
    os.kill(int(sys.argv[1]), signal.SIGINT)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        if {busy}:
            for _ in range(1000):
                os.getpid()
        else:
            time.sleep(0.05)
"""


@needs_root
@pytest.mark.parametrize(
    "channel, busy",
    [("perf", False), ("perf", True), ("ring", True)],
    ids=["perf-quiet", "perf-busy", "ring-busy"],
)
def test_ctrl_c_stops_the_trace_and_keeps_the_events(tmp_path, channel, busy):
    """SIGINT in the middle of a trace ends it at once, with what was gathered.

    Run in a separate IPython process: the signal goes to that process only.
    """
    script = tmp_path / "shell.py"
    script.write_text(CTRL_C_SCRIPT)
    workload = tmp_path / "interrupter.py"
    workload.write_text(textwrap.dedent(INTERRUPTER.format(busy=busy)))
    # the shell's own PID is what the workload signals: `$PPID` of sh is the shell
    run = f"exec {shlex.quote(PY)} {shlex.quote(str(workload))} $PPID"
    line = run_line("--comm ebpfkit-intr", "-d 30", run=run)
    proc = subprocess.run(
        [PY, str(script), line, CHANNEL_CELLS[channel]],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=Path(__file__).parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    pid = pid_from_output(out["output"])
    assert out["stopped_by"] == "interrupt", out | {"stderr": proc.stderr[-1500:]}
    assert out["duration"] < 3, out
    # what came before the interrupt is kept
    assert out["events"] >= 25
    assert out["pids"] == [pid]


@needs_root
def test_out_binds_the_result(ip, tmp_path):
    ip.user_ns.pop("opens_result", None)
    r = bpf(ip, run_line("-o opens_result", run="true"), OPENAT_PROGRAMS["perf_submit"])
    assert r is not None
    assert ip.user_ns["opens_result"] is r
    assert type(r).__name__ == "TraceResult"


@needs_root
def test_result_lands_in_underscore(ip):
    res = ip.run_cell("%%bpf --run true\n" + OPENAT_PROGRAMS["perf_submit"])
    res.raise_error()
    assert type(res.result).__name__ == "TraceResult"
    assert ip.user_ns["_"] is res.result


@needs_root
def test_file_option(ip, tmp_path):
    source = tmp_path / "opens.c"
    source.write_text(OPENAT_PROGRAMS["perf_submit"])
    target = tmp_path / f"from-file-{uuid.uuid4().hex[:8]}"
    target.write_text("y\n")
    # as a user writes it: a line magic, since IPython refuses a cell magic with no body
    res = ip.run_cell("%bpf " + run_line(f"--file {source}", "-o from_file", run=f"cat {target}"))
    res.raise_error()
    r = ip.user_ns["from_file"]
    assert res.result is r
    opened = r.events[r.events.filename == str(target)]
    assert len(opened) == 1
    assert opened.comm.iloc[0] == "cat"


@needs_root
def test_file_option_wins_over_the_cell(ip, tmp_path):
    source = tmp_path / "opens.c"
    source.write_text(OPENAT_PROGRAMS["perf_submit"])
    target = tmp_path / f"file-wins-{uuid.uuid4().hex[:8]}"
    target.write_text("y\n")
    # a cell that would not compile: the file is what runs
    r = bpf(ip, run_line(f"--file {source}", run=f"cat {target}"), "this is not C")
    assert (r.events.filename == str(target)).sum() == 1


OPTIONS = [
    ("-k", "--kprobe"),
    ("-K", "--kretprobe"),
    ("-t", "--tracepoint"),
    ("-u", "--uprobe"),
    ("-U", "--uretprobe"),
    ("-P", "--perf"),
    ("-d", "--duration"),
    ("-r", "--run"),
    ("-n", "--max-events"),
    ("-p", "--pid"),
    ("-c", "--comm"),
    ("-o", "--out"),
    ("-f", "--file"),
    (None, "--buffer-pages"),
    (None, "--hist"),
    (None, "--load-only"),
]


def test_docstring_mentions_every_option(ip):
    doc = ip.find_cell_magic("bpf").__doc__
    assert doc
    for short, long in OPTIONS:
        assert long in doc, f"{long} is not documented"
        if short:
            assert re.search(rf"(?<![\w-]){short}\b", doc), f"{short} is not documented"
    assert "TRACEPOINT_PROBE" in doc


@needs_root
def test_short_options_work(ip, tmp_path):
    target = tmp_path / f"short-{uuid.uuid4().hex[:8]}"
    target.write_text("z\n")
    cell = """
int on_open(struct tracepoint__syscalls__sys_enter_openat *args) {
    char name[160] = {};
    bpf_probe_read_user_str(name, sizeof(name), args->filename);
    bpf_trace_printk("short %s\\n", name);
    return 0;
}
"""
    r = bpf(ip, f"-t syscalls:sys_enter_openat -c cat -r 'cat {target}' -o short_r", cell)
    assert ip.user_ns["short_r"] is r
    assert (r.printk.message == f"short {target}").sum() == 1


@needs_root
def test_no_variable_expansion(ip, tmp_path):
    ip.user_ns["x"] = "EXPANDED"
    ip.user_ns["HOME"] = "EXPANDED"
    cell = """
struct e { u32 pid; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct e x = {};
    x.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_trace_printk("home=$HOME x=$x {x} {}\\n");
    events.perf_submit(args, &x, sizeof(x));
    return 0;
}
"""
    code = """
        import os
        print(f"pid={os.getpid()}", flush=True)
        with open("/proc/self/comm", "w") as f:
            f.write("ebpfkit-noexp")
        os.getppid()
    """
    # the line is not expanded either: IPython would turn {x} and $x into EXPANDED,
    # while sh leaves them alone inside single quotes
    workload = py_script(tmp_path, code) + "; echo '{x} $x'"
    r = bpf(ip, run_line("--comm ebpfkit-noexp", run=workload), cell)
    pid = pid_from_output(r.output)
    assert r.output.splitlines()[-1] == "{x} $x"
    mine = r.printk[r.printk.pid == pid]
    assert list(mine.message) == ["home=$HOME x=$x {x} {}"], r.printk.to_string()
    assert pid in set(r.events.pid)


# --------------------------------------------------------------------------- display


@needs_root
def test_repr_html_summary_and_table(ip, tmp_path):
    target = tmp_path / f"html-{uuid.uuid4().hex[:8]}"
    target.write_text("h\n")
    r = bpf(ip, run_line(run=f"cat {target}"), OPENAT_PROGRAMS["perf_submit"])
    html = r._repr_html_()
    n = len(r.events)
    assert n > 0
    assert f"received {n} events" in html
    assert "lost 0" in html
    assert "<table" in html and "</table>" in html
    assert "<th>filename</th>" in html
    text = repr(r)
    assert f"received {n} events" in text


# --------------------------------------------------------------------------- kprobes

KPROBE_CELL = """
BPF_HASH(calls, u32, u64);
int on_entry(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}
int on_return(struct pt_regs *ctx) {
    bpf_trace_printk("returned %d\\n", (int)PT_REGS_RC(ctx));
    return 0;
}
"""


@needs_root
def test_load_only_loads_kprobe_programs(ip, capsys):
    r = bpf(ip, "--load-only -k do_sys_openat2=on_entry -K do_sys_openat2=on_return", KPROBE_CELL)
    assert r is None
    out = capsys.readouterr().out
    assert "loaded into the kernel (not attached): on_entry, on_return" in out
    # loaded, then freed: nothing stays open in this process
    assert not _bpf_prog_ids_held(os.getpid())


def _execve_function() -> str:
    import platform

    prefix = {"x86_64": "__x64_", "aarch64": "__arm64_"}.get(platform.machine(), "")
    return f"{prefix}sys_execve"


@needs_root
@pytest.mark.kprobes
@needs_kprobes
def test_kprobe_and_kretprobe_on_execve(ip, tmp_path):
    fn = _execve_function()
    cell = """
struct event { u32 pid; char comm[16]; };
BPF_PERF_OUTPUT(events);
BPF_HASH(returns, s64, u64);
int on_entry(struct pt_regs *ctx) {
    struct event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(ctx, &e, sizeof(e));
    return 0;
}
int on_return(struct pt_regs *ctx) {
    s64 ret = PT_REGS_RC(ctx);
    returns.increment(ret);
    return 0;
}
"""
    # the shell prints its PID, then execs: the execve comes from that PID
    r = bpf(
        ip, run_line(f"-k {fn}=on_entry", f"-K {fn}=on_return", run="echo pid=$$; exec true"), cell
    )
    pid = pid_from_output(r.output)
    assert pid in set(r.events.pid), r.events
    returns = dict(zip(r.maps["returns"].key, r.maps["returns"].value))
    assert returns.get(0, 0) >= 1  # a successful execve returns 0
