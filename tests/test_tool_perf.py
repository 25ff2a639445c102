"""``ebpfkit perf``: the real command, the real kernel, a CPU-burning program of its own.

The workload is a small C program built here with frame pointers and symbols
(functions ``work_a``, ``work_b``, ``work_io``; x86-64), pinned to one CPU with
``taskset``. The command must sample that CPU at about the asked frequency,
name the program among the top commands, and show its own functions in its
stacks; the folded-stack file must hold every sample the CPUs took.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers import needs_root

from ebpfkit.tools import perf

EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))
COMM = "ebpfkit-pburn"  # the binary's name, so its command name: 13 characters

BURN_C = textwrap.dedent(
    """\
    #include <fcntl.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <time.h>
    #include <unistd.h>
    volatile unsigned long sink;
    static char buf[1 << 16];
    double now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec + t.tv_nsec / 1e9;
    }
    /* read(2) here, not through glibc: its read() keeps no frame pointer, so a
       stack walked from inside it skips its caller (main;__read instead of
       main;work_io;raw_read). */
    long raw_read(int fd, void *p, unsigned long n) {
        long ret;
        __asm__ volatile("syscall" : "=a"(ret) : "a"(0L), "D"((long)fd), "S"(p), "d"(n)
                         : "rcx", "r11", "memory");
        return ret;
    }
    void work_b(void) { for (long i = 0; i < 3000000; i++) sink += i * i; }
    void work_a(void) { for (long i = 0; i < 1000000; i++) sink += i; work_b(); }
    void work_io(int fd) { for (int i = 0; i < 1000; i++) raw_read(fd, buf, sizeof buf); }
    int main(int argc, char **argv) {
        double end = now() + atof(argv[1]);
        int fd = open("/dev/zero", O_RDONLY);
        printf("pid=%d\\n", getpid());
        fflush(stdout);
        while (now() < end) { work_a(); work_b(); work_io(fd); }
        return 0;
    }
    """
)


def ebpfkit(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EBPFKIT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def burn(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workload")
    if platform.machine() != "x86_64":
        pytest.skip("the workload makes its read(2) with x86-64 assembly")
    if shutil.which("taskset") is None:
        pytest.skip("taskset is needed to pin the workload")
    folder = tmp_path_factory.mktemp("perf")
    (folder / "burn.c").write_text(BURN_C)
    binary = folder / COMM
    subprocess.run(
        ["gcc", "-O0", "-g", "-fno-omit-frame-pointer", "-o", str(binary), str(folder / "burn.c")],
        check=True,
    )
    return binary


def cpu_rows(out: str) -> dict[int, tuple[int, int, float]]:
    """CPU -> (samples, expected, % of expected samples), from the command's first table."""
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+\.\d)$", out, re.M)
    return {int(c): (int(s), int(e), float(p)) for c, s, e, p in rows}


def header(out: str) -> tuple[int, float, float, str, int]:
    m = re.search(
        r"^perf cpu-clock at (\d+) Hz on (\d+) CPUs for (\d+\.\d+) s "
        r"\(stopped by ([\w ]+)\): (\d+) samples$",
        out,
        re.M,
    )
    assert m, out
    return int(m[1]), int(m[2]), float(m[3]), m[4], int(m[5])


@needs_root
def test_busy_cpu_is_sampled_at_the_frequency_and_stacks_name_the_functions(burn, tmp_path):
    folded = tmp_path / "burn.folded"
    done = ebpfkit("perf", "-d", "2", "--run", f"taskset -c 0 {burn} 30", "--folded", str(folded))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    hz, ncpus, seconds, stopped_by, total = header(out)
    assert (hz, stopped_by) == (99, "duration")
    assert 1.9 <= seconds <= 2.5
    assert re.search(r"^\s+CPU\s+SAMPLES\s+EXPECTED\s+% OF EXPECTED SAMPLES$", out, re.M), out

    rows = cpu_rows(out)
    assert sorted(rows) == perf.online_cpus()
    assert ncpus == len(rows)
    for samples, expected, pct in rows.values():
        assert expected == round(99 * seconds)
        # seconds is printed to 0.01 s: the percentage may come from anywhere within that.
        low = 100 * samples / (99 * (seconds + 0.005)) - 0.05
        high = 100 * samples / (99 * (seconds - 0.005)) + 0.05
        assert low <= pct <= high, (samples, seconds, pct)
    # CPU 0 ran the pinned workload (or, on a shared machine, others) the whole time
    assert rows[0][2] >= 60, out
    assert all(pct <= 130 for _, _, pct in rows.values()), out
    assert sum(s for s, _, _ in rows.values()) == total

    pid = int(re.search(r"^pid=(\d+)$", out, re.M)[1])
    assert re.search(rf"^\s+{pid}\s+{COMM}\s+\d+\s+\d+\.\d$", out, re.M), out
    # its own functions, named: the process was still running when they were read
    assert f"{COMM};" in out and ";main;work_a;work_b" in out, out
    assert "workload stopped when sampling ended" in out

    # every sample of every CPU is one line's count in the folded file
    lines = folded.read_text().splitlines()
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert sum(counts) == total
    stacks = [line.rsplit(" ", 1)[0] for line in lines]
    assert len(set(stacks)) == len(stacks)
    burn_stacks = [s for s in stacks if s.startswith(f"{COMM};")]
    assert any(s.endswith(";main;work_b") for s in burn_stacks), burn_stacks
    # read(2) of /dev/zero: kernel frames under the user ones, from /proc/kallsyms
    assert any("main;work_io;raw_read;" in s and "vfs_read" in s for s in burn_stacks), burn_stacks


@needs_root
def test_frequency_option_changes_the_expected_samples(burn):
    done = ebpfkit("perf", "-F", "49", "-d", "1.5", "--run", f"taskset -c 0 {burn} 30")
    assert done.returncode == 0, done.stderr
    hz, _, seconds, _, _ = header(done.stdout)
    assert hz == 49
    rows = cpu_rows(done.stdout)
    assert all(e == round(49 * seconds) for _, e, _ in rows.values())
    assert 0.6 * 49 * seconds <= rows[0][0] <= 1.3 * 49 * seconds + 2, done.stdout


@needs_root
def test_a_workload_that_exits_early_ends_sampling_and_says_why_its_frames_are_unknown():
    done = ebpfkit("perf", "-d", "10", "--run", "true")
    assert done.returncode == 0, done.stderr
    _, _, seconds, stopped_by, _ = header(done.stdout)
    assert stopped_by == "workload exit" and seconds < 5
    assert "workload exit code 0" in done.stdout
    assert "frames show as [unknown]" in done.stderr


def test_bad_frequency_is_a_clear_error():
    done = ebpfkit("perf", "-F", "0", "-d", "1")
    assert done.returncode == 2
    assert "the frequency must be between 1 and 100000 Hz" in done.stderr
    assert "Traceback" not in done.stderr


def test_folded_stacks_join_user_and_kernel_frames_root_first():
    samples = pd.DataFrame(
        {
            "pid": [10, 10, 10, 0, 11, 12],
            "cpu": [0, 0, 1, 1, 0, 0],
            "user_stack_id": [1, 1, 2, -14, -17, 3],
            "kernel_stack_id": [-14, -14, 5, 6, -14, -14],
            "comm": ["app", "app", "app", "swapper/1", "other", "py"],
            "value": [3, 4, 2, 7, 1, 5],
            "user_stack_frames": [
                "main;f",
                "main;f",
                "main;g;read",
                "[no stack: EFAULT]",
                "[lost stack]",
                "[unknown];[unknown];[unknown];PyEval",
            ],
            "kernel_stack_frames": [
                "[no stack: EFAULT]",
                "[no stack: EFAULT]",
                "entry;ksys_read;vfs_read",
                "cpu_idle;default_idle",
                "[no stack: EFAULT]",
                "[no stack: EFAULT]",
            ],
        }
    )
    folded = perf.folded_stacks(samples)
    assert dict(zip(folded["stack"], folded["samples"])) == {
        "app;main;f": 7,  # two keys (one per CPU would be too), one stack
        "swapper/1;cpu_idle;default_idle": 7,  # a kernel thread: no user part
        "py;[unknown];PyEval": 5,
        "app;main;g;read;entry;ksys_read;vfs_read": 2,  # the kernel part is the leaf
        "other;[lost stack]": 1,  # the stack map was full
    }
    assert list(folded["samples"]) == sorted(folded["samples"], reverse=True)
    text = perf.folded_text(folded)
    assert text.splitlines()[0] == "app;main;f 7"
    assert sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()) == 22


def test_cpu_table_lists_every_cpu_with_the_expected_count():
    cpu_samples = pd.DataFrame({"key": [0, 2], "value": [99, 50]})
    t = perf.cpu_table(cpu_samples, 99, 2.0, cpus=[0, 1, 2])
    assert list(t.columns) == ["cpu", "samples", "expected", "% of expected samples"]
    assert t.to_dict("list") == {
        "cpu": [0, 1, 2],
        "samples": [99, 0, 50],
        "expected": [198, 198, 198],
        "% of expected samples": [50.0, 0.0, 25.3],
    }
