"""``ebpfkit kprobe FUNC``: the real command, the real kernel, a workload of its own.

Each test runs the installed ``ebpfkit`` as a user would, starts its own ``cat``
through ``--run`` and checks the lines against what that ``cat`` really did
(its PID from its own output, its calls counted by strace). On a kernel without
kprobes the command must say so and trace the matching tracepoint instead; on a
kernel with kprobes it must attach the kprobe itself: the tests marked ``kprobes``
run there too (scripts/vm-lane.sh), with the same assertions.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import KPROBES, needs_root

# Each test that loads programs says so: the others run without root too.

EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))
LINE = re.compile(r"^kprobe triggered by PID (\d+) \((.*)\)$")
BUSY = "which another program is reading right now"  # trace_pipe has one reader at a time


def ebpfkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``ebpfkit ARGS``; retry while another process holds trace_pipe.

    The timeout is generous for the virtual machine of the kprobe lane, where BCC's
    compile alone takes tens of seconds.
    """
    for _ in range(20):
        done = subprocess.run(
            [EBPFKIT, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if BUSY not in done.stderr:
            return done
        time.sleep(0.5)
    pytest.fail(f"trace_pipe stayed busy: {done.stderr}")


def calls(stdout: str) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in map(LINE.match, stdout.splitlines()) if m]


@needs_root
@pytest.mark.kprobes
def test_one_line_per_call_with_the_pid_and_name_of_the_caller():
    done = ebpfkit(
        "kprobe", "do_sys_openat2", "--comm", "cat", "--run", "echo pid=$$; exec cat /etc/hostname"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    pid = int(re.search(r"^pid=(\d+)$", out, re.M)[1])
    seen = calls(out)
    # cat opens at least its libraries and /etc/hostname; every line is that cat's
    assert len(seen) >= 2, out
    assert set(seen) == {(pid, "cat")}, out
    # the file's content reached the output: the workload really ran
    assert Path("/etc/hostname").read_text().strip() in out
    # the summary table counts the same lines
    assert re.search(rf"^\s+{pid}\s+cat\s+{len(seen)}$", out, re.M), out
    assert f"{len(seen)} calls in " in out and "(stopped by workload exit)" in out
    if KPROBES:
        assert "note:" not in out
        assert "Tracing do_sys_openat2 (kprobe do_sys_openat2" in out
    else:
        # said plainly, before the first line, and the tracepoint named
        first_call = out.index("kprobe triggered")
        note = out.index("note: this kernel has no kprobes")
        assert note < first_call
        assert "CONFIG_KPROBES" in out[note:first_call]
        assert "Tracing do_sys_openat2 (tracepoint syscalls:sys_enter_openat" in out


@needs_root
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_count_agrees_with_strace(tmp_path):
    log = tmp_path / "strace.log"
    workload = (
        f"strace -f -qq -e trace=open,openat,openat2,creat -o {shlex.quote(str(log))} "
        "cat /etc/hostname"
    )
    done = ebpfkit("kprobe", "do_sys_openat2", "--comm", "cat", "--run", workload)
    assert done.returncode == 0, done.stderr
    lines = [line for line in log.read_text().splitlines() if "open" in line]
    # "PID openat(...) = 3": the PIDs strace saw, one entry per call
    strace_calls = [int(line.split()[0]) for line in lines]
    assert strace_calls, log.read_text()
    seen = calls(done.stdout)
    assert sorted(pid for pid, _ in seen) == sorted(strace_calls), (done.stdout, lines)


@needs_root
def test_duration_ends_the_trace():
    done = ebpfkit(
        "kprobe", "do_sys_openat2", "-d", "2", "--comm", "cat", "--run",
        "while :; do cat /etc/hostname >/dev/null; sleep 0.1; done",
    )  # fmt: skip
    # the workload never ends by itself: the command returning at all shows it was stopped
    assert done.returncode == 0, done.stderr
    assert "(stopped by duration)" in done.stdout
    m = re.search(r"^(\d+) calls in (\d+\.\d+) s", done.stdout, re.M)
    assert 1.9 <= float(m[2]) < 3.0, done.stdout
    # several cats ran in those seconds, each seen under its own PID
    assert len({pid for pid, _ in calls(done.stdout)}) >= 2, done.stdout


@pytest.mark.kprobes
def test_a_function_that_does_not_exist_is_one_clear_line():
    done = ebpfkit("kprobe", "do_sys_opnat2", "-d", "1")
    assert done.returncode == 2
    assert done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("ebpfkit kprobe: ")
    if KPROBES:
        assert "did you mean: do_sys_openat2" in message
    else:
        # no tracepoint stands in for a function nobody knows: the kernel's reason
        assert "this kernel has no kprobes" in message and "CONFIG_KPROBES" in message


def test_a_misspelt_function_is_caught_even_behind_a_fallback():
    done = ebpfkit("kprobe", "do_sys_opnat2", "-d", "1", "--fallback", "syscalls:sys_enter_openat")
    assert done.returncode == 2
    assert "did you mean: do_sys_openat2" in done.stderr
    assert "kprobe triggered" not in done.stdout


@pytest.mark.skipif(KPROBES, reason="this kernel has kprobes: vfs_fsync attaches")
def test_without_kprobes_a_function_with_no_tracepoint_says_why():
    done = ebpfkit("kprobe", "vfs_fsync", "-d", "1")
    assert done.returncode == 2
    assert "Cannot attach kprobe vfs_fsync: this kernel has no kprobes" in done.stderr
    assert "CONFIG_KPROBES" in done.stderr
