"""Shared fixtures: a real IPython shell with ebpfkit loaded, and kernel facts."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ebpfkit import probes

KPROBES, KPROBES_WHY = probes.kprobes_available()
if os.environ.get("EBPFKIT_REQUIRE_KPROBES") and not KPROBES:
    # The kprobe lane (scripts/vm-guest.sh): a skip there would hide the very thing it tests.
    raise RuntimeError(f"EBPFKIT_REQUIRE_KPROBES is set but {KPROBES_WHY}")
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


@pytest.fixture(scope="session")
def ip():
    """An InteractiveShell with ``%load_ext ebpfkit`` done."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "ebpfkit")
    return shell


def bpf(ip, line: str, cell: str):
    """Run a %%bpf cell and return its result (errors propagate as exceptions)."""
    return ip.run_cell_magic("bpf", line, cell)


def prog_ids() -> set[int]:
    """IDs of every BPF program loaded in the kernel."""
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    import json

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
