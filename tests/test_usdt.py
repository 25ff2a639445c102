"""USDT probes against the real kernel, with Debian's python3.11 as the probed binary.

Ground truth comes from outside ebpfkit: the probes and their arguments from
``readelf -n``; the calls a Python function makes from ``sys.setprofile`` in the
same process (Python 3.11 fires function__entry on its tracing path only, so the
probe and the profile function see the same calls); the garbage collections from
the generations the code itself passes to ``gc.collect``; what is left attached
from ``bpftool`` and tracefs; each semaphore read from the process's own memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from helpers import bpf, needs_root

from ebpfkit import usdt
from ebpfkit.errors import AttachError, BadArguments, ProbeNotFound
from ebpfkit.session import trace

PYTHON = "/usr/bin/python3.11"
ENTRY = f"{PYTHON}:python:function__entry"
EBPFKIT = str(Path(sys.executable).with_name("ebpfkit"))
UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")

needs_python = pytest.mark.skipif(
    not Path(PYTHON).exists() or shutil.which("readelf") is None,
    reason=f"{PYTHON} (Debian's, built with DTrace probes) and readelf are needed",
)
# The --pid self tests probe this very process: it must run that binary.
needs_self = pytest.mark.skipif(
    not Path(PYTHON).exists() or os.path.realpath(sys.executable) != os.path.realpath(PYTHON),
    reason=f"the tests' own Python is not {PYTHON}, so --pid self has no such probes to see",
)

# Calls per (file, function) of python:function__entry, the names read with bpf_usdt_readarg_p.
CALLS_C = r"""
struct call { char file[128]; char function[64]; };
BPF_HASH(calls, struct call, u64);
int on_entry(struct pt_regs *ctx) {
    struct call c = {};
    bpf_usdt_readarg_p(1, ctx, &c.file, sizeof(c.file));
    bpf_usdt_readarg_p(2, ctx, &c.function, sizeof(c.function));
    calls.increment(c);
    return 0;
}
"""

# A workload of every kind of Python call: plain, recursive, methods, a constructor, a
# lambda, a comprehension, a closure, a generator resumed at each value, a decorator.
WORK_PY = """\
def leaf(x):
    return x + 1


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Box:
    def __init__(self, v):
        self.v = v

    def get(self):
        return leaf(self.v)


def numbers(n):
    for i in range(n):
        yield leaf(i)


def twice(f):
    def wrapper(x):
        return f(f(x))

    return wrapper


@twice
def inc(x):
    return x + 1


def run():
    total = sum(numbers(7)) + fib(10)
    total += sum([Box(i).get() for i in range(5)])
    total += sorted([3, 1, 2], key=lambda v: -v)[0] + inc(1)
    return total
"""

# The child: profiles the workload's 'call' events (functions of work.py only) and prints
# them as JSON; the import runs under the profile too, so work.py's <module> is counted.
MAIN_PY = """\
import json, sys
sys.path.insert(0, {folder!r})
calls = {{}}
def count(frame, event, arg):
    if event == "call" and frame.f_code.co_filename == {work!r}:
        name = frame.f_code.co_name
        calls[name] = calls.get(name, 0) + 1
sys.setprofile(count)
import work
work.run()
sys.setprofile(None)
print(json.dumps(calls))
"""


def readelf_probes(path: str) -> list[tuple[str, str, str]]:
    """(provider, name, arguments) of each stapsdt note, as binutils reads them."""
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    return re.findall(
        r"Provider: (\S+)\s+Name: (\S+)\s+Location: .*?\n\s+Arguments:[ \t]*([^\n]*)", out
    )


def calls_of(frame, file: str) -> dict[str, int]:
    rows = frame[frame["file"] == file]
    return {str(r.function): int(r.value) for r in rows.itertuples()}


def semaphore(pid: int, probe: str = ENTRY) -> int:
    return usdt.semaphore_value(pid, usdt.find(probe)[0])


def perf_attachments(pid: int) -> list[str]:
    """bpftool's lines for programs attached through perf events by process ``pid``."""
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return [str(e) for e in json.loads(out or "[]") if e.get("pid") == pid]


def held_programs(pid: int) -> list[str]:
    """The BPF programs process ``pid`` holds open (the machine is shared: others' are not ours)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                held.append(Path(f"/proc/{pid}/fdinfo/{fd}").read_text())
        except OSError:
            continue  # closed meanwhile
    return held


def probe_events() -> list[str]:
    """uprobe_events lines about the probed binary (bcc's fallback would add them there)."""
    if not UPROBE_EVENTS.exists():
        return []
    return [line for line in UPROBE_EVENTS.read_text().splitlines() if "python3" in line]


@pytest.fixture
def nothing_left():
    """Fails the test if this process is left holding a program or a perf attachment, or a
    uprobe event of the binary is left in tracefs."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is needed to see what is left attached")
    assert held_programs(os.getpid()) == []
    events = probe_events()
    yield
    assert held_programs(os.getpid()) == [], "programs left loaded"
    assert perf_attachments(os.getpid()) == []
    assert probe_events() == events


@pytest.fixture
def workload_dir():
    """A short folder for the workload: its path must fit the 128 bytes the program reads."""
    folder = Path(tempfile.mkdtemp(prefix="usdt-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- reading the notes


@needs_python
def test_the_probes_and_their_arguments_are_readelfs():
    expected = readelf_probes(PYTHON)
    assert len(expected) >= 8, expected  # Debian's 3.11: function, line, gc, import, audit
    found = [(p.provider, p.name, p.args_text) for p in usdt.read_probes(PYTHON)]
    assert found == [(prov, name, args.strip()) for prov, name, args in expected]
    entry = next(p for p in usdt.read_probes(PYTHON) if p.name == "function__entry")
    assert entry.semaphore and entry.arguments[0].size == 8


@needs_python
def test_ebpfkit_usdt_lists_each_probe_with_its_arguments():
    done = subprocess.run([EBPFKIT, "usdt", PYTHON], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    expected = readelf_probes(PYTHON)
    assert len(lines) == len(expected)
    for (provider, name, args), line in zip(expected, lines):
        n = len(args.split())
        wanted = f"{provider}:{name} +{n} args?" + (f": {re.escape(args.strip())}" if n else "")
        assert re.match(wanted, line), (wanted, line)
    assert re.search(r"^python:function__entry +3 args: 8@%\w+ 8@%\w+ -4@%\w+", done.stdout, re.M)


@needs_python
def test_a_misspelt_probe_gets_close_names_from_the_binary():
    with pytest.raises(ProbeNotFound) as e:
        usdt.check(f"{PYTHON}:function_entry")
    assert f"did you mean: {PYTHON}:python:function__entry" in str(e.value)
    with pytest.raises(ProbeNotFound, match=r"did you mean: .*python:gc__start"):
        usdt.check(f"{PYTHON}:python:gc_start")
    done = subprocess.run(
        [EBPFKIT, "usdt", PYTHON, "function_entry"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "did you mean" in done.stderr and "function__entry" in done.stderr
    with pytest.raises(ProbeNotFound, match="no USDT probes"):
        usdt.check("/bin/true:foo")  # coreutils carries no notes


# ---------------------------------------------------------------- tracing


@needs_root
@needs_python
def test_a_child_pythons_calls_equal_its_setprofile_count(workload_dir, nothing_left):
    """No --pid: the kernel raises the semaphore in every process of the binary, the
    child started after the attach included; its profile counts what the probe counts."""
    work = workload_dir / "work.py"
    work.write_text(WORK_PY)
    main = workload_dir / "main.py"
    main.write_text(MAIN_PY.format(folder=str(workload_dir), work=str(work)))
    notes = []
    r = trace(
        CALLS_C,
        usdt=f"{ENTRY}=on_entry",
        run=f"{PYTHON} {main}",
        on_note=notes.append,
        cache=False,
    )
    assert r.exit_code == 0, r.output
    profiled = json.loads(r.output.strip().splitlines()[-1])
    print("setprofile counted:", profiled)
    seen = calls_of(r.maps["calls"], str(work))
    assert seen == profiled
    assert {"<module>", "run", "fib", "numbers", "<lambda>", "wrapper", "<listcomp>"} <= set(seen)
    assert seen["fib"] == 177  # fib(10) makes 177 calls
    assert any("behind a semaphore" in n for n in notes), notes


@needs_root
@needs_self
def test_pid_self_in_ipython_counts_a_functions_calls(ip, nothing_left):
    """--pid self: the notebook's own process. The semaphore is raised here and in no
    other process of the binary, and lowered when the trace stops."""
    before = semaphore(os.getpid())
    sibling = subprocess.Popen(
        [PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        bpf(ip, f"--usdt {ENTRY}=on_entry --pid self --background usdt_self", CALLS_C)
        handle = ip.user_ns["usdt_self"]
        try:
            assert semaphore(os.getpid()) == before + 1
            assert semaphore(sibling.pid) == 0  # attached to this process alone
            # what the nothing_left fixture looks for is there while the trace runs
            assert held_programs(os.getpid()) and perf_attachments(os.getpid())
            counted = _profiled_calls()
        finally:
            result = handle.stop()
    finally:
        sibling.kill()
        sibling.wait()
    assert semaphore(os.getpid()) == before
    print("setprofile counted:", counted)
    assert calls_of(result.maps["calls"], __file__) == counted
    assert counted == {"_outer": 1, "<listcomp>": 1, "_inner": 12}
    assert any("behind a semaphore" in n for n in result.notes)


def _inner(i):
    return i * 2


def _outer():
    return sum([_inner(i) for i in range(12)])


def _profiled_calls() -> dict[str, int]:
    """Calls of this file's functions while _outer runs, as sys.setprofile sees them."""
    counted: dict[str, int] = {}

    def count(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == __file__:
            counted[frame.f_code.co_name] = counted.get(frame.f_code.co_name, 0) + 1

    sys.setprofile(count)
    try:
        _outer()
    finally:
        sys.setprofile(None)
    return counted


GC_C = r"""
BPF_HASH(generations, int, u64);
int on_gc(struct pt_regs *ctx) {
    int generation = -1;
    bpf_usdt_readarg(1, ctx, &generation);
    generations.increment(generation);
    return 0;
}
"""


@needs_root
@needs_self
def test_an_argument_on_the_stack_is_read(nothing_left):
    """gc__start's argument lives at 112(%rsp) (readelf): the generations collected."""
    import gc

    assert "112(%rsp)" in dict((n, a) for _p, n, a in readelf_probes(PYTHON))["gc__start"]
    enabled = gc.isenabled()
    gc.disable()  # no automatic collection in between
    try:
        from ebpfkit.session import Session

        with Session(GC_C, usdt=f"{PYTHON}:gc__start", pid="self", cache=False) as s:
            for generation, times in ((0, 3), (1, 2), (2, 1)):
                for _ in range(times):
                    gc.collect(generation)
            r = s.collect()
    finally:
        if enabled:
            gc.enable()
    got = {int(row.key): int(row.value) for row in r.maps["generations"].itertuples()}
    assert got == {0: 3, 1: 2, 2: 1}


@needs_root
@needs_python
def test_ebpfkit_usdt_counts_a_probes_hits_per_process():
    """The command counts gc__start in a child that names itself and collects 9 times
    (with automatic collection off, and leaving without the interpreter's finalization)."""
    code = (
        "import ctypes, gc; gc.disable(); "
        "ctypes.CDLL(None).prctl(15, b'usdtwork', 0, 0, 0); "  # PR_SET_NAME
        "[gc.collect() for _ in range(9)]; "
        "import os; os._exit(0)"  # no collections of the interpreter's own finalization
    )
    done = subprocess.run(
        [
            EBPFKIT,
            "usdt",
            PYTHON,
            "gc__start",
            "--comm",
            "usdtwork",
            "--run",
            f'{PYTHON} -c "{code}"',
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^usdt python:gc__start in \S+: 9 hits in", done.stdout, re.M), done.stdout
    assert re.search(r"^\s+\d+  usdtwork\s+9$", done.stdout, re.M), done.stdout
    assert "behind a semaphore" in done.stderr


@needs_root
@needs_python
def test_a_probe_on_a_process_that_is_gone_fails_clearly_and_leaves_nothing(nothing_left):
    gone = subprocess.Popen(["/bin/true"])
    gone.wait()
    with pytest.raises(AttachError, match=f"there is no process {gone.pid}"):
        trace(CALLS_C, usdt=f"{ENTRY}=on_entry", pid=gone.pid, duration=0.1, cache=False)


@needs_root
@needs_python
def test_a_killed_tracer_leaves_no_semaphore_raised(workload_dir):
    """The kernel owns the semaphore: a tracer killed with SIGKILL (no cleanup of its own)
    leaves the traced process's semaphore as it was."""
    target = subprocess.Popen([PYTHON, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    tracer_py = workload_dir / "tracer.py"
    tracer_py.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from ebpfkit.session import Session
            s = Session({CALLS_C!r}, usdt={ENTRY + "=on_entry"!r}, pid={target.pid}).start()
            print("attached", flush=True)
            time.sleep(60)
            """
        )
    )
    tracer = subprocess.Popen([sys.executable, str(tracer_py)], stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "attached"
        assert semaphore(target.pid) == 1
        tracer.send_signal(signal.SIGKILL)
        tracer.wait()
        assert semaphore(target.pid) == 0
    finally:
        for proc in (tracer, target):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


GETPPID_C = r"""
BPF_ARRAY(calls, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { calls.increment(0); return 0; }
"""


@needs_root
def test_pid_self_is_this_process_for_any_kind(ip, nothing_left):
    """--pid self resolves to the notebook's own process, for a tracepoint too: only its
    getppid() calls are counted, not a child's made at the same time."""
    bpf(ip, "--pid self --background getppid_self", GETPPID_C)
    handle = ip.user_ns["getppid_self"]
    try:
        for _ in range(7):
            os.getppid()
        subprocess.run(
            [sys.executable, "-c", "import os; [os.getppid() for _ in range(5)]"], check=True
        )
    finally:
        result = handle.stop()
    assert int(result.maps["calls"]["value"].iloc[0]) == 7
    with pytest.raises(BadArguments, match="give a process id, or self"):
        bpf(ip, "--pid me -d 1", GETPPID_C)


THROWS_CPP = r"""
#include <cstdio>
#include <stdexcept>
#include <typeinfo>
int main() {
    int caught = 0;
    for (int i = 0; i < 6; i++) {
        try {
            if (i % 2) throw std::runtime_error("odd");
            throw std::logic_error("even");
        } catch (const std::exception &e) {
            caught++;
            std::printf("%s\n", typeid(e).name());
        }
    }
    return caught == 6 ? 0 : 1;
}
"""

# libstdc++'s throw(object, typeinfo): the type's mangled name is the typeinfo's second word.
THROW_TYPES_C = r"""
struct type_name { char name[32]; };
BPF_HASH(thrown, struct type_name, u64);
int on_throw(struct pt_regs *ctx) {
    u64 typeinfo = 0, name = 0;
    struct type_name t = {};
    bpf_usdt_readarg(2, ctx, &typeinfo);
    bpf_probe_read_user(&name, sizeof(name), (void *)(typeinfo + 8));
    bpf_probe_read_user_str(&t.name, sizeof(t.name), (void *)name);
    thrown.increment(t);
    return 0;
}
BPF_ARRAY(catches, u64, 1);
int on_catch(struct pt_regs *ctx) { catches.increment(0); return 0; }
"""


@needs_root
def test_a_shared_librarys_probes_without_a_semaphore(workload_dir, nothing_left):
    """libstdc++ (a position-independent library) has throw and catch probes, no semaphore:
    a C++ program's 6 exceptions, each caught, by the type it prints itself."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is needed to build the C++ workload")
    source = workload_dir / "throw6.cpp"
    source.write_text(THROWS_CPP)
    binary = workload_dir / "throw6"
    subprocess.run(["g++", "-O1", "-o", str(binary), str(source)], check=True)
    linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    library = re.search(r"libstdc\+\+\.so\.6 => (\S+)", linked)[1]
    if not any(p.name == "throw" for p in usdt.read_probes(library)):
        pytest.skip(f"{library} was built without its USDT probes")
    r = trace(
        THROW_TYPES_C,
        usdt=[f"{library}:throw=on_throw", f"{library}:catch=on_catch"],
        comm="throw6",
        run=str(binary),
        cache=False,
    )
    assert r.exit_code == 0, r.output
    printed = r.output.split()
    thrown = {str(row.name): int(row.value) for row in r.maps["thrown"].itertuples()}
    assert thrown == {name: printed.count(name) for name in set(printed)}
    assert sorted(thrown.values()) == [3, 3]
    assert int(r.maps["catches"]["value"].iloc[0]) == 6
    assert not any("semaphore" in n for n in r.notes)


def test_bpf_usdt_readarg_outside_a_usdt_function_is_one_clear_error():
    """Where BCC would find no reader, the verifier would only say "last insn is not an exit
    or jmp": the cell is stopped before compiling, saying where the call must be."""
    from ebpfkit import attach, kinds

    cell = "int f(struct pt_regs *ctx) { u64 x = 0; bpf_usdt_readarg(1, ctx, &x); return 0; }"
    with pytest.raises(BadArguments, match=r"f\(\) reads a USDT probe's arguments .* uprobe"):
        attach.assign_functions([kinds.parse("uprobe", "c:malloc")], cell)
    helper = (
        "static inline u64 arg(struct pt_regs *ctx) { u64 x = 0; bpf_usdt_readarg(1, ctx, &x);"
        " return x; }\nint f(struct pt_regs *ctx) { return arg(ctx) > 0; }"
    )
    with pytest.raises(BadArguments, match=r"arg\(\) .* not in a helper it calls"):
        attach.assign_functions([kinds.parse("usdt", f"{ENTRY}=f")], helper)
    # in the function --usdt attaches, or only in a comment: no error
    attach.assign_functions([kinds.parse("usdt", ENTRY)], cell)
    # a probe function this trace does not attach is never loaded: no error (lesson 09 ex. 2)
    spare = cell + "\nint g(struct pt_regs *ctx) { return 0; }"
    attach.assign_functions([kinds.parse("usdt", f"{ENTRY}=g")], spare)
    commented = "int f(struct pt_regs *ctx) { /* bpf_usdt_readarg(1, ctx, &x) */ return 0; }"
    attach.assign_functions([kinds.parse("uprobe", "c:malloc")], commented)


@needs_root
@needs_python
def test_load_only_loads_a_probe_that_reads_its_arguments(ip, nothing_left, capsys):
    """--load-only compiles with the probe's argument readers, as a trace does (without
    them BCC finds no bpf_usdt_readarg_p for on_entry and the load fails)."""
    from ebpfkit.session import load

    assert load(CALLS_C, usdt=f"{ENTRY}=on_entry", cache=False) == ["on_entry"]
    bpf(ip, f"--usdt {ENTRY}=on_entry --load-only", CALLS_C)
    assert "loaded into the kernel (not attached): on_entry" in capsys.readouterr().out
