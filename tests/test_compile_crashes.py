"""Cells that kill the compiler: each gives one clear error, and the kernel lives on (issue 13).

BCC's clang and LLVM end the process they run in on some errors: LLVM prints its message
and calls exit(1), or aborts. When that process is the notebook's, JupyterLab says "the
kernel died" and every variable of the session is gone. CATALOGUE lists cells that do that
today, or could: each is a real tracepoint program a learner might write.

Each entry runs as ``%%bpf -d 0.2`` in a kernel started as Jupyter starts one
(jupyter_client, ``python -m ipykernel_launcher -f {connection_file}``, no installed
kernelspec, this checkout first on ``PYTHONPATH``), after ``%load_ext ebpfkit`` and
``x = 42``. Then:

- the kernel is still alive;
- the cell's reply is an error: one ebpfkit error (no Python stack) whose text names the
  problem (the entry's phrase) and does not say that the kernel died;
- ``x`` is still 42;
- the same kernel runs a normal ``%%bpf`` cell that counts a workload's getppid() calls
  exactly;
- the kernel holds no BPF program after either cell.

One kernel serves the whole module. An entry that kills it fails with the exit status and
the kernel's last words, and the next entry gets a new kernel. The last test shuts the
kernel down: it must go, with every process it started, and no BPF program of ours is left
in the kernel (``bpftool prog list``).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import needs_root, prog_ids
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from ebpfkit.errors import EbpfkitError

pytestmark = needs_root

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds a cell may take before it counts as hung (each takes a few)
CALLS = 1000  # getppid() calls of the workload the normal cell counts


@dataclass(frozen=True)
class Crash:
    name: str
    cell: str  # the C of a %%bpf cell
    says: str  # a word or phrase the error must contain (any case)


# The %%bpf line of the crash cells: a short trace (it should never get that far).
CRASH_LINE = "%%bpf -d 0.2"

CATALOGUE = [
    # clang zeroes a large local with a call to memset, which BPF does not have; LLVM
    # says "A call to built-in function 'memset' is not supported" and exits.
    Crash(
        "memset-of-a-4096-byte-stack-buffer",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    char buf[4096] = {};
    bpf_get_current_comm(&buf, sizeof(buf));
    bpf_trace_printk("%s\n", buf);
    return 0;
}""",
        "memset",
    ),
    # A large copy becomes a call to memcpy, which BPF does not have either.
    Crash(
        "memcpy-of-a-2048-byte-stack-struct",
        r"""
struct big { char data[2048]; };
BPF_ARRAY(store, struct big, 1);
BPF_RINGBUF_OUTPUT(events, 8);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int zero = 0;
    struct big *src = store.lookup(&zero);
    if (!src) return 0;
    struct big copy;
    __builtin_memcpy(&copy, src, sizeof(copy));
    events.ringbuf_output(&copy, sizeof(copy), 0);
    return 0;
}""",
        "memcpy",
    ),
    # No single local is too large, together they are: "Looks like the BPF stack limit of
    # 512 bytes is exceeded", and exit.
    Crash(
        "stack-over-512-bytes",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    char a[256], b[256], c[256];
    bpf_get_current_comm(&a, sizeof(a));
    bpf_get_current_comm(&b, sizeof(b));
    bpf_get_current_comm(&c, sizeof(c));
    bpf_trace_printk("%d %d %d\n", a[0], b[1], c[2]);
    return 0;
}""",
        "512 bytes",
    ),
    # Values the compiler cannot fold: LLVM cannot select sdiv/srem for BPF and aborts.
    Crash(
        "signed-64-bit-division",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    s64 a = bpf_ktime_get_ns();
    s64 b = (s64)bpf_get_prandom_u32() - 1000;
    bpf_trace_printk("%lld\n", a / b);
    return 0;
}""",
        "signed",
    ),
    Crash(
        "signed-64-bit-modulo",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    s64 a = bpf_ktime_get_ns();
    s64 b = (s64)bpf_get_prandom_u32() - 1000;
    bpf_trace_printk("%lld\n", a % b);
    return 0;
}""",
        "signed",
    ),
    # The same division, inside a kernel header's inline function: the cell has no '/'.
    Crash(
        "signed-division-inside-div64_s64",
        r"""
#include <linux/math64.h>
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    s64 a = bpf_ktime_get_ns();
    s64 b = (s64)bpf_get_prandom_u32() - 1000;
    bpf_trace_printk("%lld\n", div64_s64(a, b));
    return 0;
}""",
        "signed",
    ),
    # 128-bit multiplication and division become calls to __multi3 and __udivti3.
    Crash(
        "unsigned-__int128-arithmetic",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    unsigned __int128 a = bpf_ktime_get_ns();
    unsigned __int128 b = bpf_get_prandom_u32() + 1;
    unsigned __int128 p = a * a / b;
    bpf_trace_printk("%llu\n", (u64)p);
    return 0;
}""",
        "128-bit",
    ),
    # The same type under its other name, and a multiplication alone (no '/' or '%').
    Crash(
        "__uint128_t-multiplication",
        r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    __uint128_t a = bpf_ktime_get_ns();
    __uint128_t b = bpf_get_prandom_u32();
    bpf_trace_printk("%llu\n", (u64)((a * b) >> 64));
    return 0;
}""",
        "128-bit",
    ),
    # Too many iterations to unroll: clang keeps the loop, and checking it takes the
    # verifier past its budget. A compiler told to unroll it all could run out of time or
    # memory instead.
    Crash(
        "huge-unrolled-loop",
        r"""
BPF_ARRAY(counts, u64, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    #pragma unroll
    for (int i = 0; i < 100000; i++) {
        int k = i & 15;
        u64 *v = counts.lookup(&k);
        if (v) (*v)++;
    }
    return 0;
}""",
        "loop",
    ),
]

# The normal cell: getppid() calls counted per command name.
COUNT_C = r"""
struct key_t { char comm[16]; };
BPF_HASH(calls, struct key_t, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct key_t k = {};
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    calls.increment(k);
    return 0;
}"""

KERNEL_DIED = re.compile(r"kernel\s+(?:has\s+)?died|dead\s+kernel", re.I)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOISE = re.compile(r"Kernel is running over TCP without encryption")  # ipykernel's, at start


def _subclasses(cls: type) -> set[str]:
    return {cls.__name__} | {n for sub in cls.__subclasses__() for n in _subclasses(sub)}


EBPFKIT_ERRORS = _subclasses(EbpfkitError)


# --- a kernel as Jupyter starts one -------------------------------------------------------


class _ThisKernelSpec(KernelSpecManager):
    """The kernel command itself, whatever kernelspecs this machine has installed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="ebpfkit checkout",
            language="python",
        )


@dataclass
class Reply:
    """What one execute request got back."""

    status: str | None = None  # the execute_reply's: "ok" or "error"; None: no reply
    stdout: str = ""
    stderr: str = ""
    errors: list[dict] = field(default_factory=list)  # each iopub error's content
    died: str | None = None  # why no reply came: the kernel's death, or a hang


class Kernel:
    """One kernel process, driven through its channels; its own output goes to ``log``."""

    def __init__(self, log: Path):
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.km = KernelManager(kernel_spec_manager=_ThisKernelSpec(), kernel_name="checkout")
        with log.open("wb") as out:
            self.km.start_kernel(cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=WAIT)
        self.pid = int(self.run("import os; print(os.getpid())").stdout)

    def run(self, code: str, wait: float = WAIT) -> Reply:
        """Execute ``code``; the reply once the kernel is idle, or why none came."""
        msg_id = self.kc.execute(code)
        reply, idle, deadline = Reply(), False, time.monotonic() + wait
        while not (idle and reply.status):
            got = False
            for get in (self.kc.get_iopub_msg, self.kc.get_shell_msg):
                try:
                    msg = get(timeout=0.05)
                except queue.Empty:
                    continue
                got = True
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    setattr(
                        reply, content["name"], getattr(reply, content["name"]) + content["text"]
                    )
                elif kind == "error":
                    reply.errors.append(content)
                elif kind == "execute_reply":
                    reply.status = content["status"]
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
            if got:
                continue  # drain what came before asking whether the kernel is alive
            if not self.km.is_alive():
                reply.died = self.death()
                return reply
            if time.monotonic() > deadline:
                reply.died = f"no reply in {wait:.0f} s: the kernel hangs"
                return reply
        return reply

    def death(self) -> str:
        """How the kernel process ended, and the last lines it wrote."""
        process = getattr(self.km.provisioner, "process", None)
        code = process.poll() if process is not None else None
        if code is None:
            how = "the kernel is gone (exit status unknown)"
        elif code < 0:
            how = f"the kernel was killed by {signal.Signals(-code).name}"
        else:
            how = f"the kernel exited with status {code}"
        text = ANSI.sub("", self.log.read_text(errors="replace"))
        last = [ln for ln in text.splitlines() if ln.strip() and not NOISE.search(ln)][-12:]
        return how + (
            ", its last lines:\n  " + "\n  ".join(last)
            if last
            else ", writing nothing (ebpfkit holds its stderr while BCC compiles)"
        )

    def descendants(self) -> dict[int, str]:
        """The processes this kernel started (and theirs): pid -> start time."""
        found, todo = {}, [self.pid]
        while todo:
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    kids = [int(c) for c in children.read_text().split()]
                except OSError:
                    continue
                for kid in kids:
                    found[kid] = _start_time(kid)
                    todo.append(kid)
        return found

    def shutdown(self) -> None:
        """A clean shutdown, as Jupyter's own (a shutdown request, then signals)."""
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=not self.km.is_alive())


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (to tell it from a later one with its number); None
    once it has ended (a zombie has ended too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def programs_of(pid: int) -> set[int]:
    """IDs of the BPF programs process ``pid`` holds through a descriptor."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids |= {int(m) for m in re.findall(r"^prog_id:\s+(\d+)", info, re.M)}
    return ids


def programs_held_by_anyone() -> set[int]:
    """IDs of the programs some living process holds: a descriptor, or a perf event."""
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            held |= programs_of(int(pid))
        except OSError:
            continue  # gone meanwhile
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return held | {a["prog_id"] for a in json.loads(out or "[]")}


class Kernels:
    """The module's kernel, started again when an entry killed it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.current: Kernel | None = None
        self.started = 0
        self.programs_before = prog_ids()  # the machine's, when the module began

    def ready(self) -> Kernel:
        if self.current is not None and not self.current.km.is_alive():
            self.discard()
        if self.current is None:
            self.started += 1
            kernel = Kernel(self.folder / f"kernel-{self.started}.log")
            loaded = kernel.run("%load_ext ebpfkit")
            assert loaded.status == "ok" and not loaded.died, loaded
            self.current = kernel
        return self.current

    def discard(self) -> None:
        if self.current is not None:
            kernel, self.current = self.current, None
            kernel.shutdown()


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    k = Kernels(tmp_path_factory.mktemp("kernels"))
    try:
        yield k
    finally:
        k.discard()


# --- the catalogue --------------------------------------------------------------------------


def error_text(error: dict) -> str:
    return ANSI.sub("", f"{error['ename']}: {error['evalue']}")


@pytest.mark.parametrize("crash", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_cell_gives_one_clear_error_and_the_kernel_lives_on(kernels, getppid_loop, crash):
    kernel = kernels.ready()
    assert kernel.run("x = 42").status == "ok"
    reply = kernel.run(f"{CRASH_LINE}\n{crash.cell.lstrip()}")
    if reply.died:
        kernels.discard()  # the next entry gets a new kernel
        shown = (reply.stdout + reply.stderr).strip()
        pytest.fail(
            f"{crash.name}: {reply.died}" + (f"\nthe cell showed:\n{shown}" if shown else "")
        )
    assert kernel.km.is_alive()
    assert reply.status == "error", f"the cell did not fail; it printed:\n{reply.stdout}"
    assert len(reply.errors) == 1, [error_text(e) for e in reply.errors]
    error = reply.errors[0]
    text = error_text(error)
    assert error["ename"] in EBPFKIT_ERRORS, f"not one clear ebpfkit error: {error['traceback']}"
    assert crash.says.lower() in text.lower(), f"the error does not say {crash.says!r}:\n{text}"
    assert not KERNEL_DIED.search(text), text
    assert programs_of(kernel.pid) == set()

    assert kernel.run("print(repr(x))").stdout == "42\n"
    name = f"crash-{CATALOGUE.index(crash)}"
    counted = kernel.run(f'%%bpf --run "{getppid_loop} {name} {CALLS}" -o counted\n{COUNT_C}')
    assert counted.status == "ok" and not counted.died, (counted.died, counted.errors)
    calls = kernel.run(
        f'df = counted.maps["calls"]\nprint(int(df[df.comm == "{name}"].value.sum()))'
    )
    assert calls.stdout == f"{CALLS}\n", (calls.stdout, calls.errors)
    assert programs_of(kernel.pid) == set()


def test_the_kernel_shuts_down_leaving_nothing_behind(kernels):
    kernel = kernels.ready()
    children = kernel.descendants()
    kernels.discard()
    assert not kernel.km.is_alive()
    deadline = time.monotonic() + 10
    while True:
        left = {p for p, start in children.items() if start and _start_time(p) == start}
        ours = (prog_ids() - kernels.programs_before) - programs_held_by_anyone()
        if not (left or ours) or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # programs are freed a moment after their last holder goes
    assert not left, f"processes the kernel started outlive it: {sorted(left)}"
    assert not ours, f"BPF programs of ours are left in the kernel: {sorted(ours)}"
