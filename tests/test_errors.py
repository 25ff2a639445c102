"""Every way a %%bpf cell can go wrong, and the one clear message the user gets for it.

Each error is an ebpfkit error (an IPython UsageError), so a notebook shows its text
alone. The tests drive a real IPython shell against the running kernel and check the
type and the words of each message: the cell's own line numbers, the names that were
meant, what the kernel lacks and what to use instead. After each test, nothing of ours
is left in the kernel or among this process's file descriptors.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from helpers import KPROBES, KPROBES_WHY, bpf, needs_root, prog_ids
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ebpfkit.errors import (
    BadArguments,
    CompileError,
    EbpfkitError,
    FeatureMissing,
    NotPermitted,
    ProbeNotFound,
    VerifierError,
)

pytestmark = needs_root

# The interpreter running the tests (the venv's), for the subprocesses that must die or drop root.
VENV_PYTHON = sys.executable
HAS_PMU = Path("/sys/bus/event_source/devices/cpu").exists()
NOBODY = 65534


def held() -> tuple[set[int], collections.Counter]:
    """The BPF programs this process holds, and its kernel-object descriptors by kind.

    Programs are ours when a descriptor of ours (``/proc/self/fdinfo``) or a perf event
    of ours (``bpftool perf list``) holds them: the machine's whole program list also
    has other processes' programs, loaded and unloaded while these tests run.
    """
    fds: collections.Counter = collections.Counter()
    programs: set[int] = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            if target == "anon_inode:bpf-prog":
                info = Path(f"/proc/self/fdinfo/{name}").read_text()
                programs |= {
                    int(v.split()[1]) for v in info.splitlines() if v.startswith("prog_id:")
                }
        except OSError:  # the descriptor listdir itself used, closed by now
            continue
        if target.startswith("anon_inode:") or target.endswith("/trace_pipe"):
            fds[target] += 1
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    programs |= {a["prog_id"] for a in json.loads(out or "[]") if a.get("pid") == os.getpid()}
    return programs, fds


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Whatever a test's cells did, no program stays loaded and no descriptor stays open."""
    before_programs, before_fds = held()
    before_ids = prog_ids()
    yield
    after_programs, after_fds = held()
    assert after_programs - before_programs == set(), "a BPF program outlived its cell"
    assert (prog_ids() - before_ids) & after_programs == set()
    assert after_fds == before_fds, "descriptors left open (kind: count)"


def _error(ip, line: str, cell: str, kind: type[EbpfkitError]) -> str:
    """Run the cell, expect ``kind``, and return its message."""
    with pytest.raises(kind) as info:
        bpf(ip, line, cell)
    assert isinstance(info.value, UsageError)
    return str(info.value)


# --- clang ------------------------------------------------------------------------------------

MISSING_SEMICOLON_AND_UNDECLARED = """\
BPF_HASH(calls, u32, u64);
int on_getppid(void *ctx) {
    u32 key = 0
    calls.increment(key);
    return not_declared_anywhere;
}
"""


def _assert_clean_compile_message(text: str) -> None:
    """No kernel-header noise: no header paths, no warnings, a screenful at most."""
    assert "/virtual/include" not in text
    assert "/usr/src" not in text and "/lib/modules" not in text
    assert "warning:" not in text
    assert len(text.splitlines()) <= 20, text


def test_compile_error_names_the_cells_own_lines(ip):
    text = _error(
        ip, "-t syscalls:sys_enter_getppid -d 0.1", MISSING_SEMICOLON_AND_UNDECLARED, CompileError
    )
    assert re.search(r"\bline 3\b.*expected ';'", text), text
    assert re.search(r"\bline 5\b.*undeclared identifier 'not_declared_anywhere'", text), text
    # each quoted with the cell's number in the gutter, as the user wrote it
    assert re.search(r"^\s*3 \|     u32 key = 0$", text, re.M), text
    assert re.search(r"^\s*5 \|     return not_declared_anywhere;$", text, re.M), text
    _assert_clean_compile_message(text)


def test_compile_error_inside_tracepoint_probe_keeps_the_cells_lines(ip):
    # BCC inserts the tracepoint's struct in front of the probe, shifting clang's lines.
    cell = """\
BPF_HASH(calls, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 key = 0
    calls.increment(key);
    return not_declared_anywhere;
}
TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    return 0
}
"""
    text = _error(ip, "-d 0.1", cell, CompileError)
    assert re.search(r"\bline 3\b.*expected ';'", text), text
    assert re.search(r"\bline 5\b.*'not_declared_anywhere'", text), text
    assert re.search(r"\bline 8\b.*expected ';'", text), text  # two probes' structs above it
    assert re.search(r"^\s*3 \|     u32 key = 0$", text, re.M), text
    assert re.search(r"^\s*8 \|     return 0$", text, re.M), text
    assert not re.search(r"\bline (?:7|9|1[0-9])\b", text), text
    _assert_clean_compile_message(text)


def test_compile_error_line_is_right_when_the_same_text_follows(ip):
    # Copy-pasted probes: the faulty line's text appears again, valid, a few lines below.
    # The error is on line 3 (count is undeclared there); line 8 is fine.
    cell = """\
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 total = 0;
    total += count;
    return total;
}
TRACEPOINT_PROBE(syscalls, sys_enter_getpid) {
    u64 total = 0, count = 1;
    total += count;
    return total;
}
"""
    text = _error(ip, "-d 0.1", cell, CompileError)
    assert re.search(r"\bline 3\b.*undeclared identifier 'count'", text), text
    assert "line 8" not in text, text


# --- the verifier -----------------------------------------------------------------------------


def test_verifier_rejects_a_direct_read_of_user_memory(ip):
    cell = """\
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    char c = *(char *)args->filename;
    bpf_trace_printk("%d\\n", c);
    return 0;
}
"""
    text = _error(ip, "-d 0.1", cell, VerifierError)
    assert "verifier rejected" in text
    assert "invalid mem access 'scalar'" in text  # the verifier's own last lines
    assert "char c = *(char *)args->filename;" in text  # its line annotation of the source
    hint = text.split("what it means:", 1)[1]
    assert "bpf_probe_read_user" in hint


def test_verifier_rejects_an_endless_loop(ip):
    cell = """\
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    volatile int x = 0;
    while (x == 0) { }
    return 0;
}
"""
    text = _error(ip, "-d 0.1", cell, VerifierError)
    assert "infinite loop detected" in text
    hint = text.split("what it means:", 1)[1]
    assert "loop" in hint and "bound" in hint


def test_verifier_rejects_a_loop_bounded_by_map_data(ip):
    # The usual learner's loop: its bound comes from a map, so the verifier walks it until
    # its budget of 1,000,000 instructions runs out and the load fails with E2BIG.
    cell = """\
BPF_ARRAY(limit, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int k = 0;
    u64 *n = limit.lookup(&k);
    if (!n) return 0;
    for (u64 i = 0; i < *n; i++) { bpf_trace_printk("tick\\n"); }
    return 0;
}
"""
    text = _error(ip, "-d 0.1", cell, VerifierError)
    assert "what it means:" in text, text
    hint = text.split("what it means:", 1)[1]
    assert "loop" in hint, text


def test_verifier_error_for_a_function_attached_by_option(ip):
    # Not a TRACEPOINT_PROBE: BCC loads this function only when -t attaches it.
    cell = """\
int on_open(struct tracepoint__syscalls__sys_enter_openat *args) {
    char c = *(char *)args->filename;
    bpf_trace_printk("%d\\n", c);
    return 0;
}
"""
    text = _error(ip, "-t syscalls:sys_enter_openat -d 0.1", cell, VerifierError)
    assert "invalid mem access 'scalar'" in text
    assert "bpf_probe_read_user" in text.split("what it means:", 1)[1]


def test_backend_failure_does_not_kill_the_kernel(tmp_path):
    """Code clang accepts but LLVM's BPF backend cannot lower must not end the process.

    A signed 64-bit division (BPF before v4 has none) makes LLVM abort. In a notebook
    that would be a dead kernel with no message; run it in a child process to see.
    """
    script = tmp_path / "backend.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            from IPython.core.interactiveshell import InteractiveShell
            from IPython.core.error import UsageError
            shell = InteractiveShell.instance()
            shell.run_line_magic("load_ext", "ebpfkit")
            cell = '''TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
                s64 a = bpf_ktime_get_ns();
                s64 b = bpf_get_prandom_u32();
                return (int)(a / (b | 1));
            }
            '''
            try:
                shell.run_cell_magic("bpf", "-d 0.1", cell)
                print(json.dumps({"error": None}))
            except UsageError as e:
                print(json.dumps({"error": type(e).__name__, "text": str(e)}))
            """
        )
    )
    done = subprocess.run([VENV_PYTHON, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"the process died (exit {done.returncode}) compiling the cell; "
        f"stderr: {done.stderr[-800:]!r}"
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] == "CompileError", report
    assert "line 4" in report["text"], report  # the division's own line


# --- probe names ------------------------------------------------------------------------------

ONE_FUNCTION = "int on_event(void *ctx) { return 0; }\n"


def test_unknown_tracepoint_suggests_the_right_one(ip):
    text = _error(ip, "-t syscalls:sys_enter_opnat -d 0.1", ONE_FUNCTION, ProbeNotFound)
    assert "syscalls:sys_enter_opnat" in text
    assert "did you mean" in text
    first = text.split("did you mean:", 1)[1].split(",")[0].strip()
    assert first == "syscalls:sys_enter_openat"


def test_unknown_tracepoint_category(ip):
    text = _error(ip, "-t syscals:sys_enter_openat -d 0.1", ONE_FUNCTION, ProbeNotFound)
    assert "category 'syscals'" in text
    assert "syscalls:sys_enter_openat" in text.split("did you mean:", 1)[1]


def test_unknown_tracepoint_in_the_cell_body(ip):
    cell = "TRACEPOINT_PROBE(syscalls, sys_enter_opnat) {\n    return 0;\n}\n"
    text = _error(ip, "-d 0.1", cell, ProbeNotFound)
    assert "syscalls:sys_enter_opnat" in text
    first = text.split("did you mean:", 1)[1].split(",")[0].strip()
    assert first == "syscalls:sys_enter_openat"


def test_unknown_binary(ip):
    text = _error(ip, "-u nosuchlib:foo -d 0.1", ONE_FUNCTION, ProbeNotFound)
    assert "'nosuchlib'" in text
    assert "PATH" in text and "ldconfig" in text  # where it looked


def test_unknown_symbol_suggests_close_names(ip):
    text = _error(ip, "-u c:mallok -d 0.1", ONE_FUNCTION, ProbeNotFound)
    assert "'mallok'" in text and "libc" in text
    matches = [m.strip(" ?") for m in text.split("did you mean:", 1)[1].split(",")]
    assert matches[0] == "malloc"


# --- kernel features --------------------------------------------------------------------------


@pytest.mark.skipif(KPROBES, reason=f"this kernel has kprobes ({KPROBES_WHY})")
@pytest.mark.parametrize(
    "line, cell",
    [
        ("-k do_sys_openat2 -d 0.1", ONE_FUNCTION),
        ("-d 0.1", "int kprobe__do_sys_openat2(struct pt_regs *ctx) { return 0; }\n"),
    ],
    ids=["option", "by-name"],
)
def test_no_kprobes_names_the_config_and_a_tracepoint(ip, line, cell):
    text = _error(ip, line, cell, FeatureMissing)
    assert "do_sys_openat2" in text
    assert "CONFIG_KPROBES" in text
    assert "syscalls:sys_enter_openat" in text


@pytest.mark.skipif(not KPROBES, reason=f"this kernel has no kprobes ({KPROBES_WHY})")
@pytest.mark.parametrize(
    "line, cell",
    [
        ("-k do_sys_opnat2 -d 0.1", ONE_FUNCTION),
        ("-d 0.1", "int kprobe__do_sys_opnat2(struct pt_regs *ctx) { return 0; }\n"),
    ],
    ids=["option", "by-name"],
)
def test_unknown_kernel_function_suggests_close_names(ip, line, cell):
    text = _error(ip, line, cell, ProbeNotFound)
    assert "'do_sys_opnat2'" in text
    assert "do_sys_openat2" in text.split("did you mean:", 1)[1]


@pytest.mark.skipif(
    HAS_PMU, reason="this machine has a hardware PMU (/sys/bus/event_source/devices/cpu)"
)
def test_hardware_perf_event_without_a_pmu(ip):
    cell = "int on_cycles(struct bpf_perf_event_data *ctx) { return 0; }\n"
    text = _error(ip, "-P cycles -d 0.1", cell, FeatureMissing)
    assert "'cycles'" in text and "PMU" in text
    assert "cpu-clock" in text


@pytest.mark.skipif(not HAS_PMU, reason="no hardware PMU here (/sys/bus/event_source/devices/cpu)")
def test_hardware_perf_event_with_a_pmu(ip):
    cell = """\
BPF_ARRAY(samples, u64, 1);
int on_cycles(struct bpf_perf_event_data *ctx) { int k = 0; samples.increment(k); return 0; }
"""
    result = bpf(ip, "-P cycles:999 --run 'timeout 0.3 sh -c \"while :; do :; done\"'", cell)
    assert result.maps["samples"]["value"].sum() > 0


def test_unknown_perf_event(ip):
    cell = "int on_tick(struct bpf_perf_event_data *ctx) { return 0; }\n"
    text = _error(ip, "-P cpu-clok -d 0.1", cell, ProbeNotFound)
    assert "'cpu-clok'" in text
    assert "cpu-clock" in text.split("did you mean:", 1)[1]


# --- privileges -------------------------------------------------------------------------------

_AS_NOBODY = """
import json
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.error import UsageError
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ebpfkit")
try:
    shell.run_cell_magic(
        "bpf", "-d 0.1", "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }\\n"
    )
    print(json.dumps({"error": None}))
except UsageError as e:
    print(json.dumps({"error": type(e).__name__, "text": str(e)}))
"""


def test_not_root_explains_what_is_needed():
    setpriv = "/usr/bin/setpriv"
    if not os.path.exists(setpriv):
        pytest.skip("setpriv (util-linux) is not installed: cannot drop to user nobody")
    home = Path(tempfile.mkdtemp(prefix="ebpfkit-nobody-"))
    try:
        os.chmod(home, 0o755)
        script = home / "as_nobody.py"
        script.write_text(_AS_NOBODY)
        os.chmod(script, 0o644)
        os.chown(home, NOBODY, NOBODY)
        command = [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "IPYTHONDIR": str(home / "ipython")}
        probe = subprocess.run(
            [*command, VENV_PYTHON, "-c", "import ebpfkit, IPython"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if probe.returncode != 0 and "Permission denied" in probe.stderr:
            pytest.skip(
                f"user nobody cannot read the venv: {probe.stderr.strip().splitlines()[-1]}"
            )
        assert probe.returncode == 0, probe.stderr
        done = subprocess.run(
            [*command, VENV_PYTHON, str(script)],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=120,
        )
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["error"] == NotPermitted.__name__, report
    text = report["text"]
    assert "root" in text and "CAP_BPF" in text
    assert f"uid {NOBODY}" in text


# --- options ----------------------------------------------------------------------------------


def test_several_functions_and_no_choice(ip):
    cell = "int on_open(void *ctx) { return 0; }\nint on_close(void *ctx) { return 0; }\n"
    text = _error(ip, "-t syscalls:sys_enter_openat -d 0.1", cell, BadArguments)
    assert "on_open" in text and "on_close" in text
    assert "=on_open" in text  # how to say which


def test_comm_longer_than_the_kernel_keeps(ip):
    text = _error(
        ip,
        "-t syscalls:sys_enter_openat --comm a_very_long_command -d 0.1",
        ONE_FUNCTION,
        BadArguments,
    )
    assert "a_very_long_command" in text and "15" in text


@pytest.mark.parametrize("duration", ["0", "-1"])
def test_duration_must_be_positive(ip, duration):
    text = _error(ip, f"-t syscalls:sys_enter_openat -d {duration}", ONE_FUNCTION, BadArguments)
    assert "duration" in text and "3600" in text


# --- how a notebook shows them ----------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        "%%bpf -t syscalls:sys_enter_opnat -d 0.1\nint on_event(void *ctx) { return 0; }\n",
        "%%bpf -d 0.1\nTRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0 }\n",
        "%%bpf -t syscalls:sys_enter_openat -d 0\nint on_event(void *ctx) { return 0; }\n",
    ],
    ids=["ProbeNotFound", "CompileError", "BadArguments"],
)
def test_a_notebook_shows_the_message_without_a_traceback(ip, cell):
    with capture_output() as shown:
        outcome = ip.run_cell(cell)
    error = outcome.error_in_exec
    assert isinstance(error, EbpfkitError), error
    text = shown.stdout + shown.stderr
    assert str(error).splitlines()[0] in text
    assert "Traceback" not in text and "ebpfkit/" not in text, text
    assert len(text.strip().splitlines()) <= len(str(error).splitlines()) + 1, text
