"""The background traces of this process, by name, and what they hold.

``ebpfkit.background`` starts the traces and adds them here; the session asks here,
before it compiles a program that prints, whether one of them holds trace_pipe. Kept
apart from ``background`` (which imports the session) so that the session need not
import what is built on it.
"""

from __future__ import annotations

import re
import threading

from .errors import AttachError, BadArguments

_traces: dict[str, object] = {}  # name -> background.BackgroundTrace
_lock = threading.Lock()
_NAME = re.compile(r"^[A-Za-z_]\w*$")


def add(name: str, trace) -> None:
    with _lock:
        _traces[name] = trace


def discard(trace) -> None:
    """Forget ``trace`` (stopped), unless another trace has its name by now."""
    with _lock:
        if _traces.get(trace.name) is trace:
            del _traces[trace.name]


def sessions() -> dict:
    """The background traces, running or ended but not yet stopped, by name."""
    with _lock:
        return dict(_traces)


def get(name: str):
    with _lock:
        trace = _traces.get(name)
        known = ", ".join(_traces) or "none"
    if trace is None:
        raise BadArguments(f"no background trace named {name!r} (running: {known})")
    return trace


def free_name(name: str | None) -> str:
    """The trace's name, after checking it is one and no running trace has it."""
    with _lock:
        if name is None:
            name = f"trace{len(_traces) + 1}"
            while name in _traces:
                name += "_"
        if not _NAME.match(name):
            raise BadArguments(f"background trace name {name!r}: use a Python identifier")
        old = _traces.get(name)
        if old is not None and old.running:
            raise BadArguments(
                f"a background trace named {name} is running; stop it first "
                f"(%bpf --stop {name}, or {name}.stop()) or choose another name"
            )
    return name


def check_trace_pipe(session) -> None:
    """A program that prints needs trace_pipe, which only one reader can hold."""
    for trace in sessions().values():
        if trace.session is not session and trace.running and trace.session.printk is not None:
            raise AttachError(
                f"bpf_trace_printk() output is read from trace_pipe, which background trace "
                f"{trace.name} holds. Stop it first (%bpf --stop {trace.name}, or "
                f"{trace.name}.stop()), or send events through BPF_PERF_OUTPUT or "
                "BPF_RINGBUF_OUTPUT instead."
            )
