"""ebpfkit: eBPF tracing for learners, in Python and Jupyter, with BCC.

In a notebook::

    %load_ext ebpfkit
    %%bpf --tracepoint syscalls:sys_enter_openat
    ...

From Python: ``ebpfkit.check()``.
"""

from __future__ import annotations

from ._bcc import find_bcc as _find_bcc

__all__ = ["Session", "TraceResult", "check", "load", "load_ipython_extension", "trace"]
__version__ = "0.1.0"

# Make `import bcc` work from a venv or conda that lacks the distribution's module.
_find_bcc()


def trace(source: str, **options):
    """Compile ``source``, attach it, trace, return a TraceResult (see ``session.trace``)."""
    from .session import trace as _trace

    return _trace(source, **options)


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
    raise AttributeError(name)


def check(probes_too: bool = True):
    """What this kernel can do for eBPF tracing, as a DataFrame (see ``ebpfkit check``)."""
    from .checks import check as _check

    return _check(probes_too)


def load_ipython_extension(ipython) -> None:
    """``%load_ext ebpfkit``: registers the ``%%bpf`` cell magic."""
    from .magics import BpfMagics

    ipython.register_magics(BpfMagics(ipython))
