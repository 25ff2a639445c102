"""One run description (``session.Run``) for the magic, ``trace()`` and ``start()``, and the
small pieces the entry points share: printing warnings and notes, syscall names.

No kernel needed: nothing here compiles or attaches.
"""

from __future__ import annotations

import io
import sys

import pytest

from ebpfkit import probes
from ebpfkit.errors import BadArguments
from ebpfkit.session import Run, printer
from ebpfkit.tools import stats, trace

SOURCE = "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }"


@pytest.mark.parametrize("duration", [0, -1, 3601])
def test_a_run_checks_its_duration_when_it_is_made(duration):
    with pytest.raises(BadArguments, match=f"--duration {duration:g}: give a number of seconds"):
        Run(SOURCE, duration=duration)


def test_a_runs_cell_keeps_the_options_as_given():
    job = Run(
        SOURCE,
        {"tracepoint": "syscalls:sys_enter_getppid", "comm": "cat", "cflags": ("-DX",)},
        duration=2.0,
        workload="cat /etc/hostname",
    )
    job.options["on_warning"] = print  # a callable is no data: not kept
    assert job.cell == {
        "source": SOURCE,
        "options": {
            "duration": 2.0,
            "run": "cat /etc/hostname",
            "tracepoint": "syscalls:sys_enter_getppid",
            "comm": "cat",
            "cflags": "('-DX',)",
        },
    }
    # the magic keeps its line as the user typed it
    line = "-t syscalls:sys_enter_getppid -d 2"
    assert Run(SOURCE, shown=line).cell == {"source": SOURCE, "options": line}


def test_a_runs_session_has_its_options():
    session = Run(SOURCE, {"comm": "cat", "tracepoint": "syscalls:sys_enter_getppid=f"}).session()
    assert session.comm == "cat"
    assert [str(s) for s in session.specs] == ["tracepoint syscalls:sys_enter_getppid -> f()"]


def test_printer_writes_where_it_is_told_at_the_time_it_is_called(monkeypatch):
    warn, note = printer("warning", "stderr"), printer("note")
    # IPython swaps sys.stdout for each cell, after the printer was made
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    warn("w")
    note("n")
    assert err.getvalue() == "warning: w\n" and out.getvalue() == "note: n\n"


def test_syscall_names_have_one_home():
    assert stats.syscall_name is probes.syscall_name is trace.syscall_name
    assert trace.syscall_number is probes.syscall_number
    assert probes.syscall_name(1) == "write" and probes.syscall_name(110) == "getppid"
    assert probes.syscall_name(435) == "clone3"  # newer than bcc's own table
    assert probes.syscall_name(9999) == "syscall_9999"
    assert probes.syscall_number("getppid") == 110 and probes.syscall_number("7") == 7
    with pytest.raises(BadArguments, match="did you mean: getppid"):
        probes.syscall_number("getppid_")
