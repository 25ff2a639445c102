"""Reading what programs send: perf buffers, ring buffers and bpf_trace_printk.

Records are kept as raw bytes, one chunk per record, and decoded in bulk at the
end (``frames.decode``); no Python object is built per field. Losses are
counted, never silent: a perf buffer reports the records it dropped, and for a
ring buffer the program's own failed writes are counted in the kernel
(``program.count_losses``).
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
from .errors import AttachError

DEFAULT_PERF_PAGES = 64  # per CPU: 256 KiB with 4 KiB pages
PERF_WAKEUP_EVENTS = 32  # batch wake-ups instead of one per record


@dataclass
class Channel:
    """One BPF_PERF_OUTPUT or BPF_RINGBUF_OUTPUT table of the program."""

    name: str
    kind: str  # "perf" or "ring"
    dtype: np.dtype | None
    chunks: list = field(default_factory=list)
    received: int = 0
    lost: int = 0
    limit: int | None = None  # keep at most this many records (--max-events)
    # Called (once) when reading should end early: max events reached or Ctrl-C.
    stop: Callable[[str], None] | None = None
    stopped: str = ""

    @property
    def full(self) -> bool:
        return self.limit is not None and self.received >= self.limit

    def _keep(self, data, size: int) -> None:
        if self.full:
            return
        self.received += 1
        itemsize = self.dtype.itemsize if self.dtype is not None else size
        raw = ctypes.string_at(data, min(size, itemsize))
        if len(raw) < itemsize:  # a shorter record than the struct: pad with zeros
            raw += bytes(itemsize - len(raw))
        self.chunks.append(raw)
        if self.full:
            self._stop("max events")

    def _stop(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            if self.stop:
                self.stop(why)

    def _record(self, data, size: int) -> int:
        # BCC's readers keep reading while records keep coming, and ctypes swallows an
        # exception raised in a callback: Ctrl-C must be caught here, and the producers
        # stopped, or a busy trace could not be interrupted.
        try:
            self._keep(data, size)
        except KeyboardInterrupt:
            self._stop("interrupt")
        return -1 if self.stopped else 0  # a ring buffer stops consuming on non-zero

    def open(self, bpf, perf_pages: int = DEFAULT_PERF_PAGES) -> None:
        table = bpf[self.name]
        if self.kind == "perf":

            def on_record(cpu, data, size):
                self._record(data, size)

            # Drops are counted in the kernel (count_lost); the kernel's own late report of
            # them is only acknowledged here, so that BCC does not print it.
            table.open_perf_buffer(
                on_record,
                page_cnt=perf_pages,
                lost_cb=lambda count: None,
                wakeup_events=PERF_WAKEUP_EVENTS,
            )
        else:

            def on_record(ctx, data, size):
                return self._record(data, size)

            table.open_ring_buffer(on_record)

    def frame(self, wall_offset_ns: int | None):
        import pandas as pd

        if self.dtype is None:
            return pd.DataFrame({"bytes": self.chunks})
        return frames.decode(self.chunks, self.dtype, wall_offset_ns)

    def recent(self, n: int, wall_offset_ns: int | None):
        """The last ``n`` records received so far, decoded: what a live view shows."""
        import pandas as pd

        if self.dtype is None:
            return pd.DataFrame({"bytes": self.chunks[-n:]})
        return frames.decode(self.chunks[-n:], self.dtype, wall_offset_ns)


def poll(bpf, channels: list[Channel], timeout_ms: int) -> None:
    """Wait up to ``timeout_ms`` for records and read what is there."""
    perf = [c for c in channels if c.kind == "perf"]
    ring = [c for c in channels if c.kind == "ring"]
    share = max(1, timeout_ms // (bool(perf) + bool(ring) or 1))
    if perf:
        bpf.perf_buffer_poll(timeout=share)
        bpf.perf_buffer_consume()  # records below the wake-up batch size
    if ring:
        bpf.ring_buffer_poll(timeout=share)
    if not perf and not ring:
        time.sleep(timeout_ms / 1000)


def drain(bpf, channels: list[Channel]) -> None:
    """Read everything still in the buffers, after the probes are detached."""
    if any(c.kind == "perf" for c in channels):
        bpf.perf_buffer_consume()
    if any(c.kind == "ring" for c in channels):
        bpf.ring_buffer_consume()


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
    """Non-blocking reader of trace_pipe, where bpf_trace_printk() writes."""

    def __init__(self) -> None:
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
            for line in lines:
                m = _PRINTK.match(line.decode("utf-8", "replace"))
                if m:
                    self.rows.append(
                        (float(m["ts"]), int(m["pid"]), m["comm"].strip(), int(m["cpu"]), m["msg"])
                    )

    def read(self) -> None:
        self._read(keep=True)

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
