"""``ebpfkit trace``: the real command, the real kernel, workloads whose calls are known.

The workload makes exactly N write() calls of sizes 1..N to /dev/null and M getppid()
calls, under its own name (``prctl(PR_SET_NAME)``), so every count can be checked
against what it did by construction, and against bcc's ``syscount-bpfcc`` on the same
workload.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import needs_root

from ebpfkit.tools import trace as tracer

EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))
PY = "/usr/bin/python3"  # a plain interpreter for the workload: quick to start
NAME = "trace-wl"
# "[pid  1234] write(3, 0x7f..., 5) = 5 <0.000004>", or for a call begun before the trace
# "[pid  1234] <... read resumed>) = 3"
LINE = re.compile(
    r"^\[pid\s+(\d+)\] (?:<\.\.\. (\w+) resumed>\)|(\w+)\((.*)\)) = (.+?)(?: <(\d+\.\d{6})>)?$"
)

WORKLOAD = f'''
"""N write() calls of sizes 1..N to /dev/null, then M getppid(), as {NAME!r}."""
import ctypes
import os
import sys

n, m = int(sys.argv[1]), int(sys.argv[2])
ctypes.CDLL(None).prctl(15, {NAME.encode()!r}, 0, 0, 0)
fd = os.open("/dev/null", os.O_WRONLY)
if "--wait" in sys.argv:
    os.write(1, f"ready {{os.getpid()}}\\n".encode())
    os.read(0, 3)
if "--loop" in sys.argv:  # getppid every 10 ms until stdin closes
    import select
    while not select.select([0], [], [], 0.01)[0]:
        os.getppid()
for i in range(n):
    os.write(fd, b"x" * (i + 1))
for _ in range(m):
    os.getppid()
'''


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("trace") / "workload.py"
    path.write_text(textwrap.dedent(WORKLOAD))
    return str(path)


def ebpfkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EBPFKIT, "trace", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def lines(stdout: str) -> list[tuple[int, str, list[str], str, str | None]]:
    out = []
    for line in stdout.splitlines():
        m = LINE.match(line)
        assert m, f"not an strace-like line: {line!r}"
        if m[2]:  # resumed: no arguments, no duration
            out.append((int(m[1]), m[2], [], m[5], None))
        else:
            out.append((int(m[1]), m[3], m[4].split(", "), m[5], m[6]))
    return out


def wait_until_asleep(pid: int, timeout: float = 30) -> None:
    """Until process ``pid`` sleeps in a system call (from /proc/PID/syscall).

    syscount prints its table on Ctrl-C only once it waits in its main loop; a
    Ctrl-C that comes while it still prints "Tracing ..." kills it with no table.
    """
    sleeps = {str(tracer.syscall_number(n)) for n in ("clock_nanosleep", "nanosleep", "select")}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] in sleeps:
                return
        time.sleep(0.01)
    pytest.fail(f"process {pid} never went to sleep")


def summary_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """{syscall: (calls, errors)} from the strace -c table."""
    rows = {}
    for parts in map(str.split, stdout.splitlines()):
        if len(parts) in (5, 6) and parts[3].isdigit():
            rows[parts[-1]] = (int(parts[3]), int(parts[4]) if len(parts) == 6 else 0)
    return rows


# --------------------------------------------------------------------------- no kernel


def test_arguments_and_return_values_print_as_strace_does():
    assert tracer.format_arg(3) == "3"
    assert tracer.format_arg(0xFFFFFF9C) == "-100"  # AT_FDCWD passed as an int
    assert tracer.format_arg((1 << 64) - 100) == "-100"  # ... or as a long
    assert tracer.format_arg(0x7FFD12345678) == "0x7ffd12345678"
    assert tracer.format_ret(-2) == "-1 ENOENT (No such file or directory)"
    assert tracer.format_ret(5) == "5"
    assert tracer.syscall_name(1) == "write" and tracer.syscall_name(110) == "getppid"
    assert tracer.syscall_name(435) == "clone3"  # newer than bcc's own table
    assert tracer.syscall_number("getppid") == 110


def test_syscall_filter_is_a_constant_in_front_of_the_program():
    text = tracer.program(syscalls=["getppid", "write"], failed=True)
    assert text.startswith("/* only write, getppid */\n")
    assert "#define SYSCALL_WANTED(id) ((id) == 1 || (id) == 110)\n" in text
    assert "#define FAILED_ONLY\n" in text
    assert text.endswith(tracer.bpf_source("syscall_trace.c"))


# --------------------------------------------------------------------------- real kernel


@needs_root
def test_one_line_per_call_with_arguments_return_value_and_duration(workload):
    n, m = 40, 25
    done = ebpfkit(
        "--comm", NAME, "--syscall", "write", "getppid", "--run", f"{PY} {workload} {n} {m}"
    )
    assert done.returncode == 0, done.stderr
    seen = lines(done.stdout)
    assert len({pid for pid, *_ in seen}) == 1, done.stdout  # one process: the workload
    writes = [s for s in seen if s[1] == "write"]
    getppids = [s for s in seen if s[1] == "getppid"]
    assert len(writes) == n and len(getppids) == m and len(seen) == n + m, done.stdout
    # write(fd, buf, size) = size, sizes 1..n in order, to one fd, each with a duration
    assert [int(args[2]) for _, _, args, _, _ in writes] == list(range(1, n + 1))
    assert all(ret == args[2] for _, _, args, ret, _ in writes)
    assert len({args[0] for _, _, args, _, _ in writes}) == 1
    assert all(args[1].startswith("0x") for _, _, args, _, _ in writes)
    assert all(dur is not None and float(dur) < 1 for *_, dur in seen)
    # getppid() returns the workload's parent: the shell --run started, or this process
    assert len({ret for _, _, _, ret, _ in getppids}) == 1
    names = [name for _, name, _, _, _ in seen]
    assert names == ["write"] * n + ["getppid"] * m  # in the order they were made
    assert f"{n + m} system calls in " in done.stderr and ", lost 0" in done.stderr
    assert "workload exit code 0" in done.stderr


@needs_root
def test_summary_counts_calls_and_errors_like_strace_c(workload):
    n, m = 100, 60
    done = ebpfkit("--comm", NAME, "--summary", "--run", f"{PY} {workload} {n} {m}")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.splitlines()[0].split() == [
        "%",
        "time",
        "seconds",
        "usecs/call",
        "calls",
        "errors",
        "syscall",
    ]
    rows = summary_rows(out)
    assert rows["write"] == (n, 0) and rows["getppid"] == (m, 0), out
    assert rows["exit_group"] == (1, 0), out  # never returns, still counted (as strace -c does)
    total = re.search(r"^100\.00\s+[\d.]+\s+(\d+)\s+(\d*)\s*total$", out, re.M)
    assert total and int(total[1]) == sum(c for c, _ in rows.values()), out
    assert not LINE.search(out)  # --summary sends no events: no per-call lines


@needs_root
def test_run_without_a_filter_follows_the_command_and_its_children():
    # the shell, a child shell, and a grandchild shell each write one line (and say who they are)
    script = (
        """echo "top $$"; sh -c 'echo "child $$"; sh -c "echo grandchild \\$\\$"; true'; echo end"""
    )
    done = ebpfkit("--syscall", "write", "--run", script)
    assert done.returncode == 0, done.stderr
    output = done.stderr.split("--- output of", 1)[1]
    pids = {
        who: int(re.search(rf"^{who} (\d+)$", output, re.M)[1])
        for who in ("top", "child", "grandchild")
    }
    assert len(set(pids.values())) == 3, output
    seen = lines(done.stdout)
    writes = [(pid, args[0]) for pid, name, args, _, _ in seen if name == "write"]
    # four writes to stdout (fd 1): top twice, child, grandchild; nobody else's
    assert sorted(writes) == sorted(
        [(pids["top"], "1"), (pids["child"], "1"), (pids["grandchild"], "1"), (pids["top"], "1")]
    ), done.stdout


@needs_root
def test_failed_only_shows_calls_that_returned_an_error():
    done = ebpfkit("--failed", "--comm", "ls", "--run", "ls /no/such/dir")
    assert done.returncode == 0, done.stderr
    seen = lines(done.stdout)
    assert seen and all(ret.startswith("-1 E") for *_, ret, _ in seen), done.stdout
    assert any(
        name in ("statx", "newfstatat", "lstat", "stat") and "ENOENT" in ret
        for _, name, _, ret, _ in seen
    ), done.stdout
    assert "workload exit code 2" in done.stderr and "cannot access" in done.stderr


@needs_root
def test_pid_filter_keeps_one_process(workload):
    proc = subprocess.Popen(
        [PY, workload, "0", "0", "--wait", "--loop"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().decode() == f"ready {proc.pid}\n"
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        done = ebpfkit("--pid", str(proc.pid), "--syscall", "getppid", "-d", "1.5")
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    seen = lines(done.stdout)
    assert len(seen) >= 10, done.stdout  # every 10 ms for about a second
    # every line is that process, calling getppid, which returns this test's PID
    assert {(pid, name, ret) for pid, name, _, ret, _ in seen} == {
        (proc.pid, "getppid", str(os.getpid()))
    }, done.stdout


@needs_root
def test_unknown_syscall_or_process_is_a_clear_error():
    done = ebpfkit("--syscall", "wrte", "-d", "1")
    assert done.returncode == 2
    assert "--syscall 'wrte': no system call of that name; did you mean: write" in done.stderr
    assert "Traceback" not in done.stderr
    done = ebpfkit("--pid", "999999999", "-d", "1")
    assert done.returncode == 2 and "--pid 999999999: no such process" in done.stderr
    assert "Traceback" not in done.stderr


@needs_root
@pytest.mark.skipif(
    shutil.which("syscount-bpfcc") is None, reason="bcc's syscount is not installed"
)
def test_counts_agree_with_syscount_and_the_workload(workload):
    n, m = 120, 80
    # syscount on a waiting workload, released once syscount says its probes are attached
    proc = subprocess.Popen(
        [PY, workload, str(n), str(m), "--wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().decode() == f"ready {proc.pid}\n"
    syscount = subprocess.Popen(
        ["syscount-bpfcc", "-p", str(proc.pid), "-T", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in syscount.stdout:
            if line.startswith("Tracing"):
                break
        assert line.startswith("Tracing"), "syscount-bpfcc did not start"
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        proc.wait(timeout=30)
        wait_until_asleep(syscount.pid)
    finally:
        syscount.send_signal(signal.SIGINT)
        out = syscount.communicate(timeout=60)[0]
    theirs = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}
    assert theirs.get("write") == n and theirs.get("getppid") == m, out
    # ours, on the same workload
    done = ebpfkit("--comm", NAME, "--summary", "--run", f"{PY} {workload} {n} {m}")
    ours = summary_rows(done.stdout)
    assert ours["write"][0] == theirs["write"] and ours["getppid"][0] == theirs["getppid"]
