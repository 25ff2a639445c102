"""The C text of a cell, made ready for BCC, and compiled.

Before compiling we add a short prelude (the ptrace header learners forget, the
pid/comm filter, a lost-record counter for ring buffers) and mark the start of
the user's code. When clang fails, its diagnostics are mapped back to the
cell's own line numbers and the kernel-header noise is dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ._stderr import capture_stderr
from .errors import CompileError, VerifierError

# Counts ring-buffer records the program could not write (buffer full), per buffer.
LOST_MAP = "__ebpfkit_lost"

# Headers every program may need: learners forget them (struct pt_regs, the perf-event
# context); session.py hands them to exact.py too.
INCLUDES = """\
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
"""
_PRELUDE = INCLUDES

_FILTER = """\
static inline __attribute__((always_inline)) int __ebpfkit_skip(void) {{
    u64 __id = bpf_get_current_pid_tgid();
    if ({pid} != 0 && (__id >> 32) != {pid}) return 1;
    {comm}
    return 0;
}}
"""

# Functions that bcc attaches by their names, and the macros that declare probes.
AUTO_PREFIXES = (
    "kprobe__",
    "kretprobe__",
    "tracepoint__",
    "raw_tracepoint__",
    "kfunc__",
    "kretfunc__",
)
_PROBE_MACROS = r"(?:TRACEPOINT_PROBE|RAW_TRACEPOINT_PROBE|KFUNC_PROBE|KRETFUNC_PROBE)"
_FUNC_DEF = re.compile(
    r"(?:^|(?<=[;}]))[ \t]*(?:static\s+)?(?:int|u32|u64|void|long)\s+(\w+)\s*\([^;{}]*\)\s*\{",
    re.M,
)
_MACRO_DEF = re.compile(_PROBE_MACROS + r"\s*\([^)]*\)\s*\{")
_RINGBUF_DECL = re.compile(r"BPF_RINGBUF_OUTPUT\s*\(\s*(\w+)")
_PERF_DECL = re.compile(r"BPF_PERF_OUTPUT\s*\(\s*(\w+)")


@dataclass
class Source:
    """The user's text and what we made of it."""

    text: str
    final: str = ""
    prelude_lines: int = 0
    ring_buffers: list[str] = field(default_factory=list)
    perf_buffers: list[str] = field(default_factory=list)
    uses_printk: bool = False

    def buffers(self) -> list[tuple[str, str]]:
        """Every output buffer as (name, kind); the index is its slot in the lost counter."""
        return [(n, "ring") for n in self.ring_buffers] + [(n, "perf") for n in self.perf_buffers]


def comm_filter(comm: str) -> str:
    data = comm.encode()[:15]
    checks = " ".join(f"if (__c[{i}] != {b}) return 1;" for i, b in enumerate(data))
    end = f"if (__c[{len(data)}] != 0) return 1;" if len(data) < 15 else ""
    return f"char __c[16] = {{}}; bpf_get_current_comm(&__c, sizeof(__c)); {checks} {end}"


def _match_paren(text: str, start: int) -> int:
    """Index just past the parenthesis that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


# Calls that write a record, and how each says it failed (the buffer was full).
_WRITES = {
    "ring": (("ringbuf_output", "int", "__r < 0"), ("ringbuf_reserve", "void *", "!__r")),
    "perf": (("perf_submit", "int", "__r < 0"),),
}
# Ring-buffer calls that commit a record, and the place of their flags argument. ebpfkit
# reads the buffer on a timer, so the producers are told not to wake anyone up: a
# wake-up per record would cost the traced program more than the record itself.
_COMMITS = {"ringbuf_output": 2, "ringbuf_submit": 1, "ringbuf_discard": 1}
NO_WAKEUP = "BPF_RB_NO_WAKEUP"


def _split_args(inner: str) -> list[str]:
    """A call's arguments, split at the commas outside parentheses and brackets."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(inner[start:i])
            start = i + 1
    args.append(inner[start:])
    return args


def _no_wakeup(call: str, method: str) -> str:
    """``call`` (``name.method(...)``) with its flags argument set to BPF_RB_NO_WAKEUP."""
    place = _COMMITS[method]
    open_at = call.index("(")
    args = _split_args(call[open_at + 1 : -1])
    if len(args) != place + 1:
        return call  # not the documented form: leave it to clang to judge
    args[place] = f" {NO_WAKEUP}"
    return call[: open_at + 1] + ",".join(args) + ")"


def _rewrite_calls(text: str, name: str, method: str, rewrite) -> str:
    pattern = re.compile(rf"\b{name}\s*\.\s*{method}\s*\(")
    pos = 0
    while True:
        m = pattern.search(text, pos)
        if not m:
            return text
        end = _match_paren(text, m.end() - 1)
        if end < 0:
            return text
        new = rewrite(text[m.start() : end])
        text = text[: m.start()] + new + text[end:]
        pos = m.start() + len(new)


def count_losses(text: str, buffers: list[tuple[str, str]]) -> str:
    """Wrap each write to an output buffer so that a failure (buffer full) is counted.

    The kernel reports a full perf buffer's drops only when a later record reaches the same
    CPU's buffer, so drops at the end of a burst would go unreported; a ring buffer reports
    none at all. Counting failed writes in the program itself is exact for both.
    Ring-buffer commits also get BPF_RB_NO_WAKEUP (see ``_COMMITS``).
    """
    for index, (name, kind) in enumerate(buffers):
        if kind == "ring":
            for method in _COMMITS:
                text = _rewrite_calls(
                    text, name, method, lambda call, method=method: _no_wakeup(call, method)
                )
        for method, rtype, failed in _WRITES[kind]:

            def wrap(call, rtype=rtype, failed=failed, index=index):
                return (
                    f"({{ {rtype} __r = {call}; if ({failed}) {{ int __k = {index}; "
                    f"u64 *__v = {LOST_MAP}.lookup(&__k); if (__v) (*__v)++; }} __r; }})"
                )

            text = _rewrite_calls(text, name, method, wrap)
    return text


def inject_filter(text: str, fn_names: set[str]) -> str:
    """Start each probe function with the pid/comm filter, on the same line."""
    spots = []
    for m in _FUNC_DEF.finditer(text):
        name = m.group(1)
        if name in fn_names or name.startswith(AUTO_PREFIXES):
            spots.append(m.end())
    spots += [m.end() for m in _MACRO_DEF.finditer(text)]
    for pos in sorted(spots, reverse=True):
        text = text[:pos] + " if (__ebpfkit_skip()) return 0; " + text[pos:]
    return text


def prepare(
    text: str, pid: int | None = None, comm: str | None = None, fn_names: set[str] | None = None
) -> Source:
    src = Source(text=text)
    src.ring_buffers = _RINGBUF_DECL.findall(text)
    src.perf_buffers = _PERF_DECL.findall(text)
    src.uses_printk = bool(re.search(r"\bbpf_(?:trace_)?printk\s*\(", text))
    prelude = _PRELUDE
    body = text
    buffers = src.buffers()
    if buffers:
        prelude += f"BPF_PERCPU_ARRAY({LOST_MAP}, u64, {len(buffers)});\n"
        body = count_losses(body, buffers)
    if pid or comm:
        prelude += _FILTER.format(pid=int(pid or 0), comm=comm_filter(comm) if comm else "")
        body = inject_filter(body, fn_names or set())
    src.prelude_lines = prelude.count("\n")
    src.final = prelude + body
    return src


# ---------------------------------------------------------------- diagnostics

_DIAG = re.compile(
    r"^(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<kind>error|warning|note): "
    r"(?P<msg>.*)$"
)


def _cell_line(src: Source, reported: int, quoted: str | None) -> int | None:
    """The cell's line number for a diagnostic.

    BCC inserts text (tracepoint structs) in front of probe functions, so the
    reported line drifts; the source line clang quotes is found in the cell.
    """
    lines = src.text.splitlines()
    guess = reported - src.prelude_lines
    if quoted is not None:
        hits = [i + 1 for i, line in enumerate(lines) if line.rstrip() == quoted.rstrip()]
        if not hits:
            # Our own wrappers change the text around a call: match on the trimmed start.
            key = quoted.strip()[:30]
            hits = [i + 1 for i, line in enumerate(lines) if key and line.strip()[:30] == key]
        if hits:
            # BCC only inserts text, so the cell's line is at or before the shifted guess.
            before = [n for n in hits if n <= guess]
            return max(before) if before else min(hits, key=lambda n: abs(n - guess))
    if 1 <= guess <= len(lines):
        return guess
    return None


def explain_compile_error(src: Source, stderr: str) -> str:
    """The user's errors, quoted with the cell's line numbers; header noise dropped."""
    lines = stderr.splitlines()
    lines_of_cell = src.text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = _DIAG.match(line)
        if not m or m.group("kind") == "warning":
            continue
        in_user_file = m.group("file") in ("/virtual/main.c", "cell")
        if m.group("kind") == "note" and not in_user_file:
            # A note about a macro or header: keep it short, it often explains the error.
            out.append(f"    note: {m.group('msg')} ({m.group('file').split('/')[-1]})")
            continue
        if not in_user_file:
            out.append(f"error in {m.group('file')}: {m.group('msg')}")
            continue
        quoted = lines[i + 1] if i + 1 < len(lines) else None
        n = _cell_line(src, int(m.group("line")), quoted)
        if n is None:
            out.append(f"{m.group('kind')}: {m.group('msg')}")
            continue
        out.append(f"line {n}: {m.group('kind')}: {m.group('msg')}")
        out.append(f"  {n:>4} | {lines_of_cell[n - 1]}")
        caret_col = int(m.group("col"))
        if (
            m.group("kind") == "error"
            and quoted is not None
            and quoted.rstrip() == lines_of_cell[n - 1].rstrip()
        ):
            out.append(f"       | {' ' * (caret_col - 1)}^")
    if not out:
        tail = [line for line in lines if line.strip()][-8:]
        out = tail or ["clang gave no message"]
    return "the C code did not compile:\n" + "\n".join(out)


# What verifier messages usually mean, for a learner.
_VERIFIER_HINTS = [
    (
        r"Argument list too long|E2BIG|too many instructions|Program too large",
        "the verifier ran out of its budget of 1,000,000 checked instructions, usually on a "
        "loop whose bound it cannot see (a bound read from a map or an argument): use a small "
        "constant bound, and stop early with break",
    ),
    (
        r"invalid mem access 'scalar'|invalid mem access 'inv'",
        "a pointer was dereferenced directly; read kernel memory with bpf_probe_read_kernel() "
        "and user memory with bpf_probe_read_user()",
    ),
    (
        r"invalid indirect read from stack|invalid read from stack",
        "a stack variable was used before being initialised; "
        "zero it first (= {} or __builtin_memset)",
    ),
    (
        r"map_value_or_null|invalid mem access 'map_value_or_null'",
        "a map lookup result was used without checking it for NULL",
    ),
    (
        r"back-edge|infinite loop|loops are not allowed",
        "the loop has no bound the verifier can see; use a constant bound or #pragma unroll",
    ),
    (
        r"program is too large|BPF program is too large",
        "the program has too many instructions; split it or shorten loops",
    ),
    (
        r"R\d+ min value is negative|R\d+ unbounded memory access",
        "an index or size is not bounded; clamp it (if (i >= N) return 0;) before using it",
    ),
    (r"unknown func|invalid func", "this helper is not available to this program type or kernel"),
]


def explain_verifier_error(stderr: str, exc: Exception) -> str:
    log = [line for line in stderr.splitlines() if line.strip()]
    tail = log[-12:]
    hint = ""
    for pattern, meaning in _VERIFIER_HINTS:
        if re.search(pattern, stderr):
            hint = f"\nwhat it means: {meaning}"
            break
    body = "\n".join("  " + line for line in tail) if tail else f"  {exc}"
    return f"the kernel's verifier rejected the program ({exc}). Its last lines:\n{body}{hint}"


def _bpf_class(bcc):
    """BCC's BPF class without the attaching its constructor does by function name.

    A rejected program there would leave the half-built object, and every probe attached
    before it, behind; we attach afterwards, where a failure can clean up.
    """
    cls = getattr(bcc, "_ebpfkit_bpf", None)
    if cls is None:

        class BPF(bcc.BPF):
            def _trace_autoload(self):
                pass

        cls = bcc._ebpfkit_bpf = BPF
    return cls


_COMMENTS_STRINGS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|^\s*#[^\n]*', re.S | re.M)
# What LLVM's BPF backend may fail to lower (signed 64-bit division, 128-bit arithmetic);
# it then aborts or exits the whole process, which in a notebook is a dead kernel.
_RISKY = re.compile(r"[/%]|__int128")
_BACKEND_ERROR = re.compile(r"(?:Error at line (\d+): )?(.*?)(?:, /virtual/main\.c:(\d+):\d+)?$")


def _backend_crash(bcc, src: Source, flags: list[str]) -> str | None:
    """Compile once in a child process; the compiler's last words if it died there."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compile, report by exit status, never return
        status = 3
        try:
            os.dup2(write, 1)
            os.dup2(write, 2)
            _bpf_class(bcc)(text=src.final, cflags=flags).cleanup()
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode("utf-8", "replace")
    _, wait_status = os.waitpid(pid, 0)
    if os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) in (0, 3):
        return None  # compiled, or failed the ordinary way: the parent will say how
    return output


def explain_backend_crash(src: Source, output: str) -> str:
    lines = [line for line in output.splitlines() if line and not line.startswith(" ")]
    first = next((ln for ln in lines if "Error" in ln or "ERROR" in ln), lines[0] if lines else "")
    m = _BACKEND_ERROR.match(first)
    what = m.group(2).strip() if m else first
    reported = int(m.group(1) or m.group(3) or 0) if m else 0
    # Only the line of the failing operation is known, in BCC's rewritten text: name the
    # last line of the cell at or before it that does such arithmetic.
    cell = src.text.splitlines()
    guess = reported - src.prelude_lines
    candidates = [
        i + 1
        for i, line in enumerate(cell)
        if _RISKY.search(_COMMENTS_STRINGS.sub("", line)) and (guess <= 0 or i + 1 <= guess)
    ]
    where = ""
    if candidates:
        n = candidates[-1]
        where = f"\nline {n}:\n  {n:>4} | {cell[n - 1]}"
    return (
        "the C code compiled, but LLVM's BPF backend cannot translate it: "
        f"{what}{where}\nBPF has no signed 64-bit division or modulo and no 128-bit "
        "arithmetic: use unsigned types (u64) for / and %, and 64-bit values."
    )


def compile_source(bcc, src: Source, cflags: list[str] | None = None):
    """Compile with BCC; attach nothing yet (see ``autoload``).

    CompileError quotes the user's own lines; VerifierError the verifier's last ones.
    """
    flags = ["-w", *(cflags or [])]
    if _RISKY.search(_COMMENTS_STRINGS.sub("", src.text)):
        crash = _backend_crash(bcc, src, flags)
        if crash is not None:
            raise CompileError(explain_backend_crash(src, crash))
    try:
        with capture_stderr() as err:
            b = _bpf_class(bcc)(text=src.final, cflags=flags)
    except Exception as e:  # noqa: BLE001 - BCC raises plain Exception
        if "Failed to compile" in str(e):
            raise CompileError(explain_compile_error(src, err.text)) from None
        raise CompileError(f"BCC failed: {e}\n{err.text[-2000:]}") from None
    return b


def autoload(bcc, b) -> None:
    """Attach the functions named the bcc way (kprobe__..., TRACEPOINT_PROBE).

    Done after the output buffers are open: a record sent before then fails (ENOENT).
    On failure everything of ``b`` is freed.
    """
    try:
        with capture_stderr() as err:
            bcc.BPF._trace_autoload(b)
    except BaseException as e:
        b.cleanup()
        if isinstance(e, Exception) and "Failed to load" in str(e):
            raise VerifierError(explain_verifier_error(err.text, e)) from None
        raise


def load_or_explain(bpf, fn_name: str, prog_type: int):
    """Load one function as a program; VerifierError with the log's tail on rejection."""
    try:
        with capture_stderr() as err:
            return bpf.load_func(fn_name, prog_type)
    except Exception as e:  # noqa: BLE001
        if "Failed to load" in str(e) or "Permission denied" in str(e) or "Invalid" in str(e):
            raise VerifierError(explain_verifier_error(err.text, e)) from None
        raise
