"""A process killed in the middle of a trace (SIGKILL: no cleanup code runs) leaves
nothing behind: no program, no perf event, no uprobe.

The kernel frees what a process held through its descriptors when it dies; what
could outlive it is what is named in tracefs (a uprobe made through ``uprobe_events``).
A child process attaches a uprobe, a tracepoint and a perf event, says which
programs it holds, and is killed while it traces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from helpers import needs_root

from ebpfkit import probes

pytestmark = needs_root

CHILD = textwrap.dedent(
    r'''
    import os, sys
    from ebpfkit.session import Session

    SOURCE = """
    BPF_HASH(seen, u32, u64);
    int on_tp(void *ctx) { u32 k = 1; seen.increment(k); return 0; }
    int on_up(struct pt_regs *ctx) { u32 k = 2; seen.increment(k); return 0; }
    int on_perf(struct bpf_perf_event_data *ctx) { u32 k = 3; seen.increment(k); return 0; }
    """
    said = []

    def progress(session, elapsed):
        if not said:
            said.append(1)
            print("attached", flush=True)

    s = Session(
        SOURCE,
        tracepoint="syscalls:sys_enter_getppid=on_tp",
        uprobe="c:getpid=on_up",
        perf="cpu-clock:99=on_perf",
    )
    with s:
        s.run(duration=60, progress=progress)
    '''
)


def held_programs(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds through its descriptors."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def perf_entries(pid: int) -> list:
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return [e for e in json.loads(out or "[]") if e.get("pid") == pid]


def prog_list() -> set[int]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"] for p in json.loads(out or "[]")}


def uprobe_events() -> str:
    return (probes.tracefs() / "uprobe_events").read_text()


def test_sigkill_mid_trace_leaves_nothing_behind():
    before = uprobe_events()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "attached", child.stderr.read() if child.poll() else line
        entries = perf_entries(child.pid)
        kinds = {e.get("fd_type") for e in entries}
        # The three attachments, seen from the kernel while the child traces.
        assert "tracepoint" in kinds and "uprobe" in kinds, entries
        programs = held_programs(child.pid) | {e["prog_id"] for e in entries}
        assert len(programs) >= 3, programs
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while programs & prog_list() and time.monotonic() < deadline:
        time.sleep(0.1)  # the kernel frees programs once their last reference goes
    assert not programs & prog_list()
    assert perf_entries(child.pid) == []
    assert uprobe_events() == before
