"""Tests of ebpfkit.btf: a hand-built BTF blob, then the running kernel's BTF
checked against what bpftool reads from the same file."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess

import pytest

from ebpfkit.btf import POINTER_SIZE, VMLINUX, Btf, Kind

# -- a tiny BTF blob built by hand: the parser's logic without a kernel --------

INT, PTR, ARRAY, STRUCT, UNION, ENUM, TYPEDEF, CONST = 1, 2, 3, 4, 5, 6, 8, 10
FUNC_PROTO, DECL_TAG, ENUM64 = 13, 17, 19


class BlobBuilder:
    """Writes BTF records as lists of 32-bit words; packs them in either byte order."""

    def __init__(self) -> None:
        self.strs = bytearray(b"\0")
        self.records: list[list[int]] = []

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    @property
    def next_id(self) -> int:
        return len(self.records) + 1

    def add(self, kind: int, name: str, size_or_type: int, extra=(), vlen=0, kind_flag=0) -> int:
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.records.append([self.name(name), info, size_or_type, *extra])
        return len(self.records)

    def composite(self, kind, name, size, members, kind_flag=0) -> int:
        """members: (name, type id, bit offset[, bitfield size])."""
        extra: list[int] = []
        for m in members:
            offset = m[2] | (m[3] << 24 if len(m) > 3 else 0)
            extra += [self.name(m[0]), m[1], offset]
        return self.add(kind, name, size, extra, vlen=len(members), kind_flag=kind_flag)

    def blob(self, order: str = "<") -> bytes:
        words = [w & 0xFFFFFFFF for record in self.records for w in record]
        types = struct.pack(f"{order}{len(words)}I", *words)
        header = struct.pack(
            f"{order}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strs)
        )
        return header + types + bytes(self.strs)


def tiny_blob(order: str = "<") -> bytes:
    """struct outer, with anonymous nesting, modifiers, an array, a bitfield, pointers;
    preceded by variable-sized records (enum, enum64, function prototype, decl tag)
    that the parser must step over correctly to find it."""
    b = BlobBuilder()
    t_int = b.add(INT, "int", 4, [(1 << 24) | 32])  # signed, 32 bits
    t_char = b.add(INT, "char", 1, [8])
    t_uint = b.add(INT, "unsigned int", 4, [32])
    b.add(ENUM, "color", 4, [b.name("RED"), 0, b.name("BLUE"), -1], vlen=2)
    b.add(ENUM64, "big", 8, [b.name("HUGE"), 1, 2], vlen=1)
    t_inner = b.composite(STRUCT, "inner", 8, [("a", t_int, 0), ("b", t_int, 32)])
    t_inner_t = b.add(TYPEDEF, "inner_t", t_inner)
    t_const_inner = b.add(CONST, "", t_inner_t)
    t_name = b.add(ARRAY, "", 0, [t_char, t_int, 16])
    t_union = b.composite(UNION, "", 4, [("u_int", t_int, 0), ("u_char", t_char, 0)])
    t_anon = b.composite(STRUCT, "", 8, [("deep", t_int, 0), ("", t_union, 32)])
    t_charp = b.add(PTR, "", t_char)
    t_proto = b.add(FUNC_PROTO, "", t_int, [0, t_int, 0, t_charp], vlen=2)
    t_cb = b.add(PTR, "", t_proto)
    t_charp_const = b.add(CONST, "", t_charp)
    t_outer_p = b.add(PTR, "", b.next_id + 1)  # points to outer, defined next
    t_outer = b.composite(
        STRUCT,
        "outer",
        64,
        [
            ("x", t_int, 0),
            ("", t_anon, 32),
            ("ci", t_const_inner, 96),
            ("name", t_name, 160),
            ("flags", t_uint, 288, 3),
            ("next", t_outer_p, 320),
            ("cb", t_cb, 384),
            ("label", t_charp_const, 448),
        ],
        kind_flag=1,
    )
    b.add(DECL_TAG, "tag", t_outer, [0])
    # Old encoders (no kind_flag) put a bitfield's width in an INT of its own.
    t_u3 = b.add(INT, "unsigned int", 4, [3])
    b.composite(STRUCT, "legacy", 4, [("f", t_u3, 5)])
    return b.blob(order)


@pytest.fixture(params=["<", ">"], ids=["little-endian", "big-endian"])
def tiny(request) -> Btf:
    return Btf(tiny_blob(request.param))


def test_tiny_struct_members(tiny: Btf) -> None:
    outer = tiny.find_struct("outer")
    assert outer is not None
    assert (outer.name, outer.size, outer.kind) == ("outer", 64, "struct")
    assert [(m.name, m.offset_bits, m.bitfield_size, m.type_name) for m in outer.members] == [
        ("x", 0, 0, "int"),
        ("", 32, 0, "struct (anon)"),
        ("ci", 96, 0, "const inner_t"),
        ("name", 160, 0, "char[16]"),
        ("flags", 288, 3, "unsigned int"),
        ("next", 320, 0, "struct outer *"),
        ("cb", 384, 0, "int (*)(int, char *)"),
        ("label", 448, 0, "char * const"),
    ]


def test_tiny_member_offsets(tiny: Btf) -> None:
    assert tiny.member_offset("outer", "x") == 0
    assert tiny.member_offset("outer", "deep") == 4  # in an anonymous struct
    assert tiny.member_offset("outer", "u_char") == 8  # anonymous union in anonymous struct
    assert tiny.member_offset("outer", "ci.b") == 16  # through const and a typedef
    assert tiny.member_offset("outer", "name") == 20
    assert tiny.member_offset("outer", "next") == 40
    assert tiny.member_offset("inner", "b") == 4


def test_tiny_names_and_kinds(tiny: Btf) -> None:
    assert list(tiny.struct_names()) == ["inner", "legacy", "outer"]
    assert list(tiny.struct_names("union")) == []  # the only union is anonymous
    assert tiny.find_struct("inner_t") is None  # a typedef, not a struct
    assert tiny.find_struct("outer", kind="union") is None
    with pytest.raises(ValueError, match="kind"):
        tiny.find_struct("outer", kind="enum")


def test_tiny_lookup_errors(tiny: Btf) -> None:
    with pytest.raises(KeyError, match=r"struct outer has no member 'u_chr'.*'u_char'"):
        tiny.member_offset("outer", "u_chr")
    with pytest.raises(KeyError, match=r"outer\.ci has no member 'bb'.*'b'"):
        tiny.member_offset("outer", "ci.bb")
    with pytest.raises(KeyError, match=r"no struct or union 'outr'.*'outer'"):
        tiny.member_offset("outr", "x")
    with pytest.raises(KeyError, match=r"outer\.next is struct outer \* \(a pointer"):
        tiny.member_offset("outer", "next.x")
    with pytest.raises(ValueError, match="bitfield"):
        tiny.member_offset("outer", "flags")


def test_tiny_legacy_bitfield(tiny: Btf) -> None:
    legacy = tiny.find_struct("legacy")
    assert legacy is not None
    (f,) = legacy.members
    assert (f.offset_bits, f.bitfield_size) == (5, 3)


def test_tiny_type_graph(tiny: Btf) -> None:
    """The public type-graph API, by type id: what writing C declarations needs."""
    outer = tiny.record_id("outer")
    assert outer is not None
    assert (tiny.kind(outer), tiny.name(outer), tiny.size(outer)) == (Kind.STRUCT, "outer", 64)
    assert tiny.record_id("inner_t") is None and tiny.record_id("nope") is None
    assert (tiny.kind(0), tiny.name(0), tiny.size(0), tiny.type_name(0)) == (
        Kind.VOID,
        "",
        0,
        "void",
    )

    direct = tiny.members(outer)
    assert direct == tiny.find_struct("outer").members
    assert all(tiny.type_name(m.type_id) == m.type_name for m in direct)
    flat = tiny.flat_members(outer)
    assert [(m.name, m.offset_bits, m.bitfield_size) for m in flat] == [
        ("x", 0, 0),
        ("deep", 32, 0),
        ("u_int", 64, 0),  # in an anonymous union in an anonymous struct
        ("u_char", 64, 0),
        ("ci", 96, 0),
        ("name", 160, 0),
        ("flags", 288, 3),
        ("next", 320, 0),
        ("cb", 384, 0),
        ("label", 448, 0),
    ]
    by_name = {m.name: m.type_id for m in flat}

    ci = by_name["ci"]  # const inner_t
    assert tiny.kind(ci) == Kind.CONST
    assert tiny.kind(tiny.unqualified(ci)) == Kind.TYPEDEF
    assert tiny.name(tiny.unqualified(ci)) == "inner_t"
    assert tiny.referenced(tiny.unqualified(ci)) == tiny.resolve(ci) == tiny.record_id("inner")
    assert tiny.size(ci) == 8

    name = by_name["name"]  # char[16]
    elem, n = tiny.array(name)
    assert (tiny.kind(elem), tiny.name(elem), n, tiny.size(name)) == (Kind.INT, "char", 16, 16)

    assert tiny.referenced(by_name["next"]) == outer
    assert tiny.size(by_name["next"]) == POINTER_SIZE
    label = by_name["label"]  # char * const
    assert tiny.kind(tiny.unqualified(label)) == tiny.kind(tiny.resolve(label)) == Kind.PTR
    assert tiny.kind(tiny.referenced(tiny.resolve(by_name["cb"]))) == Kind.FUNC_PROTO

    assert tiny.is_signed(by_name["x"]) and not tiny.is_signed(by_name["flags"])
    color = next(t for t in range(1, 30) if tiny.kind(t) == Kind.ENUM)
    assert (tiny.name(color), tiny.size(color), tiny.is_signed(color)) == ("color", 4, False)

    with pytest.raises(ValueError, match="not an array"):
        tiny.array(outer)
    with pytest.raises(ValueError, match="not a struct or union"):
        tiny.members(name)
    with pytest.raises(ValueError, match="refers to no other type"):
        tiny.referenced(by_name["x"])
    with pytest.raises(ValueError, match="not an integer or enum"):
        tiny.is_signed(outer)


def test_rejects_what_is_not_btf() -> None:
    blob = tiny_blob()
    with pytest.raises(ValueError, match="magic"):
        Btf(b"\0\0" + blob[2:])
    with pytest.raises(ValueError, match="past the end"):
        Btf(blob[:-8])
    with pytest.raises(ValueError, match="header"):
        Btf(blob[:10])
    # A type section cut inside its last record (strings still in place).
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        "<HBBIIIII", blob
    )
    header = struct.pack(
        "<HBBIIIII", magic, version, flags, hdr_len, type_off, type_len - 4, str_off, str_len
    )
    with pytest.raises(ValueError, match="runs past the type section"):
        Btf(header + blob[24:])


# -- the running kernel's BTF, checked against bpftool ------------------------

needs_btf = pytest.mark.skipif(
    not os.path.exists(VMLINUX), reason=f"{VMLINUX} is missing: this kernel has no BTF"
)
BPFTOOL = shutil.which("bpftool") or (
    "/usr/sbin/bpftool" if os.path.exists("/usr/sbin/bpftool") else None
)

_TYPE_LINE = re.compile(r"\[(\d+)\] (\w+) '([^']*)'(.*)")
_MEMBER_LINE = re.compile(r"\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?")


class Bpftool:
    """bpftool's raw dump of the kernel's BTF, parsed: an independent reader."""

    def __init__(self, text: str) -> None:
        self.types: dict[int, dict] = {}
        self.first: dict[tuple[str, str], int] = {}  # (kind, name) -> first id
        current: dict | None = None
        for line in text.splitlines():
            if m := _TYPE_LINE.match(line):
                tid, kind, name, rest = int(m[1]), m[2], m[3], m[4]
                attrs = dict(re.findall(r"(\w+)=(\S+)", rest))
                current = {"kind": kind, "name": name, "attrs": attrs, "members": []}
                self.types[tid] = current
                if kind in ("STRUCT", "UNION") and name != "(anon)":
                    self.first.setdefault((kind, name), tid)
            elif current is not None and current["kind"] in ("STRUCT", "UNION"):
                if m := _MEMBER_LINE.match(line):
                    bits = int(m[3])
                    current["members"].append((m[1], int(m[2]), bits, int(m[4] or 0)))

    def struct(self, name: str, kind: str = "STRUCT") -> dict:
        return self.types[self.first[(kind, name)]]

    def offset_bits(self, tid: int, name: str) -> int | None:
        """Bit offset of a member, looking inside '(anon)' members as C does."""
        for mname, mtype, bits, _bf in self.types[tid]["members"]:
            if mname == name:
                return bits
            if mname == "(anon)" and self.types[mtype]["kind"] in ("STRUCT", "UNION"):
                inner = self.offset_bits(mtype, name)
                if inner is not None:
                    return bits + inner
        return None

    def member_type(self, struct_name: str, member: str) -> dict:
        for mname, mtype, _bits, _bf in self.struct(struct_name)["members"]:
            if mname == member:
                return self.types[mtype]
        raise AssertionError(f"bpftool shows no {struct_name}.{member}")


@pytest.fixture(scope="module")
def kernel_btf() -> Btf:
    if not os.path.exists(VMLINUX):
        pytest.skip(f"{VMLINUX} is missing: this kernel has no BTF")
    return Btf.load()


@pytest.fixture(scope="module")
def bpftool() -> Bpftool:
    if not os.path.exists(VMLINUX):
        pytest.skip(f"{VMLINUX} is missing: this kernel has no BTF")
    if BPFTOOL is None:
        pytest.skip("bpftool is not installed (Debian package bpftool)")
    out = subprocess.run(
        [BPFTOOL, "btf", "dump", "file", VMLINUX, "format", "raw"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Bpftool(out)


@needs_btf
def test_load_is_cached(kernel_btf: Btf) -> None:
    assert Btf.load() is kernel_btf
    assert Btf.load(VMLINUX) is kernel_btf


@pytest.mark.parametrize("field", ["pid", "tgid", "real_parent", "comm", "exit_code"])
def test_task_struct_offsets_match_bpftool(kernel_btf: Btf, bpftool: Bpftool, field: str) -> None:
    task = bpftool.struct("task_struct")
    direct = {name: bits for name, _t, bits, _bf in task["members"]}
    assert direct[field] % 8 == 0
    assert kernel_btf.member_offset("task_struct", field) == direct[field] // 8


def test_task_struct_type_names_match_bpftool(kernel_btf: Btf, bpftool: Bpftool) -> None:
    task = kernel_btf.find_struct("task_struct")
    assert task is not None
    types = {m.name: m.type_name for m in task.members}

    pid = bpftool.member_type("task_struct", "pid")
    assert pid["kind"] == "TYPEDEF"
    assert types["pid"] == pid["name"]  # pid_t

    comm = bpftool.member_type("task_struct", "comm")
    assert comm["kind"] == "ARRAY"
    elem = bpftool.types[int(comm["attrs"]["type_id"])]
    assert types["comm"] == f"{elem['name']}[{comm['attrs']['nr_elems']}]"  # char[16]

    parent = bpftool.member_type("task_struct", "real_parent")
    assert parent["kind"] == "PTR"
    target = bpftool.types[int(parent["attrs"]["type_id"])]
    assert types["real_parent"] == f"struct {target['name']} *"  # struct task_struct *


@pytest.mark.parametrize("field", ["mmap_base", "exe_file"])
def test_mm_struct_anonymous_members_match_bpftool(
    kernel_btf: Btf, bpftool: Bpftool, field: str
) -> None:
    mm = bpftool.struct("mm_struct")
    # The point of the test: the field is not a direct member of mm_struct.
    assert field not in {name for name, _t, _b, _bf in mm["members"]}
    expected = bpftool.offset_bits(bpftool.first[("STRUCT", "mm_struct")], field)
    assert expected is not None and expected % 8 == 0
    assert kernel_btf.member_offset("mm_struct", field) == expected // 8
    flat = kernel_btf.flat_members(kernel_btf.record_id("mm_struct"))
    assert {m.name: m.offset_bits for m in flat}[field] == expected


def test_dotted_path_matches_bpftool(kernel_btf: Btf, bpftool: Bpftool) -> None:
    se_bits = bpftool.offset_bits(bpftool.first[("STRUCT", "task_struct")], "se")
    se_type = bpftool.member_type("task_struct", "se")
    assert se_type["kind"] == "STRUCT" and se_type["name"] == "sched_entity"
    se_id = bpftool.first[("STRUCT", "sched_entity")]
    vruntime_bits = bpftool.offset_bits(se_id, "vruntime")
    assert se_bits is not None and vruntime_bits is not None
    assert vruntime_bits > 0  # a sum that differs from the outer offset alone
    expected = (se_bits + vruntime_bits) // 8
    assert kernel_btf.member_offset("task_struct", "se.vruntime") == expected


@needs_btf
def test_missing_member_names_close_matches(kernel_btf: Btf) -> None:
    with pytest.raises(KeyError) as err:
        kernel_btf.member_offset("task_struct", "real_parnt")
    message = str(err.value)
    assert "task_struct" in message and "'real_parnt'" in message
    assert "'real_parent'" in message  # the suggestion
    with pytest.raises(KeyError, match=r"'task_strct'.*'task_struct'"):
        kernel_btf.member_offset("task_strct", "pid")


@pytest.mark.parametrize("name", ["task_struct", "mm_struct", "sched_entity", "file"])
def test_struct_sizes_match_bpftool(kernel_btf: Btf, bpftool: Bpftool, name: str) -> None:
    info = kernel_btf.find_struct(name)
    assert info is not None
    assert info.size == int(bpftool.struct(name)["attrs"]["size"])


def test_every_struct_and_union_matches_bpftool(kernel_btf: Btf, bpftool: Bpftool) -> None:
    """Names, sizes and every direct member's offset and bitfield width."""
    for kind in ("struct", "union"):
        expected_names = sorted(n for k, n in bpftool.first if k == kind.upper())
        assert list(kernel_btf.struct_names(kind)) == expected_names
        for name in expected_names:
            theirs = bpftool.struct(name, kind.upper())
            ours = kernel_btf.find_struct(name, kind=kind)
            assert ours is not None
            assert ours.size == int(theirs["attrs"]["size"]), name
            assert [(m.name or "(anon)", m.offset_bits, m.bitfield_size) for m in ours.members] == [
                (n, bits, bf) for n, _t, bits, bf in theirs["members"]
            ], name
