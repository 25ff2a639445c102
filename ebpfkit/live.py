"""The live view of a running trace: an ipywidgets panel, or a text progress line.

``Session.run(progress=True)`` (and every ``%%bpf`` cell) shows, about four times a
second, the elapsed time, the events received so far, their rate, the records lost so
far and the last few rows, with a Stop button that ends the trace and keeps its data.

Where there is no Jupyter kernel to draw widgets (a terminal IPython, a script) the
view is a text line instead. Under ``jupyter nbconvert --execute`` or nbval the panel
is saved with a plain-text fallback that reads like the text line
("traced 2.00 s, 1,234 events, lost 0 (stopped by duration)").

The Stop button and a busy kernel: while a foreground cell traces, the kernel's main
thread is inside ``Session.run`` and handles no shell message, so the button's click
(a ``comm_msg``) would wait until the trace is over. ipykernel 7 reads the shell
channel in a thread of its own and hands every message to the main thread or to a
*subshell* (a thread with its own event loop); a comm is handed to the subshell its
``_reply_subshell_for`` names. The Stop button's comm names a subshell that ebpfkit
creates once per kernel, so the click is handled there at once, while the cell runs;
execute requests are untouched and keep their order. Without subshells (ipykernel 6)
the click waits for the cell; Ctrl-C (the notebook's interrupt) still stops a trace.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from collections.abc import Callable

from . import channels, program
from .errors import BadArguments

# pandas, ipywidgets and IPython.display are imported where a frame or a widget is made:
# the text view (the command line's) needs none of them.

REFRESH = 0.25  # seconds between two updates of a view
ROWS = 5  # recent rows shown in the panel, top rows of each map
# A trace that only aggregates: the panel reads its maps while it runs, but spends at
# most this share of the time on it (a map of a million entries takes a while).
MAP_SHARE = 0.1
HIST_WIDTH = 30  # characters of the longest bar of a histogram in the panel
TEXT_EVERY = 5.0  # seconds between two progress lines where the output is not a terminal
MODES = ("auto", "widget", "text", "off")


# ---------------------------------------------------------------- what the views show


def count(value: float) -> str:
    return f"{value:,.0f}"


def events_so_far(session) -> int:
    """Records received through the program's buffers, plus bpf_trace_printk lines."""
    n = sum(c.received for c in session.channels)
    if session.printk is not None:
        n += len(session.printk.rows)
    return n


def lost_so_far(session) -> int:
    """Records the buffers could not take, as the program counted them so far, and
    bpf_trace_printk lines written but neither read nor still in the trace buffer."""
    printk = _printk_lost_so_far(session)
    if session.bpf is None or not session.channels:
        return sum(c.lost for c in session.channels) + printk
    try:
        channels.count_lost(session.bpf, program.LOST_MAP, session.channels)
    except Exception:  # the map went away with the program: keep the last count
        pass
    return sum(c.lost for c in session.channels) + printk


def _printk_lost_so_far(session) -> int:
    if session.printk is None or session.bpf is None:
        return 0
    try:
        _, lost = session.printk_lost()
    except Exception:  # the map went away with the program
        return 0
    # Lines still waiting in the trace buffer are not lost yet: until they are read, take
    # them off (the buffer is the machine's, so this errs towards too few, never too many).
    return max(lost - channels.trace_buffer_entries(), 0)


def recent_rows(session, n: int = ROWS):
    """The last ``n`` records of the first buffer (or printk lines), as a DataFrame."""
    import pandas as pd

    if session.channels:
        return session.channels[0].recent(n, session.wall_offset)
    if session.printk is not None:
        rows = session.printk.rows[-n:]
        return pd.DataFrame(rows, columns=["ts", "pid", "comm", "cpu", "message"])
    return None


def top_rows(frame, n: int = ROWS):
    """A map's ``n`` largest rows by its count or value (a histogram: all its buckets)."""
    if {"low", "high", "count"} <= set(frame.columns):
        return frame
    for column in ("count", "value"):
        if column in frame.columns and frame[column].dtype.kind in "iuf":
            return frame.sort_values(column, ascending=False, kind="stable").head(n)
    return frame.head(n)


def _bars(frame) -> str:
    """A histogram as bcc's tools print one: each bucket's range, its count and a bar."""
    most = int(frame["count"].max()) if len(frame) else 0
    lines = []
    for low, high, n in zip(frame["low"], frame["high"], frame["count"]):
        bar = "*" * (round(HIST_WIDTH * int(n) / most) if most else 0)
        lines.append(f"{low:>12,} -> {high:<12,} {int(n):>10,} |{bar:<{HIST_WIDTH}}|")
    return "\n".join(lines)


def maps_html(maps: dict) -> str:
    """Each map's top rows (a histogram's bars), for the panel."""
    if not maps:
        return "<i>no event buffer and no map to show</i>"
    parts = []
    for name, frame in maps.items():
        shown = top_rows(frame)
        head = f"<b>{html.escape(name)}</b> ({len(frame):,} entries)"
        if shown is frame and {"low", "high", "count"} <= set(frame.columns):
            body = f"<pre>{html.escape(_bars(frame))}</pre>"
        else:
            body = shown.to_html(index=False, max_cols=12)
        parts.append(head + body)
    return "".join(parts)


def maps_text(maps: dict) -> str:
    """The same for a text line's end: each map's top rows."""
    parts = []
    for name, frame in maps.items():
        shown = top_rows(frame)
        if shown is frame and {"low", "high", "count"} <= set(frame.columns):
            body = _bars(frame)
        else:
            body = shown.to_string(index=False)
        parts.append(f"{name} ({len(frame):,} entries, top rows):\n{body}")
    return "\n".join(parts)


def progress_line(elapsed: float, events: int, rate: float, lost: int) -> str:
    return f"tracing: {elapsed:.1f} s, {count(events)} events ({count(rate)}/s), lost {count(lost)}"


def result_events(result) -> int:
    n = sum(result.received.values())
    if result.printk is not None:
        n += len(result.printk)
    return n


def final_line(result) -> str:
    """One line for a finished trace: what nbconvert keeps as the panel's text."""
    why = f" (stopped by {result.stopped_by})" if result.stopped_by else ""
    failed = ""
    if getattr(result, "exit_code", None):  # a workload that failed: say what it said
        said = result.workload_message()
        # On a line of its own, under the figures.
        failed = f"\nworkload exit code {result.exit_code}" + (f": {said}" if said else "")
    return (
        f"traced {result.duration:.2f} s, {count(result_events(result))} events, "
        f"lost {count(result.total_lost)}{why}{failed}"
    )


# ---------------------------------------------------------------- where the view goes


def _kernel():
    """The ipykernel kernel this code runs in, or None (terminal IPython, script)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def widgets_usable() -> bool:
    if _kernel() is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise BadArguments(f"live view {mode!r}: give one of {', '.join(MODES)}")
    return mode


def make(progress, session, *, name: str = "", background: bool = False):
    """The progress callback for ``Session.run``: a callable is used as it is;
    True or a mode ("auto", "widget", "text", "off") makes a view."""
    if progress is None or progress is False or callable(progress):
        return progress
    mode = check_mode("auto" if progress is True else progress)
    if mode == "off":
        return None
    if mode == "auto":
        mode = "widget" if widgets_usable() else "text"
    if mode == "widget":
        return WidgetView(session, name=name, background=background)
    return TextView(session, name=name, background=background)


def watched(progress, owner, body: Callable):
    """``body(view)`` under the live view ``progress`` asks for (``make``), which is then
    finished with the result, or with the error that ended it."""
    view = make(progress, owner)
    finish = getattr(view, "finish", None)
    try:
        result = body(view)
    except BaseException as e:
        if finish:
            finish(None, e)
        raise
    if finish:
        finish(result)
    return result


# ---------------------------------------------------------------- the views


class LiveView:
    """A progress callback, ``view(session, elapsed)``, throttled; ``finish`` at the end."""

    def __init__(self, session, *, name: str = "", background: bool = False):
        self.session = session
        self.name = name
        self.background = background
        self.shown = 0.0  # monotonic time of the last update
        self.last_events = 0
        self.last_elapsed = 0.0
        self.rate = 0.0
        self.finished = False

    def __call__(self, session, elapsed: float) -> None:
        now = time.monotonic()
        if now - self.shown < REFRESH or self.finished:
            return
        self.shown = now
        events = events_so_far(session)
        if elapsed > self.last_elapsed:
            self.rate = (events - self.last_events) / (elapsed - self.last_elapsed)
        self.last_events, self.last_elapsed = events, elapsed
        self.update(elapsed, events, self.rate, lost_so_far(session))

    def stop(self, why: str = "stop button") -> None:
        """End the trace; ``Session.run`` then collects what it gathered."""
        self.session._stop_producers(why)

    def update(self, elapsed: float, events: int, rate: float, lost: int) -> None:
        raise NotImplementedError

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self.finished = True


class TextView(LiveView):
    """A progress line: rewritten in place on a terminal, every few seconds elsewhere."""

    def __init__(self, session, *, name: str = "", background: bool = False, stream=None):
        super().__init__(session, name=name, background=background)
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.printed = 0.0
        self.width = 0
        if background:
            self._write(
                f"background trace {name} started: {name}.frame() shows its events so far, "
                f"{name}.stop() ends it and returns the result\n"
            )

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stream must not end the trace
            pass

    def update(self, elapsed: float, events: int, rate: float, lost: int) -> None:
        if self.background:
            return  # a line from another thread would land in the middle of the user's work
        line = progress_line(elapsed, events, rate, lost)
        if self.tty:
            self._write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif time.monotonic() - self.printed >= TEXT_EVERY:
            self.printed = time.monotonic()
            self._write(line + "\n")

    def finish(self, result=None, error: BaseException | None = None) -> None:
        if self.finished:
            return
        super().finish(result, error)
        if self.background:
            return
        if result is not None:
            line = final_line(result)
            if not result.channels and result.printk is None and result.maps:
                # No event to show while it ran: the maps' top rows, once, at the end.
                line += "\n" + maps_text(result.maps)
        else:
            line = f"stopped by an error: {type(error).__name__}" if error else "stopped"
        self._write(("\r" + line.ljust(self.width) if self.tty else line) + "\n")


class WidgetView(LiveView):
    """The ipywidgets panel.

    The DOM contract the browser test relies on: the root has the class
    ``ebpfkit-live``; the events counter ``ebpfkit-live-events``; the button, described
    "Stop", ``ebpfkit-live-stop``; the status line ``ebpfkit-live-status``, which says
    "stopped ..." once the trace has ended.
    """

    def __init__(self, session, *, name: str = "", background: bool = False):
        import ipywidgets as w
        from IPython.display import display

        super().__init__(session, name=name, background=background)
        self.text = "ebpfkit live view: tracing"

        def label(css: str, value: str = "") -> w.HTML:
            widget = w.HTML(value)
            widget.add_class(css)
            return widget

        self.elapsed = label("ebpfkit-live-elapsed", "0.0 s")
        self.events = label("ebpfkit-live-events", "0 events")
        self.rate_label = label("ebpfkit-live-rate", "0/s")
        self.lost = label("ebpfkit-live-lost", "lost 0")
        self.button = w.Button(
            description="Stop",
            tooltip="end the trace and keep what it gathered",
            button_style="danger",
            icon="stop",
        )
        self.button.add_class("ebpfkit-live-stop")
        self.button.on_click(lambda _button: self.stop("stop button"))
        self.maps_due = 0.0  # monotonic time of the next live read of the maps
        self.status = label("ebpfkit-live-status", "tracing")
        self.rows = label("ebpfkit-live-rows", "")
        what = f"background trace <b>{html.escape(name)}</b>" if background else "tracing"
        attached = "; ".join(session.attached()) if session.src is not None else ""
        title = label("ebpfkit-live-title", f"{what}: {html.escape(attached)}")
        sep = {"layout": w.Layout(margin="0 1em 0 0")}
        for widget in (self.elapsed, self.events, self.rate_label, self.lost):
            widget.layout = sep["layout"]
        self.root = w.VBox(
            [
                title,
                w.HBox([self.elapsed, self.events, self.rate_label, self.lost, self.button]),
                self.status,
                self.rows,
            ]
        )
        self.root.add_class("ebpfkit-live")
        # A foreground cell keeps the main thread busy: the click must be handled elsewhere.
        self.routed = background or route_to_subshell(self.button)
        if not self.routed:
            self.button.tooltip = "ends the trace once the cell is done; interrupt (Ctrl-C) now"
        self.display_id = f"ebpfkit-live-{self.root.model_id}"
        display(self._bundle(), raw=True, display_id=self.display_id)

    def _bundle(self) -> dict:
        bundle = dict(self.root._repr_mimebundle_() or {})
        bundle["text/plain"] = self.text  # what nbconvert and nbval keep of the panel
        return bundle

    def update(self, elapsed: float, events: int, rate: float, lost: int) -> None:
        self.elapsed.value = f"{elapsed:.1f} s"
        self.events.value = f"{count(events)} events"
        self.rate_label.value = f"{count(rate)}/s"
        self.lost.value = f"lost {count(lost)}" if not lost else f"<b>LOST {count(lost)}</b>"
        df = recent_rows(self.session)
        if df is not None and len(df):
            self.rows.value = df.to_html(index=False, max_cols=12)
        elif df is None and not self.finished:
            self._show_maps()

    def _show_maps(self) -> None:
        """The maps as they are now, read in bulk no more often than MAP_SHARE allows."""
        start = time.monotonic()
        if start < self.maps_due:
            return
        try:
            maps = self.session.maps_now()
        except Exception as e:  # noqa: BLE001 - the trace goes on; its result reads them
            self.rows.value = (
                f"<i>the maps could not be read while tracing ({html.escape(str(e))}); "
                "they are read when the trace ends</i>"
            )
            self.maps_due = float("inf")
            return
        took = time.monotonic() - start
        self.maps_due = start + max(REFRESH, took / MAP_SHARE)
        self.rows.value = maps_html(maps)

    def stop(self, why: str = "stop button") -> None:
        if self.finished:  # a click that arrives after the end changes nothing
            return
        self.button.disabled = True
        self.status.value = "stopping: collecting what the trace gathered"
        super().stop(why)

    def finish(self, result=None, error: BaseException | None = None) -> None:
        if self.finished:
            return
        super().finish(result, error)
        try:
            self._show_end(result, error)
        except Exception:  # the kernel is shutting down: the result matters, not its panel
            pass

    def _show_end(self, result, error: BaseException | None) -> None:
        self.button.disabled = True
        if result is not None:
            self.update(result.duration, result_events(result), self.rate, result.total_lost)
            if recent_rows(self.session) is None and result.maps:
                self.rows.value = maps_html(result.maps)  # the final counts
            self.text = final_line(result)
            status = f"stopped by {result.stopped_by or 'the end'} after {result.duration:.2f} s"
            if getattr(result, "exit_code", None):
                said = result.workload_message()
                status += f"; workload exit code {result.exit_code}" + (f": {said}" if said else "")
            self.status.value = html.escape(status)
        else:
            what = f"{type(error).__name__}: {error}" if error else "no result"
            self.text = f"stopped by an error ({what})"
            self.status.value = html.escape(self.text)
        from IPython.display import update_display

        update_display(self._bundle(), raw=True, display_id=self.display_id)


# ---------------------------------------------------------------- the Stop button's thread

_subshells: dict[int, str] = {}
_subshell_lock = threading.Lock()


def _widget_subshell(kernel) -> str | None:
    """A subshell of this kernel for ebpfkit's buttons, made once; None without subshells."""
    channel_thread = getattr(kernel, "shell_channel_thread", None)
    manager = getattr(channel_thread, "manager", None)
    if manager is None or not hasattr(manager, "_create_subshell"):
        return None
    with _subshell_lock:
        if id(kernel) in _subshells:
            return _subshells[id(kernel)]
        made: dict[str, str] = {}
        done = threading.Event()

        def create() -> None:
            # Subshells are made and deleted only in the shell channel thread.
            try:
                made["id"] = manager._create_subshell()
            finally:
                done.set()

        channel_thread.io_loop.add_callback(create)
        if not done.wait(10) or "id" not in made:
            return None
        _subshells[id(kernel)] = made["id"]
        return made["id"]


def route_to_subshell(widget) -> bool:
    """Have the widget's messages from the browser handled in ebpfkit's subshell."""
    kernel = _kernel()
    comm = getattr(widget, "comm", None)
    if kernel is None or comm is None or not hasattr(comm, "_reply_subshell_for"):
        return False
    subshell = _widget_subshell(kernel)
    if subshell is None:
        return False
    route: Callable[[object, object], str] = lambda data, default: subshell  # noqa: E731
    comm._reply_subshell_for = route
    return True
