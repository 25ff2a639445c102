"""``ebpfkit uprobe BINARY SYMBOL``: the real command, the real kernel, workloads of its own.

Each workload is a Python process that renames itself (``prctl(PR_SET_NAME)``),
prints its PID and then calls a libc function a known number of times through
ctypes; the command's table must show exactly that PID, name and count.
``abs`` is used for exact counts: nothing but the workload's own loop calls it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from helpers import needs_root

# Each test that loads programs says so: the others run without root too.

EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

# Renames itself, says who it is, waits for a line on stdin (if asked), then calls abs() N times.
WORKLOAD = textwrap.dedent(
    """\
    import ctypes, sys
    libc = ctypes.CDLL("libc.so.6")
    libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
    import os
    print(f"pid={os.getpid()}", flush=True)
    if len(sys.argv) > 3:
        sys.stdin.readline()
    for _ in range(int(sys.argv[2])):
        libc.abs(-7)
    print("done", flush=True)
    """
)


def ebpfkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EBPFKIT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def unique_name() -> str:
    return "upt-" + uuid.uuid4().hex[:8]  # 12 characters: fits the kernel's 15


def table(stdout: str) -> dict[tuple[int, str], int]:
    """The PID / COMM / CALLS rows of the command's output."""
    rows = re.findall(r"^\s+(\d+)\s{2}(\S.*?)\s+(\d+)$", stdout, re.M)
    return {(int(pid), comm): int(n) for pid, comm, n in rows}


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("uprobe") / "calls_abs.py"
    path.write_text(WORKLOAD)
    return path


@needs_root
def test_counts_every_call_of_the_workload_with_its_pid_and_name(workload):
    name = unique_name()
    done = ebpfkit("uprobe", "c", "abs", "--run", f"{PYTHON} {workload} {name} 1234")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(
        r"^Counting calls to abs in /\S*/libc\.so\.6 \.\.\. until the command exits", out, re.M
    )
    pid = int(re.search(r"^pid=(\d+)$", out, re.M)[1])
    rows = table(out)
    assert rows.get((pid, name)) == 1234, out
    assert "(stopped by workload exit)" in out
    assert re.search(r"^\s+PID\s+COMM\s+CALLS$", out, re.M), out


@needs_root
def test_libc_by_any_of_its_names_and_by_path(workload):
    for binary in ("libc", "libc.so.6", LIBC):
        name = unique_name()
        done = ebpfkit(
            "uprobe", binary, "abs", "--comm", name, "--run", f"{PYTHON} {workload} {name} 300"
        )
        assert done.returncode == 0, done.stderr
        pid = int(re.search(r"^pid=(\d+)$", done.stdout, re.M)[1])
        # --comm keeps the table to the workload alone
        assert table(done.stdout) == {(pid, name): 300}, done.stdout


@needs_root
def test_pid_traces_that_process_only(workload):
    target, decoy = unique_name(), unique_name()
    procs = [
        subprocess.Popen(
            [PYTHON, str(workload), name, "500", "wait"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in (target, decoy)
    ]
    try:
        pids = [int(p.stdout.readline().strip().removeprefix("pid=")) for p in procs]
        tool = subprocess.Popen(
            [EBPFKIT, "uprobe", "c", "abs", "--pid", str(pids[0]), "-d", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = tool.stdout.readline()  # printed once the uprobe is attached
        assert first.startswith("Counting calls to abs in /"), first + tool.stderr.read()
        assert f"in PID {pids[0]}" in first
        for p in procs:  # both call abs() now; only the first is traced
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout.readline().strip() == "done"
            p.wait(timeout=10)
        out, err = tool.communicate(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert tool.returncode == 0, err
    assert table(out) == {(pids[0], target): 500}, out
    assert "(stopped by duration)" in out


@needs_root
def test_malloc_of_a_python_workload():
    name = unique_name()
    code = (
        f"import ctypes, os; ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0); "
        "print(f'pid={os.getpid()}'); keep = [bytearray(5000) for _ in range(200)]"
    )
    done = ebpfkit("uprobe", "c", "malloc", "--comm", name, "--run", f'{PYTHON} -c "{code}"')
    assert done.returncode == 0, done.stderr
    pid = int(re.search(r"^pid=(\d+)$", done.stdout, re.M)[1])
    rows = table(done.stdout)
    assert list(rows) == [(pid, name)], done.stdout
    assert rows[(pid, name)] >= 200, done.stdout  # one malloc per bytearray, and a few more


def test_missing_symbol_says_what_exists():
    start = time.monotonic()
    done = ebpfkit("uprobe", "c", "mallok", "-d", "1")
    assert done.returncode == 2
    assert done.stdout == ""  # stopped before anything was attached
    assert done.stderr.startswith("ebpfkit uprobe: No function 'mallok' in /")
    assert "did you mean: malloc" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - start < 30


@needs_root
def test_missing_binary_and_missing_file():
    done = ebpfkit("uprobe", "nosuchlib", "malloc", "-d", "1")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ebpfkit uprobe: No binary or library named 'nosuchlib' "
        "(searched PATH and the ldconfig cache)."
    )
    done = ebpfkit("uprobe", "/no/such/binary", "main", "-d", "1")
    assert done.returncode == 2
    assert done.stderr.strip() == "ebpfkit uprobe: No file /no/such/binary."
    assert "Traceback" not in done.stderr
