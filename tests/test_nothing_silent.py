"""Nothing lost or refused without a word (issue 14).

- bpf_trace_printk lines: the program counts the lines it wrote, so the lines read back
  plus the lines lost equal the lines written, exactly, whether the kernel's trace
  buffer overran or not; other programs' lines in the shared trace_pipe are not ours.
- a cell that attaches nothing, a map the kernel refuses, a workload that does not
  start: each said in one line, with what would fix it.

The workload is a small C loop whose command name the programs filter on, so the
counts are exact on a machine where others trace too.
"""

from __future__ import annotations

import re

import pytest
from helpers import bpf, needs_root, prog_ids

from ebpfkit import live, probes
from ebpfkit.errors import EbpfkitError, MapRefused, NothingAttached
from ebpfkit.session import trace

pytestmark = needs_root

COMM = "ebpfkit-printk"
PRINTK = r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    bpf_trace_printk("getppid %d\n", args->__syscall_nr);
    return 0;
}
"""


@pytest.fixture(scope="module")
def loop(getppid_loop):
    """The workload, named COMM: append the number of calls."""
    return f"{getppid_loop} {COMM}"


def overruns() -> int:
    """Lines the kernel's trace buffer overwrote so far, all CPUs, all programs."""
    base = probes.tracefs()
    total = 0
    for stats in (base / "per_cpu").glob("cpu*/stats"):
        m = re.search(r"^overrun: (\d+)", stats.read_text(), re.M)
        total += int(m.group(1)) if m else 0
    return total


# --- printk ------------------------------------------------------------------------------


def test_printk_flood_counts_every_line_lost(loop):
    calls = 200_000
    before = overruns()
    r = trace(PRINTK, run=f"{loop} {calls}", comm=COMM)
    overrun = overruns() - before
    delivered, lost = len(r.printk), r.lost["printk"]
    # Written as counted in the kernel: one per call of the loop, not one more.
    assert r.printk_written == calls
    assert delivered + lost == calls
    # This flood overruns the trace buffer, and the kernel saw at least our loss.
    assert lost > 0
    assert overrun >= lost
    assert set(r.printk["comm"]) == {COMM}
    assert set(r.printk["message"]) == {"getppid 110"}  # the tag is cut off
    assert r.total_lost == lost
    assert f"printk: {delivered} lines, LOST {lost} of {calls} written" in r.summary_lines()
    assert any("ring buffer" in w and f"{lost:,} of {calls:,}" in w for w in r.warnings)
    assert f"lost {lost:,}" in live.final_line(r)


def test_printk_without_overrun_loses_nothing(loop):
    calls = 40  # a few lines: far less than the trace buffer holds
    r = trace(PRINTK, run=f"{loop} {calls}", comm=COMM)
    assert r.printk_written == calls
    assert len(r.printk) == calls
    assert r.lost["printk"] == 0
    assert not [w for w in r.warnings if "bpf_trace_printk" in w]
    assert f"printk: {calls} lines, lost 0" in r.summary_lines()


def test_other_programs_printk_lines_are_not_ours(loop):
    """A second program prints into the same trace_pipe, on the same calls."""
    from ebpfkit._bcc import bcc

    other = bcc().BPF(
        text=r"""
        TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
            char c[16] = {};
            bpf_get_current_comm(&c, sizeof(c));
            if (c[0] == 'e' && c[8] == 'p' && c[9] == 'r') bpf_trace_printk("not ours\n");
            return 0;
        }""",
        cflags=["-w"],
    )
    try:
        calls = 30
        r = trace(PRINTK, run=f"{loop} {calls}", comm=COMM)
    finally:
        other.cleanup()
    assert "not ours" not in set(r.printk["message"])
    assert r.printk_written == calls
    assert len(r.printk) + r.lost["printk"] == calls


def test_printk_named_in_comments_and_strings_is_still_ours(loop):
    """Only calls are rewritten: a comment or a string that names bpf_trace_printk() is not
    one, and must not keep the real call from being tagged (lesson 01's program has both)."""
    source = r"""
/* prints through bpf_trace_printk(), once per call; a ')' here closes nothing */
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    // bpf_trace_printk( in a comment
    bpf_trace_printk("said bpf_trace_printk() (%d)\n", 1);
    return 0;
}
"""
    calls = 25
    r = trace(source, run=f"{loop} {calls}", comm=COMM)
    assert set(r.printk["message"]) == {"said bpf_trace_printk() (1)"}  # the tag is cut off
    assert r.printk_written == calls
    assert len(r.printk) + r.lost["printk"] == calls


# --- a cell that attaches nothing --------------------------------------------------------


def one_line(error: EbpfkitError) -> str:
    shown = error._render_traceback_()
    assert len(shown) == 1 and "\n" not in shown[0]
    return shown[0]


def test_cell_that_attaches_nothing_is_an_error(ip):
    before = prog_ids()
    cell = "int a(void *ctx) { return 0; }\nint b(void *ctx) { return 0; }\n"
    with pytest.raises(NothingAttached) as e:
        bpf(ip, "-d 0.2", cell)
    text = one_line(e.value)
    assert "a(), b()" in text
    for hint in ("-t CATEGORY:EVENT=a", "-u BINARY:SYMBOL=a", "-P cpu-clock:99=a"):
        assert hint in text
    assert "TRACEPOINT_PROBE" in text and "--load-only" in text
    assert prog_ids() == before


def test_helpers_and_load_only_still_work(ip, capsys):
    # A bcc-named probe with a static helper and an extra, unattached function.
    cell = r"""
static inline int helper(int x) { return x + 1; }
int spare(void *ctx) { return 0; }
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    bpf_trace_printk("n %d\n", helper(1));
    return 0;
}
"""
    r = bpf(ip, f"--comm {COMM} --run 'python3 -c \"import os; os.getppid()\"'", cell)
    assert r.stopped_by == "workload exit"
    # An option attaches a function; the other is its caller's helper.
    r = bpf(ip, "-t syscalls:sys_enter_getppid=probe -d 0.2", "int probe(void *ctx) { return 0; }")
    assert r.attached == ["tracepoint syscalls:sys_enter_getppid -> probe()"]
    bpf(ip, "--load-only", "int a(void *ctx) { return 0; }")
    assert "loaded into the kernel" in capsys.readouterr().out


# --- a map the kernel refuses ------------------------------------------------------------


def test_map_the_kernel_refuses_is_not_a_compile_error(ip):
    before = prog_ids()
    cell = r"""
BPF_HASH(h, u64, u64, 1 << 30);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 k = 1, v = 2;
    h.update(&k, &v);
    return 0;
}
"""
    with pytest.raises(MapRefused) as e:
        bpf(ip, "-d 0.2", cell)
    text = one_line(e.value)
    assert "did not compile" not in text
    assert "refused to create map h" in text
    assert "1,073,741,824 entries of 16 bytes" in text
    assert "Argument list too long (E2BIG)" in text
    assert "16.0 GiB" in text and "fewer entries" in text
    assert prog_ids() == before


# --- a workload that does not start ------------------------------------------------------


def test_workload_that_does_not_start_says_why(ip, capsys):
    cell = "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }"
    r = bpf(ip, "--run 'no-such-command-ebpfkit; echo out-line'", cell)
    out = capsys.readouterr().out
    assert r.exit_code == 0  # the shell went on: no warning, but its message is kept
    assert "no-such-command-ebpfkit: not found" in r.output and "out-line" in r.output
    r = bpf(ip, "--run 'echo before; no-such-command-ebpfkit'", cell)
    out = capsys.readouterr().out
    said = "no-such-command-ebpfkit: not found"
    assert r.exit_code == 127
    # The output is passed through as before, stderr included.
    assert "before" in r.output and said in r.output
    assert any(
        line.startswith("workload exit code 127: ") and said in line for line in r.summary_lines()
    )
    # The live line and the warning, printed as the cell ran.
    assert re.search(rf"^traced .*\nworkload exit code 127: .*{said}$", out, re.M), out
    assert re.search(rf"^warning: the workload failed at once: .*code 127.*{said}", out, re.M)
    assert any("failed at once" in w for w in r.warnings)


def test_workload_that_fails_later_is_no_quick_failure(ip):
    cell = "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }"
    r = bpf(ip, "--run 'sleep 1.2; echo gone >&2; exit 3'", cell)
    assert r.exit_code == 3
    assert "workload exit code 3: gone" in r.summary_lines()
    assert not any("failed at once" in w for w in r.warnings)
