"""Kernel struct layouts taken from the running kernel's BTF, not from the headers.

BCC turns ``t->real_parent->tgid`` into reads at offsets clang computes from the
kernel headers. When those headers were borrowed from another kernel (another
version or configuration), the offsets are wrong and the program reads garbage,
silently. The running kernel's BTF knows the true layouts, so for each kernel
struct a program reads through, we write a replacement definition from BTF and
hide the headers' own::

    #define task_struct __ebpfkit_hdr_task_struct   // the headers' definition is renamed
    #include <linux/sched.h>                          // the program's own #include lines
    #undef task_struct
    struct task_struct {                              // only the members the program names,
        char __ebpfkit_pad0[1264];                    // each at its BTF offset
        int pid; ...
    } __attribute__((packed));
    _Static_assert(__builtin_offsetof(struct task_struct, pid) == 1264, ...);

The rename touches only the headers (every token ``task_struct`` in them, which
keeps them consistent with themselves); the program's own code, after the
``#undef``, sees the exact definition under the real name. Members inside
anonymous structs and unions become plain members at their true offsets (so
BCC's rewriter never walks nested anonymous records), members that overlap (an
anonymous union) go into a small union of padded structs, and embedded structs
reached with ``.`` get exact definitions of their own. The static asserts make
clang check every offset and size against BTF: a wrong layout fails to compile
instead of reading garbage.

Only what needs it is replaced: the headers' own layout is measured first (one
compile of the program's #include lines, run once) and a struct whose members
already sit where BTF says keeps the headers' definition.

Not covered: bitfields (a struct whose named member is a bitfield keeps the
headers' layout, with a note); members spelled through the headers' own macros
(``sk->sk_family`` is ``sk->__sk_common.skc_family``: the program then fails to
compile, and should be compiled without the prelude); kernel structs reached
without their names or members appearing in the source.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from .btf import Btf
from .layout import _ABI_STRUCTS

__all__ = ["corrected_structs", "exact_prelude", "hoisted_directives"]

HEADER_PREFIX = "__ebpfkit_hdr_"

# BTF kinds used here (include/uapi/linux/btf.h).
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FLOAT, _TYPE_TAG, _ENUM64 = 9, 10, 11, 16, 18, 19
_QUALIFIERS = {_VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
_RECORDS = {_STRUCT: "struct", _UNION: "union"}
_POINTER_SIZE = 8  # every 64-bit kernel BPF runs on

_INT_OF_SIZE = {1: "char", 2: "short", 4: "int", 8: "long long"}


@dataclass
class _Field:
    """A member the program names, with its offset from the start of its record."""

    name: str
    offset: int  # bytes
    tid: int
    bitfield: bool = False


@dataclass
class _Record:
    """A struct or union the program reads, and what we need to know to rewrite it."""

    tag: str
    kind: str
    tid: int
    size: int
    fields: list[_Field]
    by_value: set[str] = field(default_factory=set)  # records embedded in a named member
    pointed: set[str] = field(default_factory=set)  # records a named member points to


class _Types:
    """Type-id level access to a Btf.

    ``Btf``'s public API speaks in names and offsets; writing C declarations
    needs the type graph itself, so this reaches into its parsed arrays.
    """

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        self.w = btf._words
        self.starts = btf._starts

    def kind(self, tid: int) -> int:
        return self.btf._kind(tid)

    def ref(self, tid: int) -> int:
        return self.w[self.starts[tid] + 2]

    def name(self, tid: int) -> str:
        off = self.w[self.starts[tid]] if tid else 0
        return self.btf._str(off) if off else ""

    def unqualified(self, tid: int) -> int:
        while self.kind(tid) in _QUALIFIERS:
            tid = self.ref(tid)
        return tid

    def resolved(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type that gives the layout."""
        return self.btf._strip(tid)

    def lookup(self, tag: str) -> int | None:
        return self.btf._structs.get(tag) or self.btf._unions.get(tag)

    def array(self, tid: int) -> tuple[int, int]:
        i = self.starts[tid]
        return self.w[i + 3], self.w[i + 5]

    def size(self, tid: int) -> int:
        tid = self.resolved(tid)
        k = self.kind(tid)
        if k == _PTR:
            return _POINTER_SIZE
        if k == _ARRAY:
            elem, n = self.array(tid)
            return self.size(elem) * n
        if k in (_INT, _ENUM, _ENUM64, _STRUCT, _UNION, _FLOAT):
            return self.ref(tid)  # the size word
        return 0

    def flat_fields(self, tid: int, base: int = 0) -> list[_Field]:
        """Members of a record, with those of anonymous members lifted up, as C sees them."""
        out = []
        for name, mtid, bits, bitfield in self.btf._members(tid):
            inner = self.resolved(mtid)
            if not name and self.kind(inner) in _RECORDS:
                out += self.flat_fields(inner, base + bits // 8)
            elif name:
                odd = bool(bitfield) or bits % 8 != 0
                out.append(_Field(name, base + bits // 8, mtid, odd))
        return out

    def record_target(self, tid: int) -> tuple[int, bool]:
        """(record type id or 0, reached by value?) at the end of arrays and pointers."""
        by_value = True
        for _ in range(16):
            tid = self.resolved(tid)
            k = self.kind(tid)
            if k == _ARRAY:
                tid = self.array(tid)[0]
            elif k == _PTR:
                tid, by_value = self.ref(tid), False
            elif k in _RECORDS:
                return tid, by_value
            else:
                return 0, by_value
        return 0, by_value


# ------------------------------------------------------------------ the source


_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)


def _strip_comments(source: str, strings: bool = False) -> str:
    """Comments blanked, newlines kept (so lines still line up); string literals
    emptied too if ``strings`` (their text is not code)."""

    def blank(m: re.Match) -> str:
        text = m.group(0)
        if text[0] == '"':
            return '""' if strings else text
        return re.sub(r"[^\n]", " ", text)

    return _COMMENT_OR_STRING.sub(blank, source)


def _names_used(code: str) -> set[str]:
    """Every member name the program writes after ``->`` or ``.`` (calls excluded)."""
    names = set(re.findall(r"(?:->|\.)\s*([A-Za-z_]\w*)\b(?!\s*\()", code))
    for path in re.findall(r"offsetof\s*\(\s*(?:struct|union)\s+\w+\s*,\s*([\w.\s]+)\)", code):
        names.update(p.strip() for p in path.split("."))
    return names


def _records(code: str) -> tuple[set[str], set[str]]:
    """(kernel struct and union tags the program names, tags it defines itself)."""
    named = set(re.findall(r"\b(?:struct|union)\s+([A-Za-z_]\w*)", code))
    defined = set(re.findall(r"\b(?:struct|union)\s+([A-Za-z_]\w*)\s*\{", code))
    kernel = {
        tag
        for tag in named - defined - _ABI_STRUCTS
        if not tag.startswith(("bpf_", "tracepoint__", "__ebpfkit"))
    }
    return kernel, defined


def hoisted_directives(code: str) -> str:
    """The program's ``#include`` lines, with the ``#define``/``#undef`` lines before them.

    A header may depend on a macro defined just above it (``KBUILD_MODNAME``),
    so those come along, in order. They run again later, in the program itself:
    include guards make that harmless, and an identical redefinition is legal C.
    """
    lines = code.split("\n")
    last = max((i for i, s in enumerate(lines) if re.match(r"\s*#\s*include\b", s)), default=-1)
    out: list[str] = []
    i = 0
    while i <= last:
        keep = re.match(r"\s*#\s*(?:include|define|undef)\b", lines[i])
        while True:
            if keep:
                out.append(lines[i])
            if not lines[i].endswith("\\") or i + 1 >= len(lines):
                break
            i += 1
        i += 1
    return "\n".join(out)


# ------------------------------------------------------------------ what to rewrite


def _plan(types: _Types, roots: set[str], names: set[str], exclude: set[str]) -> dict[str, _Record]:
    """The records the program reads members of, found by following named members.

    We cannot type-check C here, so a name counts as used in every record that
    has it: that may define a member the program never reads, at its true
    offset, which is harmless. Tags in ``exclude`` (the program's own structs
    and ABI structs) are never followed.
    """
    plan: dict[str, _Record] = {}
    todo = [(tag, False) for tag in sorted(roots)]
    while todo:
        tag, needed = todo.pop()
        if tag in plan or tag in exclude:
            continue
        tid = types.lookup(tag)
        if tid is None:
            continue
        fields = [f for f in types.flat_fields(tid) if f.name in names]
        if not fields and not needed:
            continue  # named, or pointed to, but no member of it is read
        rec = _Record(tag, _RECORDS[types.kind(tid)], tid, types.size(tid), fields)
        for f in fields:
            for target, by_value in _record_targets(types, f.tid, names):
                target_tag = types.name(target)
                (rec.by_value if by_value else rec.pointed).add(target_tag)
                # An embedded record must be laid out exactly even if the
                # program reads nothing inside it: its size places what follows.
                todo.append((target_tag, by_value))
        plan[tag] = rec
    return plan


def _record_targets(types: _Types, tid: int, names: set[str]) -> list[tuple[int, bool]]:
    """Named records a member's type leads to, through anonymous records it embeds."""
    target, by_value = types.record_target(tid)
    if not target:
        return []
    if types.name(target):
        return [(target, by_value)]
    if not by_value:
        return []  # a pointer to an anonymous record: written as void *
    out = []
    for f in types.flat_fields(target):
        if f.name in names:
            out += _record_targets(types, f.tid, names)
    return out


# ------------------------------------------------------------------ the headers' layout


def _header_query(plan: dict[str, _Record]) -> list[tuple[str, str, str | None]]:
    """(kind, tag, member or None for sizeof) for every record and member used.
    Bitfields are left out: offsetof cannot take them."""
    return [
        (rec.kind, tag, name)
        for tag, rec in sorted(plan.items())
        for name in [None, *sorted({f.name for f in rec.fields if not f.bitfield})]
    ]


_Query = tuple[tuple[str, str, "str | None"], ...]
_Layout = dict[tuple[str, "str | None"], int]


@functools.lru_cache(maxsize=64)
def _header_layout(directives: str, query: _Query) -> tuple[_Layout | None, frozenset[int]]:
    """Sizes and member offsets of records, as the code clang generates for the
    headers (``directives``) uses them, read back by running it once.

    Returns (values, set()) or, if it does not compile, (None, the queries clang
    rejected: records or members the headers lack). Each query sits on its own
    line, so clang's line numbers say which.
    """
    from . import _bcc
    from ._stderr import capture_stderr
    from .checks import test_run

    # Offsets as the generated code uses them, not as offsetof folds them: BCC
    # builds LLVM IR for the host (x86_64) and emits BPF with BPF's data layout,
    # which aligns integers wider than 64 bits (bitfield storage, __int128) to 16
    # bytes. Then clang's offsetof (from its AST) and the real reads disagree;
    # that is the 16-byte error seen with bpftool's vmlinux.h (its `long: 64;`
    # padding). An address computed from a pointer clang cannot fold goes
    # through the IR, like the program's own reads.
    lines = [
        directives,
        f"BPF_ARRAY(__ebpfkit_layout, u64, {len(query)});",
        "int __ebpfkit_layout_probe(struct __sk_buff *skb) {",
        "    u32 k; u64 v; u64 p = skb->len;  /* any address clang cannot fold */",
    ]
    first = sum(part.count("\n") + 1 for part in lines) + 1  # line number of query 0
    for i, (kind, tag, name) in enumerate(query):
        what = f"({kind} {tag} *)p + 1" if name is None else f"&(({kind} {tag} *)p)->{name}"
        lines.append(f"    k = {i}; v = (u64)({what}) - p; __ebpfkit_layout.update(&k, &v);")
    lines += ["    return 0;", "}"]
    try:
        bcc = _bcc.bcc()
    except Exception:  # noqa: BLE001 - no BCC: the headers' layout stays unknown
        return None, frozenset()
    try:
        with capture_stderr() as err:
            b = bcc.BPF(text="\n".join(lines), cflags=["-w"])
    except Exception:  # noqa: BLE001 - BCC raises plain Exception
        at = {int(n) - first for n in re.findall(r"main\.c:(\d+):\d+: error", err.text)}
        return None, frozenset(at & set(range(len(query))))
    try:
        fn = b.load_func("__ebpfkit_layout_probe", bcc.BPF.SOCKET_FILTER)
        test_run(fn.fd)
        table = b["__ebpfkit_layout"]
        values = {(tag, name): table[table.Key(i)].value for i, (_, tag, name) in enumerate(query)}
        return values, frozenset()
    except Exception:  # noqa: BLE001 - cannot run here: the headers' layout stays unknown
        return None, frozenset()
    finally:
        b.cleanup()


def _header_differences(
    directives: str, plan: dict[str, _Record]
) -> dict[str, list[tuple[str, int, int]] | None]:
    """Per record: [(member or "(size)", headers, kernel)] where they differ, or
    None when the headers cannot say (they lack the record or a member)."""
    query = _header_query(plan)
    layout, rejected = _header_layout(directives, tuple(query))
    lacking = {query[i][1] for i in rejected}
    if layout is None and lacking:
        # Ask again without the records the headers lack (one such spoils the lot).
        query = [q for q in query if q[1] not in lacking]
        layout, _ = _header_layout(directives, tuple(query)) if query else (None, None)
    out: dict[str, list[tuple[str, int, int]] | None] = {}
    for tag, rec in plan.items():
        if layout is None or tag in lacking:
            out[tag] = None
            continue
        diffs = (
            [("(size)", layout[(tag, None)], rec.size)] if layout[(tag, None)] != rec.size else []
        )
        for f in rec.fields:
            if not f.bitfield and layout[(tag, f.name)] != f.offset:
                diffs.append((f.name, layout[(tag, f.name)], f.offset))
        out[tag] = diffs
    return out


# ------------------------------------------------------------------ writing C


class _Writer:
    """C definitions for records, from BTF, with explicit padding."""

    def __init__(self, types: _Types, names: set[str]) -> None:
        self.t = types
        self.names = names
        self.pads = 0

    def pad(self, size: int) -> list[str]:
        if size <= 0:
            return []
        self.pads += 1
        return [f"char __ebpfkit_pad{self.pads}[{size}];"]

    def body(self, tid: int, size: int) -> list[str]:
        """Members the program names, at their offsets; overlapping ones in a union."""
        fields = sorted(
            (f for f in self.t.flat_fields(tid) if f.name in self.names), key=lambda f: f.offset
        )
        out: list[str] = []
        cursor, i = 0, 0
        while i < len(fields):
            group, end = [fields[i]], fields[i].offset + self.t.size(fields[i].tid)
            i += 1
            while i < len(fields) and fields[i].offset < end:
                group.append(fields[i])
                end = max(end, fields[i].offset + self.t.size(fields[i].tid))
                i += 1
            start = group[0].offset
            out += self.pad(start - cursor)
            if len(group) == 1:
                out.append(self.member(group[0]))
            else:
                # Members of an anonymous union: each in its own padded struct.
                out.append("union {")
                for f in group:
                    inner = [*self.pad(f.offset - start), self.member(f)]
                    out.append("    struct { " + " ".join(inner) + " } __attribute__((packed));")
                out.append("};")
            cursor = max(cursor, end)
        out += self.pad(size - cursor)
        return out

    def member(self, f: _Field) -> str:
        decl, note = self.decl(f.tid, f.name)
        return f"{decl}; /* {note + ', ' if note else ''}offset {f.offset} */"

    def decl(self, tid: int, name: str) -> tuple[str, str]:
        """(C declaration of ``name`` with type ``tid``, the BTF type name if it differs)."""
        t = self.t
        tid = t.unqualified(tid)  # const/volatile change no layout
        note = t.btf.type_name(tid) if t.kind(tid) == _TYPEDEF else ""
        tid = t.resolved(tid)
        k = t.kind(tid)
        if k == _ARRAY:
            dims = ""
            while k == _ARRAY:
                elem, n = t.array(tid)
                dims += f"[{n}]"
                tid = t.resolved(elem)
                k = t.kind(tid)
            inner, _ = self.decl(tid, name)
            return inner + dims, note or t.btf.type_name(tid) + dims
        if k in _RECORDS:
            tag = t.name(tid)
            if tag:
                return f"{_RECORDS[k]} {tag} {name}", note
            # An anonymous record used by value (kuid_t, atomic_t, `struct { } b`): inline.
            body = " ".join(self.body(tid, t.size(tid)))
            return f"{_RECORDS[k]} {{ {body} }} __attribute__((packed)) {name}", note
        if k == _INT and t.size(tid) > 8:
            # BCC misplaces 128-bit integers (see _header_layout): keep the bytes.
            return f"unsigned long long {name}[{t.size(tid) // 8}]", note or t.name(tid)
        return f"{self.scalar(tid)} {name}", note

    def scalar(self, tid: int) -> str:
        """A type spelled without anything the headers must define."""
        t = self.t
        k = t.kind(tid)
        if k in (_INT, _FLOAT):
            return t.name(tid)
        if k in (_ENUM, _ENUM64):
            signed = bool(t.w[t.starts[tid] + 1] >> 31)
            base = _INT_OF_SIZE.get(t.size(tid), "int")
            return base if signed else f"unsigned {base}"
        if k == _PTR:
            return self.pointee(t.ref(tid)) + " *"
        return "void"

    def pointee(self, tid: int) -> str:
        t = self.t
        tid = t.resolved(tid)
        k = t.kind(tid)
        if k in _RECORDS or k == _FWD:
            tag = t.name(tid)
            if k == _FWD:
                kind = "union" if t.w[t.starts[tid] + 1] >> 31 else "struct"
            else:
                kind = _RECORDS[k]
            return f"{kind} {tag}" if tag else "void"
        if k in (_INT, _FLOAT, _ENUM, _ENUM64, _PTR):
            return self.scalar(tid)
        return "void"  # functions, arrays, void: the address is what matters

    def record(self, rec: _Record) -> list[str]:
        self.pads = 0
        body = self.body(rec.tid, rec.size)
        if rec.kind == "union":
            body = ["struct {", *("    " + line for line in body), "} __attribute__((packed));"]
        c = f"{rec.kind} {rec.tag}"
        lines = [f"{c} {{  /* {rec.size} bytes in the running kernel */"]
        lines += ["    " + line for line in body]
        lines.append("} __attribute__((packed));")
        lines.append(f'_Static_assert(sizeof({c}) == {rec.size}, "ebpfkit: size of {c}");')
        for name, offset in sorted({(f.name, f.offset) for f in rec.fields}, key=lambda x: x[1]):
            lines.append(
                f"_Static_assert(__builtin_offsetof({c}, {name}) == {offset},"
                f' "ebpfkit: {c}.{name}");'
            )
        return lines


# ------------------------------------------------------------------ the prelude


def exact_prelude(source: str, btf: Btf | None = None) -> tuple[str, list[str]]:
    """C text to put before everything else in the program, and notes for the user.

    Returns ``("", [])`` when nothing needs fixing: the program reads no kernel
    struct, the kernel has no BTF, or the headers already agree with it. The
    prelude includes the program's own ``#include`` lines, so it must come
    before anything that could include a kernel header.
    """
    code = _strip_comments(source)
    bare = _strip_comments(source, strings=True)
    names = _names_used(bare)
    roots, defined = _records(bare)
    if not names or not roots:
        return "", []
    if btf is None:
        try:
            btf = Btf.load()
        except OSError:
            return "", []
    types = _Types(btf)
    plan = _plan(types, roots, names, defined | _ABI_STRUCTS)
    if not plan:
        return "", []

    directives = hoisted_directives(code)
    differences = _header_differences(directives, plan)
    replace = {tag for tag, diff in differences.items() if diff != []}
    if not replace:
        return "", []
    # Closing over what the rename touches: a record kept from the headers would
    # point to (or embed) the headers' renamed, wrong-layout record, and one of
    # its members named like a renamed tag would be renamed too.
    grew = True
    while grew:
        grew = False
        for tag, rec in plan.items():
            touches = rec.by_value | rec.pointed | {f.name for f in rec.fields}
            if tag not in replace and touches & replace:
                replace.add(tag)
                grew = True
    # Bitfields cannot be placed with char padding; such a record keeps the
    # headers' layout, and so does any record that embeds it by value.
    notes: list[str] = []
    kept: set[str] = set()
    for tag in sorted(replace):
        bits = sorted({f.name for f in plan[tag].fields if f.bitfield})
        if bits:
            kept.add(tag)
            notes.append(
                f"{plan[tag].kind} {tag}: not corrected: {', '.join(bits)} is a bitfield, which"
                " a padded definition cannot place; its reads keep the headers' (wrong) layout"
                " (read the containing bytes with bpf_probe_read_kernel at the BTF offset)"
            )
    grew = True
    while grew:
        grew = False
        for tag in sorted(replace - kept):
            if plan[tag].by_value & kept:
                kept.add(tag)
                grew = True
                notes.append(
                    f"{plan[tag].kind} {tag}: not corrected: it embeds "
                    f"{', '.join(sorted(plan[tag].by_value & kept))}, which keeps the headers'"
                    " layout"
                )
    replace -= kept
    if not replace:
        return "", notes

    writer = _Writer(types, names)
    out = [
        "/* ebpfkit: kernel structs laid out as the running kernel's BTF says; the",
        "   headers' definitions of them are renamed " + HEADER_PREFIX + "* */",
    ]
    out += [f"#define {tag} {HEADER_PREFIX}{tag}" for tag in sorted(replace)]
    out += [directives] if directives else []
    out += [f"#undef {tag}" for tag in sorted(replace)]
    for tag in _dependency_order(plan, replace):
        rec = plan[tag]
        out += writer.record(rec)
        fields = sorted({f.name for f in rec.fields}, key=lambda n: _offset_of(rec, n))
        diff = differences[tag]
        if diff is None:
            why = "the included headers do not define it (or lack a member)"
        elif diff:
            shown = [f"{m} {h} -> {k}" for m, h, k in diff[:3]]
            why = "headers' offsets differ: " + ", ".join(shown)
        else:
            why = "it leads to a corrected struct"
        read = ", ".join(fields) if fields else "its size"
        notes.append(f"{rec.kind} {tag}: {read} read at the running kernel's offsets (BTF); {why}")
    out.append("/* ebpfkit: end of exact layouts */")
    return "\n".join(out) + "\n", notes


def corrected_structs(prelude: str) -> set[str]:
    """Tags whose definitions the prelude replaced (their layout warning is moot)."""
    return set(re.findall(r"^#define (\w+) " + HEADER_PREFIX, prelude, re.M))


def _offset_of(rec: _Record, name: str) -> int:
    return min(f.offset for f in rec.fields if f.name == name)


def _dependency_order(plan: dict[str, _Record], replace: set[str]) -> list[str]:
    """Records to define, each after the records it embeds by value (C needs them complete)."""
    order: list[str] = []

    def visit(tag: str) -> None:
        if tag in order:
            return
        for dep in sorted(plan[tag].by_value & replace):
            visit(dep)
        order.append(tag)

    for tag in sorted(replace):
        visit(tag)
    return order
