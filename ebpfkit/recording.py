"""Recordings: a trace saved to one file and shown again where eBPF cannot run.

A recording is a zip file (its format: ``ebpfkit.recordfile``), saved by
``result.save(path)`` and read back here as a TraceResult whose ``recorded`` says
when and where it was made.

Lessons use it through ``%%bpf --recording NAME`` (or ``trace(..., recording=NAME)``):
``$EBPFKIT_MODE`` picks live, replay or record (see ``run_or_replay``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from .errors import BadArguments, NotPermitted
from .privileges import may_load_bpf, require_privileges
from .recordfile import MANIFEST, NOT_SAVED, VERSION, read, save
from .result import TraceResult

__all__ = [
    "MANIFEST",
    "MODES",
    "SUFFIX",
    "VERSION",
    "find",
    "load",
    "mode",
    "path_for",
    "recordings_dir",
    "replaying",
    "run_or_replay",
    "save",
]

SUFFIX = ".ebpfkit"
MODES = ("auto", "live", "replay", "record")


def load(path) -> TraceResult:
    """Read a recording back as a TraceResult whose ``recorded`` says when and where."""
    values, recorded, cell = read(path)
    known = {f.name for f in dataclasses.fields(TraceResult)} - NOT_SAVED
    # Fields a later ebpfkit added are left out; fields it lacks keep their defaults.
    result = TraceResult(**{k: v for k, v in values.items() if k in known})
    result.recorded = recorded
    result.cell = cell
    return result


# --------------------------------------------------------------------------- modes


def mode() -> str:
    """$EBPFKIT_MODE: auto (the default), live, replay or record."""
    value = os.environ.get("EBPFKIT_MODE", "").strip().lower() or "auto"
    if value not in MODES:
        raise BadArguments(
            f"EBPFKIT_MODE={os.environ['EBPFKIT_MODE']!r}: give one of {', '.join(MODES)}"
        )
    return value


def recordings_dir() -> Path:
    """$EBPFKIT_RECORDINGS, else ./recordings (the notebook's own folder under Jupyter)."""
    return Path(os.environ.get("EBPFKIT_RECORDINGS") or "recordings")


def shown_path(path: Path) -> str:
    """A recording's path as said to the user: from the current folder when it is inside it
    (``recordings/01-hello.ebpfkit`` in a lesson's output, the same on every machine),
    else in full."""
    full, here = path.resolve(), Path.cwd().resolve()
    return str(full.relative_to(here)) if full.is_relative_to(here) else str(full)


def path_for(name: str) -> Path:
    """Where the recording NAME lives: ``<recordings dir>/NAME.ebpfkit``."""
    if not name or name.strip() != name or name in (".", ".."):
        raise BadArguments(f"--recording {name!r}: give a name such as 02-reading-data-opens")
    return recordings_dir() / (name if name.endswith(SUFFIX) else name + SUFFIX)


def find(path_or_name) -> Path:
    """A file path as given, else the recording of that name in the recordings folder."""
    path = Path(path_or_name)
    if path.exists() or os.sep in str(path_or_name):
        return path
    named = path_for(str(path_or_name))
    return named if named.exists() else path


def replaying() -> bool:
    """True when ``--recording`` cells will show their recording rather than trace live."""
    current = mode()
    return current == "replay" or (current == "auto" and not may_load_bpf())


def run_or_replay(
    name: str,
    live: Callable[[], object],
    *,
    source: str,
    announce: Callable[[str], None] = print,
):
    """Trace live, replay the recording NAME, or trace and record it, as $EBPFKIT_MODE says.

    auto: live where this process may load BPF programs, else the recording;
    live: always live; replay: always the recording; record: live, then saved.
    """
    path = path_for(name)
    current = mode()
    if current == "replay" or (current == "auto" and not may_load_bpf()):
        if current == "auto" and not path.exists():
            try:
                require_privileges()
            except NotPermitted as e:
                raise NotPermitted(
                    f"{e} This cell can also show a recording made on a real kernel, but "
                    f"there is none at {path.resolve()} (make it where eBPF runs with "
                    "EBPFKIT_MODE=record, e.g. scripts/record-lessons.sh)."
                ) from None
        result = load(path)
        recorded = (result.cell or {}).get("source") if isinstance(result.cell, dict) else None
        if recorded is not None and recorded.strip() != source.strip():
            result.notes.append(
                "this cell's program differs from the one recorded: the output below is what "
                "the recorded program saw. Record it again where eBPF runs "
                "(EBPFKIT_MODE=record) to see the new one."
            )
        return result
    result = live()
    if current == "record":
        save(result, path)
        announce(f"recorded to {shown_path(path)}")
    return result
