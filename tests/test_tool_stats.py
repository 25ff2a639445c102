"""``ebpfkit stats`` against the real kernel: the course's SYSCALL COUNT table.

The workload makes a known number of system calls (N getppid, M openat), so the
counts are checked against the truth, and against bcc's own ``syscount-bpfcc``
counting the same process at the same time.
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
import uuid
from pathlib import Path

import pytest
from helpers import needs_root

EBPFKIT = [sys.executable, "-m", "ebpfkit"]
ROOT = Path(__file__).resolve().parent.parent
SYSCOUNT = shutil.which("syscount-bpfcc") or shutil.which("syscount")

# Renames itself (so --comm selects it and nothing else), says it is ready, waits for
# a line on stdin (none when stdin is /dev/null), then makes exactly N getppid() and M
# openat() calls.
WORKLOAD = textwrap.dedent(
    """
    import os, sys
    comm, n, m, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open("/proc/self/comm", "w") as f:
        f.write(comm)
    print(f"pid {os.getpid()} ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        os.getppid()
    for _ in range(m):
        os.close(os.open(path, os.O_RDONLY))
    print(f"pid {os.getpid()} done", flush=True)
    """
)


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stats") / "workload.py"
    path.write_text(WORKLOAD)
    return path


def _comm() -> str:
    return "st-" + uuid.uuid4().hex[:10]  # unique: other tests may run at the same time


def _stats(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*EBPFKIT, "stats", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def parse_table(text: str) -> dict[str, list[int]]:
    """The SYSCALL ... COUNT table: name -> the numbers of its row (per-CPU, then COUNT)."""
    rows = {}
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("SYSCALL"))
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        m = re.fullmatch(r"(\S.*?)((?:\s+\d+)+)", line)
        assert m, f"not a table row: {line!r}"
        rows[m[1]] = [int(x) for x in m[2].split()]
    return rows


def _name(text: str) -> str:
    """syscount prints "[unknown: 435]" for numbers its table lacks; name them as we do."""
    from ebpfkit.tools.stats import syscall_name

    m = re.fullmatch(r"\[unknown: (\d+)\]", text)
    return syscall_name(int(m[1])) if m else text


def _wait_until_sleeping(pid: int, timeout: float = 60) -> None:
    """Until process ``pid`` is blocked in nanosleep or clock_nanosleep (x86-64: 35, 230)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        number = Path(f"/proc/{pid}/syscall").read_text().split()[0]
        if number in ("35", "230"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never went to sleep")


def test_help_names_the_tool():
    out = _stats("--help")
    assert out.returncode == 0
    assert "syscall" in out.stdout.lower()
    for option in ("--duration", "--run", "--comm", "--pid", "--top", "--per-cpu"):
        assert option in out.stdout


def test_bad_top_is_a_clear_error():
    out = _stats("--top", "0", "-d", "1")
    assert out.returncode == 2
    assert "--top 0" in out.stderr and "Traceback" not in out.stderr


@needs_root
def test_counts_a_workload_exactly(workload):
    comm, n, m = _comm(), 1234, 17
    out = _stats(
        "--comm", comm, "--run", f"{sys.executable} {workload} {comm} {n} {m} /etc/hostname"
    )
    assert out.returncode == 0, out.stderr
    assert "stopped by workload exit" in out.stdout
    table = parse_table(out.stdout)
    assert table["getppid"] == [n]
    assert table["openat"] == [m]
    # The table is sorted by count, largest first.
    counts = [row[-1] for row in table.values()]
    assert counts == sorted(counts, reverse=True)
    header = next(line for line in out.stdout.splitlines() if line.startswith("SYSCALL"))
    assert header.split() == ["SYSCALL", "COUNT"]


@needs_root
def test_top_limits_the_rows(workload):
    comm = _comm()
    out = _stats(
        "--comm", comm, "--top", "2", "--run", f"{sys.executable} {workload} {comm} 500 0 /"
    )
    assert out.returncode == 0, out.stderr
    table = parse_table(out.stdout)
    assert len(table) == 2 and table["getppid"] == [500]
    assert "top 2 shown" in out.stdout


@needs_root
def test_per_cpu_columns_add_up(workload):
    comm, n = _comm(), 3000
    out = _stats(
        "--comm", comm, "--per-cpu", "--run", f"{sys.executable} {workload} {comm} {n} 5 /"
    )
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if line.startswith("SYSCALL"))
    cpus = [c for c in header.split() if re.fullmatch(r"CPU\d+", c)]
    assert cpus and header.split()[-1] == "COUNT"
    table = parse_table(out.stdout)
    for name, row in table.items():
        assert len(row) == len(cpus) + 1, (name, row)
        assert sum(row[:-1]) == row[-1], (name, row)
    assert table["getppid"][-1] == n
    assert table["openat"][-1] == 5


@needs_root
def test_duration_without_a_command_counts_the_machine():
    start = time.monotonic()
    out = _stats("-d", "1", "--top", "5")
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 60
    assert "stopped by duration" in out.stdout
    table = parse_table(out.stdout)
    assert 1 <= len(table) <= 5
    assert all(row[-1] > 0 for row in table.values())


@needs_root
@pytest.mark.skipif(SYSCOUNT is None, reason="bcc's syscount-bpfcc is not installed (bpfcc-tools)")
def test_agrees_with_bcc_syscount(workload):
    """Both count one process at once; the workload runs only when both are attached.

    They attach at different moments of a syscall (ebpfkit at entry, syscount at exit), so
    exactly two counts differ by one: the read that was waiting for the go line (entered
    before either attached: only syscount sees it return) and exit_group (never returns:
    only ebpfkit sees it). Every other count is equal.
    """
    n, m = 4321, 37
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    target = subprocess.Popen(
        [sys.executable, str(workload), _comm(), str(n), str(m), "/etc/hostname"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    tools = []
    try:
        assert "ready" in target.stdout.readline()  # now blocked on stdin
        pid = str(target.pid)
        # Each prints its first line once it counts; both are ended by Ctrl-C (SIGINT) when
        # the workload is done, and both then print their table.
        for cmd in (
            [SYSCOUNT, "--pid", pid, "--top", "100"],
            [*EBPFKIT, "stats", "--pid", pid, "-d", "120", "--top", "100"],
        ):
            tools.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    cwd=ROOT,
                )
            )
            first = tools[-1].stdout.readline()
            assert re.match(r"(Counting|Tracing) syscalls", first), (cmd, first)
        out, _ = target.communicate("go\n", timeout=30)
        assert "done" in out
        # syscount turns Ctrl-C into "print the table" only while it sleeps in its main loop.
        _wait_until_sleeping(tools[0].pid)
        for t in tools:
            t.send_signal(signal.SIGINT)
        results = [t.communicate(timeout=120) for t in tools]
    finally:
        for p in [target, *tools]:
            if p.poll() is None:
                p.kill()
                p.wait()
    for t, (_, err) in zip(tools, results):
        assert t.returncode == 0, err[-2000:]
    assert "stopped by interrupt" in results[1][0]
    theirs = {_name(name): row[-1] for name, row in parse_table(results[0][0]).items()}
    ours = {name: row[-1] for name, row in parse_table(results[1][0]).items()}

    assert ours["getppid"] == theirs["getppid"] == n
    assert ours["openat"] == theirs["openat"] == m
    assert theirs.get("read", 0) - ours.get("read", 0) == 1
    assert ours.get("exit_group", 0) - theirs.get("exit_group", 0) == 1
    rest = (set(ours) | set(theirs)) - {"read", "exit_group"}
    differ = {s: (ours.get(s, 0), theirs.get(s, 0)) for s in rest if ours.get(s) != theirs.get(s)}
    assert not differ, f"ebpfkit vs syscount-bpfcc: {differ}"
