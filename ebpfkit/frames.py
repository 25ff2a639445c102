"""From the kernel's bytes to DataFrames: events, maps, histograms, stacks.

Event records are decoded in bulk: the C struct's layout (as BCC's frontend
recorded it) becomes a numpy dtype, the records one array, each field one
column. Char arrays become strings, repeated strings (command names) become
categoricals, and kernel timestamps become wall-clock times.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
import time

import numpy as np

from . import mapread

# C type spellings BCC reports for event fields -> numpy scalar types.
_C_TYPES = {
    "char": "i1",
    "s8": "i1",
    "signed char": "i1",
    "__s8": "i1",
    "unsigned char": "u1",
    "u8": "u1",
    "__u8": "u1",
    "bool": "u1",
    "_Bool": "u1",
    "short": "i2",
    "s16": "i2",
    "__s16": "i2",
    "short int": "i2",
    "unsigned short": "u2",
    "u16": "u2",
    "__u16": "u2",
    "unsigned short int": "u2",
    "int": "i4",
    "s32": "i4",
    "__s32": "i4",
    "enum": "i4",
    "pid_t": "i4",
    "unsigned int": "u4",
    "u32": "u4",
    "__u32": "u4",
    "unsigned": "u4",
    "uid_t": "u4",
    "gid_t": "u4",
    "long": "i8",
    "long int": "i8",
    "s64": "i8",
    "__s64": "i8",
    "long long": "i8",
    "long long int": "i8",
    "unsigned long": "u8",
    "unsigned long int": "u8",
    "u64": "u8",
    "__u64": "u8",
    "unsigned long long": "u8",
    "unsigned long long int": "u8",
    "size_t": "u8",
    "void *": "u8",
    "char *": "u8",
    "const char *": "u8",
    "u8 *": "u8",
}
_ARRAY = re.compile(r"^(.*?)\s*\[(\d+)\]$")
_TIMESTAMP = re.compile(r"^(ts|timestamp|time_ns|ts_ns|.*_ts|ts_.*)$")


class LayoutError(Exception):
    pass


def _scalar(ctype: str) -> np.dtype:
    ctype = ctype.strip()
    if ctype.startswith("enum "):
        ctype = "enum"
    if ctype.endswith("*"):
        return np.dtype("u8")
    try:
        return np.dtype(_C_TYPES[ctype])
    except KeyError:
        raise LayoutError(f"field type {ctype!r} is not supported in events") from None


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def event_dtype(fields: list[tuple[str, str]]) -> np.dtype:
    """The numpy dtype of a C struct given as (name, C type) pairs, with C's padding."""
    names, formats, offsets = [], [], []
    offset, max_align = 0, 1
    for name, ctype in fields:
        m = _ARRAY.match(ctype)
        if m:
            base = _scalar(m.group(1))
            count = int(m.group(2))
            if base.itemsize == 1 and m.group(1).strip() in (
                "char",
                "s8",
                "signed char",
                "unsigned char",
                "u8",
            ):
                fmt = np.dtype(f"S{count}") if "char" in m.group(1) else np.dtype((base, count))
            else:
                fmt = np.dtype((base, count))
            align = base.alignment
        else:
            fmt = _scalar(ctype)
            align = fmt.alignment
        offset = _align(offset, align)
        names.append(name)
        formats.append(fmt)
        offsets.append(offset)
        offset += fmt.itemsize
        max_align = max(max_align, align)
    return np.dtype(
        {
            "names": names,
            "formats": formats,
            "offsets": offsets,
            "itemsize": _align(offset, max_align),
        }
    )


def event_fields(bcc, bpf, table_name: str) -> list[tuple[str, str]]:
    """The struct that the program sends through ``table_name``, as BCC recorded it."""
    if hasattr(bpf, "perf_event_fields"):  # a program loaded from bytecode (loader.py)
        return bpf.perf_event_fields(table_name)
    lib = bcc.libbcc.lib
    name = table_name.encode()
    count = lib.bpf_perf_event_fields(bpf.module, name)
    out = []
    for i in range(count):
        field = lib.bpf_perf_event_field(bpf.module, name, i).decode()
        fname, _, ftype = field.partition("#")
        out.append((fname, ftype))
    return out


def monotonic_to_wall_ns() -> int:
    """Offset that turns CLOCK_MONOTONIC ns (bpf_ktime_get_ns) into Unix-epoch ns."""
    a = time.time_ns()
    m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    b = time.time_ns()
    return (a + b) // 2 - m


def decode_strings(column: np.ndarray):
    """Bytes columns (char arrays) as text, cut at the first NUL; repeated ones categorical.

    Each distinct value is decoded once: the fixed-width bytes are numbered by hashing
    them as 8-byte words (``pandas.factorize``), so no Python object is made per row.
    """
    import pandas as pd

    n = len(column)
    if n == 0 or column.dtype.itemsize == 0:
        return pd.Series([""] * n, dtype="object")
    # numpy's S dtype drops trailing NULs, not bytes past one: cut at the first NUL here.
    codes, firsts = _first_codes(column)
    texts = [v.split(b"\0", 1)[0].decode("utf-8", "replace") for v in column[firsts].tolist()]
    labels, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    codes = inverse.reshape(-1)[codes]
    if n > 32 and len(labels) <= max(1, n // 4):
        return pd.Series(pd.Categorical.from_codes(codes, categories=labels))
    return pd.Series(labels.astype(object)[codes], dtype="object")


def time_fields(dtype: np.dtype) -> list[str]:
    """The fields of a struct read as kernel timestamps (and shown as wall-clock times)."""
    return [
        n
        for n in dtype.names or ()
        if _TIMESTAMP.match(n) and dtype.fields[n][0].kind in "iu" and not dtype.fields[n][0].shape
    ]


def records_frame(records: np.ndarray, wall_offset_ns: int | None = None):
    """A DataFrame from decoded records: one column per field."""
    import pandas as pd

    columns = {}
    for name in records.dtype.names:
        col = records[name]
        if col.dtype.kind == "S":
            columns[name] = decode_strings(col)
        elif col.ndim > 1:
            columns[name] = list(col)
        elif _TIMESTAMP.match(name) and col.dtype.kind in "iu" and wall_offset_ns is not None:
            columns[name] = pd.to_datetime(col.astype("i8") + wall_offset_ns, unit="ns")
        else:
            columns[name] = col
    return pd.DataFrame(columns)


def decode(chunks, dtype: np.dtype, wall_offset_ns: int | None = None):
    """Records as a DataFrame: from a list of raw records (bytes), or anything numpy
    reads as a structured array (a channel's ``chunks`` slice, an array of records)."""
    if isinstance(chunks, (list, tuple)):
        data = b"".join(chunks)
        records = np.frombuffer(data, dtype=dtype, count=len(data) // dtype.itemsize)
    else:
        records = np.asarray(chunks)
    return records_frame(records, wall_offset_ns)


# ---------------------------------------------------------------- maps

# bcc's map type numbers (linux/bpf.h)
HASH, ARRAY, PROG_ARRAY, PERF_EVENT_ARRAY, PERCPU_HASH, PERCPU_ARRAY, STACK_TRACE = range(1, 8)
LRU_HASH, LRU_PERCPU_HASH = 9, 10
RINGBUF = 27


def _ctype_columns(value, prefix: str) -> dict:
    """Flatten a ctypes value (scalar, struct, array) into named Python values."""
    if isinstance(value, ctypes.Structure) or isinstance(value, ctypes.Union):
        out = {}
        for fname, *_type_and_bits in value._fields_:
            if fname.startswith("__pad"):  # padding BCC adds to match the C layout
                continue
            out.update(_ctype_columns(getattr(value, fname), fname))
        return out
    if isinstance(value, ctypes.Array):
        if value._type_ in (ctypes.c_char, ctypes.c_byte, ctypes.c_ubyte):
            return {prefix: bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")}
        return {prefix: list(value)}
    if isinstance(value, bytes):  # c_char arrays come back as bytes
        return {prefix: value.split(b"\0", 1)[0].decode("utf-8", "replace")}
    if hasattr(value, "value"):
        return {prefix: value.value}
    return {prefix: value}


def map_frame(table, map_type: int, ncpus: int):
    """A hash or array map as a DataFrame: key columns, then value columns.

    The map is read in bulk (mapread.py) and each column cut from the entries' bytes
    with numpy, with the names and dtypes bcc's ``items()`` rows would give.

    A per-CPU map of numbers has one row per key: ``cpu0``, ``cpu1``... (each CPU's
    value) and ``value``, their sum. A per-CPU map whose value is a struct (or an
    array) has no sum: it has one row per key and CPU, the key's columns, ``cpu``, then
    the struct's fields (an array value: ``value``), keys in order, each key's CPUs
    from 0, every possible CPU included (a CPU the program never ran on: zeros).
    """
    import pandas as pd

    data = mapread.read(table)
    if not len(data):
        return pd.DataFrame([])
    if data.percpu and not _is_number(data.value_type):
        return _per_cpu_struct_frame(data, ncpus)
    try:
        columns = _type_columns(data.keys, data.key_type, "key")
        if data.percpu:
            columns.update(_percpu_columns(data.values, data.value_type, ncpus))
        else:
            columns.update(_type_columns(data.values, data.value_type, "value"))
        df = pd.DataFrame(columns)
    except _Opaque:
        df = pd.DataFrame(_ctype_rows(data, ncpus))
    if map_type in (ARRAY, PERCPU_ARRAY):
        return df.sort_values(list(df.columns[:1])).reset_index(drop=True)
    if "value" in df.columns and pd.api.types.is_numeric_dtype(df["value"]):
        return df.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    return df


def histogram_frame(table, kind: str):
    """A BPF_HISTOGRAM as bucket bounds and counts (log2 or linear buckets).

    log2 buckets follow bcc's bpf_log2l(): bucket i holds values from 2**(i-1) to
    2**i - 1, and bucket 1 also holds 0.
    """
    import pandas as pd

    data = mapread.read(table)
    try:
        counts, sections = _histogram_counts(data)
    except _Opaque:
        counts, sections = _histogram_counts_by_row(data)
    filled: dict = {}  # section -> its buckets with a count
    for (section, slot), count in counts.items():
        if count:
            filled.setdefault(section, []).append(slot)
    rows = []
    for section in sorted(sections):
        slots = filled.get(section)
        if not slots:
            continue
        for slot in range(min(slots), max(slots) + 1):
            if kind == "log2":
                low, high = (1 << slot) >> 1, (1 << slot) - 1
                if low == high:
                    low = max(low - 1, 0)
            else:
                low = high = slot
            row = dict(section)
            row.update(low=low, high=high, count=counts.get((section, slot), 0))
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            *(k for k, _ in (sorted(sections)[0] if sections else ())),
            "low",
            "high",
            "count",
        ],
    )


def _histogram_counts(data: mapread.MapData) -> tuple[dict, set]:
    """Each (section, bucket)'s count and the sections, summed with numpy: a section is the
    key's fields other than its bucket (``slot``, or the key itself), as (name, value) pairs."""
    import pandas as pd

    if data.percpu or not _is_number(data.value_type) or data.values.dtype.kind not in "iu":
        raise _Opaque  # not a plain count per entry: as bcc's rows would be read
    if not len(data):
        return {}, set()
    key = _type_columns(data.keys, data.key_type, "key")
    slot_name = "slot" if "slot" in key else "key"
    slot = key.pop(slot_name)
    if not isinstance(slot, np.ndarray) or slot.dtype != np.int64:
        raise _Opaque
    names, codes, uniques = list(key), [], []
    for name in names:
        column = key[name]
        if not isinstance(column, np.ndarray):
            raise _Opaque  # a list per entry: no section can be made of it
        code, unique = pd.factorize(column, use_na_sentinel=False)
        codes.append(code.astype(np.int64))
        uniques.append(unique.tolist() if isinstance(unique, np.ndarray) else list(unique))
    groups, inverse = np.unique(np.stack([*codes, slot], axis=1), axis=0, return_inverse=True)
    sums = np.zeros(len(groups), np.uint64 if data.values.dtype.kind == "u" else np.int64)
    np.add.at(sums, inverse.reshape(-1), data.values.astype(sums.dtype))
    counts, sections = {}, set()
    for group, count in zip(groups.tolist(), sums.tolist()):
        section = tuple((n, u[c]) for n, u, c in zip(names, uniques, group))
        sections.add(section)
        counts[(section, group[-1])] = count
    return counts, sections


def _histogram_counts_by_row(data: mapread.MapData) -> tuple[dict, set]:
    """The same counts, entry by entry through ctypes values (bitfields, odd types)."""
    counts: dict = {}
    sections: set = set()
    for k, v in _ctype_items(data):
        key = _ctype_columns(k, "key")
        slot_name = "slot" if "slot" in key else "key"
        slot = int(key.pop(slot_name))
        section = tuple(key.items())
        sections.add(section)
        counts[(section, slot)] = counts.get((section, slot), 0) + int(v.value)
    return counts, sections


# ctypes scalar codes that numpy reads as they are: integers, bool, float, double.
_NUMBER_CODES = frozenset("bBhHiIlLqQ?fd")


class _Opaque(Exception):
    """A type the column path does not take apart (bitfields, single and wide chars, long
    double, arrays of structs): its entries become ctypes values one by one instead."""


def _is_number(ctype) -> bool:
    return (
        isinstance(ctype, type)
        and issubclass(ctype, ctypes._SimpleCData)
        and ctype._type_ in _NUMBER_CODES
    )


def _raw(values: np.ndarray) -> np.ndarray:
    """An array's entries as rows of bytes."""
    values = np.ascontiguousarray(values)
    return values.reshape(-1).view(np.uint8).reshape(len(values), -1)


def _type_columns(values: np.ndarray, ctype, prefix: str) -> dict:
    """The columns ``_ctype_columns`` would name for entries of ``ctype``, in its order."""
    out: dict = {}
    _field_columns(ctype, _raw(values), 0, prefix, out)
    return out


def _field_columns(ctype, raw: np.ndarray, offset: int, prefix: str, out: dict) -> None:
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        for field in ctype._fields_:
            name, ftype = field[0], field[1]
            if name.startswith("__pad"):  # padding BCC adds to match the C layout
                continue
            if len(field) > 2:
                out[name] = _bitfield(ctype, field, raw, offset)
            else:
                _field_columns(ftype, raw, offset + getattr(ctype, name).offset, name, out)
    elif issubclass(ctype, ctypes.Array):
        if ctype._type_ in (ctypes.c_char, ctypes.c_byte, ctypes.c_ubyte):
            out[prefix] = _texts(raw[:, offset : offset + ctype._length_])
        elif _is_number(ctype._type_):
            dtype = np.dtype((np.dtype(ctype._type_), ctype._length_))
            out[prefix] = _strided(raw, offset, dtype).tolist()  # a list per entry
        else:
            raise _Opaque
    elif _is_number(ctype):
        out[prefix] = _as_python_would(_strided(raw, offset, np.dtype(ctype)))
    else:
        raise _Opaque


def _bitfield(ctype, field: tuple, raw: np.ndarray, offset: int) -> np.ndarray:
    """A bitfield's values: its storage unit read, shifted and masked (sign-extended)."""
    name, ftype, bits = field
    if not _is_number(ftype) or np.dtype(ftype).kind not in "iu" or not np.little_endian:
        raise _Opaque
    where = getattr(ctype, name)
    # ctypes says where the bits start: bit_offset (Python 3.13), else size's low 16 bits.
    shift = getattr(where, "bit_offset", where.size & 0xFFFF)
    byte = getattr(where, "byte_offset", where.offset)
    unit = _strided(raw, offset + byte, np.dtype(ftype)).astype(np.int64)
    values = (unit >> shift) & ((1 << bits) - 1)
    if np.dtype(ftype).kind == "i":
        values = np.where(values >> (bits - 1) & 1, values - (1 << bits), values)
    return values.astype(np.int64)


def _strided(raw: np.ndarray, offset: int, dtype: np.dtype) -> np.ndarray:
    """The values of type ``dtype`` at ``offset`` in each row of bytes (a view)."""
    return np.ndarray((len(raw),), dtype, buffer=raw, offset=offset, strides=(raw.strides[0],))


def _as_python_would(values: np.ndarray) -> np.ndarray:
    """Numbers in the dtype pandas gives a column of the same numbers as Python objects:
    int64, or uint64 where a value is past int64's range; float64; bool."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 8:
        if len(values) and int(values.max()) > np.iinfo(np.int64).max:
            return values.copy()
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        return values.astype(np.float64)
    return values.copy()


def _texts(raw: np.ndarray) -> np.ndarray:
    """Char arrays as text cut at the first NUL, each distinct value decoded once."""
    n, width = raw.shape
    if width == 0:
        return np.array([""] * n, dtype=object)
    column = np.ascontiguousarray(raw).view(f"S{width}").reshape(n)
    codes, firsts = _first_codes(column)
    texts = [v.split(b"\0", 1)[0].decode("utf-8", "replace") for v in column[firsts].tolist()]
    return np.array(texts, dtype=object)[codes]


def _percpu_columns(values: np.ndarray, elem, ncpus: int) -> dict:
    """``cpu0``, ``cpu1``... and their sum ``value``, for integer per-CPU values."""
    if not _is_number(elem) or values.dtype.kind not in "iu":
        raise _Opaque  # bcc's rows take int() of each CPU's value, struct or float
    per_cpu = values[:, :ncpus]
    out: dict = {}
    for cpu in range(per_cpu.shape[1]):
        out[f"cpu{cpu}"] = _as_python_would(per_cpu[:, cpu])
    total = np.abs(per_cpu.astype(np.float64)).sum(axis=1)
    if len(total) and total.max() >= 2.0**62:  # past int64: summed as Python's ints are
        out["value"] = [sum(cpus) for cpus in per_cpu.tolist()]
    else:
        out["value"] = per_cpu.astype(np.int64).sum(axis=1)
    return out


def _ctype_items(data: mapread.MapData):
    """Each entry as the ctypes key and value bcc's ``items()`` gives (per-CPU: an array)."""
    value_type = data.value_type
    if data.percpu:
        value_type = data.value_type * data.values.shape[1]
    keys, values = _raw(data.keys), _raw(data.values)
    for i in range(len(data)):
        yield data.key_type.from_buffer_copy(keys[i]), value_type.from_buffer_copy(values[i])


def _ctype_rows(data: mapread.MapData, ncpus: int) -> list[dict]:
    """The rows of ``map_frame``, entry by entry through ctypes values."""
    rows = []
    for k, v in _ctype_items(data):
        row = _ctype_columns(k, "key")
        if data.percpu:
            values = [int(x.value if hasattr(x, "value") else x) for x in v][:ncpus]
            for cpu, x in enumerate(values):
                row[f"cpu{cpu}"] = x
            row["value"] = sum(values)
        else:
            row.update(_ctype_columns(v, "value"))
        rows.append(row)
    return rows


def _per_cpu_struct_frame(data: mapread.MapData, ncpus: int):
    """``map_frame`` of a per-CPU map of structs: a row per key and CPU (see there)."""
    import pandas as pd

    cpus = min(ncpus, data.values.shape[1])
    try:
        columns = _type_columns(np.repeat(data.keys, cpus), data.key_type, "key")
        keys = list(columns)
        columns["cpu"] = np.tile(np.arange(cpus, dtype=np.int64), len(data))
        values = np.ascontiguousarray(data.values[:, :cpus]).reshape(-1)
        columns.update(_type_columns(values, data.value_type, "value"))
        arrays = [k for k in keys if isinstance(columns[k], list)]
    except _Opaque:
        key = _ctype_columns(data.key_type(), "key")
        keys, arrays = list(key), [k for k, v in key.items() if isinstance(v, list)]
        columns = _ctype_cpu_rows(data, cpus)
    df = pd.DataFrame(columns)
    if not arrays:  # a key with an array in it stays in the order read
        df = df.sort_values([*keys, "cpu"], kind="stable")
    return df.reset_index(drop=True)


def _ctype_cpu_rows(data: mapread.MapData, cpus: int) -> list[dict]:
    """The rows of ``_per_cpu_struct_frame``, entry by entry through ctypes values."""
    rows = []
    for k, v in _ctype_items(data):
        key = _ctype_columns(k, "key")
        for cpu in range(cpus):
            rows.append({**key, "cpu": cpu, **_ctype_columns(v[cpu], "value")})
    return rows


def symbolize_stack(bpf, stacks_table, stack_id: int, pid: int | None, kernel: bool) -> str:
    """A stack as folded frames, root first: ``main;work;compute``."""
    if stack_id < 0:
        if stack_id == -14:  # EFAULT: no stack of that kind at the sample
            return "[user mode: no kernel stack]" if kernel else "[kernel thread: no user stack]"
        return "[lost stack]"  # EEXIST/ENOMEM: the stack map was full
    try:
        addresses = list(stacks_table.walk(stack_id))
    except KeyError:
        return "[stack evicted]"
    names = []
    for addr in addresses:
        if kernel:
            sym = bpf.ksym(addr, show_offset=False)
        else:
            sym = bpf.sym(addr, pid if pid is not None else -1, show_module=False)
        names.append(sym.decode("utf-8", "replace") if isinstance(sym, bytes) else str(sym))
    return ";".join(reversed(names))


def add_stacks(df, bpf, stacks_table):
    """For each stack-id column (``kernel_stack_id``, ``user_stack_id``...), its frames."""
    if df is None or df.empty:
        return df
    pid_col = next((c for c in ("tgid", "pid", "key") if c in df.columns), None)
    for col in list(df.columns):
        if "stack" not in col or not col.endswith("id"):
            continue
        kernel = "user" not in col
        frames = [
            symbolize_stack(
                bpf,
                stacks_table,
                int(sid),
                int(row_pid) if pid_col and not kernel else None,
                kernel,
            )
            for sid, row_pid in zip(df[col], df[pid_col] if pid_col else [None] * len(df))
        ]
        df[
            col.replace("_id", "").replace("id", "") + "_frames" if col != "stack_id" else "stack"
        ] = frames
    return df


# ---------------------------------------------------------------- events, column by column

CHUNK_ROWS = 1 << 16  # rows per chunk of a column while tracing


def _anonymous(count: int, dtype: np.dtype) -> np.ndarray:
    """An array in memory of its own (an anonymous mapping), given back whole when freed.

    Not from malloc: freed chunks would stay in the heap, and a trace's memory would
    not fall as its chunks are copied into the final frame.
    """
    import mmap

    nbytes = max(count * dtype.itemsize, 1)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count)


def _first_codes(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-width bytes numbered by first appearance, hashed as 8-byte words
    (``pandas.factorize``): each row's number, and the row where each number first appears."""
    import pandas as pd

    width = column.dtype.itemsize
    names, formats, offsets, at = [], [], [], 0
    for size in (8, 4, 2, 1):
        while width - at >= size:
            names.append(f"w{at}")
            formats.append(f"u{size}")
            offsets.append(at)
            at += size
    words = column.view(np.dtype({"names": names, "formats": formats, "offsets": offsets}))
    codes, _ = pd.factorize(words[names[0]])
    for name in names[1:]:
        more, uniques = pd.factorize(words[name])
        codes, _ = pd.factorize(codes.astype(np.int64) * len(uniques) + more)
    # A new running maximum is a first appearance.
    high = np.maximum.accumulate(codes)
    firsts = np.concatenate(([0], np.flatnonzero(high[1:] != high[:-1]) + 1))
    return codes, firsts


class _Column:
    """One field's values as read so far: full chunks, then the one being filled."""

    __slots__ = ("name", "kind", "dtype", "chunks", "fill")

    def __init__(self, name: str, kind: str, dtype: np.dtype):
        self.name, self.kind, self.dtype = name, kind, dtype
        self.chunks: list[np.ndarray] = []
        self.fill = 0  # rows used in the last chunk

    def append(self, values: np.ndarray) -> None:
        at, n = 0, len(values)
        while at < n:
            if not self.chunks or self.fill == len(self.chunks[-1]):
                shape = (CHUNK_ROWS, *self.dtype.shape) if self.dtype.shape else CHUNK_ROWS
                base = self.dtype.base if self.dtype.shape else self.dtype
                size = int(np.prod(shape))
                self.chunks.append(_anonymous(size, base).reshape(shape))
                self.fill = 0
            chunk = self.chunks[-1]
            take = min(n - at, len(chunk) - self.fill)
            chunk[self.fill : self.fill + take] = values[at : at + take]
            self.fill += take
            at += take

    def parts(self):
        """The values as arrays in order (views, the last one cut to what is filled)."""
        for i, chunk in enumerate(self.chunks):
            yield chunk if i < len(self.chunks) - 1 else chunk[: self.fill]

    @property
    def rows(self) -> int:
        return (len(self.chunks) - 1) * CHUNK_ROWS + self.fill if self.chunks else 0

    def clear(self) -> None:
        self.chunks, self.fill = [], 0


def _locked(method):
    """Run under the store's lock: a live view or a background trace's frame reads the
    store while the reading thread appends to it, column by column."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class ColumnStore:
    """A channel's records decoded as they arrive: one column per field of the struct.

    Numbers are kept as they are, strings (char arrays) as numbers into a table of the
    distinct values, so what is held is about the size of the final DataFrame, not of
    the buffer's slots. ``frame(consume=True)`` builds the DataFrame column by column,
    giving each chunk back as soon as it is copied: memory never holds the data twice.

    ``spill(folder)`` writes what is held to a Parquet file there and frees it; the
    frame reads it back in order.
    """

    def __init__(self, dtype: np.dtype):
        # Strings are numbered with pandas: imported now, before the probes attach, as the
        # first read would otherwise stall ~0.2 s on the import while the buffer overflows.
        import pandas  # noqa: F401

        self.dtype = dtype  # the C struct, compact
        self._lock = threading.RLock()
        self.columns: list[_Column] = []
        self.strings: dict[str, tuple[dict, list, list]] = {}
        for name in dtype.names:
            ftype = dtype.fields[name][0]
            if ftype.kind == "S":
                self.columns.append(_Column(name, "str", np.dtype(np.int32)))
                self.strings[name] = ({}, [], [])
            else:
                self.columns.append(_Column(name, "array" if ftype.shape else "num", ftype))
        self.spilled: list[tuple[str, int]] = []  # (Parquet file, rows), in order
        self.spilled_rows = 0
        self._writer = None

    @property
    def held(self) -> int:
        """Rows in memory."""
        return self.columns[0].rows if self.columns else 0

    @property
    def rows(self) -> int:
        return self.spilled_rows + self.held

    @property
    def row_bytes(self) -> int:
        return sum(c.dtype.itemsize for c in self.columns)

    @property
    def nbytes(self) -> int:
        """Bytes of memory the held rows take (whole chunks: they are mapped as a whole)."""
        return sum(len(c.chunks) * CHUNK_ROWS * c.dtype.itemsize for c in self.columns)

    @_locked
    def append(self, records: np.ndarray) -> None:
        """Decode a structured array of records (any layout with the struct's fields)."""
        if not len(records):
            return
        for column in self.columns:
            values = records[column.name]
            if column.kind == "str":
                values = self._codes(column.name, values)
            column.append(values)

    def _codes(self, name: str, values: np.ndarray) -> np.ndarray:
        lookup, texts, raws = self.strings[name]
        codes, firsts = _first_codes(values)
        ids = np.empty(len(firsts), np.int32)
        for i, raw in enumerate(values[firsts].tolist()):
            text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            j = lookup.get(text)
            if j is None:
                j = lookup[text] = len(texts)
                texts.append(text)
                raws.append(raw)
            ids[i] = j
        return ids[codes]

    # ------------------------------------------------------------ reading back

    @_locked
    def records(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of those in memory, as a structured array of the struct."""
        held = self.held
        stop = held if stop is None else min(stop, held)
        start = min(max(start, 0), stop)
        out = np.zeros(stop - start, self.dtype)
        for column in self.columns:
            seen, parts = 0, []
            for part in column.parts():
                lo, hi = max(start - seen, 0), min(stop - seen, len(part))
                if lo < hi:
                    parts.append(part[lo:hi])
                seen += len(part)
                if seen >= stop:
                    break
            if not parts:
                continue
            values = parts[0] if len(parts) == 1 else np.concatenate(parts)
            if column.kind == "str":
                raws = self.strings[column.name][2]
                values = np.array(raws, dtype=self.dtype.fields[column.name][0])[values]
            out[column.name] = values
        return out

    @_locked
    def spill(self, folder: str) -> int:
        """Write the rows in memory to this store's Parquet file in ``folder``, a row
        group per chunk, each chunk given back once written; the rows written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = self.held
        if not n:
            return 0
        if self._writer is None:
            path = os.path.join(folder, f"{id(self):x}.parquet")
            fields = []
            for column in self.columns:
                if column.kind == "array":
                    item = pa.from_numpy_dtype(column.dtype.base)
                    kind = pa.list_(item, int(np.prod(column.dtype.shape)))
                else:
                    kind = pa.from_numpy_dtype(column.dtype)
                fields.append(pa.field(column.name, kind))
            self._writer = pq.ParquetWriter(path, pa.schema(fields), compression="none")
            self.spilled.append((path, 0))
        parts = [list(column.parts()) for column in self.columns]
        for column in self.columns:
            column.clear()  # the parts hold the chunks until each is written
        for i in range(len(parts[0])):
            arrays = []
            for column, chunks in zip(self.columns, parts):
                values = chunks[i]
                # From the chunk's own memory: pa.array() would read a mapped chunk slowly.
                flat = np.ascontiguousarray(values).reshape(-1)
                base = pa.from_numpy_dtype(flat.dtype)
                flat = pa.Array.from_buffers(base, len(flat), [None, pa.py_buffer(flat)])
                if column.kind == "array":
                    size = int(np.prod(column.dtype.shape))
                    arrays.append(pa.FixedSizeListArray.from_arrays(flat, size))
                else:
                    arrays.append(flat)
                chunks[i] = None  # given back once written
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._writer.schema))
            del arrays, values
        path, rows = self.spilled[-1]
        self.spilled[-1] = (path, rows + n)
        self.spilled_rows += n
        return n

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _spilled_parts(self, column: _Column):
        import pyarrow.parquet as pq

        self._close_writer()
        for path, _n in self.spilled:
            data = pq.ParquetFile(path)
            for group in range(data.num_row_groups):
                values = data.read_row_group(group, columns=[column.name]).column(0)
                values = values.combine_chunks()
                if column.kind == "array":
                    yield values.flatten().to_numpy().reshape(len(values), *column.dtype.shape)
                else:
                    yield values.to_numpy()

    def _final_strings(self, column: _Column, n: int) -> tuple[np.ndarray, list, bool]:
        """The rank of each code among the sorted texts, and whether to make a categorical."""
        texts = self.strings[column.name][1]
        labels = sorted(set(texts))
        position = {t: i for i, t in enumerate(labels)}
        categorical = n > 32 and len(labels) <= max(1, n // 4)
        dtype = np.int32
        if categorical:
            dtype = np.int8 if len(labels) < 128 else np.int16 if len(labels) < 32768 else np.int32
        rank = np.array([position[t] for t in texts], dtype=dtype)
        return rank, labels, categorical

    @_locked
    def frame(self, wall_offset_ns: int | None, consume: bool = False, order=None, alloc=None):
        """The DataFrame of every row, spilled ones first.

        ``consume``: give each chunk back once copied (the store is empty afterwards).
        ``order``: rows to take, in this order (``sort_order``). ``alloc(n, dtype)``:
        where the final columns go (default: ordinary memory).
        """
        import pandas as pd

        n = self.rows
        alloc = alloc or (lambda count, dtype: np.empty(count, dtype))
        columns = {}
        for column in self.columns:
            is_time = (
                column.kind == "num"
                and _TIMESTAMP.match(column.name)
                and column.dtype.kind in "iu"
                and wall_offset_ns is not None
            )
            rank = labels = None
            target = column.dtype
            if column.kind == "str":
                rank, labels, categorical = self._final_strings(column, n)
                target = rank.dtype
            elif is_time:
                target = np.dtype("i8")
            shape = (n, *column.dtype.shape) if column.kind == "array" else n
            out = alloc(shape, target.base if column.kind == "array" else target)
            self._gather(column, out, rank, consume)
            if order is not None:
                out = out[order]
            if is_time:
                out += wall_offset_ns
                values = out.view("M8[ns]")
            elif column.kind == "str":
                labels = np.array(labels, dtype=object)
                if categorical:
                    values = pd.Categorical.from_codes(out, categories=labels)
                else:
                    values = pd.Series(labels[out] if n else [], dtype="object")
            elif column.kind == "array":
                values = list(out)
            else:
                values = out
            columns[column.name] = values
        if consume:
            self.clear()
        return pd.DataFrame(columns, copy=False)

    def _gather(self, column: _Column, out: np.ndarray, rank, consume: bool) -> None:
        """Copy a column's values, spilled ones first, into ``out`` (strings as ``rank``);
        with ``consume``, each chunk is given back as soon as it is copied."""
        at = 0
        for part in self._spilled_parts(column):
            out[at : at + len(part)] = rank[part] if rank is not None else part
            at += len(part)
        chunks = column.chunks
        for i in range(len(chunks)):
            part = chunks[i] if i < len(chunks) - 1 else chunks[i][: column.fill]
            out[at : at + len(part)] = rank[part] if rank is not None else part
            at += len(part)
            if consume:
                chunks[i] = None  # this chunk's memory goes back now
            del part
        if consume:
            column.clear()

    @_locked
    def sort_order(self, name: str):
        """Row order by column ``name`` (stable), or None when the rows are in order already."""
        column = next(c for c in self.columns if c.name == name)
        parts = [*self._spilled_parts(column), *column.parts()]
        if not parts:
            return None  # nothing arrived
        values = np.concatenate(parts)
        if len(values) < 2 or bool((values[1:] >= values[:-1]).all()):
            return None
        return np.argsort(values, kind="stable")

    def clear(self) -> None:
        for column in self.columns:
            column.clear()
        self._close_writer()
        for path, _n in self.spilled:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.spilled, self.spilled_rows = [], 0
