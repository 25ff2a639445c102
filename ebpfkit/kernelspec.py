"""The Jupyter kernel the lessons run in: one with the rights eBPF needs.

Loading a BPF program takes root (or CAP_BPF and CAP_PERFMON), and a notebook's code runs
in its kernel, not in the JupyterLab server. So the lessons get a kernelspec of their own,
``ebpfkit``, whose command line starts ipykernel with those rights:

- installed by root: this environment's Python, directly (the server runs as root too);
- installed by another user, or with ``sudo=True``: the same Python through ``sudo -n``,
  which never asks for a password (a kernel has no terminal to ask on). sudo then needs a
  rule such as ``alice ALL=(root) NOPASSWD:SETENV: /path/to/.venv/bin/python``
  (:func:`sudoers_line`); :func:`check` tries it;
- ``replay=True``: no rights at all, and ``EBPFKIT_MODE=replay`` in the kernel's environment,
  so ``%%bpf`` cells show recordings (Binder, containers without CAP_BPF).

The Python is this process's ``sys.executable`` unresolved: a virtualenv's ``bin/python``
is a symlink to the system's, and only the link finds the virtualenv's packages.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import BadArguments, NotPermitted

# ipykernel and jupyter_client are imported where they are used: ``ebpfkit --help`` imports
# this module through its ``kernel`` command, and needs neither.

NAME = "ebpfkit"
DISPLAY = {
    "root": "Python 3 (ebpfkit, root)",
    "sudo": "Python 3 (ebpfkit, root)",
    "replay": "Python 3 (ebpfkit, replay)",
}
# What the kernel must still see after sudo, which resets the environment. JPY_PARENT_PID
# turns on ipykernel's parent poller: a server that cannot stop the root kernel itself
# (SIGKILL kills sudo, and the user may not signal root) leaves it orphaned, and it exits.
KEEP_THROUGH_SUDO = ("PYTHONPATH", "EBPFKIT_MODE", "EBPFKIT_RECORDINGS", "JPY_PARENT_PID")


def sudoers_line(python: str | None = None, user: str | None = None) -> str:
    """The sudoers rule a non-root user needs for the sudo kernel (it grants root: the kernel
    runs any code its notebook holds)."""
    python = python or sys.executable
    user = user or getpass.getuser()
    # In sudoers a space would end the command, and , : = \ have meanings of their own.
    command = re.sub(r"([ ,:=\\])", r"\\\1", python)
    return f"{user} ALL=(root) NOPASSWD:SETENV: {command}"


def spec(
    *,
    sudo: bool | None = None,
    replay: bool = False,
    env: dict[str, str] | None = None,
    python: str | None = None,
    display_name: str | None = None,
) -> dict:
    """The kernel.json for the ebpfkit kernel (see the module's docstring for the modes).

    ``sudo=None`` picks sudo when this process is not root.
    """
    from ipykernel.kernelspec import get_kernel_dict

    python = python or sys.executable
    env = dict(env or {})
    if replay:
        if sudo:
            raise BadArguments("a replay kernel needs no root: drop sudo, or drop replay")
        mode = "replay"
        env["EBPFKIT_MODE"] = "replay"
    else:
        mode = "sudo" if (sudo if sudo is not None else os.geteuid() != 0) else "root"
    for key in env:
        if not key or "=" in key:
            raise BadArguments(f"bad environment variable name {key!r}: give NAME=VALUE")
    kernel = get_kernel_dict()
    # ipykernel's own command line (it knows its interpreter flags), with our Python in it.
    argv = [python, *kernel["argv"][1:]]
    if mode == "sudo":
        sudo_bin = shutil.which("sudo")
        if sudo_bin is None:
            raise NotPermitted(
                "sudo is not installed, so this user's kernel cannot get root: install sudo "
                "(apt-get install sudo), install the kernel as root, or use --replay"
            )
        keep = sorted(set(KEEP_THROUGH_SUDO) | set(env))
        argv = [sudo_bin, "-n", f"--preserve-env={','.join(keep)}", *argv]
    kernel["argv"] = argv
    kernel["display_name"] = display_name or DISPLAY[mode]
    if env:
        kernel["env"] = env
    kernel.setdefault("metadata", {})["ebpfkit"] = {"mode": mode}
    return kernel


def install(
    name: str = NAME,
    *,
    user: bool = False,
    prefix: str | None = None,
    **spec_options,
) -> str:
    """Write the kernelspec (see :func:`spec` for the options); returns its folder.

    Where: ``user=True`` in the user's Jupyter data folder, else under ``prefix``
    (default ``sys.prefix``, this virtualenv, which its JupyterLab reads).
    """
    from ipykernel.kernelspec import RESOURCES
    from jupyter_client.kernelspec import KernelSpecManager

    if not name or not all(c.isalnum() or c in "-._" for c in name):
        raise BadArguments(f"bad kernel name {name!r}: use letters, digits, '-', '.' or '_'")
    if user and prefix:
        raise BadArguments("give either user or prefix, not both")
    kernel = spec(**spec_options)
    with tempfile.TemporaryDirectory() as tmp:
        # A folder of our own inside: Jupyter copies the folder's mode, and a temporary
        # directory's 0700 would hide the spec from every other user (a sudo kernel's users).
        folder = os.path.join(tmp, name)
        os.mkdir(folder)
        for logo in os.listdir(RESOURCES):
            shutil.copy(os.path.join(RESOURCES, logo), folder)
        with open(os.path.join(folder, "kernel.json"), "w") as f:
            json.dump(kernel, f, indent=1)
        prefix = None if user else (prefix or sys.prefix)
        try:
            return KernelSpecManager().install_kernel_spec(folder, name, user=user, prefix=prefix)
        except PermissionError as e:
            raise NotPermitted(
                f"cannot write the kernelspec ({e.strerror}: {e.filename}): "
                "install with --user, or as a user who may write there"
            ) from None


def installed() -> dict[str, tuple[str, dict]]:
    """Every kernelspec Jupyter finds: name -> (folder, kernel.json)."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = {}
    for name, folder in sorted(KernelSpecManager().find_kernel_specs().items()):
        try:
            with open(os.path.join(folder, "kernel.json")) as f:
                found[name] = (folder, json.load(f))
        except (OSError, ValueError):
            continue  # a broken spec of someone else's is not ours to judge
    return found


def find(name: str = NAME) -> tuple[str, dict]:
    """The kernelspec ``name``, or an error that says how to install it."""
    specs = installed()
    if name not in specs:
        known = ", ".join(specs) or "none"
        raise BadArguments(
            f"no Jupyter kernel named {name!r} (installed: {known}): "
            f"run `ebpfkit kernel install --name {name}`"
        )
    return specs[name]


def remove(name: str = NAME) -> str:
    """Delete the kernelspec ``name``; returns the folder removed."""
    from jupyter_client.kernelspec import KernelSpecManager

    folder, _ = find(name)
    try:
        return KernelSpecManager().remove_kernel_spec(name)
    except PermissionError as e:
        raise NotPermitted(
            f"cannot remove {folder} ({e.strerror}): remove it as its owner"
        ) from None


PROBE = "import os, sys, ebpfkit; print(os.geteuid(), os.environ.get('EBPFKIT_MODE', ''))"


def check(name: str = NAME, timeout: float = 60.0, folder=None) -> tuple[bool, str]:
    """Start the kernel's own command with a probe in place of ipykernel: does it run, as whom?

    ``folder``: the kernelspec's own folder, where Jupyter would not find it by ``name``.
    Returns (ok, one line saying what was seen and, if not ok, the fix).
    """
    if folder is None:
        folder, kernel = find(name)
    else:
        kernel = json.loads((Path(folder) / "kernel.json").read_text())
    argv = kernel["argv"]
    try:
        cut = argv.index("ipykernel_launcher") - 1  # the "-m" before it
    except ValueError:
        return False, f"{name}: {folder}/kernel.json does not start ipykernel_launcher"
    env = {**os.environ, **kernel.get("env", {})}
    try:
        done = subprocess.run(
            [*argv[:cut], "-c", PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{name}: could not start {argv[0]}: {e}"
    mode = kernel.get("metadata", {}).get("ebpfkit", {}).get("mode")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        if argv[0].endswith("sudo"):
            python = argv[argv.index("-n") + 2]
            return False, (
                f"{name}: sudo refused ({why}); add this rule with `visudo -f "
                f"/etc/sudoers.d/ebpfkit`: {sudoers_line(python)}"
            )
        return False, f"{name}: the kernel's Python failed: {why}"
    uid, _, replay = done.stdout.strip().partition(" ")
    if mode == "replay":
        ok = replay == "replay"
        return ok, f"{name}: starts as uid {uid}, EBPFKIT_MODE={replay or '(unset)'}"
    ok = uid == "0"
    seen = f"{name}: starts as uid {uid}"
    return ok, seen + ("" if ok else ": not root, so eBPF will be refused")
