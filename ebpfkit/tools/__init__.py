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
import os
import pkgutil

BPF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bpf")


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str):
    return importlib.import_module(f".{name}", __name__)


def bpf_source(filename: str) -> str:
    """The text of a program in bpf/."""
    with open(os.path.join(BPF_DIR, filename)) as f:
        return f.read()
