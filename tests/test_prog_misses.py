"""Runs the kernel skipped are reported, not silent.

A tracepoint program is skipped when another BPF program is already running on that CPU
(trace_call_bpf's bpf_prog_active check), and the kernel counts the skip in the program's
``recursion_misses``. Here a timer-interrupt probe (timer:hrtimer_expire_entry) fires while
a getppid() probe runs under a tight loop of calls: some of its runs are skipped, and the
trace must say how many, per program, in ``result.missed``, a warning and the totals.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import needs_root

import ebpfkit
from ebpfkit import bpfsys

CALLS = 5_000_000  # about a second of getppid(): a few hundred timer interrupts

TWO = r"""
BPF_ARRAY(runs, u64, 2);
int on_getppid(void *ctx) { int k = 0; runs.atomic_increment(k); return 0; }
int on_timer(void *ctx) { int k = 1; runs.atomic_increment(k); return 0; }
"""
PROBES = ["syscalls:sys_enter_getppid=on_getppid", "timer:hrtimer_expire_entry=on_timer"]


def _trace(getppid_loop, probes):
    return ebpfkit.trace(TWO, tracepoint=probes, run=f"{getppid_loop} misses {CALLS}")


@needs_root
def test_skipped_runs_are_counted_and_shown(getppid_loop, tmp_path):
    result = _trace(getppid_loop, PROBES)
    skipped = result.missed["on_timer"]
    assert skipped > 0, result.missed  # the timer interrupted on_getppid: it did happen
    # on_getppid runs in task context with preemption off: nothing can be running under it.
    assert result.missed["on_getppid"] == 0
    assert result.maps["runs"]["value"][0] >= CALLS
    said = f"the kernel skipped {skipped:,} runs of on_timer (recursion protection"
    assert any(said in w for w in result.warnings), result.warnings
    assert f"on_timer: SKIPPED {skipped:,} runs" in repr(result)
    assert "program runs were skipped" in result._repr_html_()
    assert result.total_lost == skipped  # what the live panel's final "lost" shows
    # A recording keeps the numbers.
    assert ebpfkit.replay(result.save(tmp_path / "misses.ebpfkit")).missed == result.missed


@needs_root
def test_no_skips_no_warning(getppid_loop):
    """The same trace without the timer probe: every program read, nothing skipped."""
    result = _trace(getppid_loop, PROBES[:1])
    assert result.missed == {"on_getppid": 0}
    assert not any("skipped" in w for w in result.warnings)
    assert result.total_lost == 0


def _bpftool_misses(prog_id: int) -> int:
    out = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out).get("recursion_misses", 0)  # bpftool leaves out a zero


@needs_root
def test_the_count_is_the_kernels(getppid_loop):
    """bpfsys reads the same number as bpftool, for a program the kernel did skip."""
    bcc = pytest.importorskip("bcc")
    b = bcc.BPF(text=TWO, cflags=["-w"])
    try:
        b.attach_tracepoint(tp="syscalls:sys_enter_getppid", fn_name=b"on_getppid")
        b.attach_tracepoint(tp="timer:hrtimer_expire_entry", fn_name=b"on_timer")
        subprocess.run([getppid_loop, "misses", str(CALLS)], check=True, capture_output=True)
        b.detach_tracepoint(tp="timer:hrtimer_expire_entry")  # the count stops moving
        b.detach_tracepoint(tp="syscalls:sys_enter_getppid")
        fd = b.funcs[b"on_timer"].fd
        ours = bpfsys.recursion_misses(fd)
        fdinfo = Path(f"/proc/self/fdinfo/{fd}").read_text()
        prog_id = int(fdinfo.split("prog_id:")[1].split()[0])
        assert ours > 0
        assert ours == _bpftool_misses(prog_id)
    finally:
        b.cleanup()


def test_a_skipped_exit_tracker_loses_nothing():
    """The scope's exit tracker skipped only leaves freed PIDs in scope: shown, not lost."""
    from ebpfkit.result import TraceResult

    result = TraceResult(missed={"__ebpfkit_free": 3, "on_call": 2, "on_exit": 0})
    assert result.total_missed == result.total_lost == 2
    lines = result.summary_lines()
    assert "__ebpfkit_free: skipped 3 runs (recursion protection)" in lines
    assert "on_call: SKIPPED 2 runs (recursion protection)" in lines
    assert not any(line.startswith("on_exit") for line in lines)
