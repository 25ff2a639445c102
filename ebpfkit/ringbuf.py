"""A BPF ring buffer read in bulk, through its own memory.

The kernel lets user space map a ring buffer map: one read-write page holding
``consumer_pos``, then one read-only page holding ``producer_pos``, then the data
area, mapped twice in a row so that a record that wraps past the end can be read
as one contiguous run. Each record starts with an 8-byte header (``len`` with the
BUSY and DISCARD bits, then a page offset) and takes ``len`` rounded up to 8.

Consecutive records of the same length are found with one vectorised comparison
of their headers and copied out with one copy; only a record of another length,
a discarded or a not-yet-committed one costs a step of Python. ``consumer_pos`` is
advanced after the copy, which is what frees the space for the producers.

The loads follow x86's ordering (TSO): headers are read before the data they
guard, and no barrier is issued.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

import numpy as np

BUSY = 1 << 31  # reserved, not yet submitted
DISCARD = 1 << 30  # submitted as discarded: skip it
HEADER = 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_memory(fd: int, length: int, writable: bool, offset: int) -> int:
    """mmap(2) without Python's mmap module, which would hold a duplicate of the fd."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    addr = _libc.mmap(None, length, prot, mmap.MAP_SHARED, fd, offset)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a BPF buffer failed: {os.strerror(err)}")
    return addr


def unmap_memory(addr: int, length: int) -> None:
    _libc.munmap(addr, length)


def as_bytes(addr: int, length: int) -> np.ndarray:
    """The memory at ``addr`` as a uint8 array (a view, no copy)."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))


def map_max_entries(fd: int) -> int:
    """A map's max_entries (a ring buffer's data size in bytes), from its fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("max_entries:"):
                return int(line.split()[1])
    raise OSError(f"no max_entries in /proc/self/fdinfo/{fd}")


class Block:
    """Records copied out of a buffer: ``rows[:, offset:offset + length]`` is each one's data."""

    __slots__ = ("rows", "offset", "length")

    def __init__(self, rows: np.ndarray, offset: int, length: int):
        self.rows, self.offset, self.length = rows, offset, length


def _stride(length: int) -> int:
    return (length + HEADER + 7) & ~7


class RingReader:
    """The consumer side of one BPF_RINGBUF_OUTPUT map."""

    kind = "ring"
    data_offset = HEADER

    def __init__(self, map_fd: int):
        self.page = mmap.PAGESIZE
        self.size = map_max_entries(map_fd)
        self.mask = self.size - 1
        self._maps: list[tuple[int, int]] = []
        cons = map_memory(map_fd, self.page, True, 0)
        self._maps.append((cons, self.page))
        try:
            prod = map_memory(map_fd, self.page + 2 * self.size, False, self.page)
        except OSError:
            unmap_memory(cons, self.page)
            raise
        self._maps.append((prod, self.page + 2 * self.size))
        self._consumer = as_bytes(cons, 8).view(np.uint64)
        self._producer = as_bytes(prod, 8).view(np.uint64)
        self._data = as_bytes(prod + self.page, 2 * self.size)
        self._finalizer = weakref.finalize(self, _unmap_all, self._maps)

    @staticmethod
    def stride(itemsize: int) -> int:
        """Bytes a record of ``itemsize`` bytes takes in the buffer, header included."""
        return _stride(itemsize)

    @property
    def capacity(self) -> int:
        return self.size

    def read(self, limit: int | None = None) -> tuple[list[Block], int]:
        """Copy out the committed records (at most ``limit``); the bytes consumed."""
        if self._finalizer.alive is False:
            return [], 0
        cons = start = int(self._consumer[0])
        prod = int(self._producer[0])
        data = self._data
        blocks: list[Block] = []
        taken = 0
        while cons < prod and (limit is None or taken < limit):
            off = cons & self.mask
            header = int(data[off : off + 4].view(np.uint32)[0])
            if header & BUSY:
                break  # not committed yet; the records behind it wait for it
            length = header & ~(BUSY | DISCARD)
            stride = _stride(length)
            if header & DISCARD:
                cons += stride
                continue
            n = (prod - cons) // stride
            if limit is not None:
                n = min(n, limit - taken)
            # Records of this same length, committed, one after the other: their
            # headers equal this one (a BUSY or DISCARD bit, or another length, differs).
            headers = np.ndarray((n,), np.uint32, data, off, (stride,))
            same = headers == header
            k = n if same.all() else int(same.argmin())
            rows = data[off : off + k * stride].reshape(k, stride).copy()
            blocks.append(Block(rows, HEADER, length))
            taken += k
            cons += k * stride
        if cons != start:
            self._consumer[0] = cons  # frees the space for the producers
        return blocks, cons - start

    def close(self) -> None:
        self._finalizer()


def _unmap_all(maps: list[tuple[int, int]]) -> None:
    for addr, length in maps:
        unmap_memory(addr, length)
    maps.clear()
