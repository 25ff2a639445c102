"""A whole BPF map read at once, by its file descriptor, into numpy arrays.

``BPF_MAP_LOOKUP_BATCH`` (bpf(2) command 24, Linux 5.6) copies many entries per system
call: hash, LRU hash and their per-CPU kinds walk their buckets, arrays their indices.
Where the kernel or the map type has no batch lookup (older kernels, stack trace maps:
EINVAL or ENOTSUPP), the map is read the old way, one ``MAP_GET_NEXT_KEY`` and one
``MAP_LOOKUP_ELEM`` per entry. Either way the keys and values come back as numpy arrays
whose dtypes are the table's own ctypes ``Key`` and ``Leaf`` types (bcc's tables and
loader.py's carry ``map_fd``, ``Key``, ``Leaf``, ``ttype`` and ``max_entries``).

A per-CPU map's value holds one slot per possible CPU, each rounded up to 8 bytes (the
kernel's layout); its values come back as an ``(entries, cpus)`` array of the element type.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

import numpy as np

from .bpfsys import MAP_GET_NEXT_KEY, MAP_LOOKUP_BATCH, MAP_LOOKUP_ELEM, BpfError, address, bpf
from .cpus import parse_cpu_list

# linux/bpf.h map types whose values hold one slot per possible CPU.
PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH = 5, 6, 10
PERCPU_TYPES = (PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH)
POSSIBLE = "/sys/devices/system/cpu/possible"
ENOTSUPP = 524  # the kernel's own "operation not supported" (no batch op for this map type)
# Entries asked for per batch call at first (and at most CHUNK_BYTES of them); a call
# that cannot fit one hash bucket is refused with ENOSPC and retried with twice the room.
CHUNK = 1 << 16
CHUNK_BYTES = 1 << 26


class _Batch(ctypes.Structure):
    """``union bpf_attr``'s batch part: BPF_MAP_*_BATCH commands."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _Elem(ctypes.Structure):
    """``union bpf_attr``'s element part: MAP_LOOKUP_ELEM, MAP_GET_NEXT_KEY (value = next_key)."""

    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


@dataclass
class MapData:
    """A map's entries: ``keys`` (n,), ``values`` (n,) or (n, cpus) for a per-CPU map."""

    keys: np.ndarray
    values: np.ndarray
    key_type: type  # the ctypes types the dtypes came from
    value_type: type  # a per-CPU map's: one CPU's value
    percpu: bool
    batched: bool  # read with BPF_MAP_LOOKUP_BATCH (False: next-key and lookup)

    def __len__(self) -> int:
        return len(self.keys)


def possible_cpus() -> int:
    """The kernel's num_possible_cpus(): how many slots a per-CPU value has."""
    with open(POSSIBLE) as f:
        return len(parse_cpu_list(f.read()))


def dtype_of(ctype) -> np.dtype:
    """The numpy dtype of a ctypes type, with its layout; opaque bytes where numpy has no
    equivalent (bitfields)."""
    size = ctypes.sizeof(ctype)
    try:
        dtype = np.dtype(ctype)
    except (TypeError, ValueError, NotImplementedError):
        return np.dtype((np.void, size))
    return dtype if dtype.itemsize == size else np.dtype((np.void, size))


def read(table, batch: bool = True) -> MapData:
    """Every entry of a bcc table (or anything with ``map_fd``, ``Key``, ``Leaf``, ``ttype``,
    ``max_entries``). ``batch=False`` reads entry by entry even where batches work."""
    percpu = table.ttype in PERCPU_TYPES
    # bcc's per-CPU tables keep one CPU's type as sLeaf, and Leaf as the array of them.
    elem = getattr(table, "sLeaf", table.Leaf) if percpu else table.Leaf
    key_size = ctypes.sizeof(table.Key)
    if percpu:
        cpus = possible_cpus()
        slot = (ctypes.sizeof(elem) + 7) // 8 * 8
        value_size = slot * cpus
    else:
        value_size = ctypes.sizeof(elem)
    keys, values, batched = read_fd(
        table.map_fd, key_size, value_size, int(table.max_entries), batch
    )
    n = len(keys)
    key_array = keys.reshape(-1).view(dtype_of(table.Key)).reshape(n)
    if percpu:
        size = ctypes.sizeof(elem)
        per_cpu = values.reshape(n, cpus, slot)
        if size != slot:  # the slot's first bytes are the value (little and big endian alike)
            per_cpu = np.ascontiguousarray(per_cpu[:, :, :size])
        value_array = per_cpu.reshape(-1).view(dtype_of(elem)).reshape(n, cpus)
    else:
        value_array = values.reshape(-1).view(dtype_of(elem)).reshape(n)
    return MapData(key_array, value_array, table.Key, elem, percpu, batched)


def read_fd(
    fd: int, key_size: int, value_size: int, max_entries: int, batch: bool = True
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Raw keys (n, key_size) and values (n, value_size) as bytes, and whether batches
    read them. ``value_size`` is what the kernel copies per entry (per-CPU: all CPUs)."""
    if batch:
        try:
            return (*_read_batches(fd, key_size, value_size, max_entries), True)
        except BpfError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                raise
    return (*_read_one_by_one(fd, key_size, value_size, max_entries), False)


def _read_batches(fd: int, key_size: int, value_size: int, max_entries: int):
    chunk = max(1, min(max_entries, CHUNK, CHUNK_BYTES // max(key_size + value_size, 1)))
    # The batch token: a bucket number for hashes (u32), the last key for arrays.
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    key_parts, value_parts = [], []
    first = True
    while True:
        keys = np.empty((chunk, key_size), np.uint8)
        values = np.empty((chunk, value_size), np.uint8)
        attr = _Batch(
            in_batch=0 if first else address(token_in),
            out_batch=address(token_out),
            keys=keys.ctypes.data,
            values=values.ctypes.data,
            count=chunk,
            map_fd=fd,
        )
        done = False
        try:
            bpf(MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            if e.errno == errno.ENOSPC and attr.count == 0 and chunk < max_entries:
                chunk = min(chunk * 2, max_entries)  # one hash bucket holds more than chunk
                continue
            if e.errno != errno.ENOENT:  # ENOENT: the end, with ``count`` entries copied
                raise
            done = True
        n = attr.count
        if n:
            key_parts.append(keys[:n])
            value_parts.append(values[:n])
        if done:
            break
        ctypes.memmove(token_in, token_out, len(token_in))
        first = False
    return _joined(key_parts, key_size), _joined(value_parts, value_size)


def _joined(parts: list[np.ndarray], width: int) -> np.ndarray:
    if not parts:
        return np.empty((0, width), np.uint8)
    return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)


def _read_one_by_one(fd: int, key_size: int, value_size: int, max_entries: int):
    key = ctypes.create_string_buffer(max(key_size, 1))
    next_key = ctypes.create_string_buffer(max(key_size, 1))
    value = ctypes.create_string_buffer(max(value_size, 1))
    keys, values = bytearray(), bytearray()
    step = _Elem(map_fd=fd, key=0, value=address(next_key))
    look = _Elem(map_fd=fd, key=address(next_key), value=address(value))
    # A hash map whose key was deleted meanwhile starts over from its first key: never
    # more steps than the map can hold entries (an array has exactly that many). As bcc's
    # items(): the keys end at the first refusal (ENOENT: the last one), and an entry
    # that cannot be looked up (deleted meanwhile, or not readable from user space) is
    # left out.
    for _ in range(max_entries):
        try:
            bpf(MAP_GET_NEXT_KEY, step)
        except BpfError:
            break
        try:
            bpf(MAP_LOOKUP_ELEM, look)
        except BpfError:
            pass
        else:
            keys += next_key.raw[:key_size]
            values += value.raw[:value_size]
        ctypes.memmove(key, next_key, key_size)
        step.key = address(key)
    count = len(keys) // key_size if key_size else 0
    return (
        np.frombuffer(bytes(keys), np.uint8).reshape(count, key_size).copy(),
        np.frombuffer(bytes(values), np.uint8).reshape(count, value_size).copy(),
    )
