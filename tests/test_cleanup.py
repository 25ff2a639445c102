"""A probe never outlives its cell: whatever ends a cell, nothing of it stays behind.

What "nothing" means here, read from the kernel and from this process:

- no BPF program of ours: the ids of ``bpftool prog list`` held by this process, through
  a program descriptor (``/proc/self/fdinfo``) or a perf event (``bpftool perf list``);
- no attachment of ours in ``bpftool perf list`` (tracepoints, uprobes, perf events);
- ``uprobe_events`` as it was;
- the same number of ``anon_inode`` descriptors of each kind in ``/proc/self/fd``
  (``[perf_event]``, ``bpf-map``, ``bpf-prog``, ``btf``, ``[eventpoll]``) and no
  ``trace_pipe`` left open.

The machine's program list is shared with every other process (other test runs load
programs while these run), so programs are counted as ours by who holds them, not by
comparing the whole list.

Also: losses are counted exactly when a buffer is too small for a burst, and the cell
after an error or an interrupt works as if nothing had happened.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import KPROBES, bpf, needs_root

from ebpfkit.errors import (
    AttachError,
    CompileError,
    EbpfkitError,
    FeatureMissing,
    ProbeNotFound,
    VerifierError,
)

pytestmark = needs_root

HAS_PMU = Path("/sys/bus/event_source/devices/cpu").exists()
UPROBE_EVENTS = Path("/sys/kernel/debug/tracing/uprobe_events")
TRACE_PIPE_BUSY = "which another program is reading right now"


# --- what this process holds in the kernel ------------------------------------------------


def held() -> dict:
    """Our BPF programs, attachments and kernel-object descriptors, right now."""
    fds: collections.Counter = collections.Counter()
    programs: set[int] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        if target.startswith("anon_inode:") or target.endswith("/trace_pipe"):
            fds[target] += 1
        if target == "anon_inode:bpf-prog":
            try:
                info = Path(f"/proc/self/fdinfo/{name}").read_text()
            except OSError:
                continue
            for line in info.splitlines():
                if line.startswith("prog_id:"):
                    programs.add(int(line.split()[1]))
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    attachments = [a for a in json.loads(out or "[]") if a.get("pid") == os.getpid()]
    programs |= {a["prog_id"] for a in attachments}
    uprobes = UPROBE_EVENTS.read_text() if UPROBE_EVENTS.exists() else None
    return {
        "programs": programs,
        "attachments": sorted(json.dumps(a, sort_keys=True) for a in attachments),
        "fds": fds,
        "uprobe_events": uprobes,
    }


def global_program_ids() -> set[int]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def difference(before: dict, after: dict) -> dict:
    """What ``after`` holds that ``before`` did not (empty when nothing leaked)."""
    diff = {}
    if after["programs"] - before["programs"]:
        diff["programs"] = sorted(after["programs"] - before["programs"])
    new_attachments = sorted(set(after["attachments"]) - set(before["attachments"]))
    if new_attachments:
        diff["attachments"] = new_attachments
    fds = {
        k: after["fds"][k] - before["fds"][k]
        for k in set(before["fds"]) | set(after["fds"])
        if after["fds"][k] != before["fds"][k]
    }
    if fds:
        diff["fds"] = fds
    if after["uprobe_events"] != before["uprobe_events"]:
        diff["uprobe_events"] = after["uprobe_events"]
    return diff


def run_cell(ip, line: str, cell: str):
    """The cell's result, or the ebpfkit error it raised; a Ctrl-C must not escape it."""
    try:
        return bpf(ip, line, cell)
    except EbpfkitError as e:
        return e
    except KeyboardInterrupt:
        pytest.fail(f"KeyboardInterrupt escaped the cell `%%bpf {line}`")


# --- programs ------------------------------------------------------------------------------

EXEC_COUNT = """\
BPF_ARRAY(execs, u64, 1);
int ekc_exec(void *ctx) {
    int k = 0;
    execs.increment(k);
    return 0;
}
"""

EXEC_EVENTS = """\
struct exec_event {
    u32 pid;
    char filename[96];
};
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    struct exec_event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_probe_read_user_str(&e.filename, sizeof(e.filename), args->filename);
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""
EXEC_EVENTS_RING = EXEC_EVENTS.replace(
    "BPF_PERF_OUTPUT(events);", "BPF_RINGBUF_OUTPUT(events, 8);"
).replace("events.perf_submit(args, &e, sizeof(e));", "events.ringbuf_output(&e, sizeof(e), 0);")

EXEC_PRINTK = """\
TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    bpf_trace_printk("ekc exec\\n");
    return 0;
}
"""

MALLOC_COUNT = """\
BPF_ARRAY(calls, u64, 1);
int ekc_malloc(struct pt_regs *ctx) {
    int k = 0;
    calls.increment(k);
    return 0;
}
"""

CPU_SAMPLES = """\
BPF_HASH(samples, u32, u64);
int ekc_tick(struct bpf_perf_event_data *ctx) {
    u32 cpu = bpf_get_smp_processor_id();
    samples.increment(cpu);
    return 0;
}
"""

MISSING_SEMICOLON = """\
BPF_ARRAY(execs, u64, 1);
int ekc_exec(void *ctx) {
    int k = 0
    execs.increment(k);
    return 0;
}
"""
UNDECLARED = "int ekc_exec(void *ctx) {\n    return ekc_nowhere;\n}\n"
RING_COMPILE_ERROR = EXEC_EVENTS_RING.replace("e.pid =", "e.pidd =")

DIRECT_READ = """\
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char c = *(char *)args->filename;
    return c;
}
"""
ENDLESS_LOOP = """\
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    volatile int x = 0;
    while (x == 0) { }
    return 0;
}
"""
TWO_FUNCTIONS = """\
int ekc_a(void *ctx) { return 0; }
int ekc_b(struct pt_regs *ctx) { return 0; }
"""


def _gone_pid() -> int:
    """A pid that no process has: a child of ours, already reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --- a hundred cells -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def true_copy(tmp_path_factory) -> str:
    """/bin/true under a name of its own, so its exec is ours alone among the events."""
    path = tmp_path_factory.mktemp("ekc") / "ekc-true"
    shutil.copy("/bin/true", path)
    return str(path)


def _cells(true: str) -> list[tuple[str, str, str, object]]:
    """(kind, line, cell, check) for every kind of ending a cell can have.

    ``check`` is an exception type the cell must raise, or a function that asserts on
    its result (and on its error too, if the function says ``takes_errors``).
    """
    pid = os.getpid()
    gone = _gone_pid()

    def execs_counted(r):
        # the workload's own execs: /bin/sh, then the copy of true
        assert r.stopped_by == "workload exit" and r.exit_code == 0
        assert r.maps["execs"]["value"].sum() >= 2

    def exec_seen(r):
        assert r.stopped_by == "workload exit"
        assert (r.events["filename"] == true).sum() == 1, r.events
        assert r.total_lost == 0

    def mallocs_counted(r):
        assert r.maps["calls"]["value"].sum() > 0

    def cpu_sampled(r):
        assert r.stopped_by == "duration" and r.maps["samples"]["value"].sum() > 0

    def printk_read(r):
        if isinstance(r, AttachError):
            # trace_pipe has one reader at a time, and another process on this machine may
            # hold it: ebpfkit must say so (and clean up), which is what this cell then checks
            assert TRACE_PIPE_BUSY in str(r)
        else:
            assert r.printk is not None  # trace_pipe was opened (and must be closed)

    printk_read.takes_errors = True

    def interrupted(r):
        assert r.stopped_by == "interrupt", r.stopped_by
        assert r.duration < 2.5  # not the workload's 3 s sleep
        assert r.exit_code is not None and r.exit_code < 0  # the workload was killed
        # what was gathered before Ctrl-C is kept: both execs of the copy of true
        assert (r.events["filename"] == true).sum() == 2, r.events

    run = f"--run {true}"
    interrupt = f"--run '{true}; {true}; sleep 0.3; kill -INT {pid}; sleep 3'"
    cells = [
        ("success: tracepoint", f"-t syscalls:sys_enter_execve {run}", EXEC_COUNT, execs_counted),
        ("success: perf buffer", run, EXEC_EVENTS, exec_seen),
        ("success: ring buffer", run, EXEC_EVENTS_RING, exec_seen),
        ("success: printk", "-d 0.1", EXEC_PRINTK, printk_read),
        ("success: uprobe libc", f"-u c:malloc {run}", MALLOC_COUNT, mallocs_counted),
        ("success: perf cpu-clock", "-P cpu-clock:999 -d 0.2", CPU_SAMPLES, cpu_sampled),
        (
            "compile: semicolon",
            "-t syscalls:sys_enter_execve -d 0.1",
            MISSING_SEMICOLON,
            CompileError,
        ),
        ("compile: undeclared", "-t syscalls:sys_enter_execve -d 0.1", UNDECLARED, CompileError),
        ("compile: ring buffer", "-d 0.1", RING_COMPILE_ERROR, CompileError),
        (
            "attach: tracepoint name",
            "-t syscalls:sys_enter_opnat -d 0.1",
            EXEC_COUNT,
            ProbeNotFound,
        ),
        ("attach: libc symbol", "-u c:mallok -d 0.1", MALLOC_COUNT, ProbeNotFound),
        (
            "attach: kprobe",
            "-k do_sys_opnat2 -d 0.1",
            MALLOC_COUNT,
            ProbeNotFound if KPROBES else FeatureMissing,
        ),
        (
            # compiled, the tracepoint attached, then the uprobe fails: all must go
            "attach: second probe fails",
            f"-p {gone} -t syscalls:sys_enter_getppid=ekc_a -u c:malloc=ekc_b -d 0.1",
            TWO_FUNCTIONS,
            AttachError,
        ),
        ("verifier: direct read", "-d 0.1", DIRECT_READ, VerifierError),
        ("verifier: endless loop", "-d 0.1", ENDLESS_LOOP, VerifierError),
        ("interrupt: perf buffer", interrupt, EXEC_EVENTS, interrupted),
        ("interrupt: ring buffer", interrupt, EXEC_EVENTS_RING, interrupted),
    ]
    if not HAS_PMU:
        cells.append(
            (
                # compiled, the uprobe attached, then the hardware event fails
                "attach: no PMU",
                "-u c:malloc=ekc_b -P cycles=ekc_a -d 0.1",
                TWO_FUNCTIONS,
                FeatureMissing,
            )
        )
    return cells


def _hundred(cells: list) -> list:
    """A hundred cells, about a third successes, in a fixed shuffled order."""
    weights = {"success": 5, "compile": 4, "attach": 4, "verifier": 5, "interrupt": 7}
    pool = []
    for cell in cells:
        pool += [cell] * weights[cell[0].split(":")[0]]
    rng = random.Random(20261125)
    rng.shuffle(pool)
    while len(pool) < 100:
        pool.append(rng.choice(cells))
    return pool[:100]


def test_a_hundred_cells_leave_nothing_behind(ip, true_copy):
    cells = _hundred(_cells(true_copy))
    kinds = collections.Counter(kind.split(":")[0] for kind, *_ in cells)
    assert len(cells) == 100 and min(kinds.values()) >= 10, kinds

    before = held()
    before_global = global_program_ids()
    leaks: dict[str, list] = collections.defaultdict(list)
    wrong: list[str] = []
    for i, (kind, line, cell, check) in enumerate(cells):
        ahead = held()
        outcome = run_cell(ip, line, cell)
        expected = check if isinstance(check, type) else None
        try:
            if expected is not None:
                assert isinstance(outcome, expected), f"expected {expected.__name__}"
            elif not getattr(check, "takes_errors", False):
                assert not isinstance(outcome, Exception), "expected a result"
                check(outcome)
            else:
                check(outcome)
        except AssertionError as e:
            wrong.append(f"cell {i} ({kind}): {e}; got {outcome!r}"[:2000])
        leaked = difference(ahead, held())
        if leaked:
            leaks[kind].append(leaked)
    after = held()

    by_kind = {kind: f"{len(v)} cells, e.g. {v[0]}" for kind, v in leaks.items()}
    left = difference(before, after)
    assert not wrong and left == {}, (
        "cells that went wrong:\n" + "\n".join(wrong or ["none"]) + f"\nleft behind: {left}"
        f"\nleft behind, by the kind of cell: {by_kind}"
    )
    # and nothing of ours among the machine's programs (others' come and go meanwhile)
    assert (global_program_ids() - before_global) & after["programs"] == set()


def test_verifier_error_in_the_second_probe_leaves_the_first_unattached(ip):
    # BCC loads and attaches TRACEPOINT_PROBEs one by one while it builds the program;
    # when the second is rejected, the first is already attached.
    cell = """\
TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char c = *(char *)args->filename;
    return c;
}
"""
    before = held()
    outcome = run_cell(ip, "-d 0.1", cell)
    assert isinstance(outcome, VerifierError), outcome
    assert difference(before, held()) == {}


def test_workload_children_do_not_outlive_the_cell(ip):
    # A workload that starts something in the background and returns at once.
    marker = f"{7 + os.getpid() % 1000 / 1000:.3f}"  # an argument no other sleep has
    result = run_cell(ip, f"-t syscalls:sys_enter_execve --run 'sleep {marker} & true'", EXEC_COUNT)
    assert not isinstance(result, Exception), result
    time.sleep(0.2)
    survivors = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()]:
            survivors.append(int(entry.name))
    for pid in survivors:  # ours: do not leave them running after the test either
        os.kill(pid, 9)
    assert survivors == [], f"the workload's background child survived the cell: {survivors}"


# --- bursts into a buffer that is too small --------------------------------------------------

BURST_CALLS = 200_000

# One record per getppid() of the burst process, numbered in the kernel; `produced`
# counts every record the program tried to send.
BURST_PERF = """\
struct burst_event {
    u64 n;
    u64 ts;
    u32 pid;
    char comm[16];
};
BPF_PERF_OUTPUT(events);
BPF_ARRAY(produced, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int k = 0;
    u64 *count = produced.lookup(&k);
    if (!count) return 0;
    struct burst_event e = {};
    e.n = __sync_fetch_and_add(count, 1);
    e.ts = bpf_ktime_get_ns();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""
BURST_RING = BURST_PERF.replace(
    "BPF_PERF_OUTPUT(events);", "BPF_RINGBUF_OUTPUT(events, 1);"
).replace("events.perf_submit(args, &e, sizeof(e));", "events.ringbuf_output(&e, sizeof(e), 0);")


@pytest.fixture(scope="module")
def burst(tmp_path_factory) -> str:
    """A Python under the name "ekburst" (its comm), and the command making the burst."""
    link = tmp_path_factory.mktemp("burst") / "ekburst"
    link.symlink_to(os.path.realpath(sys.executable))
    return f"{link} -c 'import os; [os.getppid() for _ in range({{calls}})]'"


def _losses_explained(result, produced: int) -> str:
    received, lost = result.received["events"], result.lost["events"]
    missing = produced - received - lost
    numbers = result.events["n"]
    return (
        f"produced {produced}, received {received}, counted lost {lost}: {missing} records "
        f"neither received nor counted lost; the last record received is n={numbers.max()} "
        f"of 0..{produced - 1}"
    )


@pytest.mark.parametrize(
    "line, cell",
    [("--buffer-pages 1", BURST_PERF), ("", BURST_RING)],
    ids=["perf buffer of 1 page", "ring buffer of 1 page"],
)
def test_a_burst_into_a_small_buffer_counts_every_loss(ip, burst, line, cell):
    command = burst.format(calls=BURST_CALLS)
    result = run_cell(ip, f'{line} --comm ekburst --run "{command}"', cell)
    assert not isinstance(result, Exception), result
    assert result.stopped_by == "workload exit" and result.exit_code == 0, result.output
    produced = int(result.maps["produced"]["value"].sum())
    assert produced >= BURST_CALLS  # every call of the burst was seen
    events = result.events
    assert len(events) == result.received["events"]
    assert events["n"].is_unique and (events["comm"] == "ekburst").all()
    assert result.lost["events"] > 0, "the burst fit: the test proves nothing about losses"
    assert result.received["events"] + result.lost["events"] == produced, _losses_explained(
        result, produced
    )


# --- the cell after a failure ----------------------------------------------------------------

NEXT_CALLS = 1000


def _failures(pid: int) -> dict:
    interrupt = f"--run 'sleep 0.3; kill -INT {pid}; sleep 3'"
    return {
        "compile error": ("-d 0.1", MISSING_SEMICOLON, CompileError),
        "verifier error": ("-d 0.1", DIRECT_READ, VerifierError),
        "attach error": (
            f"-p {_gone_pid()} -t syscalls:sys_enter_getppid=ekc_a -u c:malloc=ekc_b -d 0.1",
            TWO_FUNCTIONS,
            AttachError,
        ),
        "interrupt, perf buffer": (interrupt, EXEC_EVENTS, "interrupt"),
        "interrupt, ring buffer": (interrupt, EXEC_EVENTS_RING, "interrupt"),
    }


@pytest.mark.parametrize(
    "failure",
    [
        "compile error",
        "verifier error",
        "attach error",
        "interrupt, perf buffer",
        "interrupt, ring buffer",
    ],
)
def test_the_cell_after_a_failure_works(ip, burst, failure):
    line, cell, expected = _failures(os.getpid())[failure]
    outcome = run_cell(ip, line, cell)
    if expected == "interrupt":
        assert not isinstance(outcome, Exception), outcome
        assert outcome.stopped_by == "interrupt"
    else:
        assert isinstance(outcome, expected), outcome

    command = burst.format(calls=NEXT_CALLS)
    result = run_cell(ip, f'--comm ekburst --run "{command}"', BURST_PERF)
    assert not isinstance(result, Exception), result
    assert result.stopped_by == "workload exit" and result.exit_code == 0, result.output
    assert int(result.maps["produced"]["value"].sum()) == NEXT_CALLS
    assert result.lost == {"events": 0}
    assert sorted(result.events["n"]) == list(range(NEXT_CALLS))
    assert (result.events["comm"] == "ekburst").all()


# --- Ctrl-C while events pour in -------------------------------------------------------------

FLOOD = """\
struct tick { u64 n; };
BPF_PERF_OUTPUT(events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct tick t = {1};
    events.perf_submit(args, &t, sizeof(t));
    return 0;
}
"""
FLOOD_RING = FLOOD.replace("BPF_PERF_OUTPUT(events);", "BPF_RINGBUF_OUTPUT(events, 64);").replace(
    "events.perf_submit(args, &t, sizeof(t));", "events.ringbuf_output(&t, sizeof(t), 0);"
)


@pytest.mark.parametrize("cell", [FLOOD, FLOOD_RING], ids=["perf buffer", "ring buffer"])
def test_interrupt_while_events_pour_in(ip, burst, cell):
    # The burst runs 2 s at most, so a lost Ctrl-C cannot hang the test; the shell
    # waits for it, so only the interrupt can end the cell early.
    link = burst.split(" ", 1)[0]
    flood = (
        f"{link} -c 'import os, time\nend = time.time() + 2\nwhile time.time() < end:\n"
        "    for _ in range(10000): os.getppid()'"
    )
    started = time.monotonic()
    result = run_cell(
        ip, f'--comm ekburst --run "{flood} & sleep 0.3; kill -INT {os.getpid()}; wait"', cell
    )
    assert not isinstance(result, Exception), result
    assert result.received["events"] > 0
    assert result.stopped_by == "interrupt", (
        f"Ctrl-C was lost: the cell ran {time.monotonic() - started:.1f} s and stopped by "
        f"{result.stopped_by!r}"
    )
    assert result.duration < 1.9  # the burst alone lasts 2 s
