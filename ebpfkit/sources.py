"""The C programs shipped with ebpfkit: the files of the repository's ``bpf/`` folder.

They travel inside the package (``ebpfkit/bpf`` links to ``bpf/`` in a checkout, and a wheel
holds copies), so ``importlib.resources`` finds them from an editable install and from a
wheel alike, whatever the current folder.
"""

from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

from .errors import BadArguments


def bpf_dir() -> Path:
    """The folder of the shipped programs (a real folder in both kinds of install)."""
    return Path(str(resources.files("ebpfkit").joinpath("bpf")))


def bpf_names() -> list[str]:
    """The shipped programs' file names, e.g. ``syscall_count.c``."""
    return sorted(p.name for p in bpf_dir().glob("*.c"))


def bpf_source(filename: str) -> str:
    """The text of a shipped program, by file name (``bpf/`` in front is accepted)."""
    name = filename[len("bpf/") :] if filename.startswith("bpf/") else filename
    path = bpf_dir() / name
    if os.sep in name or not path.is_file():
        raise BadArguments(f"no program {filename!r} in ebpfkit's bpf/{_did_you_mean(name)}")
    return path.read_text()


def read_program(path: str) -> str:
    """The C text for ``--file PATH``: a file of the user's, else one of the shipped programs."""
    if os.path.isfile(path):
        with open(path) as f:
            return f.read()
    name = path[len("bpf/") :] if path.startswith("bpf/") else path
    if os.sep not in name and (bpf_dir() / name).is_file():
        return bpf_source(name)
    raise BadArguments(
        f"--file {path}: no such file here ({os.getcwd()}) nor among ebpfkit's programs in "
        f"bpf/{_did_you_mean(os.path.basename(name))}"
    )


def _did_you_mean(name: str) -> str:
    names = bpf_names()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return f"; they are: {', '.join(names)}"
