"""binder/: what mybinder.org (repo2docker) will read, checked as far as it can be without docker.

repo2docker installs binder/apt.txt with apt-get, runs `pip install -r binder/requirements.txt`
from the repository's root, runs binder/postBuild as the Binder user, and starts the server
through binder/start. Each step is tried here the same way, on this machine's Debian.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
VENV_BIN = Path(sys.executable).parent


def _lines(name: str) -> list[str]:
    """The file's entries as repo2docker reads them: '#' starts a comment, blanks skipped."""
    text = (BINDER / name).read_text()
    return [e for e in (line.partition("#")[0].strip() for line in text.splitlines()) if e]


def _notebook_kernels() -> set[str]:
    return {
        nbformat.read(p, as_version=4).metadata["kernelspec"]["name"]
        for p in (ROOT / "notebooks").glob("*.ipynb")
    }


def test_apt_packages_exist_in_the_distribution():
    packages = _lines("apt.txt")
    assert packages, "binder/apt.txt lists no package"
    for p in packages:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", p), f"not a Debian package name: {p!r}"
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache on this machine")
    if subprocess.run(["apt-cache", "show", "bash"], capture_output=True).returncode != 0:
        pytest.skip("apt-cache knows no package here (run apt-get update first)")
    missing = [
        p
        for p in packages
        if subprocess.run(["apt-cache", "show", p], capture_output=True).returncode != 0
    ]
    assert not missing, f"apt.txt names packages the distribution lacks: {missing}"


def test_requirements_install_ebpfkit_from_this_checkout():
    from packaging.requirements import Requirement

    lines = _lines("requirements.txt")
    assert "." in lines, "ebpfkit itself must come from the repository (`.`)"
    # An ordinary install: the package carries its C programs, so no editable install is needed.
    assert not any(line.startswith(("-e", "--editable")) for line in lines), lines
    names = {Requirement(line).name.lower() for line in lines if line[0] not in "-."}
    assert {"ipywidgets", "pandas", "matplotlib"} <= names, names


def test_requirements_resolve():
    # pip reads `.` relative to where it runs: the repository's root, as repo2docker does.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(BINDER / "requirements.txt"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    offline = ("NewConnectionError", "Temporary failure in name resolution", "Network is")
    if done.returncode != 0 and any(word in done.stderr for word in offline):
        pytest.skip(f"no network to the package index: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "EBPFKIT"))}
    env["HOME"] = str(home)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # its `python`, as on Binder
    return env


def test_postbuild_installs_the_replay_kernel_the_notebooks_name(tmp_path):
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "repo2docker runs postBuild directly: it must be executable"
    assert post.read_text().startswith("#!"), "postBuild needs a #! line"
    env = _clean_env(tmp_path)
    done = subprocess.run([str(post)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    kernels = tmp_path / ".local/share/jupyter/kernels"
    names = {p.name for p in kernels.iterdir()}
    assert _notebook_kernels() <= names, (_notebook_kernels(), names)
    for name in _notebook_kernels():
        spec = json.loads((kernels / name / "kernel.json").read_text())
        assert spec["env"]["EBPFKIT_MODE"] == "replay"
        assert "sudo" not in Path(spec["argv"][0]).name, spec["argv"]
        assert Path(spec["argv"][0]).exists(), spec["argv"]
        # The kernel's own command starts, and sees replay mode. (JUPYTER_PATH: this venv
        # has a root kernel of the same name, which a Binder image has not.)
        check = subprocess.run(
            [sys.executable, "-m", "ebpfkit", "kernel", "check", "--name", name],
            env={**env, "JUPYTER_PATH": str(tmp_path / ".local/share/jupyter")},
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
        assert "EBPFKIT_MODE=replay" in check.stdout


def test_start_sets_replay_mode_and_runs_the_command(tmp_path):
    start = BINDER / "start"
    assert os.access(start, os.X_OK)
    env = _clean_env(tmp_path)
    done = subprocess.run([str(start), "env"], env=env, capture_output=True, text=True)
    assert done.returncode == 0
    assert "EBPFKIT_MODE=replay" in done.stdout.splitlines()
    # It hands over with exec: the server's exit status is the container's.
    assert subprocess.run([str(start), "sh", "-c", "exit 7"], env=env).returncode == 7
