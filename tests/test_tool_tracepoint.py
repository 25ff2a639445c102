"""``ebpfkit tracepoint CATEGORY:EVENT``: the real command, the real kernel, real workloads.

Ground truth comes from elsewhere: the fields from the tracepoint's own
``format`` file, read here with a regex of our own; the count of ``read``
calls from ``strace``, which records every call of the same ``dd`` run that
the command counts; context switches from what every process does at least
once (it leaves the CPU when it exits).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_root

from ebpfkit import probes

EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))


def ebpfkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EBPFKIT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def table(stdout: str) -> dict[tuple[int, str], int]:
    """The PID / COMM / HITS rows of the command's output."""
    rows = re.findall(r"^\s+(\d+)\s{2}(\S.*?)\s+(\d+)$", stdout, re.M)
    return {(int(pid), comm): int(n) for pid, comm, n in rows}


def total_line(stdout: str, name: str) -> tuple[int, float, str]:
    m = re.search(
        rf"^tracepoint {re.escape(name)}: (\d+) hits in (\d+\.\d+) s \(stopped by ([\w ]+)\)$",
        stdout,
        re.M,
    )
    assert m, stdout
    return int(m[1]), float(m[2]), m[3]


def test_fields_are_those_of_the_format_file():
    done = ebpfkit("tracepoint", "sched:sched_switch", "--fields")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(
        "tracepoint sched:sched_switch: fields of events/sched/sched_switch/format\n"
    )
    fmt = (probes.tracefs() / "events/sched/sched_switch/format").read_text()
    truth = re.findall(r"field:.*?(\w+)(?:\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);", fmt)
    assert len(truth) >= 8
    lines = out.splitlines()[2:]
    assert len(lines) == len(truth)
    for line, (name, offset, size) in zip(lines, truth):
        cols = line.split()
        assert cols[0] == name
        assert name not in ("prev_comm", "next_comm") or cols[1] == "char[16]"
        # FIELD TYPE... OFFSET SIZE SIGNED [(common header)]
        nums = [c for c in cols[1:] if c.isdigit()]
        assert nums[-2:] == [offset, size], line
        assert line.endswith("(common header)") == name.startswith("common_")
    assert {"prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid"} <= {
        line.split()[0] for line in lines
    }


@needs_root
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace gives the true count")
def test_counts_every_read_of_dd_as_strace_sees_them(tmp_path):
    log = tmp_path / "reads.strace"
    cmd = f"strace -qq -e trace=read -o {log} dd if=/dev/zero of=/dev/null bs=1 count=300"
    done = ebpfkit("tracepoint", "syscalls:sys_enter_read", "--comm", "dd", "--run", cmd)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    total, _, stopped_by = total_line(out, "syscalls:sys_enter_read")
    assert stopped_by == "workload exit"
    assert re.search(r"^\s+PID\s+COMM\s+HITS$", out, re.M), out
    rows = table(out)
    # --comm dd: nothing but dd, one process
    assert [comm for _, comm in rows] == ["dd"], out
    strace_reads = sum(1 for line in log.read_text().splitlines() if line.startswith("read("))
    assert strace_reads >= 300  # one per byte copied, and the loader's own
    assert total == sum(rows.values()) == strace_reads, (out, log.read_text()[-500:])
    assert "300+0 records in" in out  # the workload's output follows the table


@needs_root
def test_every_process_leaves_the_cpu_at_least_once():
    done = ebpfkit(
        "tracepoint", "sched:sched_switch", "--comm", "sleep", "--run", "sleep 0.1; sleep 0.1"
    )
    assert done.returncode == 0, done.stderr
    total, seconds, stopped_by = total_line(done.stdout, "sched:sched_switch")
    assert stopped_by == "workload exit" and 0.2 <= seconds < 5
    rows = table(done.stdout)
    # two sleep processes; each slept (one switch) and exited (another)
    assert len(rows) == 2 and {comm for _, comm in rows} == {"sleep"}, done.stdout
    assert all(n >= 2 for n in rows.values()), done.stdout
    assert total == sum(rows.values())


@needs_root
def test_duration_without_a_workload_and_top_rows():
    done = ebpfkit("tracepoint", "sched:sched_switch", "-d", "0.5", "--top", "3")
    assert done.returncode == 0, done.stderr
    total, seconds, stopped_by = total_line(done.stdout, "sched:sched_switch")
    assert stopped_by == "duration" and 0.45 <= seconds < 2
    rows = table(done.stdout)
    assert 1 <= len(rows) <= 3
    m = re.search(r"^\s+\((\d+) more\)\s+(\d+)$", done.stdout, re.M)
    if m:  # the rest of the machine's switches, summed on one line
        assert sum(rows.values()) + int(m[2]) == total
    else:
        assert sum(rows.values()) == total


def test_a_misspelt_tracepoint_is_one_clear_line():
    done = ebpfkit("tracepoint", "sched:sched_swich", "-d", "1")
    assert done.returncode == 2
    assert "No tracepoint sched:sched_swich on this kernel; did you mean: sched:sched_switch?" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    done = ebpfkit("tracepoint", "sched_switch", "--fields")
    assert done.returncode == 2
    assert "category:event" in done.stderr and "sched:sched_switch" in done.stderr
