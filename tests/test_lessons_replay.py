"""Every lesson runs where eBPF cannot: as a non-root user, each trace replayed from its recording.

Two kinds of test. The static one reads each notebook's code (no kernel): every cell that
traces names a recording, and the recording is in notebooks/recordings, so a new tracing
cell without one is caught before anyone runs it. The replay one executes each notebook as
``nobody`` with no capabilities and EBPFKIT_MODE=auto (a fresh /tmp of its own, as on Binder)
and reads the outputs: it completes, every tracing cell shows the RECORDING line, the
``raises-exception`` cells raised, and nothing says a live trace happened.

A "tracing cell" is one with a ``%%bpf`` or ``%bpf`` that traces (not ``--list``, ``--stop``,
``--stop-all``, ``--replay``, ``--load-only``, ``--background``) or an ``ebpfkit.trace(...)``
call, outside ``if not ebpfkit.replaying():`` (code there runs live only).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "notebooks"
RECORDINGS = LESSONS / "recordings"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
RECORDING_LINE = "RECORDING made on"
# Options after which %%bpf does not trace in the foreground with a recording.
NOT_A_TRACE = {"--list", "--stop", "--stop-all", "--replay", "--load-only"}
# What only a live trace prints: the text live view, its widget, the command line's banner,
# record mode's confirmation.
LIVE_SIGNS = [
    re.compile(r"^tracing: \d", re.M),
    re.compile(r"^traced \d+\.\d+ s, [\d,]+ events", re.M),
    re.compile(r"^Tracing .* until", re.M),
    re.compile(r"^recorded to ", re.M),
]
WIDGET = "application/vnd.jupyter.widget-view+json"
SHELL_FAILED = re.compile(
    r"^(?:/usr)?(?:/bin/)?(?:ba)?sh: .*(?:not found|Permission denied)$", re.M
)


@dataclass
class Trace:
    how: str  # "%%bpf", "%bpf" or "ebpfkit.trace()"
    recording: str | None
    line: str = ""
    body: str | None = None  # a %%bpf cell's C


@dataclass
class Cell:
    index: int
    source: str
    tags: list[str]
    traces: list[Trace] = field(default_factory=list)

    @property
    def raises(self) -> bool:
        return "raises-exception" in self.tags


def _is_replaying(node) -> bool:
    """``ebpfkit.replaying()`` or ``replaying()``."""
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "replaying")
        or (isinstance(node.func, ast.Name) and node.func.id == "replaying")
    )


def _live_only(node, parents: dict) -> bool:
    """True inside ``if not ebpfkit.replaying():`` (or the else of ``if ebpfkit.replaying():``)."""
    child = node
    while child in parents:
        up = parents[child]
        if isinstance(up, ast.If):
            negated = isinstance(up.test, ast.UnaryOp) and isinstance(up.test.op, ast.Not)
            if negated and _is_replaying(up.test.operand) and child in up.body:
                return True
            if _is_replaying(up.test) and child in up.orelse:
                return True
        child = up
    return False


def _magic(call: ast.Call) -> tuple[str, str, str | None] | None:
    """("%%bpf", "%bpf" or "%%bpftrace", line, body) for IPython's rewriting of a tracing
    magic, else None."""
    if not (isinstance(call.func, ast.Attribute) and call.args):
        return None
    prefix = {"run_cell_magic": "%%", "run_line_magic": "%"}.get(call.func.attr)
    values = [a.value if isinstance(a, ast.Constant) else None for a in call.args]
    if prefix is None or values[0] not in ("bpf", "bpftrace"):
        return None
    return prefix + values[0], values[1] or "", values[2] if prefix == "%%" else None


def _trace_call(call: ast.Call) -> bool:
    """``ebpfkit.trace(...)``, or ``ebpfkit.start(...)`` (a background trace, replayed alike)."""
    f = call.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr in ("trace", "start")
        and isinstance(f.value, ast.Name)
        and f.value.id == "ebpfkit"
    )


def _replay_call(call: ast.Call) -> bool:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
    return name == "run_or_replay"


def traces_in(source: str) -> list[Trace]:
    """The traces a code cell makes when its notebook replays (live-only code left out)."""
    from IPython.core.inputtransformer2 import TransformerManager

    tree = ast.parse(TransformerManager().transform_cell(source))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _live_only(node, parents):
            continue
        magic = _magic(node)
        if magic is not None:
            how, line, body = magic
            words = shlex.split(line)
            if NOT_A_TRACE & set(words):
                continue
            name = words[words.index("--recording") + 1] if "--recording" in words else None
            found.append(Trace(how, name, line, body))
        elif _replay_call(node):  # recording.run_or_replay("NAME", live, ...)
            name = node.args[0] if node.args else None
            found.append(
                Trace("run_or_replay()", name.value if isinstance(name, ast.Constant) else None)
            )
        elif _trace_call(node):
            given = {k.arg: k.value for k in node.keywords}
            found.append(
                Trace(f"ebpfkit.{node.func.attr}()", _name_or_pattern(given.get("recording")))
            )
    return found


def _name_or_pattern(node) -> str | None:
    """A recording's name; an f-string (runs in a loop) as a glob: f"04-{way}-{i}" -> 04-*-*."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)
    return None


def cells_of(path: Path) -> list[Cell]:
    nb = json.loads(path.read_text())
    out = []
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] != "code":
            continue
        source = "".join(c["source"])
        cell = Cell(i, source, c.get("metadata", {}).get("tags", []))
        if not cell.raises:  # an error cell stops before it traces: there is nothing to record
            cell.traces = traces_in(source)
        out.append(cell)
    return out


def _ids(paths):
    return [p.stem for p in paths]


# ------------------------------------------------------------------ static: no kernel


def test_the_parser_finds_tracing_cells():
    """The rules above, on small cells: what counts as a trace, and what is live-only."""
    cell = "%%bpf -t syscalls:sys_enter_openat --recording 99-x -d 1\nint f(void *c) { return 0; }"
    (t,) = traces_in(cell)
    assert (t.how, t.recording, t.body.strip()) == ("%%bpf", "99-x", "int f(void *c) { return 0; }")
    assert [t.recording for t in traces_in("r = %bpf --file bpf/x.c -d 1\nr")] == [None]
    bpftrace = "%%bpftrace -d 1 --recording 99-bt\nBEGIN { exit(); }"
    assert [(t.how, t.recording) for t in traces_in(bpftrace)] == [("%%bpftrace", "99-bt")]
    assert [t.recording for t in traces_in('r = ebpfkit.trace(SRC, recording="99-y")')] == ["99-y"]
    assert [t.recording for t in traces_in('h = ebpfkit.start(SRC, recording="99-s")')] == ["99-s"]
    looped = 'for i in range(3):\n    r = ebpfkit.trace(SRC, recording=f"99-run-{i + 1}")'
    assert [t.recording for t in traces_in(looped)] == ["99-run-*"]
    assert [t.recording for t in traces_in('r = recording.run_or_replay("99-z", go)')] == ["99-z"]
    assert traces_in("%bpf --list") == [] and traces_in("%bpf --stop bg") == []
    background = "%%bpf --background bg -t sched:sched_switch --recording 99-bg\nint f(void *c) {}"
    assert [t.recording for t in traces_in(background)] == ["99-bg"]
    guarded = "if not ebpfkit.replaying():\n    r = %bpf --file bpf/x.c\nelse:\n    print('no')"
    assert traces_in(guarded) == []
    inverted = "if ebpfkit.replaying():\n    pass\nelse:\n    r = ebpfkit.trace(SRC)"
    assert traces_in(inverted) == []
    assert len(traces_in("if ebpfkit.replaying():\n    r = ebpfkit.trace(SRC)")) == 1


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_tracing_cell_names_a_recording_that_exists(notebook):
    from ebpfkit import recording

    missing = []
    for cell in cells_of(notebook):
        for t in cell.traces:
            where = f"cell {cell.index} ({t.how})"
            if t.recording is None:
                missing.append(f"{where} names no recording: add --recording / recording=")
                continue
            paths = sorted(RECORDINGS.glob(f"{t.recording}{recording.SUFFIX}"))
            if not paths:
                missing.append(
                    f"{where}: no {t.recording}{recording.SUFFIX} in notebooks/"
                    "recordings (scripts/record-lessons.sh)"
                )
                continue
            for path in paths if t.body is not None else []:
                recorded = recording.load(path).cell or {}
                if recorded.get("source", "").strip() != t.body.strip():
                    missing.append(f"{where}: {path.stem} recorded another program: record again")
    assert not missing, f"{notebook.name}:\n" + "\n".join(missing)


def test_no_recording_is_left_over():
    """Each recording is named by a cell of a lesson: a renamed cell leaves no stale file."""
    named = {t.recording for nb in NOTEBOOKS for c in cells_of(nb) for t in c.traces if t.recording}
    files = {p.stem for p in RECORDINGS.glob("*.ebpfkit")}
    unnamed = {f for f in files if not any(fnmatch.fnmatchcase(f, n) for n in named)}
    assert not unnamed, f"recordings no cell names: {sorted(unnamed)}"


# ------------------------------------------------------------------ replay as nobody


def _texts(output: dict) -> list[str]:
    if output["output_type"] == "stream":
        return ["".join(output["text"])]
    if output["output_type"] == "error":
        return [f"{output['ename']}: {output['evalue']}"]
    data = output.get("data", {})
    return ["".join(v) if isinstance(v, list) else str(v) for k, v in data.items() if "text" in k]


def _replay(notebook: Path) -> dict:
    """Execute ``notebook`` as nobody (no capabilities), EBPFKIT_MODE=auto; the executed JSON."""
    if os.geteuid() != 0:
        pytest.skip("switching to the user nobody and a private /tmp need root")
    for tool in ("unshare", "runuser", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    for part in [*Path(sys.executable).parents, ROOT, LESSONS, RECORDINGS]:
        if part.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{part} is not readable by everyone, so nobody cannot run the lesson")
    jupyter = Path(sys.executable).with_name("jupyter-nbconvert")
    # A private mount namespace with an empty /tmp (the workloads' files a root run left
    # there are root's); the lesson folder copied into it, the recordings read in place.
    run = "/tmp/ebpfkit-replay"
    steps = ["mount -t tmpfs -o mode=1777 none /tmp"]
    if ROOT.resolve().is_relative_to("/tmp"):
        # A clone under /tmp (CI's may be): keep it visible at its own path, through /mnt.
        repo = shlex.quote(str(ROOT.resolve()))
        steps = [
            f"mount --bind {repo} /mnt",
            *steps,
            f"mkdir -p {repo}",
            f"mount --bind /mnt {repo}",
        ]
    command = " && ".join(
        [
            *steps,
            f"mkdir -p {run}/home",
            f"cp -r {shlex.quote(str(LESSONS))} {run}/notebooks",
            f"chown -R nobody {run}",
            f"exec runuser -u nobody -- env -i PATH={Path(sys.executable).parent}:/usr/bin:/bin "
            f"HOME={run}/home EBPFKIT_MODE=auto "
            f"EBPFKIT_RECORDINGS={shlex.quote(str(RECORDINGS))} "
            f"{jupyter} --to notebook --execute --stdout --log-level=ERROR "
            "--ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=120 "
            f"{run}/notebooks/{shlex.quote(notebook.name)}",
        ]
    )
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
    )
    error = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr)  # the traceback's colours
    assert done.returncode == 0, f"{notebook.name} failed as nobody:\n{error[-4000:]}"
    return json.loads(done.stdout)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_lesson_replays_as_nobody(notebook):
    executed = _replay(notebook)
    cells = {c.index: c for c in cells_of(notebook)}
    problems = []
    for i, c in enumerate(executed["cells"]):
        if c["cell_type"] != "code":
            continue
        outputs = c.get("outputs", [])
        texts = [t for o in outputs for t in _texts(o)]
        joined = "\n".join(texts)
        cell = cells[i]
        if cell.raises and not any(o["output_type"] == "error" for o in outputs):
            problems.append(f"cell {i} is tagged raises-exception but raised nothing")
        if cell.traces and joined.count(RECORDING_LINE) < 1:
            problems.append(f"cell {i} traces, but no output says it is a recording")
        if "differs from the one recorded" in joined:
            problems.append(f"cell {i}: its recording is of another program: record it again")
        if SHELL_FAILED.search(joined):  # e.g. a tool in /sbin, not on a user's PATH
            problems.append(f"cell {i}: a shell command failed: {SHELL_FAILED.search(joined)[0]}")
        if any(WIDGET in o.get("data", {}) for o in outputs):
            problems.append(f"cell {i} showed the live view's widget: it traced live")
        for sign in LIVE_SIGNS:
            if sign.search(joined):
                problems.append(f"cell {i} says a live trace happened: {sign.pattern}")
    assert not problems, f"{notebook.name}:\n" + "\n".join(problems)
