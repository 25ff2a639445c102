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

Only what needs it is replaced: the headers' own layout is measured first
(``layout.header_layout``: one compile of the program's #include lines, run
once) and a struct whose members already sit where BTF says keeps the headers'
definition.

:func:`build_prelude` returns a :class:`Prelude`: the C text, the notes for the
user, and what it replaced (each struct with its BTF size and members, and how
the headers differ), so nobody needs to read the text back::

    prelude = build_prelude(program.includes(source) + source)
    src.use_layout(prelude)                     # program.Source: text in front
    prelude.corrected                           # {"task_struct", ...}

Not covered: bitfields (a struct whose named member is a bitfield keeps the
headers' layout, with a note); members spelled through the headers' own macros
(``sk->sk_family`` is ``sk->__sk_common.skc_family``: the program then fails to
compile, and should be compiled without the prelude); kernel structs reached
without their names or members appearing in the source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import ctext
from .btf import Btf, Kind
from .layout import ABI_STRUCTS, records_layout

__all__ = [
    "Prelude",
    "Replaced",
    "build_prelude",
    "hoisted_directives",
]

HEADER_PREFIX = "__ebpfkit_hdr_"

_RECORDS = {Kind.STRUCT: "struct", Kind.UNION: "union"}
_INT_OF_SIZE = {1: "char", 2: "short", 4: "int", 8: "long long"}


@dataclass(frozen=True)
class Replaced:
    """A kernel struct or union whose headers' definition the prelude replaced."""

    kind: str  # "struct" or "union"
    tag: str
    size: int  # bytes, in the running kernel
    members: tuple[tuple[str, int], ...]  # (name, BTF offset) the program reads, by offset
    # (member or "(size)", headers' offset, kernel's) where they differ; () if only
    # because it leads to a replaced record; None if the headers lack it (or a member).
    headers: tuple[tuple[str, int, int], ...] | None


@dataclass(frozen=True)
class Prelude:
    """C text to put before everything else in a program, and what it stands for.

    ``text`` redefines kernel structs from BTF ("" when nothing needs it);
    ``replaced`` are those structs; ``notes`` tell the user what was corrected,
    and what could not be. A false Prelude has no text (it may still have notes).
    """

    text: str = ""
    notes: tuple[str, ...] = ()
    replaced: tuple[Replaced, ...] = ()

    @property
    def corrected(self) -> frozenset[str]:
        """Tags whose headers' definitions were replaced (their layout warning is moot)."""
        return frozenset(r.tag for r in self.replaced)

    @property
    def lines(self) -> int:
        """Lines the text puts in front of the program."""
        return self.text.count("\n")

    def __bool__(self) -> bool:
        return bool(self.text)


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

    def members(self) -> list[tuple[str, int]]:
        """(name, offset) of each member read, by offset; at one offset (a union's
        members), in the order the kernel declares them."""
        unique = dict.fromkeys((f.name, f.offset) for f in self.fields)
        return sorted(unique, key=lambda member: member[1])


def _flat_fields(btf: Btf, tid: int) -> list[_Field]:
    """Members of a record, with those of anonymous members lifted up, as C sees them."""
    return [
        _Field(
            m.name, m.offset_bits // 8, m.type_id, bool(m.bitfield_size) or m.offset_bits % 8 != 0
        )
        for m in btf.flat_members(tid)
    ]


def _record_target(btf: Btf, tid: int) -> tuple[int, bool]:
    """(record type id or 0, reached by value?) at the end of arrays and pointers."""
    by_value = True
    for _ in range(16):
        tid = btf.resolve(tid)
        k = btf.kind(tid)
        if k == Kind.ARRAY:
            tid = btf.array(tid)[0]
        elif k == Kind.PTR:
            tid, by_value = btf.referenced(tid), False
        elif k in _RECORDS:
            return tid, by_value
        else:
            return 0, by_value
    return 0, by_value


# ------------------------------------------------------------------ the source


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
        for tag in named - defined - ABI_STRUCTS
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


def _plan(btf: Btf, roots: set[str], names: set[str], exclude: set[str]) -> dict[str, _Record]:
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
        tid = btf.record_id(tag)
        if tid is None:
            continue
        fields = [f for f in _flat_fields(btf, tid) if f.name in names]
        if not fields and not needed:
            continue  # named, or pointed to, but no member of it is read
        rec = _Record(tag, _RECORDS[btf.kind(tid)], tid, btf.size(tid), fields)
        for f in fields:
            for target, by_value in _record_targets(btf, f.tid, names):
                target_tag = btf.name(target)
                (rec.by_value if by_value else rec.pointed).add(target_tag)
                # An embedded record must be laid out exactly even if the
                # program reads nothing inside it: its size places what follows.
                todo.append((target_tag, by_value))
        plan[tag] = rec
    return plan


def _record_targets(btf: Btf, tid: int, names: set[str]) -> list[tuple[int, bool]]:
    """Named records a member's type leads to, through anonymous records it embeds."""
    target, by_value = _record_target(btf, tid)
    if not target:
        return []
    if btf.name(target):
        return [(target, by_value)]
    if not by_value:
        return []  # a pointer to an anonymous record: written as void *
    out = []
    for f in _flat_fields(btf, target):
        if f.name in names:
            out += _record_targets(btf, f.tid, names)
    return out


# ------------------------------------------------------------------ the headers' layout

# Per record: [(member or "(size)", headers, kernel)] where they differ, or None
# when the headers cannot say (they lack the record or a member).
_Differences = dict[str, "list[tuple[str, int, int]] | None"]


def _header_differences(directives: str, plan: dict[str, _Record]) -> _Differences:
    """How the headers' layout (measured by ``layout.header_layout``) differs from BTF.
    Bitfields are left out of the measure: no address can be taken of them."""
    query = [
        (rec.kind, tag, name)
        for tag, rec in sorted(plan.items())
        for name in [None, *sorted({f.name for f in rec.fields if not f.bitfield})]
    ]
    layout, lacking = records_layout(directives, query)
    out: _Differences = {}
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

    def __init__(self, btf: Btf, names: set[str]) -> None:
        self.btf = btf
        self.names = names
        self.pads = 0

    def pad(self, size: int) -> list[str]:
        if size <= 0:
            return []
        self.pads += 1
        return [f"char __ebpfkit_pad{self.pads}[{size}];"]

    def body(self, tid: int, size: int) -> list[str]:
        """Members the program names, at their offsets; overlapping ones in a union."""
        size_of = self.btf.size
        fields = sorted(
            (f for f in _flat_fields(self.btf, tid) if f.name in self.names),
            key=lambda f: f.offset,
        )
        out: list[str] = []
        cursor, i = 0, 0
        while i < len(fields):
            group, end = [fields[i]], fields[i].offset + size_of(fields[i].tid)
            i += 1
            while i < len(fields) and fields[i].offset < end:
                group.append(fields[i])
                end = max(end, fields[i].offset + size_of(fields[i].tid))
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
        btf = self.btf
        tid = btf.unqualified(tid)  # const/volatile change no layout
        note = btf.type_name(tid) if btf.kind(tid) == Kind.TYPEDEF else ""
        tid = btf.resolve(tid)
        k = btf.kind(tid)
        if k == Kind.ARRAY:
            dims = ""
            while k == Kind.ARRAY:
                elem, n = btf.array(tid)
                dims += f"[{n}]"
                tid = btf.resolve(elem)
                k = btf.kind(tid)
            inner, _ = self.decl(tid, name)
            return inner + dims, note or btf.type_name(tid) + dims
        if k in _RECORDS:
            tag = btf.name(tid)
            if tag:
                return f"{_RECORDS[k]} {tag} {name}", note
            # An anonymous record used by value (kuid_t, atomic_t, `struct { } b`): inline.
            body = " ".join(self.body(tid, btf.size(tid)))
            return f"{_RECORDS[k]} {{ {body} }} __attribute__((packed)) {name}", note
        if k == Kind.INT and btf.size(tid) > 8:
            # BCC misplaces 128-bit integers (see layout.header_layout): keep the bytes.
            return f"unsigned long long {name}[{btf.size(tid) // 8}]", note or btf.name(tid)
        return f"{self.scalar(tid)} {name}", note

    def scalar(self, tid: int) -> str:
        """A type spelled without anything the headers must define."""
        btf = self.btf
        k = btf.kind(tid)
        if k in (Kind.INT, Kind.FLOAT):
            return btf.name(tid)
        if k in (Kind.ENUM, Kind.ENUM64):
            base = _INT_OF_SIZE.get(btf.size(tid), "int")
            return base if btf.is_signed(tid) else f"unsigned {base}"
        if k == Kind.PTR:
            return self.pointee(btf.referenced(tid)) + " *"
        return "void"

    def pointee(self, tid: int) -> str:
        btf = self.btf
        tid = btf.resolve(tid)
        k = btf.kind(tid)
        if k in _RECORDS or k == Kind.FWD:
            # "struct tag" or "union tag" (a forward declaration's flag says which).
            return btf.type_name(tid) if btf.name(tid) else "void"
        if k in (Kind.INT, Kind.FLOAT, Kind.ENUM, Kind.ENUM64, Kind.PTR):
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
        for name, offset in rec.members():
            lines.append(
                f"_Static_assert(__builtin_offsetof({c}, {name}) == {offset},"
                f' "ebpfkit: {c}.{name}");'
            )
        return lines


# ------------------------------------------------------------------ the prelude


def build_prelude(source: str, btf: Btf | None = None) -> Prelude:
    """The prelude that makes ``source``'s kernel struct reads exact, with notes.

    It is empty (``Prelude()``) when nothing needs fixing: the program reads no
    kernel struct, the kernel has no BTF, or the headers already agree with it.
    Its text includes the program's own ``#include`` lines, so it must come
    before anything that could include a kernel header.
    """
    code = ctext.blank(source, literals=False)  # #include "..." lines keep their names
    bare = ctext.blank(source)
    names = _names_used(bare)
    roots, defined = _records(bare)
    if not names or not roots:
        return Prelude()
    if btf is None:
        try:
            btf = Btf.load()
        except OSError:
            return Prelude()
    plan = _plan(btf, roots, names, defined | ABI_STRUCTS)
    if not plan:
        return Prelude()
    directives = hoisted_directives(code)
    differences = _header_differences(directives, plan)
    replace, notes = _to_replace(plan, differences)
    if not replace:
        return Prelude(notes=tuple(notes))
    return _write(_Writer(btf, names), plan, replace, differences, directives, notes)


def _to_replace(plan: dict[str, _Record], differences: _Differences) -> tuple[set[str], list[str]]:
    """(records to redefine, notes on those that must keep the headers' layout)."""
    replace = {tag for tag, diff in differences.items() if diff != []}
    if not replace:
        return replace, []
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
    return replace - kept, notes


def _write(
    writer: _Writer,
    plan: dict[str, _Record],
    replace: set[str],
    differences: _Differences,
    directives: str,
    notes: list[str],
) -> Prelude:
    """The prelude's text: the headers' definitions renamed, then ours from BTF."""
    out = [
        "/* ebpfkit: kernel structs laid out as the running kernel's BTF says; the",
        "   headers' definitions of them are renamed " + HEADER_PREFIX + "* */",
    ]
    out += [f"#define {tag} {HEADER_PREFIX}{tag}" for tag in sorted(replace)]
    out += [directives] if directives else []
    out += [f"#undef {tag}" for tag in sorted(replace)]
    replaced = []
    for tag in _dependency_order(plan, replace):
        rec = plan[tag]
        out += writer.record(rec)
        diff = differences[tag]
        if diff is None:
            why = "the included headers do not define it (or lack a member)"
        elif diff:
            shown = [f"{m} {h} -> {k}" for m, h, k in diff[:3]]
            why = "headers' offsets differ: " + ", ".join(shown)
        else:
            why = "it leads to a corrected struct"
        members = rec.members()
        read = ", ".join(dict.fromkeys(name for name, _ in members)) if members else "its size"
        notes.append(f"{rec.kind} {tag}: {read} read at the running kernel's offsets (BTF); {why}")
        headers = None if diff is None else tuple(diff)
        replaced.append(Replaced(rec.kind, tag, rec.size, tuple(members), headers))
    out.append("/* ebpfkit: end of exact layouts */")
    return Prelude("\n".join(out) + "\n", tuple(notes), tuple(replaced))


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
