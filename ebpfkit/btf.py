"""Read struct layouts from the running kernel's BTF.

The headers BCC compiles against may describe another kernel's configuration,
so offsets clang computes from them can be wrong here; the kernel's own BTF
(``/sys/kernel/btf/vmlinux``) is the only source of its true struct layouts.
This module reads that blob (the raw format of the kernel's
``Documentation/bpf/btf.rst``) with the standard library alone::

    btf = Btf.load()
    btf.member_offset("task_struct", "pid")           # byte offset
    btf.member_offset("mm_struct", "mmap_base")       # found inside an anonymous struct
    btf.member_offset("task_struct", "se.vruntime")   # follows embedded structs
    btf.find_struct("task_struct").members            # [Member(name, offset_bits, ...)]

Writing C declarations needs the type graph itself; it is public too, by type id::

    tid = btf.record_id("task_struct")                # the struct (else union) of that name
    btf.kind(tid) == Kind.STRUCT; btf.size(tid)       # its kind and size in bytes
    btf.flat_members(tid)                             # members as C sees them, with type ids
    btf.resolve(m.type_id)                            # through typedefs and qualifiers

Only base BTF is read; split BTF (kernel modules, ``/sys/kernel/btf/<module>``)
numbers its types after vmlinux's and is not supported.
"""

from __future__ import annotations

import difflib
import enum
import functools
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["POINTER_SIZE", "VMLINUX", "Btf", "BtfLookupError", "Kind", "Member", "StructInfo"]

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F

# An array typecode of exactly 4 bytes ("I" on every usual platform).
_U32 = next(code for code in "IL" if array(code).itemsize == 4)

# A pointer's size: BTF records none, and every kernel BPF runs on is 64-bit.
POINTER_SIZE = 8


class Kind(enum.IntEnum):
    """BTF kinds, as numbered in include/uapi/linux/btf.h. ``Btf.kind`` returns
    these numbers as plain ints (a kind newer than this list stays a number); the
    members compare equal to them."""

    VOID = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# What follows each 12-byte type record, in 4-byte words: a fixed part, plus a
# part per vlen item. The type section can only be walked record by record, so
# these sizes are what turns a type id into its position.
_FIXED_WORDS = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Modifiers that do not change a type's layout: followed to reach a struct.
_TRANSPARENT = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
# Modifiers that change neither layout nor name: followed to reach a typedef.
_UNQUALIFIED = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
_QUALIFIERS = {Kind.CONST: "const", Kind.VOLATILE: "volatile", Kind.RESTRICT: "restrict"}
_RECORDS = (Kind.STRUCT, Kind.UNION)
# Kinds whose record holds their size in bytes.
_SIZED = frozenset({Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.STRUCT, Kind.UNION, Kind.FLOAT})


class BtfLookupError(KeyError):
    """A struct or member that the BTF does not have (a ``KeyError``)."""

    def __str__(self) -> str:
        # KeyError's own str() shows the repr of its argument, quotes and all.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Member:
    """One direct member of a struct or union, as BTF records it.

    An anonymous struct or union member has the name ``""``.
    ``bitfield_size`` is 0 for an ordinary (non-bitfield) member.
    ``type_id`` is the member's type, for the type-graph queries of ``Btf``.
    """

    name: str
    offset_bits: int
    bitfield_size: int
    type_name: str
    type_id: int = 0

    @property
    def offset(self) -> int:
        """Byte offset (rounded down for a bitfield)."""
        return self.offset_bits // 8


@dataclass(frozen=True)
class StructInfo:
    """A struct or union: its size in bytes and its direct members in order."""

    name: str
    size: int
    members: list[Member]
    kind: str = "struct"


class Btf:
    """A parsed raw BTF blob.

    Parsing walks the type section once to find where each type starts and to
    index struct and union names; members and type names are decoded only when
    asked for.
    """

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ValueError("not BTF: shorter than a BTF header")
        # The magic is written in the producer's byte order: it tells ours.
        (magic,) = struct.unpack_from("<H", data)
        if magic == _MAGIC:
            order = "<"
        elif magic == 0x9FEB:
            order = ">"
        else:
            raise ValueError(f"not BTF: magic 0x{magic:04x}, expected 0x{_MAGIC:04x}")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(order + "5I", data, 4)
        if hdr_len < 24:
            raise ValueError(f"not BTF: header length {hdr_len} is below 24 bytes")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(data) or strs_start + str_len > len(data) or type_len % 4:
            raise ValueError("not BTF: sections run past the end of the data")

        # One array of native words for the whole type section: indexing it is
        # several times faster than struct.unpack_from per field.
        words = array(_U32)
        words.frombytes(data[types_start : types_start + type_len])
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        self._words = words
        self._strs = bytes(data[strs_start : strs_start + str_len])
        self._layout = self._read_layout(data, order, hdr_len)

        # starts[type_id] = index in words of its record; id 0 is void.
        starts = array(_U32, [0])
        structs: dict[str, int] = {}
        unions: dict[str, int] = {}
        fixed, per_vlen = _FIXED_WORDS, _VLEN_WORDS
        struct_kind, union_kind = int(Kind.STRUCT), int(Kind.UNION)  # plain ints: faster here
        n_known = len(fixed)
        i, end = 0, len(words)
        while i < end:
            if i + 3 > end:
                break  # a truncated record: reported below
            starts.append(i)
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            if kind < n_known:
                extra = fixed[kind] + per_vlen[kind] * vlen
            else:
                extra = self._unknown_kind_words(kind, vlen, len(starts) - 1)
            if (kind == struct_kind or kind == union_kind) and words[i]:
                # Keep the first definition when a name repeats.
                index = structs if kind == struct_kind else unions
                name = self._str(words[i])
                if name not in index:
                    index[name] = len(starts) - 1
            i += 3 + extra
        if i != end:
            raise ValueError("not BTF: the last type record runs past the type section")
        self._starts = starts
        self._structs = structs
        self._unions = unions

    @classmethod
    def load(cls, path: str = VMLINUX) -> Btf:
        """Parse the BTF file at ``path``; parsed once per path, then cached."""
        return _load_cached(path)

    # -- public queries -------------------------------------------------

    def func_id(self, name: str) -> int | None:
        """The id of kernel function ``name`` (its FUNC record): what fentry, fexit and
        LSM programs are loaded against. A scan: asked once per such program."""
        func = int(Kind.FUNC)
        words, starts = self._words, self._starts
        for tid in range(1, len(starts)):
            i = starts[tid]
            if (words[i + 1] >> 24) & 0x1F == func and self._str(words[i]) == name:
                return tid
        return None

    def struct_names(self, kind: str = "struct") -> list[str]:
        """Names of all named structs (or unions, with ``kind="union"``), sorted."""
        return sorted(self._index(kind))

    def find_struct(self, name: str, kind: str = "struct") -> StructInfo | None:
        """The named struct (or union) with its direct members, or None.

        Members of anonymous nested structs are not flattened here: they sit
        under a member named ``""``; :meth:`member_offset` looks inside them.
        """
        tid = self._index(kind).get(name)
        if tid is None:
            return None
        return StructInfo(name=name, size=self.size(tid), members=self.members(tid), kind=kind)

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (e.g. ``"pid"``, ``"se.vruntime"``) in a struct.

        Each dotted step follows an embedded struct or union (never a pointer:
        that would be another object). Members of anonymous nested structs and
        unions are found as if they were direct members, as in C.

        Raises BtfLookupError (a KeyError) if the struct or a member is absent,
        naming close matches; ValueError for a bitfield, which has no byte offset.
        """
        tid = self.record_id(struct_name)
        if tid is None:
            close = difflib.get_close_matches(
                struct_name, list(self._structs) + list(self._unions), n=5
            )
            raise BtfLookupError(
                f"no struct or union {struct_name!r} in this BTF" + _did_you_mean(close)
            )
        where = f"struct {struct_name}"
        total_bits = 0
        bitfield = 0
        parts = path.split(".")
        for n, part in enumerate(parts):
            if n:
                # Step into the previous member's type: it must be a struct/union.
                tid = self._strip(tid)
                kind = self.kind(tid)
                if kind not in _RECORDS:
                    # A pointer leads to another object: its offset means nothing here.
                    why = " (a pointer, which is not followed)" if kind == Kind.PTR else ""
                    raise BtfLookupError(
                        f"{where} is {self.type_name(tid)}{why}, not a struct or union:"
                        f" cannot look up {part!r} in it"
                    )
            found = self._find_member(tid, part)
            if found is None:
                close = difflib.get_close_matches(part, self._member_names(tid), n=5)
                raise BtfLookupError(f"{where} has no member {part!r}" + _did_you_mean(close))
            bits, tid, bitfield = found
            total_bits += bits
            where = f"{struct_name}.{'.'.join(parts[: n + 1])}"
        if bitfield or total_bits % 8:
            raise ValueError(
                f"{where} is a bitfield ({bitfield} bits at bit {total_bits}):"
                " it has no byte offset; see find_struct(...).members"
            )
        return total_bits // 8

    def type_name(self, tid: int) -> str:
        """A readable C-like name for a type id: ``pid_t``, ``struct task_struct *``."""
        return self._type_name(tid, 0)

    # -- the type graph, by type id (0 is void) ---------------------------

    def record_id(self, name: str) -> int | None:
        """The type id of the struct named ``name``, else of the union; None if neither."""
        tid = self._structs.get(name)
        return tid if tid is not None else self._unions.get(name)

    def kind(self, tid: int) -> int:
        """The type's kind: a ``Kind`` number (``Kind.VOID`` for id 0)."""
        if tid == 0:
            return 0  # Kind.VOID
        return (self._words[self._starts[tid] + 1] >> 24) & 0x1F

    def name(self, tid: int) -> str:
        """The type's own name (a struct's tag, a typedef's name); "" if anonymous."""
        off = self._words[self._starts[tid]] if tid else 0
        return self._str(off) if off else ""

    def referenced(self, tid: int) -> int:
        """The type a pointer, typedef or qualifier refers to."""
        if self.kind(tid) not in _TRANSPARENT and self.kind(tid) != Kind.PTR:
            raise ValueError(f"BTF type {tid} ({self.type_name(tid)}) refers to no other type")
        return self._words[self._starts[tid] + 2]

    def resolve(self, tid: int) -> int:
        """Through typedefs and qualifiers to the type that gives the layout."""
        return self._strip(tid)

    def unqualified(self, tid: int) -> int:
        """Through const, volatile, restrict and type tags (not typedefs)."""
        for _ in range(64):  # a bound, in case of a malformed cycle
            if self.kind(tid) not in _UNQUALIFIED:
                return tid
            tid = self._words[self._starts[tid] + 2]
        raise ValueError(f"BTF type {tid}: modifier chain too long")

    def size(self, tid: int) -> int:
        """Size in bytes (through typedefs, arrays; ``POINTER_SIZE`` for a pointer);
        0 for void and functions."""
        tid = self._strip(tid)
        kind = self.kind(tid)
        if kind == Kind.PTR:
            return POINTER_SIZE
        if kind == Kind.ARRAY:
            elem, n = self.array(tid)
            return self.size(elem) * n
        if kind in _SIZED:
            return self._words[self._starts[tid] + 2]
        return 0

    def array(self, tid: int) -> tuple[int, int]:
        """(element type id, number of elements) of an array type."""
        if self.kind(tid) != Kind.ARRAY:
            raise ValueError(f"BTF type {tid} ({self.type_name(tid)}) is not an array")
        i = self._starts[tid]
        return self._words[i + 3], self._words[i + 5]

    def is_signed(self, tid: int) -> bool:
        """Whether an integer or enum type is signed."""
        tid = self._strip(tid)
        kind = self.kind(tid)
        i = self._starts[tid]
        if kind == Kind.INT:
            return bool(self._words[i + 3] >> 24 & 1)  # BTF_INT_SIGNED
        if kind in (Kind.ENUM, Kind.ENUM64):
            return bool(self._words[i + 1] >> 31)  # kind_flag
        raise ValueError(f"BTF type {tid} ({self.type_name(tid)}) is not an integer or enum")

    def members(self, tid: int) -> list[Member]:
        """The direct members of a struct or union, in order (anonymous ones named "")."""
        self._require_record(tid)
        return [
            Member(mname, bits, bf, self.type_name(mtype), mtype)
            for mname, mtype, bits, bf in self._members(tid)
        ]

    def flat_members(self, tid: int) -> list[Member]:
        """The named members of a struct or union as C sees them: those of anonymous
        struct and union members lifted up, with offsets from the start of ``tid``."""
        self._require_record(tid)
        return [
            Member(mname, bits, bf, self.type_name(mtype), mtype)
            for mname, mtype, bits, bf in self._flat_members(tid, 0)
        ]

    # -- internals ------------------------------------------------------

    def _index(self, kind: str) -> dict[str, int]:
        if kind == "struct":
            return self._structs
        if kind == "union":
            return self._unions
        raise ValueError(f"kind must be 'struct' or 'union', not {kind!r}")

    def _str(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        return self._strs[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _require_record(self, tid: int) -> None:
        if self.kind(tid) not in _RECORDS:
            raise ValueError(f"BTF type {tid} ({self.type_name(tid)}) is not a struct or union")

    def _strip(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the type that gives the layout."""
        for _ in range(64):  # a bound, in case of a malformed cycle
            if self.kind(tid) not in _TRANSPARENT:
                return tid
            tid = self._words[self._starts[tid] + 2]
        raise ValueError(f"BTF type {tid}: modifier chain too long")

    def _members(self, tid: int) -> Iterator[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of each direct member."""
        w = self._words
        i = self._starts[tid]
        info = w[i + 1]
        kind_flag = info >> 31
        for j in range(i + 3, i + 3 + 3 * (info & 0xFFFF), 3):
            name_off, mtype, offset = w[j], w[j + 1], w[j + 2]
            if kind_flag:
                bits, bitfield = offset & 0xFFFFFF, offset >> 24
            else:
                bits, bitfield = offset, 0
                # Without kind_flag, old encoders put a bitfield's width and
                # extra offset in the member's INT type itself.
                if mtype and self.kind(mtype) == Kind.INT:
                    k = self._starts[mtype]
                    enc = w[k + 3]
                    nr_bits, int_off = enc & 0xFF, (enc >> 16) & 0xFF
                    if int_off or nr_bits != 8 * w[k + 2]:
                        bits, bitfield = bits + int_off, nr_bits
            yield (self._str(name_off) if name_off else ""), mtype, bits, bitfield

    def _find_member(self, tid: int, name: str) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size) of ``name`` in a struct/union,
        looking inside anonymous members in declaration order, as C does."""
        for mname, mtype, bits, bitfield in self._members(tid):
            if mname == name:
                return bits, mtype, bitfield
            if not mname:
                inner = self._strip(mtype)
                if self.kind(inner) in _RECORDS:
                    found = self._find_member(inner, name)
                    if found is not None:
                        return bits + found[0], found[1], found[2]
        return None

    def _flat_members(self, tid: int, base: int) -> Iterator[tuple[str, int, int, int]]:
        """``_members``, with anonymous records' members lifted up, offsets from ``base``."""
        for mname, mtype, bits, bitfield in self._members(tid):
            if mname:
                yield mname, mtype, base + bits, bitfield
            else:
                inner = self._strip(mtype)
                if self.kind(inner) in _RECORDS:
                    yield from self._flat_members(inner, base + bits)

    def _member_names(self, tid: int) -> list[str]:
        """Every name reachable as a direct member, anonymous members flattened."""
        return [mname for mname, _t, _b, _bf in self._flat_members(tid, 0)]

    def _type_name(self, tid: int, depth: int) -> str:
        if tid == 0:
            return "void"
        if depth > 32:  # a bound, in case of a malformed cycle
            return "..."
        w = self._words
        i = self._starts[tid]
        name_off, info, ref = w[i], w[i + 1], w[i + 2]
        kind = (info >> 24) & 0x1F
        name = self._str(name_off) if name_off else ""
        if kind in (Kind.INT, Kind.FLOAT, Kind.TYPEDEF, Kind.FUNC):
            return name
        if kind in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD):
            if kind == Kind.FWD:
                tag = "union" if info >> 31 else "struct"
            else:
                tag = {Kind.STRUCT: "struct", Kind.UNION: "union"}.get(kind, "enum")
            return f"{tag} {name or '(anon)'}"
        if kind == Kind.PTR:
            target = self._strip(ref)
            if self.kind(target) == Kind.FUNC_PROTO:
                ret, params = self._proto_parts(target, depth)
                return f"{ret} (*)({params})"
            return self._type_name(ref, depth + 1) + " *"
        if kind == Kind.ARRAY:
            # int a[2][3] is an array of 2 arrays of 3: dims read outside in.
            dims = ""
            while kind == Kind.ARRAY:
                elem, nelems = w[i + 3], w[i + 5]
                dims += f"[{nelems}]"
                tid = elem
                kind = self.kind(tid)
                i = self._starts[tid]
            return self._type_name(tid, depth + 1) + dims
        if kind in _QUALIFIERS:
            inner = self._type_name(ref, depth + 1)
            if self.kind(ref) == Kind.PTR:
                return f"{inner} {_QUALIFIERS[kind]}"  # char * const
            return f"{_QUALIFIERS[kind]} {inner}"
        if kind == Kind.TYPE_TAG:
            return self._type_name(ref, depth + 1)  # tags do not change layout
        if kind == Kind.FUNC_PROTO:
            ret, params = self._proto_parts(tid, depth)
            return f"{ret} ({params})"
        return name or f"<BTF kind {kind}>"

    def _proto_parts(self, tid: int, depth: int) -> tuple[str, str]:
        w = self._words
        i = self._starts[tid]
        ret = self._type_name(w[i + 2], depth + 1)
        params = [
            self._type_name(w[j + 1], depth + 1) if w[j + 1] else "..."
            for j in range(i + 3, i + 3 + 2 * (w[i + 1] & 0xFFFF), 2)
        ]
        return ret, ", ".join(params) or "void"

    @staticmethod
    def _read_layout(data: bytes, order: str, hdr_len: int) -> dict[int, tuple[int, int]]:
        """Per-kind record sizes from a layout section, when the header has one.

        Newer BTF may describe each kind's extra data in a layout section
        (``layout_off``/``layout_len`` after ``str_len``), which lets a reader
        skip kinds it does not know.
        """
        if hdr_len < 32:
            return {}
        layout_off, layout_len = struct.unpack_from(order + "2I", data, 24)
        start = hdr_len + layout_off
        if not layout_len or start + layout_len > len(data):
            return {}
        return {k: (data[start + 4 * k], data[start + 4 * k + 1]) for k in range(layout_len // 4)}

    def _unknown_kind_words(self, kind: int, vlen: int, tid: int) -> int:
        if kind in self._layout:
            info_sz, elem_sz = self._layout[kind]
            size = info_sz + elem_sz * vlen
            if size % 4 == 0:
                return size // 4
        raise ValueError(f"BTF type {tid} has kind {kind}, unknown to this reader")


@functools.lru_cache(maxsize=4)
def _load_cached(path: str) -> Btf:
    with open(path, "rb") as f:
        return Btf(f.read())


def _did_you_mean(close: list[str]) -> str:
    if not close:
        return ""
    return "; did you mean " + ", ".join(repr(c) for c in close) + "?"
