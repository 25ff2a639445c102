"""The course's tool commands (``ebpfkit kprobe``, ``stats``, ``trace`` ...).

Each module here is one subcommand over a program in ``bpf/``, and uses the same
functions as the notebooks (``ebpfkit.trace``, ``Session``): the command line is
another view, not a second implementation. A module defines:

    HELP = "one line for `ebpfkit --help`"
    def configure(parser: argparse.ArgumentParser) -> None   # its options
    def main(args: argparse.Namespace) -> int                 # exit status
"""

from __future__ import annotations

import importlib
import pkgutil

# The programs' one home is ebpfkit.sources; the tools and the lessons import it from here too.
from ..sources import bpf_source

__all__ = ["bpf_source", "load", "names"]


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str):
    return importlib.import_module(f".{name}", __name__)
