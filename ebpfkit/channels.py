"""Reading what programs send: perf buffers, ring buffers and bpf_trace_printk.

Both kinds of buffer are read through their own memory (``ringbuf.RingReader``,
``perfbuf.PerfReader``): what is there is copied out in one go, and records of
the struct's size are kept as blocks of one numpy array each; no Python object is
made per record. The producers send no wake-ups (``program.count_losses`` adds
``BPF_RB_NO_WAKEUP``; perf events wake on a half-full watermark): ``poll`` reads
on a timer, coming back sooner the faster the buffers fill.

Losses are counted, never silent: each failed write is counted by the program
itself (``program.count_losses``), which is exact for both kinds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import frames, probes
from .cpus import online_cpus
from .errors import AttachError
from .perfbuf import PerfReader
from .ringbuf import RingReader

DEFAULT_PERF_PAGES = (
    256  # per CPU, 1 MiB: ~20 ms of a 1 M records/s flood, if the reader is preempted
)
MAX_NAP = 0.001  # s: the longest wait between two reads of a buffer
MIN_NAP = 0.0001  # s: below this, read again at once rather than sleep
FILL_TARGET = 0.25  # come back before a buffer is more than this full
# The memory a trace's records may take, unless told otherwise: this share of the memory
# the machine has available when the trace starts.
DEFAULT_BUDGET = "50%"
ON_BUDGET = ("stop", "spill")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass
class Channel:
    """One BPF_PERF_OUTPUT or BPF_RINGBUF_OUTPUT table of the program."""

    name: str
    kind: str  # "perf" or "ring"
    dtype: np.dtype | None
    received: int = 0
    lost: int = 0
    limit: int | None = None  # keep at most this many records (--max-events)
    # Called (once) when reading should end early: max events reached or Ctrl-C.
    stop: Callable[[str], None] | None = None
    stopped: str = ""
    # Records as read: decoded into columns as they arrive (``store``), or, without a
    # dtype, the readers' raw blocks.
    blocks: list = field(default_factory=list)
    store: frames.ColumnStore | None = None
    reader: RingReader | PerfReader | None = None
    _layout: np.dtype | None = None
    _last_read: float = 0.0

    @property
    def full(self) -> bool:
        return self.limit is not None and self.received >= self.limit

    def _stop(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            if self.stop:
                self.stop(why)

    def open(self, bpf, perf_pages: int = DEFAULT_PERF_PAGES) -> None:
        table = bpf[self.name]
        try:
            if self.kind == "perf":
                self.reader = PerfReader(table, online_cpus(), perf_pages)
            else:
                self.reader = RingReader(table.map_fd)
        except OSError as e:
            size = (
                f"{perf_pages} pages per CPU (--buffer-pages)"
                if self.kind == "perf"
                else "the pages given to BPF_RINGBUF_OUTPUT"
            )
            raise AttachError(
                f"{self.name}: the {self.kind} buffer could not be mapped into memory ({e}). "
                f"Without root, locked memory is limited (perf_event_mlock_kb, ulimit -l): "
                f"make it smaller than {size}, or run as root."
            ) from None
        if self.dtype is not None:
            self._layout = _slot_layout(self.dtype, self.reader)
            self.store = frames.ColumnStore(self.dtype)
        self._last_read = time.monotonic()

    def read(self) -> int:
        """Take what the buffer holds; the bytes consumed."""
        if self.reader is None or self.full:
            return 0
        left = None if self.limit is None else self.limit - self.received
        blocks, consumed = self.reader.read(left)
        for block in blocks:
            self._keep(block)
        if self.full:
            self._stop("max events")
        return consumed

    def _keep(self, block) -> None:
        n = len(block.rows)
        if self.limit is not None:
            n = min(n, self.limit - self.received)
        if n <= 0:
            return
        rows = block.rows[:n]
        if self._layout is None:
            self.blocks.append(type(block)(rows, block.offset, block.length))
            self.received += n
            return
        stride, start = self._layout.itemsize, self.reader.data_offset
        if rows.shape[1] != stride or block.offset != start or block.length < self.dtype.itemsize:
            # A record of another size than the struct: cut it, or pad it with zeros.
            fixed = np.zeros((n, stride), np.uint8)
            m = min(block.length, self.dtype.itemsize)
            fixed[:, start : start + m] = rows[:, block.offset : block.offset + m]
            rows = fixed
        self.store.append(np.ascontiguousarray(rows).view(self._layout).reshape(n))
        self.received += n  # after the append: a live view may be reading from another thread

    def close(self) -> None:
        """Unmap the buffer: nothing more is read."""
        if self.reader is not None:
            self.reader.close()

    # ------------------------------------------------------------ what was read

    def records(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Records ``start:stop`` of those received, as one structured array (the struct's
        dtype); records already spilled to disk are not among them."""
        if self.store is None:
            raise ValueError(f"{self.name}: records of unknown layout have no dtype")
        skip = self.store.spilled_rows
        stop = self.received if stop is None else min(stop, self.received)
        return self.store.records(max(start - skip, 0), max(stop - skip, 0))

    def _raw(self, start: int = 0) -> list[bytes]:
        out: list[bytes] = []
        for block in self.blocks:
            out += [bytes(r[block.offset : block.offset + block.length]) for r in block.rows]
        return out[start:]

    @property
    def chunks(self) -> _Records:
        """The records received so far, sliceable by record (``frames.decode`` reads it)."""
        return _Records(self, 0, None)

    @property
    def nbytes(self) -> int:
        """Memory the records received take."""
        if self.store is not None:
            return self.store.nbytes
        return sum(b.rows.nbytes for b in self.blocks)

    def frame(self, wall_offset_ns: int | None):
        """The records so far as a DataFrame (a copy: the channel keeps them)."""
        import pandas as pd

        if self.store is None:
            return pd.DataFrame({"bytes": self._raw()})
        return self.store.frame(wall_offset_ns)

    def take_frame(self, wall_offset_ns: int | None, sort_by: str | None = None, alloc=None):
        """The records as a DataFrame, each chunk given back as soon as it is copied;
        ``sort_by`` a column (stable). The channel holds nothing afterwards."""
        import pandas as pd

        if self.store is None:
            df = pd.DataFrame({"bytes": self._raw()})
            self.blocks = []
            return df
        order = self.store.sort_order(sort_by) if sort_by else None
        return self.store.frame(wall_offset_ns, consume=True, order=order, alloc=alloc)

    def recent(self, n: int, wall_offset_ns: int | None):
        """The last ``n`` records received so far, decoded: what a live view shows."""
        import pandas as pd

        start = max(self.received - max(n, 0), 0)
        if self.store is None:
            return pd.DataFrame({"bytes": self._raw(start)})
        return frames.records_frame(self.records(start), wall_offset_ns)


class _Records:
    """A slice of a channel's records: ``len`` counts records, numpy reads them at once."""

    def __init__(self, channel: Channel, start: int, stop: int | None):
        self.channel, self.start = channel, start
        self.stop = channel.received if stop is None else min(stop, channel.received)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, item):
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("records are sliced by range only")
        start, stop, _ = item.indices(len(self))
        return _Records(self.channel, self.start + start, self.start + max(stop, start))

    def __array__(self, dtype=None, copy=None):
        records = self.channel.records(self.start, self.stop)
        return records if dtype is None else records.astype(dtype)


def _slot_layout(dtype: np.dtype, reader) -> np.dtype:
    """The struct's dtype as it sits in a buffer slot: past the header, one slot per row."""
    fields = dtype.fields
    names = list(dtype.names)
    return np.dtype(
        {
            "names": names,
            "formats": [fields[n][0] for n in names],
            "offsets": [fields[n][1] + reader.data_offset for n in names],
            "itemsize": reader.stride(dtype.itemsize),
        }
    )


# ---------------------------------------------------------------- the memory budget


def mem_available() -> int:
    """Bytes the machine can give without swapping (MemAvailable of /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def size_text(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def budget_bytes(value) -> int:
    """A memory budget in bytes: a number of bytes, ``"2G"``, ``"500M"``, or ``"40%"`` (of
    the memory available now)."""
    from .errors import BadArguments

    if value is None:
        value = DEFAULT_BUDGET
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = int(value)
    else:
        text = str(value).strip()
        m = _SIZE.match(text)
        if text.endswith("%"):
            try:
                share = float(text[:-1])
            except ValueError:
                share = -1.0
            if not 0 < share <= 100:
                raise BadArguments(
                    f"memory budget {value!r}: give a share above 0% and at most 100%"
                )
            n = int(mem_available() * share / 100)
        elif m:
            n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        else:
            raise BadArguments(
                f"memory budget {value!r}: give bytes (e.g. 2G, 500M) or a share of the "
                "memory available (e.g. 50%)"
            )
    if n <= 0:
        raise BadArguments(f"memory budget {value!r}: give more than 0 bytes")
    return n


@dataclass
class MemoryBudget:
    """What the records of a trace may take in memory, and what happens when they reach it:
    ``stop`` the trace and keep what it has, or ``spill`` them to disk and go on."""

    limit: int
    action: str = "stop"
    spill_dir: str | None = None  # where the spill folder goes (default: the temp folder)
    on_stop: Callable[[str], None] | None = None
    reached: bool = False
    folder: str | None = None
    spilled: int = 0  # records written to disk
    spilled_bytes: int = 0
    peak: int = 0  # the most the records took in memory

    def check(self, channels: list[Channel]) -> None:
        held = sum(c.nbytes for c in channels)
        self.peak = max(self.peak, held)
        if held < self.limit:
            return
        first = not self.reached
        self.reached = True
        if self.action == "spill":
            if self.folder is None:
                import tempfile

                self.folder = tempfile.mkdtemp(prefix="ebpfkit-spill-", dir=self.spill_dir)
            for c in channels:
                if c.store is not None and c.store.held:
                    self.spilled_bytes += c.store.held * c.store.row_bytes
                    self.spilled += c.store.spill(self.folder)
            if sum(c.nbytes for c in channels) < self.limit:
                return
        # Stop mode, or records that cannot be spilled (no struct layout): end the trace.
        if first or self.action == "spill":
            if self.on_stop:
                self.on_stop("memory budget")

    def alloc(self, rows_bytes: int):
        """Where the final columns go: memory, or, when they would not fit in what the
        machine has available, files in the spill folder (pages the kernel can write out)."""
        if self.folder is None or rows_bytes < 0.8 * mem_available():
            return None
        folder = self.folder

        def on_disk(shape, dtype):
            import tempfile

            fd, path = tempfile.mkstemp(dir=folder, suffix=".column")
            os.close(fd)
            try:
                return np.memmap(path, dtype=dtype, mode="w+", shape=shape)
            finally:
                os.unlink(path)  # the mapping keeps it until the DataFrame lets it go

        return on_disk

    def cleanup(self) -> None:
        if self.folder is not None:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def poll(bpf, channels: list[Channel], timeout_ms: int, budget: MemoryBudget | None = None) -> None:
    """Read the buffers for ``timeout_ms``, as often as their filling asks.

    Producers send no wake-ups, so nothing is waited on: after each read the nap is
    chosen so that, at the rate the fullest buffer just filled, it is back before
    that buffer is a quarter full.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    live = [c for c in channels if c.reader is not None]
    while True:
        fill_rate = 0.0  # fraction of a buffer per second, the fastest one
        for c in live:
            if c.full or c.stopped:
                continue
            consumed = c.read()
            now = time.monotonic()
            elapsed = max(now - c._last_read, 1e-6)
            c._last_read = now
            fill_rate = max(fill_rate, consumed / c.reader.capacity / elapsed)
        if budget is not None:
            budget.check(channels)
        now = time.monotonic()
        left = deadline - now
        if left <= 0 or not live or all(c.full or c.stopped for c in live):
            if left > 0 and not live:
                time.sleep(left)
            return
        nap = min(MAX_NAP, left, FILL_TARGET / fill_rate if fill_rate else MAX_NAP)
        if nap >= MIN_NAP:
            time.sleep(nap)


def drain(bpf, channels: list[Channel], budget: MemoryBudget | None = None) -> None:
    """Read everything still in the buffers, after the probes are detached; then unmap them.

    Bounded: should a probe still be attached, at most a few buffers' worth is read.
    """
    for c in channels:
        if c.reader is None:
            continue
        left = 4 * c.reader.capacity
        while left > 0 and not c.full:
            consumed = c.read()
            if not consumed:
                break
            left -= consumed
            if budget is not None and budget.action == "spill":
                budget.check(channels)
        c.close()


def count_lost(bpf, lost_map: str, channels: list[Channel]) -> None:
    """Records each buffer could not take, as the program counted them, summed over CPUs.

    A perf buffer also reports drops to user space, but only once a later record reaches
    the same CPU's buffer; the program's own count misses none, so it is the one used.
    """
    table = bpf[lost_map]
    for index, channel in enumerate(channels):
        channel.lost = int(sum(table[ctypes.c_int(index)]))


# ---------------------------------------------------------------- bpf_trace_printk

_PRINTK = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?(?P<ts>\d+\.\d+):\s+"
    r"(?:bpf_trace_printk|\w+):\s?(?P<msg>.*)$"
)


class PrintkReader:
    """Non-blocking reader of trace_pipe, where bpf_trace_printk() writes.

    trace_pipe is the whole machine's: with a ``tag`` (which ``program.count_printk``
    put in front of each of our formats) only lines that start with it are kept, and
    the tag is cut off; without one, every line is kept.
    """

    def __init__(self, tag: str | None = None) -> None:
        self.tag = tag
        base = probes.tracefs()
        path = os.path.join(str(base or "/sys/kernel/debug/tracing"), "trace_pipe")
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            raise AttachError(
                f"bpf_trace_printk() output is read from {path}, which another program is "
                "reading right now (bpftrace, another notebook, `cat trace_pipe`?). Stop it, or "
                "send events through BPF_PERF_OUTPUT or BPF_RINGBUF_OUTPUT instead."
            ) from None
        self.partial = b""
        self.rows: list[tuple] = []
        self.discard()

    def discard(self) -> None:
        """Drop what earlier programs left in the pipe."""
        self._read(keep=False)

    def _read(self, keep: bool = True) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    return
                raise
            if not data:
                return
            if not keep:
                continue
            data = self.partial + data
            *lines, self.partial = data.split(b"\n")
            tag = self.tag
            for line in lines:
                m = _PRINTK.match(line.decode("utf-8", "replace"))
                if not m:
                    continue
                msg = m["msg"]
                if tag is not None:
                    if not msg.startswith(tag):
                        continue  # another program's line
                    msg = msg[len(tag) :]
                self.rows.append(
                    (float(m["ts"]), int(m["pid"]), m["comm"].strip(), int(m["cpu"]), msg)
                )

    def read(self) -> None:
        self._read(keep=True)

    @property
    def delivered(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def frame(self, wall_offset_ns: int | None):
        import pandas as pd

        df = pd.DataFrame(self.rows, columns=["ts", "pid", "comm", "cpu", "message"])
        if wall_offset_ns is not None and not df.empty:
            # trace_pipe's clock is the monotonic-like trace clock, in seconds.
            df["time"] = pd.to_datetime((df["ts"] * 1e9).astype("i8") + wall_offset_ns, unit="ns")
            df = df[["time", "pid", "comm", "cpu", "message"]]
        return df


def count_printk(bpf, printk_map: str) -> int:
    """Lines the program wrote into the kernel's trace buffer, as it counted them."""
    return int(sum(bpf[printk_map][ctypes.c_int(0)]))


def trace_buffer_entries() -> int:
    """Lines sitting in the kernel's trace buffer, not read yet (every program's)."""
    base = probes.tracefs()
    total = 0
    root = os.path.join(str(base or "/sys/kernel/debug/tracing"), "per_cpu")
    try:
        cpus = os.listdir(root)
    except OSError:
        return 0
    for cpu in cpus:
        try:
            with open(os.path.join(root, cpu, "stats")) as f:
                for line in f:
                    if line.startswith("entries:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total
