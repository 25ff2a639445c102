"""ebpfkit: eBPF tracing for learners, in Python and Jupyter, with BCC.

In a notebook::

    %load_ext ebpfkit
    %%bpf --tracepoint syscalls:sys_enter_openat
    ...

From Python: ``ebpfkit.check()``.
"""

from __future__ import annotations

from ._bcc import find_bcc as _find_bcc

__all__ = ["check", "load_ipython_extension"]
__version__ = "0.1.0"

# Make `import bcc` work from a venv or conda that lacks the distribution's module.
_find_bcc()


def check(probes_too: bool = True):
    """What this kernel can do for eBPF tracing, as a DataFrame (see ``ebpfkit check``)."""
    from .check import check as _check

    return _check(probes_too)


def load_ipython_extension(ipython) -> None:
    """``%load_ext ebpfkit``: registers the ``%%bpf`` cell magic."""
    from .magics import BpfMagics

    ipython.register_magics(BpfMagics(ipython))
