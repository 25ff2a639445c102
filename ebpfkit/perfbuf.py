"""A BPF perf buffer read in bulk, through the memory of its per-CPU perf events.

``BPF_PERF_OUTPUT`` is a map from CPU number to a perf event of the software type
``bpf-output``; ``perf_submit`` appends a ``PERF_RECORD_SAMPLE`` to the ring of the
event of the CPU it runs on. We open those events ourselves and map each one's
ring: a metadata page (``data_head`` written by the kernel, ``data_tail`` by us)
then the data pages. A sample is an 8-byte ``perf_event_header``, a u32 size, then
the record padded to 8 bytes. A ``PERF_RECORD_LOST`` (how many did not fit) is stepped
over: the program counts each submit that failed, exactly, in its own map, and that count
is the one reported (``channels.count_lost``).

Everything between ``data_tail`` and ``data_head`` is copied out at once (in two
pieces where it wraps), runs of samples of one size are recognised by comparing
their headers in one vectorised step, and ``data_tail`` moves past them. Nobody
waits on the events' descriptors: the wake-up is a watermark of half the ring,
which a reader polling on a timer never lets the producers reach.

The file descriptors are handed to BCC's table, whose ``cleanup`` closes them as it
does its own; only the mappings are ours to undo.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import weakref

import numpy as np

from .ringbuf import Block, _unmap_all, as_bytes, map_memory

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
_WATERMARK = 1 << 14  # perf_event_attr.watermark: wake up on bytes, not on events
_ATTR_SIZE = 128
_DATA_HEAD, _DATA_TAIL, _DATA_OFFSET, _DATA_SIZE = 1024, 1032, 1040, 1048
SAMPLE_DATA = 12  # header (8) + the u32 size of the raw data
_SYSCALL = {"x86_64": 298, "aarch64": 241, "ppc64le": 319, "s390x": 331, "riscv64": 241}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_output_event(cpu: int, ring_bytes: int) -> int:
    """perf_event_open(2) of a bpf-output event on ``cpu``, for any process."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(
        "<IIQQQQQI",
        attr,
        0,
        PERF_TYPE_SOFTWARE,
        _ATTR_SIZE,
        PERF_COUNT_SW_BPF_OUTPUT,
        1,  # sample_period: every record is a sample
        PERF_SAMPLE_RAW,
        0,  # read_format
        _WATERMARK,
        ring_bytes // 2,  # wakeup_watermark
    )
    nr = _SYSCALL.get(os.uname().machine)
    if nr is None:
        raise OSError(f"perf_event_open: unknown syscall number on {os.uname().machine}")
    fd = _libc.syscall(nr, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open for CPU {cpu}: {os.strerror(err)}")
    return fd


class CpuRing:
    """One CPU's perf ring."""

    def __init__(self, fd: int, pages: int):
        page = mmap.PAGESIZE
        self.length = (pages + 1) * page
        self.addr = map_memory(fd, self.length, True, 0)
        self.meta = as_bytes(self.addr, page).view(np.uint64)
        offset = int(self.meta[_DATA_OFFSET // 8]) or page
        self.size = int(self.meta[_DATA_SIZE // 8]) or pages * page
        self.data = as_bytes(self.addr + offset, self.size)

    def read(self, limit: int | None) -> tuple[list[Block], int]:
        """Samples copied out (at most ``limit``), and the bytes consumed."""
        head = int(self.meta[_DATA_HEAD // 8])
        tail = int(self.meta[_DATA_TAIL // 8])
        span = head - tail
        if span <= 0:
            return [], 0
        start = tail % self.size
        if start + span <= self.size:
            buf = self.data[start : start + span].copy()
        else:
            buf = np.concatenate((self.data[start:], self.data[: start + span - self.size]))
        blocks: list[Block] = []
        pos = taken = 0
        while pos + 8 <= span and (limit is None or taken < limit):
            header = int(buf[pos : pos + 8].view(np.uint64)[0])
            kind, size = header & 0xFFFFFFFF, header >> 48
            if size < 8 or pos + size > span:
                break  # cannot happen with a sane kernel; leave the rest alone
            if kind == PERF_RECORD_SAMPLE:
                n = (span - pos) // size
                if limit is not None:
                    n = min(n, limit - taken)
                same = np.ndarray((n,), np.uint64, buf, pos, (size,)) == header
                k = n if same.all() else int(same.argmin())
                length = int(buf[pos + 8 : pos + 12].view(np.uint32)[0])
                rows = buf[pos : pos + k * size].reshape(k, size)
                blocks.append(Block(rows, SAMPLE_DATA, min(length, size - SAMPLE_DATA)))
                taken += k
                pos += k * size
                continue
            pos += size  # PERF_RECORD_LOST: the program's own count is exact (see above)
        self.meta[_DATA_TAIL // 8] = tail + pos  # after the copy: frees the space
        return blocks, pos


class PerfReader:
    """The consumer side of one BPF_PERF_OUTPUT map: a ring per online CPU."""

    kind = "perf"
    data_offset = SAMPLE_DATA

    def __init__(self, table, cpus: list[int], pages: int):
        self.rings: list[CpuRing] = []
        self._maps: list[tuple[int, int]] = []
        self._finalizer = weakref.finalize(self, _unmap_all, self._maps)
        ring_bytes = pages * mmap.PAGESIZE
        for cpu in cpus:
            fd = open_output_event(cpu, ring_bytes)
            try:
                ring = CpuRing(fd, pages)
            except OSError:
                os.close(fd)
                raise
            self._maps.append((ring.addr, ring.length))
            self.rings.append(ring)
            table[table.Key(cpu)] = table.Leaf(fd)
            # BCC's cleanup closes what is registered here (perf events it opened itself).
            table._open_key_fds[cpu] = fd

    @staticmethod
    def stride(itemsize: int) -> int:
        """Bytes a sample of an ``itemsize``-byte record takes: the kernel pads it to 8."""
        return SAMPLE_DATA + ((itemsize + 4 + 7) & ~7) - 4

    @property
    def capacity(self) -> int:
        return min(r.size for r in self.rings) if self.rings else 1

    def read(self, limit: int | None = None) -> tuple[list[Block], int]:
        if self._finalizer.alive is False:
            return [], 0
        blocks: list[Block] = []
        consumed = 0
        for ring in self.rings:
            left = None if limit is None else limit - sum(len(b.rows) for b in blocks)
            if left is not None and left <= 0:
                break
            got, nbytes = ring.read(left)
            blocks += got
            consumed = max(consumed, nbytes)  # the fullest ring decides how soon to come back
        return blocks, consumed

    def close(self) -> None:
        self._finalizer()
