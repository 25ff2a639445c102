"""Any clone, any folder, any install: nothing names one machine's paths, and the C programs
of bpf/ travel inside the package (an ordinary install is checked end to end by
scripts/wheel-check.sh, which CI runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import needs_root, prog_ids

from ebpfkit import sources, tools
from ebpfkit.errors import BadArguments

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", "test-artifacts", "handouts"}

# A home folder, pyenv's versions or a virtualenv named by an absolute path, on any machine
# (spelt with S so that this file passes).
S = "/"
GENERIC = re.compile(
    rf"(?<![\w.~-])({S}home{S}[\w.-]+{S}|{S}Users{S}[\w.-]+{S}|{S}root{S}|\S*\.pyenv{S}versions{S}"
    rf"|(?!{S}path{S}to{S}){S}[\w.-]+(?:{S}[\w.-]+)*{S}\.venv{S})"  # /path/to/: a placeholder
)


def _files() -> list[Path]:
    """The repository's files: git's list where there is one (tracked and new), else a walk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
    )
    if listed.returncode == 0:
        return [REPO / n for n in listed.stdout.decode().split("\0") if n]
    found = []
    for top, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found += [Path(top, n) for n in names]
    return found


def _texts(path: Path):
    """(where, text) for a file's text: the file itself, or each JSON/text member of a zip."""
    if path.is_symlink() or not path.is_file():
        return
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if member.endswith((".json", ".txt", ".c")):
                    yield f"{path}:{member}", z.read(member).decode("utf-8", "replace")
        return
    if b"\0" in data[:8192]:
        return  # binary
    yield str(path), data.decode("utf-8", "replace")


def test_no_absolute_path_of_a_checkout_venv_or_home():
    mine = {str(REPO), sys.prefix, str(Path.home())} - {"/", ""}
    offences = []
    files = _files()
    assert len(files) > 50, f"the walk found only {len(files)} files in {REPO}"
    for path in files:
        for where, text in _texts(path):
            for n, line in enumerate(text.splitlines(), 1):
                hit = GENERIC.search(line) or next((m for m in mine if m in line), None)
                if hit:
                    offences.append(f"{os.path.relpath(where, REPO)}:{n}: {line.strip()[:120]}")
    assert not offences, "absolute paths of one machine:\n" + "\n".join(offences)


def test_the_path_check_catches_what_it_should():
    """The pattern above, tried on lines it must and must not flag."""
    flagged = [
        f'VENV = "{S}home{S}alice/ebpfkit/.venv/bin/python"',
        f"cd {S}root{S}ebpfkit && make test",
        f"PY=/opt/x/.pyenv{S}versions{S}3.11.7/bin/python3",
        f"open('{S}Users{S}bob/notes')",
        f'VENV_PYTHON = "{S}work{S}main/.venv/bin/python"',
    ]
    kept = [
        "mount -t tracefs nodev /sys/kernel/tracing",
        "/usr/bin/python3",
        "~/.cache/ebpfkit",
        'PATH="$PWD/.venv/bin:$PATH"',
        "VENV := .venv",
        "sudoers: alice ALL=(root) NOPASSWD:SETENV: /path/to/ebpfkit/.venv/bin/python",
    ]
    assert all(GENERIC.search(line) for line in flagged)
    assert not any(GENERIC.search(line) for line in kept)


def test_the_shipped_programs_are_the_repository_bpf_folder():
    shipped = sources.bpf_dir()
    if REPO in shipped.parents:  # a checkout's install: the link to bpf/ itself
        assert shipped.resolve() == (REPO / "bpf").resolve()
    assert sources.bpf_names() == sorted(p.name for p in (REPO / "bpf").glob("*.c"))
    for name in sources.bpf_names():
        assert sources.bpf_source(name) == (REPO / "bpf" / name).read_text()
    # The tools and the lessons reach them through ebpfkit.tools as before.
    assert tools.bpf_source("bpf/syscall_count.c") == (REPO / "bpf/syscall_count.c").read_text()


def test_a_missing_program_is_named_with_close_matches():
    with pytest.raises(BadArguments, match=r"syscal_count\.c.*did you mean syscall_count\.c"):
        sources.bpf_source("syscal_count.c")
    with pytest.raises(BadArguments, match=r"--file bpf/exec_tracepont\.c.*exec_tracepoint\.c"):
        sources.read_program("bpf/exec_tracepont.c")


def test_a_users_own_file_wins_over_a_shipped_one(tmp_path, monkeypatch):
    mine = tmp_path / "bpf" / "trace_exec.c"
    mine.parent.mkdir()
    mine.write_text("/* mine */\n")
    monkeypatch.chdir(tmp_path)
    assert sources.read_program("bpf/trace_exec.c") == "/* mine */\n"
    monkeypatch.chdir("/")
    assert sources.read_program("bpf/trace_exec.c") == (REPO / "bpf/trace_exec.c").read_text()


@needs_root
def test_file_option_runs_a_shipped_program_from_any_folder(ip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing named bpf/ here
    before = prog_ids()
    target = tmp_path / "hello"
    target.write_text("hi\n")
    r = ip.run_line_magic("bpf", f"--file bpf/exec_tracepoint.c --run 'cat {target}'")
    execs = r.events[r.events.filename.str.endswith("/cat")]
    assert len(execs) == 1, r.events
    assert prog_ids() <= before
