"""ebpfkit: eBPF tracing for learners, in Python and Jupyter, with BCC.

In a notebook::

    %load_ext ebpfkit
    %%bpf --tracepoint syscalls:sys_enter_openat
    ...

From Python: ``ebpfkit.check()``.
"""

from __future__ import annotations

import importlib
import sys

from ._bcc import install_finder as _install_finder
from ._version import __version__ as __version__

# Every function below imports what it needs when called: `import ebpfkit` loads neither
# BCC nor pandas, matplotlib or IPython (tests/test_imports.py).

__all__ = [
    "Session",
    "TraceResult",
    "check",
    "load",
    "load_ipython_extension",
    "plots",
    "replay",
    "replaying",
    "sessions",
    "start",
    "stop_all",
    "trace",
    "unload_ipython_extension",
]

# Make `import bcc` work from a venv or conda that lacks the distribution's module; BCC
# itself (and libbcc) is loaded by the first import of it, not here.
_install_finder()


def trace(source: str, **options):
    """Compile ``source``, attach it, trace, return a TraceResult (see ``session.trace``)."""
    from .session import trace as _trace

    return _trace(source, **options)


def replay(path):
    """A saved trace (``result.save(path)``) as a TraceResult marked as a recording.

    ``path`` is a file, or the name of one in the recordings folder
    (``$EBPFKIT_RECORDINGS``, else ./recordings). Needs neither root nor BCC.
    """
    from .recording import find, load

    return load(find(path))


def replaying() -> bool:
    """True when ``%%bpf --recording`` cells will show recordings instead of tracing.

    That is when ``$EBPFKIT_MODE`` is ``replay``, or ``auto`` (the default) in a process
    that may not load BPF programs. Lessons use it to skip cells that need root::

        if not ebpfkit.replaying():
            !syscount-bpfcc -d 1
    """
    from .recording import replaying as _replaying

    return _replaying()


def start(source: str, **options):
    """Trace ``source`` in the background; a handle with ``.frame()`` and ``.stop()``.

    See ``background.start``: ``name=``, ``duration=``, ``run=`` and Session's options.
    """
    from .background import start as _start

    return _start(source, **options)


def sessions() -> dict:
    """The background traces by name (``ebpfkit.start``, ``%%bpf --background``)."""
    from .background import sessions as _sessions

    return _sessions()


def stop_all() -> dict:
    """Stop every background trace; their TraceResults by name."""
    from .background import stop_all as _stop_all

    return _stop_all()


def load(source: str, **options):
    """Compile and load the probe functions without attaching them (see ``session.load``)."""
    from .session import load as _load

    return _load(source, **options)


def __getattr__(name: str):
    # Session and TraceResult on first use, so `import ebpfkit` stays light.
    if name == "Session":
        from .session import Session

        return Session
    if name == "TraceResult":
        from .result import TraceResult

        return TraceResult
    if name == "plots":  # the pictures: matplotlib is imported only when one is drawn
        return importlib.import_module(".plots", __name__)
    raise AttributeError(name)


def check(probes_too: bool = True):
    """What this kernel can do for eBPF tracing, as a DataFrame (see ``ebpfkit check``)."""
    from .checks import check as _check

    return _check(probes_too)


def load_ipython_extension(ipython) -> None:
    """``%load_ext ebpfkit``: registers the ``%%bpf`` and ``%%bpftrace`` cell magics."""
    from . import bpftrace, live
    from .magics import BpfMagics

    ipython.register_magics(BpfMagics(ipython))
    bpftrace.register(ipython)  # %%bpftrace
    # What the live view needs is imported now: imported in the first traced cell, the
    # kernel's own opens of these modules' files would show up in that cell's trace.
    if live.widgets_usable():
        import pandas  # noqa: F401
    # The compile process too (compiler.py): the first cell's compile need not start it.
    if not replaying():
        from . import compiler

        try:
            compiler.compiler().start()
        except compiler.Failed:
            pass  # the first cell that compiles says why, with what the child printed


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext ebpfkit``: no background trace outlives the extension."""
    background = sys.modules.get("ebpfkit.background")
    if background is not None:
        background.stop_all("%unload_ext ebpfkit")
