"""``%%bpftrace``: a bpftrace script traced live, read back as the same TraceResult as ``%%bpf``.

    %%bpftrace --run "ls /" -o r
    tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }

The cell is handed to the distribution's ``bpftrace`` (``apt-get install bpftrace``;
``scripts/setup.sh`` installs it) with ``-f json``, which prints one JSON object per
line. Each ``@map`` becomes a DataFrame in ``result.maps`` under its own name
(``r.maps["@opens"]``): the key parts as columns named after the script's key
expressions (``comm``, ``pid``...; ``kstack``/``ustack`` become ``kstack_frames`` and
``ustack_frames``, root first and joined by ``;`` as ``plot_flame`` folds them), the
value as ``value`` (``count``/``sum``/``min``/``max``/``avg``), or ``count``,
``average``, ``total`` for ``stats()``; ``hist``/``lhist`` as ``low``, ``high``,
``count`` buckets as ``plot_hist`` draws them (the open buckets bpftrace prints for
values below an lhist's range or negative ones, and above it, run to the int64
limits). ``printf`` output is ``result.printk``, one row per line, and its events that
bpftrace's perf buffer dropped are ``result.lost["printf"]``.

The life of a cell, whatever ends it: bpftrace is started in a session of its own; a
``BEGIN`` marker of ours (kept out of the output) says that every probe is attached;
then the workload starts (``--run``), in its own process group. At the duration, the
workload's exit, the live view's Stop button or Ctrl-C, bpftrace gets SIGINT and prints
its maps; if it does not end
in time, or anything goes wrong, it is killed, and the workload's group with it.
bpftrace's errors are shown with the cell's own line numbers.

``-W`` (``workload_only=True``) keeps only the workload's events, in the kernel, as
``%%bpf -W`` does: the workload's gate shell starts first, and bpftrace gets its pid as
``$1``; our BEGIN puts it in a scope map (``@__ebpfkit_scope``), fed at
``sched_process_fork`` and emptied at ``sched_process_free``, and every probe of the cell
but BEGIN, END and interval has the scope's test added to its predicate; the gate lets
the workload go once BEGIN has run. What ebpfkit writes into the cell's own lines is
accounted for (``Script.insertions``), so bpftrace's columns are still the cell's.
``--background NAME`` (``start``) runs a ``Bpftrace`` as ``ebpfkit.background`` runs a
Session: started in the caller's cell, traced in a thread until stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import probes
from .errors import (
    AttachError,
    BadArguments,
    CompileError,
    EbpfkitError,
    FeatureMissing,
    ProbeNotFound,
)
from .privileges import require_privileges
from .result import TraceResult

__all__ = [
    "BpftraceError",
    "BpftraceMagics",
    "BpftraceMissing",
    "Output",
    "Script",
    "map_frame",
    "parse_lines",
    "register",
    "run",
    "start",
]

DEFAULT_DURATION = 5.0  # seconds, as %%bpf
WORKLOAD_LIMIT = 60.0  # seconds, the cap while waiting for a workload, as %%bpf
MAX_DURATION = 3600.0
START_TIMEOUT = 120.0  # s for bpftrace to compile, load and attach (a big script on a busy box)
STOP_TIMEOUT = 30.0  # s for bpftrace to print its maps after SIGINT, then it is killed
POLL = 0.05
RESIGNAL = 0.5  # s: SIGINT again if bpftrace printed nothing since the last one
QUICK_FAILURE = 1.0  # s: a workload that fails sooner did not really run
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FILENAME = "cell.bt"
# bpftrace 0.17 prints this whenever the limit is already high enough, harmlessly.
_NOISE = re.compile(r"couldn't set RLIMIT_MEMLOCK")
_DIAGNOSTIC = re.compile(
    r"^(?P<file>[^\n:]*):(?P<line>\d+)(?::(?P<col>\d+)-(?P<col2>\d+)|-(?P<line2>\d+))?: "
    r"(?P<level>ERROR|WARNING): (?P<message>.*)$"
)
_STACK = re.compile(r"(?:\n {4}[^\n]*)+\n")
_OFFSET = re.compile(r"\+(?:0x[0-9a-fA-F]+|\d+)$")


class BpftraceError(CompileError):
    """bpftrace rejected the script (syntax, types, an unknown function)."""


class BpftraceMissing(EbpfkitError):
    """No ``bpftrace`` program on this machine."""


# ---------------------------------------------------------------------- the script


def _blank(text: str) -> str:
    """The script with comments, string literals and preprocessor lines blanked out.

    Same length and same newlines, so positions found in it hold in the original.
    """
    out = list(text)
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#":
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if text[j] != "\n":
                    out[j] = " "
            i = end
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                if text[k] != "\n":
                    out[k] = " "
            i = j + 1
            at_line_start = False
            continue
        if c == "\n":
            at_line_start = True
        elif not c.isspace():
            at_line_start = False
        i += 1
    return "".join(out)


def _split_top(text: str, sep: str = ",") -> list[tuple[int, int]]:
    """Spans of ``text`` between top-level separators (outside brackets)."""
    spans, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            spans.append((start, i))
            start = i + 1
    spans.append((start, len(text)))
    return spans


def _column_name(expr: str, i: int) -> str:
    """A key expression as a column name: ``comm``, ``$fd`` -> fd, ``args->filename``
    -> filename, ``str(args->filename)`` -> filename, ``kstack`` -> kstack_frames."""
    expr = expr.strip()
    while True:
        m = re.fullmatch(r"(\w+)\s*\((.*)\)", expr, re.S)
        if not m:
            break
        fn, inner = m.groups()
        if fn in ("kstack", "ustack"):
            return f"{fn}_frames"
        if fn not in (
            "str",
            "ntop",
            "ksym",
            "usym",
            "buf",
            "uaddr",
            "kaddr",
            "macaddr",
            "cgroup_path",
        ):
            return f"key{i}"
        expr = inner[: _split_top(inner)[0][1]].strip()
    if expr in ("kstack", "ustack"):
        return f"{expr}_frames"
    m = re.fullmatch(r"\$?(\w+)", expr) or re.search(r"(?:->|\.)\s*(\w+)$", expr)
    return m.group(1) if m and not m.group(1).isdigit() else f"key{i}"


_INT_BUILTINS = {
    "pid", "tid", "uid", "gid", "cpu", "nsecs", "elapsed", "cgroup", "retval", "rand",
    "numaid", "jiffies", "cpid", "curtask", "sarg0", "arg0", "arg1", "arg2", "arg3",
}  # fmt: skip


def _may_be_text(expr: str) -> bool:
    """Whether a key expression may give text (which could hold the "," bpftrace joins with)."""
    expr = expr.strip()
    if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", expr) or expr in _INT_BUILTINS:
        return False
    return not re.fullmatch(r"(?:args->\w+|\(\w+\)\s*.*)", expr)


# The workload's scope (-W), as %%bpf keeps it (program._SCOPE): the gate shell, whose pid is
# the script's $1, is 2 ("its children are in, it is not"); a process in the map adds each
# child it forks as 1; a task leaves when it is freed, after its last event.
SCOPE_MAP = "@__ebpfkit_scope"
_SCOPE_GATE = f"{SCOPE_MAP}[$1] = 2; "
_IN_SCOPE = f"{SCOPE_MAP}[pid] == 1"
_SCOPE_PROBES = (
    f"tracepoint:sched:sched_process_fork /{SCOPE_MAP}[pid]/ "
    f"{{ {SCOPE_MAP}[args->child_pid] = 1; }}\n"
    f"tracepoint:sched:sched_process_free /{SCOPE_MAP}[args->pid]/ "
    f"{{ delete({SCOPE_MAP}[args->pid]); }}\n"
)
# Probes that are no process's events: the scope leaves them alone.
_UNSCOPED = re.compile(r"^(?:BEGIN|END|interval:|i:)")


@dataclass
class _Header:
    """A probe block's header: its probe specs and where its parts are in the text."""

    specs: list[str]
    brace: int  # the block's "{"
    predicate: tuple[int, int] | None  # the two "/" around the predicate


@dataclass
class Script:
    """A cell's bpftrace script, what ebpfkit reads off it, and the text handed to bpftrace.

    ``scoped``: every probe but BEGIN, END and interval keeps only the events of the
    workload's processes (the scope map, seeded with the gate's pid given as ``$1``).
    Whatever ebpfkit adds to the user's lines is in ``insertions`` (line, column, length),
    so that bpftrace's columns are read back as the cell's; the rest goes after the cell.
    """

    text: str
    scoped: bool = False
    marker: str = field(default_factory=lambda: f"ebpfkit-attached-{uuid.uuid4().hex}")
    probes: list[str] = field(default_factory=list)  # the probe specs, as written
    keys: dict[str, list[str]] = field(default_factory=dict)  # map name -> key column names
    # map name -> whether each key part may be text (with a "," in it), by its expression
    text_keys: dict[str, list[bool]] = field(default_factory=dict)
    maps: list[str] = field(default_factory=list)  # every @map named, in order
    final: str = ""  # the script bpftrace runs
    insertions: list[tuple[int, int, int]] = field(default_factory=list)
    added_begin: bool = False

    def __post_init__(self) -> None:
        blank = _blank(self.text)
        headers = self._headers(blank)
        self.probes = [spec for h in headers for spec in h.specs]
        self._read_keys(blank)
        edits = self._scope_edits(headers) if self.scoped else []
        begin = next((h.brace for h in headers if "BEGIN" in h.specs), None)
        start = (_SCOPE_GATE if self.scoped else "") + f'printf("{self.marker}"); '
        if begin is not None:
            edits.append((begin + 1, " " + start))
        self.final = self._edited(sorted(edits, key=lambda e: e[0]))
        # Whole blocks of ours go after the cell, on lines of their own.
        self.added_begin = begin is None
        tail = f"BEGIN {{ {start}}}\n" if self.added_begin else ""
        tail += _SCOPE_PROBES if self.scoped else ""
        if tail:
            sep = "" if self.final.endswith("\n") or not self.final else "\n"
            self.final += sep + tail

    def _headers(self, blank: str) -> list[_Header]:
        """Each top-level block's header, in order (structs and the like have no specs)."""
        out, depth, header_start = [], 0, 0
        for i, c in enumerate(blank):
            if c == "{":
                if depth == 0:
                    out.append(self._header(blank, header_start, i))
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    header_start = i + 1
            elif c == ";" and depth == 0:
                header_start = i + 1
        return out

    def _header(self, blank: str, start: int, brace: int) -> _Header:
        header = blank[start:brace].strip().lstrip(";").strip()
        # A predicate follows the probes after white space: `tracepoint:a:b /pid == 1/`.
        cut = re.search(r"\s/", blank[start:brace])
        opening = start + cut.end() - 1 if cut else -1
        closing = blank.rfind("/", opening + 1, brace) if cut else -1
        predicate = (opening, closing) if closing > opening >= 0 else None
        return _Header(self._probe_specs(header), brace, predicate)

    def _read_keys(self, blank: str) -> None:
        """Every @map named, and the column names of each one's key expressions."""
        for m in re.finditer(r"@(\w*)", blank):
            name = "@" + m.group(1)
            if name not in self.maps:
                self.maps.append(name)
            rest = blank[m.end() :]
            if name in self.keys or not rest.lstrip().startswith("["):
                continue
            start = m.end() + rest.index("[") + 1
            depth, end = 1, start
            while end < len(blank) and depth:
                depth += {"[": 1, "]": -1}.get(blank[end], 0)
                end += 1
            inner = self.text[start : end - 1]
            spans = _split_top(_blank(inner))
            names = [_column_name(inner[a:b], i) for i, (a, b) in enumerate(spans)]
            seen: dict[str, int] = {}
            for i, n in enumerate(names):  # two keys of one name: comm, comm_1
                if n in seen:
                    names[i] = f"{n}_{i}"
                seen[n] = i
            self.keys[name] = names
            self.text_keys[name] = [_may_be_text(inner[a:b]) for a, b in spans]

    @staticmethod
    def _scope_edits(headers: list[_Header]) -> list[tuple[int, str]]:
        """The scope's test in each probe's predicate: `/pred/` -> `/in scope && (pred)/`."""
        edits = []
        for h in headers:
            if not h.specs or any(_UNSCOPED.match(s) for s in h.specs):
                continue
            if h.predicate is None:
                edits.append((h.brace, f" /{_IN_SCOPE}/ "))
            else:
                edits += [(h.predicate[0] + 1, f"{_IN_SCOPE} && ("), (h.predicate[1], ")")]
        return edits

    def _edited(self, edits: list[tuple[int, str]]) -> str:
        """The text with ``edits`` (offset, text) made, each one kept in ``insertions``."""
        parts, last = [], 0
        for at, added in edits:
            parts += [self.text[last:at], added]
            last = at
            line = self.text.count("\n", 0, at) + 1
            col = at - (self.text.rfind("\n", 0, at) + 1) + 1
            self.insertions.append((line, col, len(added)))
        return "".join(parts) + self.text[last:]

    def column(self, line: int, col: int) -> int:
        """The cell's column of bpftrace's column ``col`` on ``line`` of the final script."""
        shift = 0
        for at_line, at, length in self.insertions:  # in the order of the text
            if at_line != line or col < at + shift:
                continue
            if col < at + shift + length:
                return at  # in our own text: where it went in
            shift += length
        return col - shift

    @staticmethod
    def _probe_specs(header: str) -> list[str]:
        if not header or re.match(r"(struct|union|enum)\b", header):
            return []
        # A predicate follows the probes after white space: `tracepoint:a:b /pid == 1/`.
        cut = re.search(r"\s/", header)
        probes_part = header[: cut.start()] if cut else header
        return [p.strip() for p in probes_part.split(",") if p.strip()]

    @property
    def user_probes(self) -> list[str]:
        return [p for p in self.probes if p not in ("BEGIN", "END")]

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


# ---------------------------------------------------------------------- the output


@dataclass
class Output:
    """What bpftrace printed, gathered line by line (``feed``) as it runs."""

    marker: str | None = None
    attached_probes: int | None = None
    printf: list[str] = field(default_factory=list)  # fragments, as bpftrace sends them
    received: list[float] = field(default_factory=list)  # when each fragment was read
    maps: dict[str, tuple[str, object]] = field(default_factory=dict)  # name -> (type, data)
    lost: int = 0
    lines: int = 0  # lines read so far
    other: list[str] = field(default_factory=list)  # lines that were not JSON
    attached: threading.Event = field(default_factory=threading.Event)

    def feed(self, line: str) -> None:
        """One line of ``bpftrace -f json``; a line of another shape is kept in ``other``."""
        self.lines += 1
        line = line.strip()
        if not line:
            return  # bpftrace prints blank lines before its maps
        try:
            msg = json.loads(line)
            self._message(msg["type"], msg.get("data"))
        except (ValueError, KeyError, TypeError, AttributeError):
            self.other.append(line)

    def _message(self, kind: str, data) -> None:
        if kind == "attached_probes":
            self.attached_probes = int(data["probes"])
        elif kind in ("printf", "time", "value", "join"):
            if kind == "printf" and self.marker is not None and data == self.marker:
                self.attached.set()
                return
            text = data if isinstance(data, str) else json.dumps(data)
            if kind in ("value", "join") and not text.endswith("\n"):
                text += "\n"
            self.printf.append(text)
            self.received.append(time.time())
        elif kind in ("map", "hist", "stats"):
            for name, value in data.items():
                self.maps[name] = (kind, value)
        elif kind == "lost_events":
            self.lost += int(data["events"])
        else:
            raise KeyError(kind)

    def lines_frame(self):
        """printf output as one row per line: ``received`` (when ebpfkit read it), ``message``."""
        import pandas as pd

        rows, pending, first = [], "", None
        for text, when in zip(self.printf, self.received):
            if not pending:
                first = when
            pending += text
            *whole, pending = pending.split("\n")
            for line in whole:
                rows.append((first, line))
                first = when
        if pending:
            rows.append((first, pending))
        df = pd.DataFrame(rows, columns=["received", "message"])
        df["received"] = pd.to_datetime(df["received"], unit="s")
        return df


def parse_lines(lines, marker: str | None = None) -> Output:
    """bpftrace's ``-f json`` lines read into an Output (for lines saved from a run)."""
    out = Output(marker=marker)
    for line in lines:
        out.feed(line)
    return out


def _key_parts(key: str) -> list[str]:
    """A map key split into its parts: bpftrace joins them with "," (stacks are whole)."""
    parts, i = [], 0
    while True:
        m = _STACK.match(key, i) if key.startswith("\n", i) else None
        if m:
            parts.append(m.group(0))
            i = m.end()
        else:
            j = key.find(",", i)
            j = len(key) if j < 0 else j
            parts.append(key[i:j])
            i = j
        if i >= len(key):
            return parts
        i += 1  # the comma


def _folded(stack: str) -> str:
    """bpftrace's stack text (leaf first, one indented frame a line) folded root first."""
    frames = [_OFFSET.sub("", f.strip()) for f in stack.strip("\n").split("\n") if f.strip()]
    return ";".join(reversed(frames))


def _key_rows(
    keys: list[str], names: list[str] | None, text: list[bool] | None = None
) -> tuple[list[list], list[str]]:
    """Each key's parts, and the columns' names (the script's, else key0, key1...).

    ``text``: which parts may be text, from the script; a surplus of ","-split parts
    goes back into the first of them that the other keys do not show to be a number.
    """
    split = [_key_parts(k) for k in keys]
    arity = len(names) if names else min((len(p) for p in split), default=1)
    if any(len(p) != arity for p in split):
        # A string part with a comma in it: put the surplus back into a text column.
        good = [p for p in split if len(p) == arity]
        text = text if text and len(text) == arity else [True] * arity
        text_col = next(
            (
                c
                for c in range(arity)
                if text[c] and not (good and all(_is_int(p[c]) for p in good))
            ),
            0,
        )
        fixed = []
        for p in split:
            extra = len(p) - arity
            if extra > 0:
                p = [
                    *p[:text_col],
                    ",".join(p[text_col : text_col + extra + 1]),
                    *p[text_col + extra + 1 :],
                ]
            elif extra < 0:
                p = p + [""] * -extra
            fixed.append(p)
        split = fixed
    if not names or len(names) != arity:
        names = []
        for c in range(arity):
            stacky = split and all(_STACK.fullmatch(p[c]) for p in split)
            if not stacky:
                names.append(f"key{c}")
            else:  # which kind of stack the text does not say: plain "stack" for one
                names.append("stack" if arity == 1 else f"stack{c}_frames")
    if arity == 1 and names == ["key0"]:
        names = ["key"]
    return split, names


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?\d+", text) is not None


def _key_columns(df, names: list[str]) -> None:
    """Key parts as numbers where every one is an integer, stacks folded."""
    import pandas as pd

    for c in names:
        col = df[c]
        if len(col) and all(isinstance(v, str) and _STACK.fullmatch(v) for v in col):
            df[c] = [_folded(v) for v in col]
        elif len(col) and all(isinstance(v, str) and _is_int(v) for v in col):
            df[c] = pd.to_numeric(col).astype("int64")


def map_frame(
    kind: str,
    data,
    key_names: list[str] | None = None,
    text_keys: list[bool] | None = None,
):
    """One map as printed by ``bpftrace -f json`` (``kind``: map, hist or stats), as a DataFrame.

    Counts and other values: the key columns, then ``value``, largest first; ``stats()``:
    ``count``, ``average``, ``total``; ``hist``/``lhist``: ``low``, ``high``, ``count``
    per bucket (after the key columns of a keyed histogram).
    """
    import pandas as pd

    if kind == "hist":
        sections = data if isinstance(data, dict) else {None: data}
        keys = [k for k in sections if k is not None]
        split, names = _key_rows(keys, key_names, text_keys) if keys else ([], [])
        by_key = dict(zip(keys, split))
        rows = []
        for key, buckets in sections.items():
            for b in buckets:
                low = b.get("min", INT64_MIN)
                high = b.get("max", INT64_MAX)
                rows.append([*(by_key[key] if key is not None else []), low, high, b["count"]])
        df = pd.DataFrame(rows, columns=[*names, "low", "high", "count"])
        _key_columns(df, names)
        for c in ("low", "high", "count"):
            df[c] = df[c].astype("int64")
        if names:
            # Sections in key order, each one's buckets in bpftrace's (ascending) order.
            df = df.sort_values(names, kind="stable").reset_index(drop=True)
        return df
    stats = kind == "stats"
    if not isinstance(data, dict) or (stats and {"count", "average", "total"} <= set(data)):
        data = {None: data}
    keys = [k for k in data if k is not None]
    split, names = _key_rows(keys, key_names, text_keys) if keys else ([], [])
    rows = []
    for parts, (key, value) in zip(split or [[]] * len(data), data.items()):
        if key is None:
            parts = []
        if isinstance(value, dict):
            rows.append([*parts, value.get("count"), value.get("average"), value.get("total")])
        else:
            rows.append([*parts, value])
    first = next(iter(data.values()), None)
    values = ["count", "average", "total"] if isinstance(first, dict) else ["value"]
    df = pd.DataFrame(rows, columns=[*names, *values])
    _key_columns(df, names)
    sort = values[0]
    if len(df) > 1 and pd.api.types.is_numeric_dtype(df[sort]):
        df = df.sort_values(sort, ascending=False, kind="stable").reset_index(drop=True)
    return df


# ---------------------------------------------------------------------- errors


def _quote(lines: list[str], line: int, col: int | None, col2: int | None) -> str:
    """The cell's lines around ``line``, numbered, with a caret under the columns."""
    out = []
    for n in range(max(1, line - 1), min(len(lines), line + 1) + 1):
        out.append(f"{'>' if n == line else ' '} {n:3} | {lines[n - 1]}")
        if n == line and col:
            width = max((col2 or col) - col, 1)
            out.append(" " * (8 + col - 1) + "^" * width)
    return "\n".join(out)


def _line_of(lines: list[str], text: str) -> int | None:
    for n, line in enumerate(lines, start=1):
        if text and text in line:
            return n
    return None


def diagnostics(stderr: str, script: Script) -> tuple[list[str], list[str]]:
    """bpftrace's errors and warnings, each with the cell's own line quoted."""
    lines = script.lines
    errors, warnings = [], []
    text_lines = [t for t in stderr.splitlines() if not _NOISE.search(t)]
    i = 0
    while i < len(text_lines):
        t = text_lines[i]
        i += 1
        m = _DIAGNOSTIC.match(t)
        if not m:
            plain = re.sub(r"^(ERROR|WARNING): ", "", t).strip()
            if not plain or set(plain) <= {"~", " ", "^"}:
                continue
            # The source line and the ~~~ under it that bpftrace quotes: ours replace them.
            if any(plain == s.strip() for s in lines + script.final.splitlines()):
                continue
            (warnings if t.startswith("WARNING") else errors).append(plain)
            continue
        line = int(m["line"])
        col = int(m["col"]) if m["col"] else None
        col2 = int(m["col2"]) if m["col2"] else None
        # Columns of the cell's own, not of the script with our additions.
        col = script.column(line, col) if col else None
        col2 = script.column(line, col2) if col2 else None
        message = m["message"]
        # A probe's range starts where the previous block ended: find the probe itself.
        named = re.search(r"not found: (\S+)|target file '([^']+)'|probe: '([^']+)'", message)
        if named and not col:
            found = _line_of(lines, next(g for g in named.groups() if g).rstrip("*"))
            if found:
                line = found
        if line > len(lines):
            where, quoted = "at the end of the cell", ""
        else:
            where = f"line {line}" + (f", column {col}" if col else "")
            quoted = "\n" + _quote(lines, line, col, col2)
        text = f"{where}: {message}{quoted}"
        (errors if m["level"] == "ERROR" else warnings).append(text)
    return errors, warnings


def _error_for(errors: list[str], script: Script, stderr: str) -> EbpfkitError:
    """The error a user sees for a script bpftrace refused."""
    text = "\n".join(errors) or stderr.strip() or "bpftrace ended without a word"
    m = re.search(r"tracepoints? not found: (\S+)", text)
    if m:
        hint = ""
        if "*" not in m.group(1):
            try:
                probes.check_tracepoint(m.group(1))
            except EbpfkitError as e:
                hint = f"\n{e}"
        return ProbeNotFound(f"bpftrace: {text}{hint}")
    if "kprobe" in text and "attaching probe" in text.lower():
        ok, why = probes.kprobes_available()
        if not ok:
            return FeatureMissing(
                f"bpftrace: {text}\nThis kernel has no kprobes ({why}): use a tracepoint "
                "(`bpftrace -l 'tracepoint:*'`) or a uprobe instead"
            )
    if "does not exist" in text or "No probes to attach" in text:
        return ProbeNotFound(f"bpftrace: {text}")
    return BpftraceError(f"bpftrace rejected the script: {text}")


def _nothing_attached(script: Script) -> EbpfkitError:
    """The probes of the cell all went missing (bpftrace skips uprobes it cannot find)."""
    hints = []
    for spec in script.user_probes:
        m = re.fullmatch(r"(?:uprobe|uretprobe|u|ur):([^:]+):(\w+)", spec)
        if m:
            try:
                probes.check_symbol(m.group(1), m.group(2))
            except EbpfkitError as e:
                hints.append(str(e))
    return ProbeNotFound(
        "bpftrace attached none of the cell's probes ("
        + ", ".join(script.user_probes)
        + ")"
        + (": " + "; ".join(hints) if hints else "")
    )


# ---------------------------------------------------------------------- running


def bpftrace_path() -> str:
    found = shutil.which("bpftrace") or next(
        (p for p in ("/usr/bin/bpftrace", "/usr/sbin/bpftrace") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise BpftraceMissing(
            "no bpftrace on this machine: install it with `apt-get install bpftrace` "
            "(scripts/setup.sh does)"
        )
    return found


def check_duration(duration: float | None) -> None:
    if duration is not None and not 0 < duration <= MAX_DURATION:
        raise BadArguments(
            f"--duration {duration:g}: give a number of seconds above 0 and at most "
            f"{MAX_DURATION:.0f}"
        )


def _check_scope(workload_only: bool, workload: str | None) -> None:
    """The scope is the workload's processes: without a workload, an error (as %%bpf's)."""
    if workload_only and not workload:
        from .session import _WORKLOAD_ONLY_NEEDS_RUN

        raise BadArguments(_WORKLOAD_ONLY_NEEDS_RUN)


class _Workload:
    """The ``--run`` command: started once the probes are attached, killed with its group.

    With the scope, ``admit(gate_pid)`` runs between the start of its gate and its release
    (``session._start_workload``): there bpftrace starts with the gate's pid as ``$1``.
    """

    def __init__(self, command: str):
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.out = self.copier = None
        self.ended_after: float | None = None
        self.killed = False

    def start(self, admit: Callable[[int], None] | None = None) -> None:
        from .session import _start_workload

        self.out = tempfile.TemporaryFile()
        self.proc, self.copier = _start_workload(self.command, self.out, admit)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self) -> None:
        from .session import _kill_group

        # Once: a process group reaped long ago may be another's by the next call.
        if self.proc is not None and not self.killed:
            self.killed = True
            _kill_group(self.proc)

    def fill(self, result: TraceResult) -> None:
        """Its exit code and output in the result; a warning if it failed at once."""
        if self.proc is None:
            return
        code = result.exit_code = self.proc.returncode
        self.copier.join(timeout=1)
        result.workload_error = self.copier.text()
        self.out.seek(0)
        result.output = self.out.read().decode("utf-8", "replace")
        self.out.close()
        if code and self.ended_after is not None and self.ended_after < QUICK_FAILURE:
            said = result.workload_message()
            result.warnings.append(
                f"the workload failed at once: `{self.command}` exited with code {code} "
                f"after {self.ended_after:.2f} s"
                + (f" ({said})" if said else "")
                + ", so the trace saw little or nothing of it"
            )


class _LiveLines:
    """bpftrace's printf output as ebpfkit.live reads a buffer: counts and the last rows."""

    name, kind = "printf", "printf"

    def __init__(self, output: Output):
        self.output = output

    @property
    def received(self) -> int:
        return len(self.output.printf)

    @property
    def lost(self) -> int:
        return self.output.lost

    def recent(self, n: int, wall_offset=None):
        return self.frame(wall_offset, last=4 * n).tail(n)

    def frame(self, wall_offset=None, last: int | None = None):
        """The lines so far (a background trace's ``frame()``), or of the ``last`` fragments."""
        out = self.output
        k = len(out.received)  # the reader appends to both lists: read as far as both go
        first = 0 if last is None else max(k - last, 0)
        return Output(printf=out.printf[first:k], received=out.received[first:k]).lines_frame()


class Bpftrace:
    """One bpftrace run: ``Bpftrace(script).run(duration=2, workload="ls")``.

    It lives as a ``Session`` does, so that ``ebpfkit.background`` runs either: ``start()``
    returns once every probe is attached (its errors raise there), ``run()`` traces (after
    starting, if need be) and ends with ``close()``, which leaves nothing running.
    ``workload_only``: only the workload's processes are traced; ``start()`` then starts
    the workload too, behind its gate, whose pid bpftrace gets as ``$1``.
    ``pid`` is bpftrace's process id once started (for tests that check it is gone).
    """

    def __init__(self, text: str, *, workload: str | None = None, workload_only: bool = False):
        if not text.strip():
            raise BadArguments(
                "no script: write a bpftrace program in the cell below %%bpftrace, e.g. "
                "tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }"
            )
        self.source = text  # what a recording of it is compared with
        self.script = Script(text, scoped=workload_only)
        self.workload, self.workload_only = workload, workload_only
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._wl: _Workload | None = None
        self._workdir: Path | None = None
        self.output = Output(marker=self.script.marker)
        # What ebpfkit.live's views read off a trace, as they read a Session: the printf
        # output as the one buffer (none for a script that prints nothing), no printk.
        prints = re.search(r"\b(?:printf|print|time|join)\s*\(", _blank(text))
        self.channels = [_LiveLines(self.output)] if prints else []
        self.printk = None
        self.bpf = None
        self.src = self.script
        self.wall_offset = 0
        self.stop_reason = ""

    def attached(self) -> list[str]:
        return list(self.script.user_probes) or list(self.script.probes)

    def _stop_producers(self, why: str) -> None:
        """End the trace (the live view's Stop button, ``stop()`` of a background trace)."""
        self.stop_reason = self.stop_reason or why

    def start(self) -> Bpftrace:
        """Start bpftrace; return once every probe is attached, or raise with nothing left."""
        _check_scope(self.workload_only, self.workload)
        require_privileges()
        exe = bpftrace_path()
        self._workdir = Path(tempfile.mkdtemp(prefix="ebpfkit-bpftrace-"))
        try:
            if self.workload_only:
                # The gate waits until bpftrace's BEGIN has put it in the scope map.
                self._wl = _Workload(self.workload)
                self._wl.start(admit=lambda gate: self._launch(exe, [str(gate)]))
            else:
                self._launch(exe, [])
        except BaseException:
            self.close()
            raise
        return self

    def run(
        self,
        duration: float | None = None,
        workload: str | None = None,
        progress: Callable[[Bpftrace, float], None] | bool | str | None = None,
    ) -> TraceResult:
        """Trace until the duration ends, the workload exits, bpftrace's ``exit()``, the
        live view's Stop button or Ctrl-C.

        ``progress(bpftrace, elapsed)`` is called a few times a second; True (or "auto",
        "widget", "text") shows ebpfkit's live view instead, as ``Session.run`` does.
        """
        from .live import watched

        check_duration(duration)
        if workload is not None:
            if self._wl is not None and workload != self.workload:
                raise BadArguments(f"this trace started its workload already: {self.workload}")
            self.workload = workload
        return watched(progress, self, lambda view: self._run(duration, view))

    def _run(self, duration, progress) -> TraceResult:
        limit = duration or (WORKLOAD_LIMIT if self.workload else DEFAULT_DURATION)
        try:
            if self.proc is None:
                self.start()
            stopped_by, elapsed = self._trace(limit, progress)
            self._end()  # whatever happened: nothing of this trace runs on
            result = self._result(self._stderr(), self.proc.returncode)
            result.duration, result.stopped_by = elapsed, stopped_by
            if self._wl is not None:
                self._wl.fill(result)
            return result
        finally:
            self.close()

    def _launch(self, exe: str, args: list[str]) -> None:
        """Start bpftrace on the script (``args``: its $1...); back once its probes attach."""
        path = self._workdir / FILENAME
        path.write_text(self.script.final)
        with open(self._workdir / "stderr", "wb") as errfile:
            self.proc = subprocess.Popen(
                [exe, "-f", "json", str(path), *args],
                stdout=subprocess.PIPE,
                stderr=errfile,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not it
                cwd=self._workdir,
            )
        self.pid = self.proc.pid
        self._reader = threading.Thread(
            target=self._read, args=(self.proc,), daemon=True, name="ebpfkit-bpftrace"
        )
        self._reader.start()
        try:
            self._wait_attached(self.proc, self._reader)
        except _Refused:
            stderr = self._stderr()
            errors, _ = diagnostics(stderr, self.script)
            raise _error_for(errors, self.script, stderr) from None

    def _stderr(self) -> str:
        """What bpftrace wrote to its stderr so far."""
        if self._workdir is None:
            return ""
        path = self._workdir / "stderr"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def _trace(self, limit: float, progress) -> tuple[str, float]:
        """Start the workload, wait for the end, stop bpftrace: (what ended it, seconds)."""
        proc = self.proc
        start = time.monotonic()
        if self._wl is None and self.workload:
            self._wl = _Workload(self.workload)
            self._wl.start()
        wl = self._wl
        stopped_by = "duration"
        try:
            while True:
                elapsed = time.monotonic() - start
                if elapsed >= limit:
                    break
                if proc.poll() is not None:
                    stopped_by = "exit()" if proc.returncode == 0 else "bpftrace"
                    break
                if wl is not None and wl.exited():
                    stopped_by = "workload exit"
                    wl.ended_after = time.monotonic() - start
                    break
                if progress:
                    progress(self, elapsed)
                if self.stop_reason:
                    stopped_by = self.stop_reason
                    break
                time.sleep(min(POLL, max(limit - elapsed, 0.001)))
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        elapsed = time.monotonic() - start
        self._stop(proc)
        self._reader.join(timeout=STOP_TIMEOUT)
        return stopped_by, elapsed

    def _end(self) -> None:
        """bpftrace killed if it still runs, its pipe closed, the workload's group killed."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                _kill(proc)
            if self._reader is not None:
                self._reader.join(timeout=5)  # at the end of the pipe now that it has ended
            if proc.stdout is not None:
                proc.stdout.close()
        if self._wl is not None:
            self._wl.kill()

    def close(self) -> None:
        """Nothing of this trace left: bpftrace, the workload's group, the script's folder.

        Safe to call twice (a background trace calls it after ``run`` has).
        """
        self._end()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _read(self, proc: subprocess.Popen) -> None:
        # Whatever a line holds, this thread reads on: a stalled pipe would stall bpftrace.
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace")
            try:
                self.output.feed(text)
            except Exception:  # a message of a shape this version does not know
                self.output.other.append(text.strip())

    def _wait_attached(self, proc: subprocess.Popen, reader: threading.Thread) -> None:
        """Until our BEGIN marker arrives: every probe of the script is attached."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.output.attached.is_set():
            if proc.poll() is not None:
                reader.join(timeout=STOP_TIMEOUT)  # the marker may still be in the pipe
                if self.output.attached.is_set():
                    break
                # What it said before it ended is in its stderr, read once it has ended.
                raise _Refused()
            if time.monotonic() >= deadline:
                raise AttachError(f"bpftrace did not attach its probes within {START_TIMEOUT:g} s")
            self.output.attached.wait(POLL)
        # bpftrace 0.17 skips a uprobe whose symbol it cannot find, if anything else attaches.
        special = len({"BEGIN", "END"} & {*self.script.probes, "BEGIN"})
        special += 2 if self.script.scoped else 0  # the scope's fork and free
        counted = self.output.attached_probes
        if self.script.user_probes and counted is not None and counted <= special:
            raise _nothing_attached(self.script)

    def _stop(self, proc: subprocess.Popen) -> None:
        """SIGINT: bpftrace runs END, prints its maps and exits; killed if it takes too long.

        bpftrace 0.17 can miss a SIGINT that comes just before it blocks in epoll_wait (a
        script that prints nothing then waits for ever: seen here), so the signal is sent
        again while bpftrace has printed nothing since the last one.
        """
        deadline = time.monotonic() + STOP_TIMEOUT
        printed = -1
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _kill(proc)
                return
            if self.output.lines == printed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
            printed = self.output.lines
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=RESIGNAL)

    def _result(self, stderr: str, returncode: int | None) -> TraceResult:
        errors, warnings = diagnostics(stderr, self.script)
        out = self.output
        result = TraceResult(attached=list(self.script.user_probes) or list(self.script.probes))
        result.warnings += [f"bpftrace: {w}" for w in warnings]
        if errors or (returncode not in (0, None) and returncode != -signal.SIGINT):
            said = "; ".join(errors) or stderr.strip()
            result.warnings.append(
                f"bpftrace ended with code {returncode}" + (f": {said}" if said else "")
            )
        import pandas as pd

        # In the script's order; a map it names that bpftrace never printed (never
        # filled, or emptied) is an empty frame, so that r.maps["@x"] is always there.
        # The scope's map is ours, not a result.
        extra = [n for n in out.maps if n not in self.script.maps and n != SCOPE_MAP]
        for name in [*self.script.maps, *extra]:
            if name not in out.maps:
                result.maps[name] = pd.DataFrame()
                continue
            kind, data = out.maps[name]
            keys, text = self.script.keys.get(name), self.script.text_keys.get(name)
            result.maps[name] = map_frame(kind, data, keys, text)
        result.printk = out.lines_frame()
        result.lost["printf"] = out.lost
        if out.lost:
            result.warnings.append(
                f"bpftrace's perf buffer lost {out.lost:,} events (printf and other output) "
                "that it reported, and may have lost more unreported when it stopped: they came "
                "faster than bpftrace read them; count in a map instead, or raise "
                "BPFTRACE_PERF_RB_PAGES (pages per CPU)"
            )
        if out.other:
            result.notes.append("bpftrace also printed: " + " | ".join(out.other[:5]))
        return result


class _Refused(Exception):
    """bpftrace ended before attaching: its stderr says why."""


def _kill(proc: subprocess.Popen) -> None:
    """bpftrace and anything in its session, at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _cell(script: str, duration, run, workload_only: bool) -> dict:
    """The script and its options, kept with the result (and its recording)."""
    options = {"duration": duration, "run": run, "workload_only": workload_only}
    return {"source": script, "options": {**options, "language": "bpftrace"}}


def run(
    script: str,
    *,
    duration: float | None = None,
    run: str | None = None,
    workload_only: bool = False,
    recording: str | None = None,
    progress: Callable[[Bpftrace, float], None] | bool | str | None = None,
) -> TraceResult:
    """Run a bpftrace script and return what it gathered, as ``ebpfkit.trace`` does for C.

    ``workload_only=True`` (with ``run``): only the events of the command's processes and
    their descendants, as ``%%bpf --workload-only`` keeps them (BEGIN, END and interval
    probes are no process's and fire as they would).

    >>> r = run('tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }',
    ...         run="cat /etc/hostname")      # doctest: +SKIP
    >>> r.maps["@"]                           # doctest: +SKIP
    """
    check_duration(duration)
    _check_scope(workload_only, run)

    def live() -> TraceResult:
        bt = Bpftrace(script, workload=run, workload_only=workload_only)
        result = bt.run(duration=duration, progress=progress)
        result.cell = _cell(script, duration, run, workload_only)
        return result

    if recording is None:
        return live()
    from .recording import run_or_replay

    return run_or_replay(recording, live, source=script)


def start(
    script: str,
    *,
    name: str | None = None,
    duration: float | None = None,
    run: str | None = None,
    workload_only: bool = False,
    progress=True,
    recording: str | None = None,
):
    """Start a bpftrace script and let it trace in the background, as ``ebpfkit.start``
    does C: the same handle (``ebpfkit.background.BackgroundTrace``), listed by
    ``%bpf --list``, stopped by ``stop()``, ``%bpf --stop NAME``, ``stop_all`` and at exit.

    bpftrace is started and its probes attached here (its errors raise here); without a
    ``duration`` it traces until stopped (at most an hour), with ``run`` until the command
    exits. ``stop()`` returns the TraceResult. ``recording=NAME`` records or replays it as
    $EBPFKIT_MODE says.

    >>> opens = start('tracepoint:syscalls:sys_enter_openat { @[comm] = count(); }',
    ...               name="opens")           # doctest: +SKIP
    >>> opens.stop().maps["@"]                # doctest: +SKIP
    """
    from . import background

    check_duration(duration)
    _check_scope(workload_only, run)
    trace = Bpftrace(script, workload=run, workload_only=workload_only)
    return background.start_session(
        trace,
        name=name,
        duration=duration,
        run=run,
        progress=progress,
        recording_name=recording,
        cell=_cell(script, duration, run, workload_only),
    )


# ---------------------------------------------------------------------- the magic

try:
    from IPython.core.magic import Magics, cell_magic, magics_class, no_var_expand
    from IPython.core.magic_arguments import argument, magic_arguments
    from traitlets import Enum, Float
    from traitlets.config import Configurable
except ImportError:  # pragma: no cover - the plain API works without IPython
    Magics = None

if Magics is not None:

    @magics_class
    class BpftraceMagics(Magics, Configurable):
        """The ``%%bpftrace`` cell magic. Settings: ``%config BpftraceMagics.duration = 10``."""

        duration = Float(
            DEFAULT_DURATION, help="Seconds to trace when neither --duration nor --run is given."
        ).tag(config=True)
        live = Enum(
            ["auto", "widget", "text", "off"],
            "auto",
            help="The live view while a cell traces, as BpfMagics.live: a widget panel with a "
            "Stop button in a notebook, a progress line elsewhere (auto), or none (off).",
        ).tag(config=True)

        def __init__(self, shell):
            Configurable.__init__(self, config=shell.config)
            Magics.__init__(self, shell=shell)
            self.shell.configurables.append(self)

        @no_var_expand
        @magic_arguments()
        @argument(
            "-d",
            "--duration",
            type=float,
            help="seconds to trace (default 5; with --run, until the command exits, at most "
            "60; with --background, until stopped, at most an hour)",
        )
        @argument(
            "-r",
            "--run",
            metavar="COMMAND",
            help="shell command started after the probes attach, e.g. --run 'ls; cat /etc/x'",
        )
        @argument(
            "-W",
            "--workload-only",
            action="store_true",
            help="keep only the events of the --run command and every process it starts, "
            "children started during the trace included (filtered in the kernel); BEGIN, "
            "END and interval probes fire as they would",
        )
        @argument("-o", "--out", metavar="NAME", help="also store the result in this variable")
        @argument(
            "--recording",
            metavar="NAME",
            help="tie the cell to the recording NAME, as %%bpf --recording does",
        )
        @argument(
            "--background",
            metavar="NAME",
            help="keep tracing in the background while other cells run; the handle is stored "
            "as NAME: NAME.frame() the printf lines so far, NAME.stop() (or %%bpf --stop "
            "NAME) the result; listed by %%bpf --list",
        )
        @cell_magic
        def bpftrace(self, line: str, cell: str):
            """Run the cell's bpftrace script and return a TraceResult, as ``%%bpf`` does.

            Each ``@map`` is a DataFrame in ``maps`` under its own name (``r.maps["@c"]``):
            key columns named after the script's keys, then ``value`` (or ``count``,
            ``average``, ``total`` for ``stats()``; ``low``, ``high``, ``count`` buckets for
            ``hist()``/``lhist()``, drawn by ``r.plot_hist("@h")``; ``kstack``/``ustack``
            keys folded for ``r.plot_flame("@s")``). ``printf`` lines are ``printk``; the
            events bpftrace's buffer lost are ``lost["printf"]``. The workload (``--run``)
            starts once every probe is attached and is ended with its process group.

            ``-W`` keeps only the workload's events, as ``%%bpf -W`` does: every probe but
            BEGIN, END and interval gets a test of ``@__ebpfkit_scope`` added to its
            predicate (bpftrace's messages still give the cell's own lines and columns).
            ``--background NAME`` traces on while other cells run, as ``%%bpf
            --background`` does: ``NAME.stop()``, ``%bpf --stop NAME`` or ``%bpf
            --stop-all`` ends it and returns the result; ``%bpf --list`` lists it.

            Examples::

                %%bpftrace --run "ls /"
                tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }

                %%bpftrace -d 2 -o sizes
                tracepoint:syscalls:sys_exit_read /args->ret > 0/ { @bytes = hist(args->ret); }

                %%bpftrace -W --run "make -j4"
                tracepoint:syscalls:sys_enter_execve { @execs[comm] = count(); }

                %%bpftrace --background opens
                tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }

            Ctrl-C ends the trace and keeps what bpftrace printed.
            """
            try:
                args = self.bpftrace.parser.parse_args(shlex.split(line))
            except ValueError as e:
                raise BadArguments(f"cannot read the options: {e}") from None
            if args.background:
                return self._start_background(args, line, cell or "")
            duration = (
                args.duration
                if args.duration is not None
                else (None if args.run else self.duration)
            )
            result = run(
                cell or "",
                duration=duration,
                run=args.run,
                workload_only=args.workload_only,
                recording=args.recording,
                progress=self.live,
            )
            if result.cell is not None:
                result.cell["options"] = line
            if args.out:
                self.shell.user_ns[args.out] = result
            return result

        def _start_background(self, args, line: str, script: str):
            """``--background NAME``: the handle, stored as NAME (as ``%%bpf`` does)."""
            if args.out:
                raise BadArguments(
                    "--background NAME stores the trace's handle as NAME (its .result after "
                    "NAME.stop()); it takes no --out"
                )
            trace = start(
                script,
                name=args.background,
                duration=args.duration,  # none: until stopped
                run=args.run,
                workload_only=args.workload_only,
                progress=self.live,
                recording=args.recording,
            )
            if trace.cell is not None:
                trace.cell["options"] = line
            self.shell.user_ns[trace.name] = trace
            return trace


def register(shell) -> None:
    """Add ``%%bpftrace`` to an IPython shell (``load_ipython_extension`` calls this)."""
    shell.register_magics(BpftraceMagics)
