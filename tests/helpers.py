"""What the tests share besides fixtures: kernel facts, skip marks, a cell, kernel probes.

Imported as ``from helpers import ...`` (pytest puts this folder on ``sys.path``);
fixtures stay in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ebpfkit import probes

KPROBES, KPROBES_WHY = probes.kprobes_available()
# A whole %%bpf cell, for tests that run cells in a kernel: getppid x25 through a ring buffer,
# its events bound to `seen`.
GETPPID_CELL = """\
%%bpf --run "python3 -c 'import os; [os.getppid() for _ in range(25)]'" -o seen
struct event { u32 pid; char comm[16]; };
BPF_RINGBUF_OUTPUT(events, 8);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct event e = {};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}"""
needs_kprobes = pytest.mark.skipif(not KPROBES, reason=f"kernel has no kprobes: {KPROBES_WHY}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root")


def bpf(ip, line: str, cell: str):
    """Run a %%bpf cell and return its result (errors propagate as exceptions)."""
    return ip.run_cell_magic("bpf", line, cell)


def prog_ids() -> set[int]:
    """IDs of every BPF program loaded in the kernel."""
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"] for p in json.loads(out or "[]")}


@contextlib.contextmanager
def nobody_readable_dir(prefix: str):
    """A temporary folder that the user nobody can read too (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# A C workload that makes an exact number of getppid() calls under a name of its choosing.
GETPPID_LOOP_C = Path(__file__).parent / "workloads" / "getppid_loop.c"


def build_getppid_loop(folder: Path) -> str:
    """tests/workloads/getppid_loop.c built in ``folder``; run it as ``PATH NAME CALLS``."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the getppid() workload (apt-get install gcc)")
    binary = folder / "getppid_loop"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(GETPPID_LOOP_C)], check=True)
    return str(binary)


def forking_getppid_workload(loop: str, name: str) -> tuple[str, int]:
    """A shell command whose children and grandchildren (some in the background, some
    started late) call getppid() under the name ``name``; and the total calls they make.
    ``loop`` is build_getppid_loop's binary."""
    cmd = (
        f"{loop} {name} 100; "
        f"( {loop} {name} 200; ( {loop} {name} 300 ) ); "
        f"sh -c '{loop} {name} 400 & {loop} {name} 500 & wait'; "
        f"sleep 0.2; {loop} {name} 600"
    )
    return cmd, 100 + 200 + 300 + 400 + 500 + 600


@contextlib.contextmanager
def getppid_decoy(loop: str, name: str):
    """A process beside the workload making the same calls under the same name, round
    after round (1,000 calls each) until the block ends; its whole session is killed."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f"while :; do {loop} {name} 1000; done"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], check=False)
        proc.wait()
