"""What this kernel and machine can do, measured rather than guessed.

Each probe type is tried for real: a trivial program is compiled, loaded,
attached and triggered, and the row says whether events arrived. Each failing
row carries the reason and the fix. The header-layout rows compare where the
borrowed kernel headers put a few ``task_struct`` fields with where the
running kernel's BTF says they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import probes, usdt
from ._bcc import INSTALL_HINT, find_bcc
from ._stderr import capture_stderr
from .layout import header_layout
from .layout import test_run as test_run  # its home is layout.py; kept here by name

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"

# Fields that lessons and bcc's tools read; their offsets must agree with BTF.
LAYOUT_FIELDS = ("pid", "tgid", "real_parent", "comm", "exit_code")

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BTF_PATH = "/sys/kernel/btf/vmlinux"


@dataclass
class Row:
    check: str
    status: str
    detail: str
    fix: str = ""
    # Rows the lessons cannot do without: a FAIL here makes the exit status non-zero.
    required: bool = False


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.check == name:
                return row
        raise KeyError(name)

    @property
    def lessons_can_run(self) -> bool:
        return not any(r.required and r.status == FAIL for r in self.rows)

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(
            [(r.check, r.status, r.detail, r.fix) for r in self.rows],
            columns=["check", "status", "detail", "fix"],
        )
        return CheckFrame(df, self.lessons_can_run)

    def text(self) -> str:
        width = max(len(r.check) for r in self.rows)
        mark = {OK: "ok  ", WARN: "warn", FAIL: "FAIL", INFO: "    "}
        lines = []
        for r in self.rows:
            lines.append(f"{mark[r.status]}  {r.check:<{width}}  {r.detail}")
            if r.fix and r.status in (FAIL, WARN):
                lines.append(f"      {'':<{width}}  fix: {r.fix}")
        verdict = "the lessons can run here" if self.lessons_can_run else "the lessons cannot run"
        lines.append(f"\n{verdict}.")
        return "\n".join(lines)


def _checkframe_class():
    import pandas as pd

    class _CheckFrame(pd.DataFrame):
        """The check's table; renders with status colours in a notebook."""

        _metadata = ["lessons_can_run"]

        @property
        def _constructor(self):
            return _CheckFrame

        def _repr_html_(self):
            colours = {OK: "#1a7f37", WARN: "#9a6700", FAIL: "#cf222e", INFO: "#57606a"}

            def colour(v):
                return f"color: {colours.get(v, '')}; font-weight: bold"

            styler = self.style.map(colour, subset=["status"]).hide(axis="index")
            verdict = (
                "<p><b>The lessons can run here.</b></p>"
                if self.lessons_can_run
                else "<p><b>The lessons cannot run here:</b> see the FAIL rows.</p>"
            )
            return styler.to_html() + verdict

    return _CheckFrame


def CheckFrame(df, lessons_can_run: bool):  # noqa: N802 - behaves as a class
    out = _checkframe_class()(df)
    out.lessons_can_run = lessons_can_run
    return out


# ---------------------------------------------------------------- the machine


def capabilities() -> set[int]:
    """The effective capabilities of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
                return {bit for bit in range(64) if mask >> bit & 1}
    return set()


def kernel_config(option: str) -> str | None:
    """The value of a kernel config option from /proc/config.gz or /boot; None if unknown."""
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        if not os.path.exists(path):
            continue
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                if line.startswith(f"{option}="):
                    return line.split("=", 1)[1].strip()
                if line.startswith(f"# {option} is not set"):
                    return "n"
        return "n"
    return None


def bpf_syscall_reachable() -> tuple[bool, str]:
    """Create (and close) a one-entry array map through the raw bpf() syscall."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    nr_bpf = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
    fd = libc.syscall(nr_bpf, 0, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_CREATE
    if fd < 0:
        err = ctypes.get_errno()
        return False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}"
    os.close(fd)
    return True, "bpf(BPF_MAP_CREATE) succeeded"


def headers_source() -> tuple[str, str, str]:
    """(kind, path, detail): where BCC will find kernel headers for this kernel."""
    release = platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return "env", env, f"BCC_KERNEL_SOURCE={env}"
    build = f"/lib/modules/{release}/build"
    if os.path.exists(build):
        target = os.path.realpath(build)
        m = re.search(r"linux-headers-(.+?)(?:-(?:amd64|arm64|common))?$", target)
        version = m.group(1) if m else target
        if release in target or version == release:
            return "exact", target, f"headers for {release} at {target}"
        return (
            "nearest",
            target,
            f"borrowed: {target} (version {version}) stands in for {release}",
        )
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "kheaders", "/sys/kernel/kheaders.tar.xz", "the kernel's own (CONFIG_IKHEADERS)"
    return "none", "", f"no headers: /lib/modules/{release}/build is missing"


# ---------------------------------------------------------------- probe trials

_TRIAL_C = r"""
BPF_ARRAY(hits, u64, 8);
BPF_RINGBUF_OUTPUT(ring, 8);
static inline void hit(int i) { u64 *v = hits.lookup(&i); if (v) __sync_fetch_and_add(v, 1); }
int on_tracepoint(struct tracepoint__syscalls__sys_enter_getppid *args) { hit(0); return 0; }
int on_raw_tracepoint(struct bpf_raw_tracepoint_args *ctx) { hit(1); return 0; }
int on_kprobe(struct pt_regs *ctx) { hit(2); return 0; }
int on_kretprobe(struct pt_regs *ctx) { hit(3); return 0; }
int on_uprobe(struct pt_regs *ctx) { hit(4); return 0; }
int on_uretprobe(struct pt_regs *ctx) { hit(5); return 0; }
int on_perf(struct bpf_perf_event_data *ctx) { hit(6); return 0; }
int on_ring(void *args) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    ring.ringbuf_output(&pid, sizeof(pid), 0);
    return 0;
}
"""

_HW_C = "int on_hw(struct bpf_perf_event_data *ctx) { return 0; }"

_KFUNC_C = "KFUNC_PROBE(vfs_read) { return 0; }"

_USDT_C = r"""
BPF_ARRAY(usdt_hits, u64, 1);
int on_usdt(struct pt_regs *ctx) { usdt_hits.increment(0); return 0; }
"""
USDT_CALLS = 50  # calls of a Python function the child makes while the probe is attached
# The child says it is ready, then waits for a line on stdin (the probe is attached by then), and
# makes its calls under a profile function: Python 3.11 checks function__entry on its tracing path.
_USDT_CHILD = (
    "import sys\n"
    "print('ready', flush=True)\n"  # started up (its start-up resumes generators, which fire)
    "sys.stdin.readline()\n"
    "def f(): pass\n"
    "sys.setprofile(lambda *a: None)\n"
    f"for _ in range({USDT_CALLS}): f()\n"
    "sys.setprofile(None)\n"
    "import os\n"
    "os._exit(0)\n"  # and no finalization either
)
BPFTRACE_ONE_LINER = "tracepoint:sched:sched_process_exec /pid == cpid/ { @execs = count(); }"


def _first_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            return line
    return ""


def _trigger(n: int = 50) -> None:
    for _ in range(n):
        os.getppid()


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Trials:
    """Runs each probe type once against a single compiled program."""

    def __init__(self, bcc, report: Report):
        self.bcc = bcc
        self.report = report

    def _load(self, text: str):
        """``text`` compiled in the compile process (or the cache), its maps created."""
        from . import compiler, loader

        return loader.load(self.bcc, compiler.compiled(text, ["-w"]))

    def run(self) -> None:
        try:
            b = self._load(_TRIAL_C)
        except Exception as e:  # noqa: BLE001 - every compile failure lands in the report
            self.report.add(
                "compile a program",
                FAIL,
                f"BCC could not compile a trivial program: {e}; "
                f"{_first_line(getattr(e, 'stderr', ''))}",
                "run `make test` (installs kernel headers) or see the headers row",
                required=True,
            )
            return
        self.report.add("compile a program", OK, "BCC compiled and the kernel loaded a program")
        try:
            self._tracepoint(b)
            self._raw_tracepoint(b)
            self._kprobes(b)
            self._uprobes(b)
            self._perf_software(b)
            self._ring_buffer(b)
        finally:
            b.cleanup()
        self._perf_hardware()
        self._fentry()
        self._usdt()

    def _count(self, b, i: int) -> int:
        return int(b["hits"][ctypes.c_int(i)].value)

    def _attempt(self, b, name, index, attach, trigger, reason_fn, fix, required=False):
        before = self._count(b, index)
        try:
            with capture_stderr() as err:
                attach()
        except Exception as e:  # noqa: BLE001
            reason = reason_fn(e, err.text)
            self.report.add(name, FAIL, reason, fix, required=required)
            return
        trigger()
        seen = self._count(b, index) - before
        if seen > 0:
            self.report.add(name, OK, f"attached and saw {seen} events")
        else:
            self.report.add(name, FAIL, "attached but saw no events", fix, required=required)

    def _tracepoint(self, b):
        self._attempt(
            b,
            "tracepoint",
            0,
            lambda: b.attach_tracepoint(tp="syscalls:sys_enter_getppid", fn_name="on_tracepoint"),
            _trigger,
            lambda e, t: f"attach failed: {e}",
            "mount tracefs (`mount -t tracefs nodev /sys/kernel/tracing`); needs "
            "CONFIG_FTRACE_SYSCALLS",
            required=True,
        )

    def _raw_tracepoint(self, b):
        if not self.bcc.BPF.support_raw_tracepoint():
            self.report.add("raw tracepoint", FAIL, "not supported by this kernel (needs 4.17+)")
            return
        self._attempt(
            b,
            "raw tracepoint",
            1,
            lambda: b.attach_raw_tracepoint(tp="sys_enter", fn_name="on_raw_tracepoint"),
            _trigger,
            lambda e, t: f"attach failed: {e}",
            "use a tracepoint instead",
        )

    def _kprobes(self, b):
        available, why = probes.kprobes_available()
        fn = b.get_syscall_fnname("getppid").decode()
        alternative = "use the matching tracepoint (syscalls:sys_enter_getppid)"
        if not available:
            fix = f"{alternative}; or boot a kernel with CONFIG_KPROBES=y (`make test-vm`)"
            self.report.add("kprobe", FAIL, why, fix)
            self.report.add("kretprobe", FAIL, why, fix)
            return
        self._attempt(
            b,
            "kprobe",
            2,
            lambda: b.attach_kprobe(event=fn, fn_name="on_kprobe"),
            _trigger,
            lambda e, t: f"attach to {fn} failed: {_first_line(t) or e}",
            alternative,
        )
        self._attempt(
            b,
            "kretprobe",
            3,
            lambda: b.attach_kretprobe(event=fn, fn_name="on_kretprobe"),
            _trigger,
            lambda e, t: f"attach to {fn} failed: {_first_line(t) or e}",
            alternative,
        )

    def _uprobes(self, b):
        why = "needs CONFIG_UPROBE_EVENTS"
        for name, index, method in (
            ("uprobe", 4, "attach_uprobe"),
            ("uretprobe", 5, "attach_uretprobe"),
        ):
            self._attempt(
                b,
                name,
                index,
                lambda method=method, name=name: getattr(b, method)(
                    name="c", sym="getppid", fn_name=f"on_{name}", pid=os.getpid()
                ),
                _trigger,
                lambda e, t: f"attach to libc getppid failed: {_first_line(t) or e}",
                why,
                required=True,
            )

    def _perf_software(self, b):
        PerfType, PerfSWConfig = self.bcc.PerfType, self.bcc.PerfSWConfig
        self._attempt(
            b,
            "perf event (software)",
            6,
            lambda: b.attach_perf_event(
                ev_type=PerfType.SOFTWARE,
                ev_config=PerfSWConfig.CPU_CLOCK,
                fn_name="on_perf",
                sample_freq=999,
            ),
            lambda: _busy(0.1),
            lambda e, t: f"cpu-clock sampling failed: {_first_line(t) or e}",
            "needs CONFIG_PERF_EVENTS; `kernel.perf_event_paranoid` may forbid it for non-root",
            required=True,
        )

    def _ring_buffer(self, b):
        received = []
        try:
            with capture_stderr():
                b["ring"].open_ring_buffer(lambda ctx, data, size: received.append(size))
                # bcc keeps one fd per tracepoint name: a second attach would orphan the first.
                with contextlib.suppress(Exception):
                    b.detach_tracepoint("syscalls:sys_enter_getppid")
                b.attach_tracepoint(tp="syscalls:sys_enter_getppid", fn_name="on_ring")
        except Exception as e:  # noqa: BLE001
            self.report.add(
                "ring buffer", FAIL, f"{e}", "needs Linux 5.8+; use a perf buffer instead"
            )
            return
        _trigger(5)
        b.ring_buffer_poll(100)
        if received:
            self.report.add("ring buffer", OK, f"received {len(received)} records")
        else:
            self.report.add("ring buffer", FAIL, "no records arrived", "use a perf buffer instead")

    def _perf_hardware(self):
        PerfType, PerfHWConfig = self.bcc.PerfType, self.bcc.PerfHWConfig
        b = self._load(_HW_C)
        try:
            with capture_stderr() as err:
                b.attach_perf_event(
                    ev_type=PerfType.HARDWARE,
                    ev_config=PerfHWConfig.CPU_CYCLES,
                    fn_name="on_hw",
                    sample_period=1_000_000,
                )
            self.report.add("perf event (hardware)", OK, "cycles counter attached")
        except Exception as e:  # noqa: BLE001
            detail = _first_line(err.text) or str(e)
            if not os.path.exists("/sys/bus/event_source/devices/cpu"):
                detail = f"no hardware PMU (no /sys/bus/event_source/devices/cpu): {detail}"
            self.report.add(
                "perf event (hardware)",
                FAIL,
                detail,
                "sample with the software cpu-clock event instead (common in virtual machines)",
            )
        finally:
            b.cleanup()

    def _fentry(self):
        if not self.bcc.BPF.support_kfunc():
            self.report.add(
                "fentry (KFUNC_PROBE)",
                FAIL,
                "not supported: BCC found no BTF trampoline support",
                "use a tracepoint or kprobe instead",
            )
            return
        said = ""
        try:
            b = self._load(_KFUNC_C)
            try:
                with capture_stderr() as err:
                    b._trace_autoload()
            finally:
                said = err.text
                b.cleanup()
            self.report.add("fentry (KFUNC_PROBE)", OK, "a KFUNC_PROBE loaded and attached")
        except Exception as e:  # noqa: BLE001
            reason = _first_line(said) or str(e)
            if "not permitted" in f"{said} {e}" or "super-user" in str(e):
                who = "as root" if os.geteuid() == 0 else "for this user"
                reason = (
                    f"the kernel refused to load an fentry program on vfs_read {who} "
                    "(bpf: Operation not permitted): BPF trampolines are not available here"
                )
            self.report.add(
                "fentry (KFUNC_PROBE)",
                FAIL,
                reason,
                "use a tracepoint (or a kprobe where the kernel has them)",
            )

    def _usdt(self):
        name = "USDT probe"
        fix = "a Python built with --with-dtrace (Debian's and Ubuntu's are)"
        python = usdt_python()
        if python is None:
            self.report.add(name, FAIL, "no Python here has a function__entry USDT probe", fix)
            return
        site = usdt.find(f"{python}:python:function__entry")[0]
        try:
            seen = self._usdt_trial(site)
        except Exception as e:  # noqa: BLE001 - every failure lands in the report
            self.report.add(name, FAIL, f"{site.full_name} in {python}: {e}", fix)
            return
        if seen >= USDT_CALLS:
            self.report.add(
                name,
                OK,
                f"attached to {site.full_name} in {python} for a child Python and saw {seen} "
                f"calls (it made {USDT_CALLS}); the kernel raised the probe's semaphore",
            )
        else:
            self.report.add(
                name,
                FAIL,
                f"attached to {site.full_name} in {python} but saw {seen} of the child's "
                f"{USDT_CALLS} calls",
                "needs Linux 4.20+ for semaphores (ref_ctr_offset in the uprobe PMU)",
            )

    def _usdt_trial(self, site) -> int:
        """Hits of ``site`` in a child Python making USDT_CALLS calls, attached to it alone."""
        b = self._load(_USDT_C)
        child = subprocess.Popen(
            [site.path, "-c", _USDT_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            if child.stdout.readline().strip() != b"ready":
                raise RuntimeError("the child Python did not start")
            fn = b.load_func(b"on_usdt", self.bcc.BPF.KPROBE)
            b.uprobe_fds[usdt.event_name(site, child.pid)] = usdt.open_site(site, fn.fd, child.pid)
            child.communicate(b"go\n", timeout=30)
            return int(b["usdt_hits"][ctypes.c_int(0)].value)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            b.cleanup()


def usdt_python() -> str | None:
    """A Python with a function__entry probe: this one, else python3 on PATH or in /usr/bin."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        path = os.path.realpath(candidate)
        try:
            if any(p.name == "function__entry" for p in usdt.read_probes(path)):
                return path
        except Exception:  # noqa: BLE001, S112 - a script, a shim: try the next one
            continue
    return None


def _bpftrace_row(report: Report) -> None:
    """bpftrace's version, and a one-liner it runs: the exec of its own child, counted once."""
    name = "bpftrace"
    fix = "apt-get install bpftrace (scripts/setup.sh installs it)"
    binary = shutil.which("bpftrace")
    if binary is None:
        report.add(name, FAIL, "not installed (%%bpftrace needs it)", fix)
        return
    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        done = subprocess.run(
            [binary, "-e", BPFTRACE_ONE_LINER, "-c", shutil.which("true") or "/bin/true"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        report.add(name, FAIL, f"{binary} did not run: {e}", fix)
        return
    counted = re.search(r"^@execs: (\d+)$", done.stdout, re.M)
    if done.returncode == 0 and counted and counted[1] == "1":
        report.add(name, OK, f"{version}: a one-liner counted its child's exec once")
        return
    said = _first_line(done.stderr) or _first_line(done.stdout) or f"exit status {done.returncode}"
    report.add(name, FAIL, f"{version or binary}: a one-liner failed: {said}", fix)


# ---------------------------------------------------------------- layout


def header_offsets(bcc, fields=LAYOUT_FIELDS) -> dict[str, int]:
    """Where the kernel headers BCC compiles against put each task_struct field,
    as the code clang generates reads it (measured by ``layout.header_layout``).

    Raises RuntimeError, saying why, when the headers' program does not compile or run.
    """
    query = tuple(("struct", "task_struct", f) for f in fields)
    measured = header_layout("#include <linux/sched.h>", query, bcc)
    if measured.values is None:
        raise RuntimeError(measured.error or "the headers' layout could not be measured")
    return {f: measured.values[("task_struct", f)] for f in fields}


def btf_offsets(fields=LAYOUT_FIELDS) -> dict[str, int]:
    from .btf import Btf

    btf = Btf.load(BTF_PATH)
    return {f: btf.member_offset("task_struct", f) for f in fields}


def _layout(bcc, report: Report, kind: str) -> None:
    try:
        kernel = btf_offsets()
    except Exception as e:  # noqa: BLE001
        report.add("struct layouts", WARN, f"cannot read the kernel's BTF: {e}")
        return
    try:
        headers = header_offsets(bcc)
    except Exception as e:  # noqa: BLE001
        report.add("struct layouts", WARN, f"cannot compile against the headers: {e}")
        return
    wrong = [f for f in kernel if kernel[f] != headers[f]]
    for f in LAYOUT_FIELDS:
        status = OK if kernel[f] == headers[f] else WARN
        report.add(
            f"task_struct.{f}",
            status,
            f"offset in headers {headers[f]}, in the running kernel (BTF) {kernel[f]}",
        )
    if wrong:
        report.add(
            "struct layouts",
            WARN,
            f"the {kind} headers lay task_struct out differently from the running kernel "
            f"({len(wrong)} of {len(kernel)} fields differ): bcc programs that dereference "
            "kernel structs read wrong memory, silently",
            "%%bpf and ebpfkit.trace redefine such structs from the kernel's BTF (on by "
            "default; --headers-layout turns it off); in plain bcc, read kernel data through "
            "helpers, tracepoint args and probe arguments, or install linux-headers for this "
            "exact kernel",
        )
    else:
        report.add("struct layouts", OK, "the headers' task_struct agrees with the kernel's BTF")


# ---------------------------------------------------------------- the report


def run_checks(probes_too: bool = True) -> Report:
    report = Report()
    report.add("kernel", INFO, f"{platform.system()} {platform.release()} ({platform.machine()})")
    btf = _btf_row(report)
    allowed = _privilege_rows(report)
    bcc = _bcc_row(report)
    kind = _headers_row(report)
    _tracing_rows(report)
    if probes_too and bcc is not None and allowed and kind != "none":
        _Trials(bcc, report).run()
        if kind in ("nearest", "env", "exact", "kheaders") and btf:
            _layout(bcc, report, kind)
        _bpftrace_row(report)
    elif probes_too:
        report.add(
            "probe types",
            FAIL,
            "not tried: " + ("not privileged" if not allowed else "BCC or headers missing"),
            "fix the rows above, then run `ebpfkit check` again",
            required=True,
        )
    return report


def privileged(caps: set[int] | None = None) -> bool:
    """Whether this process may load tracing programs: root, or CAP_SYS_ADMIN, or
    CAP_BPF with CAP_PERFMON (``caps``: the effective capabilities, read if None)."""
    if os.geteuid() == 0:
        return True
    caps = capabilities() if caps is None else caps
    return CAP_SYS_ADMIN in caps or {CAP_BPF, CAP_PERFMON} <= caps


def _btf_row(report: Report) -> bool:
    btf = os.path.exists(BTF_PATH)
    report.add(
        "BTF",
        OK if btf else WARN,
        f"{BTF_PATH} present ({os.path.getsize(BTF_PATH) // 1024} KiB)"
        if btf
        else f"{BTF_PATH} missing",
        "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
    )
    return btf


def _privilege_rows(report: Report) -> bool:
    """The privileges and bpf() syscall rows; whether this process is privileged."""
    root = os.geteuid() == 0
    caps = capabilities()
    have = [
        n
        for n, b in (
            ("CAP_BPF", CAP_BPF),
            ("CAP_PERFMON", CAP_PERFMON),
            ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
        )
        if b in caps
    ]
    allowed = privileged(caps)
    report.add(
        "privileges",
        OK if allowed else FAIL,
        ("running as root; " if root else f"running as uid {os.geteuid()}; ")
        + ("capabilities: " + ", ".join(have) if have else "no eBPF capabilities"),
        "run as root (sudo), or use the root Jupyter kernel; loading tracing programs needs "
        "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
        required=True,
    )
    ok, detail = bpf_syscall_reachable()
    report.add(
        "bpf() syscall",
        OK if ok else FAIL,
        detail,
        "run as root; check kernel.unprivileged_bpf_disabled and seccomp/container limits",
        required=True,
    )
    return allowed


def _bcc_row(report: Report):
    """The BCC row; BCC's module, or None."""
    bcc = find_bcc()
    if bcc is None:
        report.add("BCC", FAIL, "BCC's Python module is not installed", INSTALL_HINT, required=True)
    else:
        version = getattr(bcc, "__version__", "?")
        report.add("BCC", OK, f"version {version} from {os.path.dirname(bcc.__file__)}")
    return bcc


def _headers_row(report: Report) -> str:
    """The kernel headers row; the kind of headers (see ``headers_source``)."""
    kind, _, detail = headers_source()
    status = {"exact": OK, "env": OK, "kheaders": OK, "nearest": WARN, "none": FAIL}[kind]
    report.add(
        "kernel headers",
        status,
        detail,
        "`make test` installs the nearest distribution headers; the exact package "
        f"linux-headers-{platform.release()} is best where it exists",
        required=True,
    )
    return kind


def _tracing_rows(report: Report) -> None:
    """The tracefs row, and CONFIG_KPROBES where the kernel's config says."""
    tracefs = probes.tracefs()
    # ismount, not exists: a non-root user cannot look inside, but can see the mount.
    debug = os.path.ismount("/sys/kernel/debug")
    report.add(
        "tracefs",
        OK if tracefs and debug else FAIL,
        f"mounted at {tracefs}" + ("" if debug else "; /sys/kernel/debug is not mounted")
        if tracefs
        else "not mounted",
        "mount -t debugfs nodev /sys/kernel/debug (BCC reads /sys/kernel/debug/tracing)",
        required=True,
    )
    kprobes_config = kernel_config("CONFIG_KPROBES")
    if kprobes_config is not None:
        report.add("CONFIG_KPROBES", INFO, f"{kprobes_config} (from the kernel's config)")


def check(probes_too: bool = True):
    """Run every check and return the table as a DataFrame (renders as a table in Jupyter)."""
    return run_checks(probes_too).frame()
