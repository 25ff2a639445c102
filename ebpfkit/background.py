"""Background traces: a program that keeps tracing while the learner works in other cells.

    bg = ebpfkit.start(source, tracepoint="syscalls:sys_enter_openat", name="opens")
    bg.frame()          # the events so far, as a DataFrame
    result = bg.stop()  # detach, collect: a TraceResult

or ``%%bpf --background opens`` in a notebook, ``%bpf --stop opens``, ``%bpf --stop-all``.
A bpftrace script runs the same way (``%%bpftrace --background NAME``,
``ebpfkit.bpftrace.start``): its ``Bpftrace`` lives as a Session does (``start``, ``run``,
``close``, ``_stop_producers``), so the handle, the listing and the stopping are these.
With ``recording=NAME`` (``--recording NAME``) it follows $EBPFKIT_MODE as a foreground
cell does: record mode saves the result when the trace is stopped, and where the cell
replays, the handle is a stand-in (ReplayedTrace) that does no kernel work at all.
The program is compiled and attached in the caller's thread (so its errors show in the
cell that started it); a thread then reads its buffers until it is stopped, its
duration ends or its workload exits. ``stop_all`` runs at exit and on
``%unload_ext ebpfkit``: no probe outlives the kernel.
"""

from __future__ import annotations

import atexit
import html
import threading
import time
from types import SimpleNamespace

from . import live, recording, running
from .channels import PrintkReader
from .errors import BadArguments, EbpfkitError
from .running import check_trace_pipe, get, sessions
from .session import MAX_DURATION, Run, Session

__all__ = [
    "BackgroundTrace",
    "ReplayedTrace",
    "check_trace_pipe",
    "get",
    "sessions",
    "start",
    "start_session",
    "stop_all",
    "table",
]

_atexit_registered = False
JOIN_TIMEOUT = 30.0  # seconds to wait for a stopped trace to collect its data


class BackgroundTrace:
    """A trace running in a thread of its own; ``stop()`` ends it and returns the result.

    ``session``: a Session, or a ``bpftrace.Bpftrace`` (anything with their life cycle).
    """

    def __init__(self, name: str, session: Session):
        self.name = name
        self.session = session
        self.result = None
        self.error: BaseException | None = None
        self.view = None
        self.announced = False  # its warnings were printed when it started (the magic)
        self.record_to = None  # record mode: where stop() saves the result
        self.cell: dict | None = None  # the source and options, kept with a recording
        self.started_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # ------------------------------------------------------------ life cycle

    def _start(self, duration: float | None, workload: str | None, progress) -> None:
        # Imported now: a trace stopped at exit could not import it then ("can't register
        # atexit after shutdown") and would lose its data.
        import pandas  # noqa: F401

        self.session.start()  # compile and attach here: errors belong to the caller's cell
        try:
            self.view = live.make(progress, self.session, name=self.name, background=True)
        except BaseException:
            self.session.close()
            raise
        self.started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._main,
            args=(duration or MAX_DURATION, workload),
            name=f"ebpfkit-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def _main(self, duration: float, workload: str | None) -> None:
        try:
            self.result = self.session.run(duration=duration, workload=workload, progress=self.view)
        except BaseException as e:  # kept for stop(), which raises it in the caller's cell
            self.error = e
        finally:
            self.session.close()
            self._done.set()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def status(self) -> str:
        if self.running:
            return "stopping" if self.session.stop_reason else "tracing"
        if self.error is not None:
            return f"failed: {type(self.error).__name__}"
        return f"stopped by {self.result.stopped_by}"

    def stop(self, why: str = "stop()"):
        """Detach, collect what the trace gathered and return it as a TraceResult."""
        if self.running:
            self.session._stop_producers(why)
            if not self._done.wait(JOIN_TIMEOUT):
                raise EbpfkitError(
                    f"background trace {self.name} is still collecting after "
                    f"{JOIN_TIMEOUT:.0f} s; call stop() again to wait longer"
                )
        running.discard(self)
        if self.error is not None:
            raise self.error
        self.result.announced = self.announced
        if self.cell is not None:
            self.result.cell = self.cell
        if self.record_to is not None:
            path, self.record_to = self.record_to, None  # saved once, however often stopped
            recording.save(self.result, path)
            print(f"recorded to {recording.shown_path(path)}", flush=True)
        return self.result

    # ------------------------------------------------------------ what it has so far

    @property
    def attached(self) -> str:
        return "; ".join(self.session.attached())

    @property
    def elapsed(self) -> float:
        if self.result is not None:
            return self.result.duration
        return time.monotonic() - self.started_at

    @property
    def received(self) -> int:
        return live.events_so_far(self.session)

    def frame(self, channel: str | None = None):
        """The events so far (after stop: the result's), of the first or the named buffer."""
        if self.result is not None:
            if channel is None:
                if self.result.events is not None:
                    return self.result.events
                return self.result.main_frame()[1]
            return self.result.channels[channel]
        chans = self.session.channels
        if not chans:
            if self.session.printk is not None:
                return self._printk()
            return None
        by_name = {c.name: c for c in chans}
        if channel is not None and channel not in by_name:
            raise BadArguments(
                f"{self.name} has no buffer {channel!r}; it has {', '.join(by_name)}"
            )
        c = by_name[channel] if channel else chans[0]
        return _frame_so_far(c, self.session.wall_offset)

    def _printk(self):
        # The reader's own frame(), over a snapshot of its rows: the thread appends.
        rows = SimpleNamespace(rows=list(self.session.printk.rows))
        return PrintkReader.frame(rows, self.session.wall_offset)

    @property
    def events(self):
        return self.frame()

    @property
    def printk(self):
        if self.result is not None:
            return self.result.printk
        return self._printk() if self.session.printk is not None else None

    def summary(self) -> str:
        if self.result is not None:
            return f"background trace {self.name}: {live.final_line(self.result)}"
        if self.error is not None:
            return f"background trace {self.name}: failed: {self.error}"
        return (
            f"background trace {self.name}: {self.status}, {self.elapsed:.1f} s, "
            f"{live.count(self.received)} events so far"
        )

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        hint = "" if not self.running else f" (<code>{self.name}.stop()</code> ends it)"
        return f"<p>{html.escape(self.summary())}{hint}</p>"


class ReplayedTrace(BackgroundTrace):
    """Where the cell replays: a stand-in holding the recorded result; no kernel work.

    It is listed and stopped as a live trace is; ``frame()`` and ``events`` are the
    recorded events from the start, ``stop()`` returns the recorded TraceResult.
    """

    def __init__(self, name: str, result):
        super().__init__(name, session=None)
        self.result = result
        self._done.set()

    @property
    def status(self) -> str:
        return "recording (replayed, not live)"

    @property
    def attached(self) -> str:
        return "nothing: a recording"

    def stop(self, why: str = "stop()"):
        running.discard(self)
        return self.result

    def summary(self) -> str:
        return (
            f"background trace {self.name}: {self.result.recording_line()}; "
            f"{live.final_line(self.result)}"
        )


def _frame_so_far(channel, wall_offset: int):
    # The trace's thread appends to the channel meanwhile; its frame() reads what it
    # had received when called.
    df = channel.frame(wall_offset)
    times = [col for col in df.columns if str(df[col].dtype).startswith("datetime64")]
    if channel.kind == "perf" and times:
        df = df.sort_values(times[0], kind="stable").reset_index(drop=True)
    return df


# ---------------------------------------------------------------- all of them


def start(
    source: str,
    *,
    name: str | None = None,
    duration: float | None = None,
    run: str | None = None,
    progress=True,
    recording: str | None = None,
    **options,
) -> BackgroundTrace:
    """Compile and attach ``source``, then trace in the background until stopped.

    ``options`` are Session's (``tracepoint=``, ``uprobe=``, ...). Without a
    ``duration`` the trace goes on until ``stop()`` (at most an hour); with ``run``
    it ends when that command exits. Returns the handle: ``.frame()`` the events so
    far, ``.stop()`` the TraceResult. ``recording=NAME`` records or replays it as
    $EBPFKIT_MODE says (see ``start_session``).
    """
    job = Run(source, options, duration, run, recording, progress)  # checked here, once
    return start_session(
        job.session(),
        name=name,
        duration=job.duration,
        run=job.workload,
        progress=progress,
        recording_name=recording,
        cell=job.cell if recording is not None else None,
    )


def start_session(
    session: Session,
    *,
    name: str | None = None,
    duration: float | None = None,
    run: str | None = None,
    progress=True,
    recording_name: str | None = None,
    cell: dict | None = None,
) -> BackgroundTrace:
    """``start`` for a Session already made (the magic makes its own), or a
    ``bpftrace.Bpftrace`` not yet started (``bpftrace.start`` makes one).

    With ``recording_name`` the trace follows $EBPFKIT_MODE: where it replays, the
    handle is a ReplayedTrace of that recording and nothing is compiled or attached;
    in record mode, ``stop()`` saves the result there. ``cell`` is kept with it.
    """
    # The duration was checked when the run was described (session.Run).
    path = recording.path_for(recording_name) if recording_name is not None else None
    name = running.free_name(name)
    if path is not None and recording.replaying():
        # run_or_replay takes its replay branch here: the same errors for a missing file
        # and the same note for a changed program as a foreground cell.
        result = recording.run_or_replay(recording_name, _no_live_trace, source=session.source)
        trace = ReplayedTrace(name, result)
    else:
        trace = BackgroundTrace(name, session)
        trace.cell = cell
        if path is not None and recording.mode() == "record":
            trace.record_to = path
        trace._start(duration, run, progress)
    running.add(name, trace)
    _register_atexit()
    return trace


def _no_live_trace():
    raise AssertionError("a replayed background trace never traces live")


def stop_all(why: str = "stop_all()") -> dict:
    """Stop every background trace; their results by name (an error where one failed)."""
    out = {}
    for name, trace in sessions().items():
        try:
            out[name] = trace.stop(why)
        except BaseException as e:  # one failure must not keep the others attached
            out[name] = e
    return out


def table():
    """The background traces as a DataFrame: name, status, seconds, events, probes."""
    import pandas as pd  # where a frame is made, as everywhere in ebpfkit

    rows = [
        {
            "name": t.name,
            "status": t.status,
            "seconds": round(t.elapsed, 1),
            "events": t.received if t.result is None else live.result_events(t.result),
            "attached": t.attached,
        }
        for t in sessions().values()
    ]
    return pd.DataFrame(rows, columns=["name", "status", "seconds", "events", "attached"])


def _at_exit() -> None:
    stop_all("kernel shutdown")


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_at_exit)
