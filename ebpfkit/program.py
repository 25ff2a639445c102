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

from . import ctext
from ._stderr import capture_stderr
from .btf import Btf
from .errors import CompileError, MapRefused, VerifierError
from .exact import Prelude
from .probes import tracepoint_fields

# Counts ring-buffer records the program could not write (buffer full), per buffer.
LOST_MAP = "__ebpfkit_lost"
# Counts bpf_trace_printk calls that wrote a line into the kernel's trace buffer.
PRINTK_MAP = "__ebpfkit_printk"

# Headers a program may need that learners forget: struct pt_regs always (it costs
# nothing), the perf-event context where the cell names it: that header alone takes
# 0.85 s of a 1.0 s compile here. They open the program's own prelude (``prepare``);
# session.py hands them to exact.py too, which must see every #include line.
_PTRACE = "#include <uapi/linux/ptrace.h>\n"
_PERF_EVENT = "#include <uapi/linux/bpf_perf_event.h>\n"
_PERF_EVENT_USE = re.compile(r"\bbpf_perf_event_data\b")


def includes(text: str) -> str:
    """The #include lines our prelude opens with, for the cell ``text``."""
    if _PERF_EVENT_USE.search(ctext.blank(text)):
        return _PTRACE + _PERF_EVENT
    return _PTRACE


_FILTER = """\
static inline __attribute__((always_inline)) int __ebpfkit_skip(void) {{
    u64 __id = bpf_get_current_pid_tgid();
    if ({pid} != 0 && (__id >> 32) != {pid}) return 1;
    {comm}
    {scope}
    return 0;
}}
"""

# The workload's scope, kept in the kernel: the processes of the workload (1) and the
# gate that starts it (2: its children are in, it is not; session.py). A fork from a
# process in the map adds the child, whichever thread forks. A task leaves the map when
# it is freed, not at sched_process_exit: its last events (the final context switch into
# the zombie state) come after that, and its PID cannot be reused before it is freed.
# The free tracker is a raw tracepoint: sched_process_free fires from an RCU callback that
# can interrupt another BPF program, and there a tracepoint's program would be skipped
# (its recursion guard is per CPU; a raw tracepoint's is per program).
SCOPE_MAP = "__ebpfkit_scope"
SCOPE_FULL_MAP = "__ebpfkit_scope_full"
SCOPE_PROBES = {"__ebpfkit_fork": "sched:sched_process_fork"}
SCOPE_RAW_PROBES = {"__ebpfkit_free": "sched_process_free"}
_SCOPE = """\
BPF_HASH(__ebpfkit_scope, u32, u8, {entries});
BPF_PERCPU_ARRAY(__ebpfkit_scope_full, u64, 1);
int __ebpfkit_fork(void *ctx) {{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!__ebpfkit_scope.lookup(&parent)) return 0;
    u32 child = *(s32 *)((char *)ctx + {child_pid_offset});
    u8 in = 1;
    if (__ebpfkit_scope.update(&child, &in) < 0) {{
        int k = 0;
        u64 *full = __ebpfkit_scope_full.lookup(&k);
        if (full) *full += 1;
    }}
    return 0;
}}
int __ebpfkit_free(struct bpf_raw_tracepoint_args *ctx) {{
    u32 task = 0;  /* the freed task_struct's pid, at its offset in BTF */
    bpf_probe_read_kernel(&task, sizeof(task), (void *)(ctx->args[0] + {task_pid_offset}));
    __ebpfkit_scope.delete(&task);
    return 0;
}}
"""
_IN_SCOPE = (
    "u32 __tgid = __id >> 32; u8 *__in = __ebpfkit_scope.lookup(&__tgid); "
    "if (!__in || *__in != 1) return 1;"
)
SCOPE_ENTRIES = 65536

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
    """The user's text and what we made of it.

    ``final`` is what BCC compiles: ``layout.text + prelude + body``, where
    ``prelude`` is ours (``includes``, counters, the filter), ``body`` the user's
    text with its calls wrapped, and ``layout`` the structs redefined from BTF
    (an ``exact.Prelude``, set with ``use_layout``). ``prelude_lines`` is the
    number of lines in front of the user's first line.
    """

    text: str
    final: str = ""
    prelude_lines: int = 0
    prelude: str = ""
    body: str = ""
    layout: Prelude = field(default_factory=Prelude)
    ring_buffers: list[str] = field(default_factory=list)
    perf_buffers: list[str] = field(default_factory=list)
    uses_printk: bool = False
    # Put in front of every printk format, so that our lines are told apart from other
    # programs' in the machine-wide trace_pipe; None where a format is not a literal.
    printk_tag: str | None = None

    def buffers(self) -> list[tuple[str, str]]:
        """Every output buffer as (name, kind); the index is its slot in the lost counter."""
        return [(n, "ring") for n in self.ring_buffers] + [(n, "perf") for n in self.perf_buffers]

    def use_layout(self, layout: Prelude) -> None:
        """Put ``layout`` (``Prelude()``: none) in front of the program, instead of the last."""
        self.layout = layout
        self.final = layout.text + self.prelude + self.body
        self.prelude_lines = layout.lines + self.prelude.count("\n")


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


def _rewrite_calls(text: str, pattern: re.Pattern, rewrite) -> str:
    """Each call that ``pattern`` finds in the code (not in comments or literals), from its
    name to its closing parenthesis, replaced by ``rewrite(call)``."""
    code = ctext.blank(text)
    calls, last = [], 0
    for m in pattern.finditer(code):
        if m.start() < last:
            continue  # inside the arguments of the call before: rewritten with it
        end = _match_paren(code, m.end() - 1)
        if end < 0:
            break  # unbalanced: clang will say where
        calls.append((m.start(), end))
        last = end
    for start, end in reversed(calls):
        text = text[:start] + rewrite(text[start:end]) + text[end:]
    return text


def _method_call(name: str, method: str) -> re.Pattern:
    return re.compile(rf"\b{name}\s*\.\s*{method}\s*\(")


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
                    text,
                    _method_call(name, method),
                    lambda call, method=method: _no_wakeup(call, method),
                )
        for method, rtype, failed in _WRITES[kind]:

            def wrap(call, rtype=rtype, failed=failed, index=index):
                return (
                    f"({{ {rtype} __r = {call}; if ({failed}) {{ int __k = {index}; "
                    f"u64 *__v = {LOST_MAP}.lookup(&__k); if (__v) (*__v)++; }} __r; }})"
                )

            text = _rewrite_calls(text, _method_call(name, method), wrap)
    return text


_PRINTK_CALL = re.compile(r"\bbpf_(?:trace_)?printk\s*\(")
_LITERAL_FIRST = re.compile(r'\s*"')


def count_printk(text: str, tag: str | None) -> tuple[str, bool]:
    """Wrap each bpf_trace_printk call so that each line it writes is counted, and tag it.

    The helper returns the bytes written into the kernel's trace buffer; that buffer
    overwrites its oldest lines when trace_pipe is read too slowly, so the lines read
    back fall short of those written. The count (``PRINTK_MAP``) is what was written.
    Returns the text and whether every call's format could be tagged.
    """
    tagged = True

    def wrap(call: str) -> str:
        nonlocal tagged
        at = call.index("(") + 1
        if tag is not None and _LITERAL_FIRST.match(call[at:]):
            call = f'{call[:at]}"{tag}" {call[at:].lstrip()}'
        else:
            tagged = False
        return (
            f"({{ int __p = {call}; if (__p > 0) {{ int __k = 0; "
            f"u64 *__v = {PRINTK_MAP}.lookup(&__k); if (__v) (*__v)++; }} __p; }})"
        )

    return _rewrite_calls(text, _PRINTK_CALL, wrap), tagged


def inject_filter(text: str, fn_names: set[str]) -> str:
    """Start each probe function with the pid/comm filter, on the same line."""
    code = ctext.blank(text)  # a definition in a comment is not one
    spots = []
    for m in _FUNC_DEF.finditer(code):
        name = m.group(1)
        if name in fn_names or name.startswith(AUTO_PREFIXES):
            spots.append(m.end())
    spots += [m.end() for m in _MACRO_DEF.finditer(code)]
    for pos in sorted(spots, reverse=True):
        text = text[:pos] + " if (__ebpfkit_skip()) return 0; " + text[pos:]
    return text


def prepare(
    text: str,
    pid: int | None = None,
    comm: str | None = None,
    fn_names: set[str] | None = None,
    generated: str = "",
    scoped: bool = False,
) -> Source:
    """``text`` made ready for BCC; ``generated``: C the probe kinds made for it
    (kinds.prepare_all), placed in our prelude, before the user's first line.
    ``scoped``: keep only the workload's events (``SCOPE_MAP``)."""
    src = Source(text=text)
    code = ctext.blank(text)  # what is declared and called, not what comments mention
    src.ring_buffers = _RINGBUF_DECL.findall(code)
    src.perf_buffers = _PERF_DECL.findall(code)
    src.uses_printk = bool(_PRINTK_CALL.search(code))
    prelude = includes(text) + generated
    body = text
    buffers = src.buffers()
    if buffers:
        prelude += f"BPF_PERCPU_ARRAY({LOST_MAP}, u64, {len(buffers)});\n"
        body = count_losses(body, buffers)
    if src.uses_printk:
        tag = f"ebpfkit-{os.urandom(4).hex()}: "
        prelude += f"BPF_PERCPU_ARRAY({PRINTK_MAP}, u64, 1);\n"
        body, tagged = count_printk(body, tag)
        src.printk_tag = tag if tagged else None
    if scoped:
        prelude += _SCOPE.format(
            entries=SCOPE_ENTRIES,
            # 6.18 moved the comms to __data_loc: the offset is the format file's, not the headers'
            child_pid_offset=_record_offset("sched", "sched_process_fork", "child_pid"),
            task_pid_offset=Btf.load().member_offset("task_struct", "pid"),
        )
    if pid or comm or scoped:
        prelude += _FILTER.format(
            pid=int(pid or 0),
            comm=comm_filter(comm) if comm else "",
            scope=_IN_SCOPE if scoped else "",
        )
        body = inject_filter(body, fn_names or set())
    src.prelude, src.body = prelude, body
    src.use_layout(Prelude())
    return src


def _record_offset(category: str, event: str, name: str) -> int:
    """Where a tracepoint's record keeps field ``name`` on this kernel (its format file)."""
    return next(f["offset"] for f in tracepoint_fields(category, event) if f["name"] == name)


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


# The program types the hints name (linux/bpf.h's enum bpf_prog_type; uprobes are kprobe's).
_PROG_TYPES = {2: "kprobe", 5: "tracepoint", 7: "perf event", 17: "raw tracepoint", 26: "tracing"}
# Where a helper that program types often lack may be called (the kernel's *_func_proto).
_HELPER_WHERE = {
    "bpf_get_func_ip": "kprobe programs (kprobes and uprobes) and fentry/fexit may call it",
    "bpf_perf_prog_read_value": "only perf event programs (-P) may call it",
}


def _helper_hint(m: re.Match, log: str, exc: Exception) -> str:
    """A helper this program type may not call: which types may, where the hints know."""
    helper = m["helper"] or m["h2"] or m["h3"]
    kind = _PROG_TYPES.get(getattr(exc, "prog_type", None) or int(m["type"] or 0))
    who = f"{kind} programs" if kind else "programs of this type"
    where = _HELPER_WHERE.get(helper, "bpf-helpers(7) says which programs may call it")
    return f"{helper} is not available to {who}: {where}"


def _scalar_hint(m: re.Match, log: str, exc: Exception) -> str:
    """A number used as a pointer; where it held a ring buffer record, which case that is."""
    states = re.findall(rf"\bR{m['reg']}=(\w+)", log)
    if states and states[-1] == "0" and f"R{m['reg']}=ringbuf_mem_or_null" in log:
        return (
            "ringbuf_reserve()'s result was used on the path where it is NULL (a full "
            "buffer): test it (if (!e) return 0;) before writing to it"
        )
    if states and states[-1] == "ringbuf_mem":
        after = log[log.rfind(f"R{m['reg']}=ringbuf_mem") :]
        if re.search(r"call bpf_ringbuf_(?:submit|discard)", after):
            return (
                "the ring buffer record was used after ringbuf_submit() or ringbuf_discard() "
                "gave it back: fill it in before, and leave it alone after"
            )
    return (
        f"R{m['reg']}, a number to the verifier, was used as a pointer: read memory the "
        "program does not own with bpf_probe_read_kernel() or bpf_probe_read_user()"
    )


# What the verifier's refusal means, for a learner: (pattern, meaning), first match wins. A
# meaning may be a function of the match, the whole log and the exception.
_VERIFIER_HINTS = [
    (
        r"The sequence of \d+ jumps is too complex",
        "too many branches to explore: the verifier follows both sides of every test it "
        "cannot decide, and more than 8,192 were waiting at once (a test in a loop of "
        "thousands of rounds): fewer rounds, or fewer tests in the loop",
    ),
    (
        r"BPF program is too large\. Processed \d+ insn",
        "the verifier checked 1,000,000 instructions, its budget, before reaching the end "
        "(a loop walked round by round): use a small constant bound, and stop early with break",
    ),
    (
        r"invalid access to (?:memory|map value|packet)|value is outside of the allowed memory",
        "a read or write may fall outside the memory it points into (of mem_size or "
        "value_size bytes; off: the offset tried): bound the index by a constant, its size",
    ),
    (
        r"invalid mem access 'map_value_or_null'",
        "a map lookup result was used without checking it for NULL",
    ),
    (
        r"invalid mem access 'ringbuf_mem_or_null'",
        "ringbuf_reserve()'s result was used without checking it for NULL",
    ),
    (r"invalid mem access '\w+_or_null'", "a pointer that may be NULL was used without a test"),
    (r"R(?P<reg>\d+) invalid mem access '(?:scalar|inv)'", _scalar_hint),
    (
        r"program of this type cannot use helper (?P<helper>\w+)#|unknown func (?P<h2>\w+)#|"
        r"func (?P<h3>\w+)#\d+ not supported for program type (?P<type>\d+)",
        _helper_hint,
    ),
    (r"invalid func \w+#", "this kernel does not have that helper"),
    (
        r"invalid indirect read from stack|invalid read from stack",
        "a stack variable was used before being initialised; "
        "zero it first (= {} or __builtin_memset)",
    ),
    (
        r"back-edge|infinite loop|loops are not allowed",
        "the loop has no bound the verifier can see; use a constant bound or #pragma unroll",
    ),
    (
        r"unbounded min value|R\d+ min value is negative|R\d+ unbounded memory access",
        "an index or size is not bounded; clamp it (if (i >= N) return 0;) before using it",
    ),
    (r"Argument list too long", "the program is too large for the kernel to load (E2BIG)"),
]
# The log's own lines: instructions (7: (79) r0 = ...), register states, branches, source.
_LOG_BODY = re.compile(r"^(?:\d+: |from \d+ to \d+: |; )")


def _refusal(log: list[str]) -> list[str]:
    """Why the verifier stopped: its lines after the last instruction, state or source line it
    printed, up to its summary (processed N insns)."""
    end = next((i for i in range(len(log) - 1, -1, -1) if log[i].startswith("processed ")), None)
    end = len(log) if end is None else end
    start = end
    while start > 0 and not _LOG_BODY.match(log[start - 1]):
        start -= 1
    return log[start:end]


def explain_verifier_error(stderr: str, exc: Exception) -> str:
    """The log's last lines, and what the refusal means where a hint knows; a hint is
    matched against the refusal alone (and the exception's text), never the lines before."""
    log = [line for line in stderr.splitlines() if line.strip()]
    tail = log[-12:]
    refusal = "\n".join([*_refusal(log), str(exc)])
    hint = ""
    for pattern, meaning in _VERIFIER_HINTS:
        m = re.search(pattern, refusal)
        if m:
            if callable(meaning):
                meaning = meaning(m, stderr, exc)
            hint = f"\nwhat it means: {meaning}"
            break
    body = "\n".join("  " + line for line in tail) if tail else f"  {exc}"
    return f"the kernel's verifier rejected the program ({exc}). Its last lines:\n{body}{hint}"


_COMMENTS_STRINGS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|^\s*#[^\n]*', re.S | re.M)
# What LLVM's BPF backend may fail to lower (signed 64-bit division, 128-bit arithmetic).
_RISKY = re.compile(r"[/%]|__int128")
_BACKEND_ERROR = re.compile(r"(?:Error at line (\d+): )?(.*?)(?:, /virtual/main\.c:(\d+):\d+)?$")


# What LLVM says when it ends the compile process, what that means in a cell, and the
# cell's lines that may be the cause.
_CRASH_MEANINGS = [
    (
        r"built-in function '(?:memset|memcpy|memmove)'",
        "a buffer on the stack is too large to clear or copy: BPF has no memset or memcpy "
        "calls and a stack of 512 bytes. Use a smaller buffer, or a one-entry "
        "BPF_PERCPU_ARRAY as scratch space (look it up, then work in the value).",
        r"\[\s*\d{3,}\s*\]|memset|memcpy|__builtin_mem|= *\{ *\}|\bstruct\s+\w+\s+\w+\s*;",
    ),
    (
        r"stack limit",
        "the function keeps more than 512 bytes on the stack, BPF's limit. Use smaller "
        "buffers, or keep them in a one-entry BPF_PERCPU_ARRAY (look it up, then work in "
        "the value).",
        r"\[\s*\d{3,}\s*\]",
    ),
    (
        r"__multi3|__u?divti3|__u?modti3|i128|__int128",
        "BPF has no 128-bit arithmetic: use 64-bit values (u64).",
        r"__int128|__uint128|__int128_t",
    ),
    (
        r"[Ss]igned division|sdiv|srem",
        "BPF has no signed 64-bit division or modulo: use unsigned types (u64) for / and %.",
        r"[/%]|div64_s64|div_s64",
    ),
]


def explain_backend_crash(src: Source, output: str, died: str = "") -> str:
    """The compile process ended instead of answering: what LLVM said, the cell's line
    it is most likely about, and what to do."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith(" ")]
    first = next(
        (ln for ln in lines if re.search(r"error|Error|ERROR|LLVM", ln)),
        lines[-1] if lines else "",
    )
    m = _BACKEND_ERROR.match(first)
    what = (m.group(2).strip() if m else first) or "no message"
    reported = int(m.group(1) or m.group(3) or 0) if m else 0
    # LLVM's other form: "error: /virtual/main.c:20:7: in function NAME TYPE: what".
    m = re.search(r"/virtual/main\.c:(\d+):\d+: (?:in function \S+ .*?\): )?(.*)", first)
    if m:
        reported, what = int(m.group(1)), m.group(2).strip() or what
    # Where the backend only names the place in its dump: "@[ /virtual/main.c:24:104 ]".
    at = re.search(r"@\[ /virtual/main\.c:(\d+):\d+", output)
    if at and not reported:
        reported = int(at.group(1))
    meaning, suspect = (
        "the compiler could not finish this program: simplify it, or split it (a loop "
        "unrolled many times makes a program too large to compile).",
        r"#pragma|for\s*\(|while\s*\(",
    )
    for pattern, text, where_pattern in _CRASH_MEANINGS:
        if re.search(pattern, output):
            meaning, suspect = text, where_pattern
            break
    # Only the line of the failing operation is known, if at all, in BCC's rewritten
    # text: name the last line of the cell at or before it that does such a thing.
    cell = src.text.splitlines()
    guess = reported - src.prelude_lines
    candidates = [
        i + 1
        for i, line in enumerate(cell)
        if re.search(suspect, _COMMENTS_STRINGS.sub("", line)) and (guess <= 0 or i + 1 <= guess)
    ]
    if not candidates and reported and 1 <= guess <= len(cell):
        candidates = [guess]  # BCC only inserts text: the cell's line is at or before
    where = ""
    if candidates:
        n = candidates[-1]
        where = f"\nline {n}:\n  {n:>4} | {cell[n - 1]}"
    how = f" ({died})" if died else ""
    return (
        f"the C code could not be compiled: LLVM stopped the compile process{how}: "
        f"{what}{where}\n{meaning}"
    )


# What libbcc prints when the kernel will not create a map (bpf_module.cc, load_maps).
_MAP_REFUSED = re.compile(r"could not open bpf map: (?P<name>\w+), error: (?P<why>[^\n]*)")

# The errors map creation gives, in the words of strerror, and what each means there.
_MAP_ERRNO = {
    "Argument list too long": (
        "E2BIG",
        "the map is larger than the kernel will create: it caps what one map may hold",
    ),
    "Cannot allocate memory": (
        "ENOMEM",
        "the kernel could not find that much memory for it (the machine's free memory, or "
        "the memory cgroup's limit)",
    ),
    "Operation not permitted": (
        "EPERM",
        "the process may not lock that much memory (RLIMIT_MEMLOCK, `ulimit -l`) or lacks "
        "the privileges for this kind of map",
    ),
    "Invalid argument": (
        "EINVAL",
        "this kind of map does not take that key size, value size or number of entries "
        "(zero entries, or a ring buffer whose size is not a power of two pages)",
    ),
}

# Map-declaring macros: the place of key type, value type and size among their arguments
# (after the name), and their defaults (bcc's helpers.h).
_MAP_MACROS = {
    "BPF_HASH": ("hash", 0, 1, 2, ("u64", "u64", "10240")),
    "BPF_LRU_HASH": ("hash", 0, 1, 2, ("u64", "u64", "10240")),
    "BPF_PERCPU_HASH": ("per-CPU hash", 0, 1, 2, ("u64", "u64", "10240")),
    "BPF_ARRAY": ("array", None, 0, 1, ("u64", "10240")),
    "BPF_PERCPU_ARRAY": ("per-CPU array", None, 0, 1, ("u64", "10240")),
    "BPF_HISTOGRAM": ("histogram", 0, None, 1, ("int", "64")),
}
_SIZE_EXPR = re.compile(r"^[\s\d()+*<>x-]+$")


def _entries(text: str) -> int | None:
    """The value of a constant size like ``1 << 30`` or ``10240``; None if not that simple."""
    text = re.sub(r"(?<=[\dA-Fa-f])[uUlL]+\b", "", text.strip())
    if not _SIZE_EXPR.match(text) or "**" in text:
        return None
    try:
        value = eval(text, {"__builtins__": {}}, {})  # digits and + - * << ( ) only
    except Exception:  # noqa: BLE001 - not a constant we can read
        return None
    return value if isinstance(value, int) else None


def _type_size(ctype: str | None) -> int | None:
    if ctype is None:
        return None
    from .frames import LayoutError, _scalar

    try:
        return _scalar(ctype).itemsize
    except (LayoutError, TypeError):
        return None


def _gib(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def explain_map_refused(src: Source, name: str, why: str) -> str:
    """The kernel would not create map ``name``: what it was asked for, why, and the fix."""
    code, meaning = _MAP_ERRNO.get(why.strip(), ("", ""))
    errno_text = why.strip() + (f" ({code}): {meaning}" if code else "")
    asked, fix = "", "give it fewer entries"
    decl = re.search(rf"\b(BPF_\w+)\s*\(\s*{re.escape(name)}\s*(?=[,)])", src.text)
    if decl and decl.group(1) in _MAP_MACROS:
        kind, key_at, value_at, size_at, defaults = _MAP_MACROS[decl.group(1)]
        opened = src.text.index("(", decl.start())
        end = _match_paren(src.text, opened)
        args = [a.strip() for a in _split_args(src.text[opened + 1 : end - 1])][1:]
        args = [a for a in args if a] + list(defaults[len([a for a in args if a]) :])

        def arg(at):
            return args[at] if at is not None and at < len(args) else None

        key = arg(key_at) or ("int" if key_at is None else None)
        value = arg(value_at) or ("u64" if value_at is None else None)
        entries = _entries(arg(size_at) or "")
        sizes = [_type_size(key), _type_size(value)]
        if entries is not None:
            asked = f" (a {kind} map of {entries:,} entries"
            if None not in sizes:
                per_entry = sum(sizes)
                total = entries * per_entry
                asked += (
                    f" of {per_entry} bytes: key {key} {sizes[0]} + value {value} {sizes[1]}; "
                    f"{_gib(total)} before the kernel's own overhead per entry"
                )
                if "per-CPU" in kind:
                    asked += ", and each value once per CPU"
                fit = max(1, min(entries // 2, (64 << 20) // per_entry))
                fit = 1 << (fit.bit_length() - 1)
                fix = (
                    f"give it fewer entries: {entries:,} x {per_entry} bytes needs "
                    f"{_gib(total)}; 1 << {fit.bit_length() - 1} ({fit:,} entries) would need "
                    f"{_gib(fit * per_entry)}"
                )
            asked += ")"
    return (
        f"the kernel refused to create map {name}{asked}: {errno_text}. "
        f"The C code compiled; to fix it, {fix}."
    )


def compile_source(bcc, src: Source, cflags: list[str] | None = None, cache: bool = True):
    """Compile (in the compile process, or from the cache) and load the maps: a BCC
    ``BPF`` object (loader.py) with nothing loaded or attached yet (see ``autoload``).

    CompileError quotes the user's own lines; VerifierError the verifier's last ones.
    If the layout prelude (``Source.use_layout``) is what breaks the compile, the
    program is compiled without it, as bcc would, and ``src.layout`` is then empty.
    ``cache=False`` neither reads nor writes the cache of compiled programs.
    """
    try:
        return _compile(bcc, src, cflags, cache)
    except CompileError as e:
        if not src.layout.corrected or "no member named" not in str(e):
            raise
    # A header reached a member the redefinition lacks (a member named through a
    # macro, say): compile as bcc would; the caller warns as for any wrong layout.
    src.use_layout(Prelude())
    return _compile(bcc, src, cflags, cache)


def _compile(bcc, src: Source, cflags: list[str] | None, cache: bool):
    from . import compiler, loader

    flags = ["-w", *(cflags or [])]
    try:
        code = compiler.compiled(src.final, flags, cache)
    except compiler.Failed as e:
        raise _explain_failure(src, e) from None
    try:
        b = loader.load(bcc, code)
    except loader.MapRefusedByKernel as e:
        raise MapRefused(explain_map_refused(src, e.name, os.strerror(e.errno))) from None
    b.compiled_from = (src.final, flags)  # for the verifier's annotated log, if it says no
    return b


def _explain_failure(src: Source, e) -> Exception:
    """One clear error for a compile that gave no program, however it failed."""
    refused = _MAP_REFUSED.search(e.stderr)
    if refused:
        # It compiled; creating a map in the kernel is what failed.
        return MapRefused(explain_map_refused(src, refused["name"], refused["why"]))
    if e.died:
        return CompileError(explain_backend_crash(src, e.stderr, e.died))
    if "Failed to compile" in str(e):
        return CompileError(explain_compile_error(src, e.stderr))
    return CompileError(f"BCC failed: {e}\n{e.stderr[-2000:]}")


def verifier_error(bpf, e: Exception, stderr: str = "") -> VerifierError:
    """The verifier said no to a function of ``bpf``: its log, quoting the C source
    where BCC's compile process can load it with line info (only on this slow path)."""
    log = getattr(e, "log", "") or stderr
    compiled_from = getattr(bpf, "compiled_from", None)
    if getattr(e, "prog_type", None) is not None and compiled_from is not None:
        from . import compiler

        text, flags = compiled_from
        try:
            annotated = compiler.compiler().compile(text, flags, verify=(e.name, e.prog_type))
        except compiler.Failed:
            annotated = ""
        if "processed" in annotated or "invalid" in annotated.lower():
            log = annotated
    return VerifierError(explain_verifier_error(log, e))


def autoload(bcc, b) -> None:
    """Attach the functions named the bcc way (kprobe__..., TRACEPOINT_PROBE).

    Done after the output buffers are open: a record sent before then fails (ENOENT).
    On failure everything of ``b`` is freed.
    """
    try:
        with capture_stderr() as err:
            b._trace_autoload()
    except BaseException as e:
        b.cleanup()
        if isinstance(e, Exception) and "Failed to load" in str(e):
            raise verifier_error(b, e, err.text) from None
        raise


def load_or_explain(bpf, fn_name: str, prog_type: int):
    """Load one function as a program; VerifierError with the log's tail on rejection."""
    try:
        with capture_stderr() as err:
            return bpf.load_func(fn_name, prog_type)
    except Exception as e:  # noqa: BLE001
        if "Failed to load" in str(e) or "Permission denied" in str(e) or "Invalid" in str(e):
            raise verifier_error(bpf, e, err.text) from None
        raise
