"""A compiled program that outlives the process that compiled it.

BCC's bytecode names each map by the file descriptor the compiling process holds
(an ``ld_imm64`` whose source register is BPF_PSEUDO_MAP_FD), so it cannot be kept
or handed on as it is. ``extract`` turns every such reference back into the index
of a map definition; loader.py creates the maps again in another process and patches
their new descriptors in. Everything else the loader and the decoders need travels
with it: the maps' sizes and type descriptions, the license, the event fields.
"""

from __future__ import annotations

import base64
import ctypes
import json
import struct
from dataclasses import asdict, dataclass, field

# Bump when the saved form changes: older cache entries are then simply not found.
FORMAT = 1

_INSN = struct.Struct("<BBhi")  # code, dst/src registers, offset, immediate
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_PSEUDO_MAP_VALUE = 2


@dataclass
class MapDef:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_desc: str
    leaf_desc: str


@dataclass
class Function:
    name: str
    insns: bytes
    # (instruction index, map index): where a map's descriptor goes at load time.
    relocations: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Bytecode:
    functions: list[Function]
    maps: list[MapDef]
    license: str = "GPL"
    kern_version: int = 0
    # The struct each output buffer carries, field by field ("name#type"), as BCC recorded it.
    event_fields: dict[str, list[str]] = field(default_factory=dict)

    def function(self, name: str) -> Function | None:
        return next((f for f in self.functions if f.name == name), None)

    def map_index(self, name: str) -> int | None:
        return next((i for i, m in enumerate(self.maps) if m.name == name), None)

    def to_json(self) -> str:
        d = asdict(self)
        d["format"] = FORMAT
        for f in d["functions"]:
            f["insns"] = base64.b64encode(f["insns"]).decode()
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Bytecode:
        """The program saved by ``to_json``; ValueError for anything else."""
        try:
            d = json.loads(text)
            if d.pop("format") != FORMAT:
                raise ValueError("another format")
            functions = [
                Function(
                    f["name"],
                    base64.b64decode(f["insns"], validate=True),
                    [tuple(r) for r in f["relocations"]],
                )
                for f in d.pop("functions")
            ]
            maps = [MapDef(**m) for m in d.pop("maps")]
            out = cls(functions, maps, **d)
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # JSON and base64 too
            raise ValueError(f"not a compiled program: {e}") from None
        for f in out.functions:
            if len(f.insns) % _INSN.size or any(
                not (0 <= i < len(f.insns) // _INSN.size and 0 <= m < len(out.maps))
                for i, m in f.relocations
            ):
                raise ValueError(f"not a compiled program: function {f.name} is damaged")
        return out


def _declare(lib) -> None:
    """Result and argument types bcc's Python side leaves undeclared (or as int)."""
    c = ctypes
    for name, restype, argtypes in (
        ("bpf_num_tables", c.c_ulonglong, [c.c_void_p]),
        ("bpf_table_name", c.c_char_p, [c.c_void_p, c.c_ulonglong]),
        ("bpf_table_fd_id", c.c_int, [c.c_void_p, c.c_ulonglong]),
        ("bpf_table_key_size_id", c.c_size_t, [c.c_void_p, c.c_ulonglong]),
        ("bpf_table_leaf_size_id", c.c_size_t, [c.c_void_p, c.c_ulonglong]),
        ("bpf_table_key_desc_id", c.c_char_p, [c.c_void_p, c.c_ulonglong]),
        ("bpf_table_leaf_desc_id", c.c_char_p, [c.c_void_p, c.c_ulonglong]),
        ("bpf_perf_event_fields", c.c_size_t, [c.c_void_p, c.c_char_p]),
        ("bpf_perf_event_field", c.c_char_p, [c.c_void_p, c.c_char_p, c.c_size_t]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def extract(bcc, bpf) -> Bytecode:
    """The program BCC compiled into ``bpf`` (a bcc.BPF), with map references made portable."""
    lib = bcc.libbcc.lib
    _declare(lib)
    module = bpf.module
    maps: list[MapDef] = []
    index_of_fd: dict[int, int] = {}
    event_fields: dict[str, list[str]] = {}
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i).decode()
        index_of_fd[lib.bpf_table_fd_id(module, i)] = len(maps)
        maps.append(
            MapDef(
                name=name,
                type=lib.bpf_table_type_id(module, i),
                key_size=lib.bpf_table_key_size_id(module, i),
                value_size=lib.bpf_table_leaf_size_id(module, i),
                max_entries=lib.bpf_table_max_entries_id(module, i),
                flags=lib.bpf_table_flags_id(module, i),
                key_desc=(lib.bpf_table_key_desc_id(module, i) or b"").decode(),
                leaf_desc=(lib.bpf_table_leaf_desc_id(module, i) or b"").decode(),
            )
        )
        count = lib.bpf_perf_event_fields(module, name.encode())
        if count:
            event_fields[name] = [
                lib.bpf_perf_event_field(module, name.encode(), j).decode() for j in range(count)
            ]
    functions = []
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        start = lib.bpf_function_start(module, name)
        size = lib.bpf_function_size(module, name)
        functions.append(_portable(name.decode(), ctypes.string_at(start, size), index_of_fd))
    return Bytecode(
        functions=functions,
        maps=maps,
        license=lib.bpf_module_license(module).decode(),
        kern_version=lib.bpf_module_kern_version(module),
        event_fields=event_fields,
    )


def _portable(name: str, insns: bytes, index_of_fd: dict[int, int]) -> Function:
    code = bytearray(insns)
    relocations = []
    i, count = 0, len(code) // _INSN.size
    while i < count:
        op, regs, off, imm = _INSN.unpack_from(code, i * _INSN.size)
        if op == _LD_IMM64:
            if regs >> 4 in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
                if imm not in index_of_fd:
                    raise ValueError(f"function {name}: instruction {i} names no map of ours")
                relocations.append((i, index_of_fd[imm]))
                _INSN.pack_into(code, i * _INSN.size, op, regs, off, 0)
            i += 2  # a 64-bit immediate takes two instructions
        else:
            i += 1
    return Function(name, bytes(code), relocations)


def patched(function: Function, fds: list[int]) -> bytes:
    """``function``'s instructions with each map reference set to the map's descriptor."""
    code = bytearray(function.insns)
    for i, m in function.relocations:
        op, regs, off, _ = _INSN.unpack_from(code, i * _INSN.size)
        _INSN.pack_into(code, i * _INSN.size, op, regs, off, fds[m])
    return bytes(code)
