"""``ebpfkit kernel``: install, list, check or remove the lessons' Jupyter kernel.

    ebpfkit kernel install                  # "Python 3 (ebpfkit, root)" in this virtualenv
    ebpfkit kernel install --user --sudo    # for a non-root user: the kernel runs via sudo -n
    ebpfkit kernel install --replay         # no root; %%bpf cells replay recordings (Binder)
    ebpfkit kernel check                    # does it start, and as root?
    ebpfkit kernel list
    ebpfkit kernel remove --name ebpfkit

The functions are in ``ebpfkit.kernelspec``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import kernelspec
from ..errors import BadArguments

HELP = "install, list, check or remove the lessons' Jupyter kernel (runs as root)"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("install", help="install the kernelspec (default: in this virtualenv)")
    p.add_argument("--name", default="ebpfkit", help="the kernelspec's name (ebpfkit)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="in the user's Jupyter data folder")
    where.add_argument(
        "--sys-prefix", action="store_true", help="in this environment, sys.prefix (the default)"
    )
    where.add_argument("--prefix", metavar="P", help="under P/share/jupyter/kernels")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--sudo",
        action="store_true",
        help="run the kernel through `sudo -n` even when installing as root "
        "(for a spec that non-root users start)",
    )
    how.add_argument(
        "--replay",
        action="store_true",
        help="no root: set EBPFKIT_MODE=replay, so %%%%bpf cells show recordings",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the kernel (repeatable)",
    )
    p.add_argument("--display-name", help="the name JupyterLab shows")
    p.add_argument("--check", action="store_true", help="then start it once to check it")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing unless it fails")
    p = sub.add_parser("list", help="the kernelspecs Jupyter finds, ebpfkit's marked")
    p = sub.add_parser("check", help="start the kernel's command once: does it run as root?")
    p.add_argument("--name", default="ebpfkit")
    p = sub.add_parser("remove", help="delete a kernelspec")
    p.add_argument("--name", default="ebpfkit")


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise BadArguments(f"--env {pair!r}: give NAME=VALUE, e.g. --env EBPFKIT_MODE=replay")
        env[key] = value
    return env


def main(args: argparse.Namespace) -> int:
    if args.action == "install":
        folder = kernelspec.install(
            args.name,
            user=args.user,
            prefix=args.prefix,
            sudo=True if args.sudo else None,
            replay=args.replay,
            env=_env(args.env),
            display_name=args.display_name,
        )
        # Read back from where it was written: --prefix may be a folder Jupyter does not search.
        kernel = json.loads((Path(folder) / "kernel.json").read_text())
        if not args.quiet:
            print(f"installed kernel {args.name!r} ({kernel['display_name']}) in {folder}")
            print("  runs: " + " ".join(kernel["argv"]))
        if args.check or (kernel["argv"][0].endswith("sudo") and not args.quiet):
            return _check(args.name, quiet=args.quiet, folder=folder)
        return 0
    if args.action == "check":
        return _check(args.name, quiet=False)
    if args.action == "remove":
        print(f"removed {kernelspec.remove(args.name)}")
        return 0
    for name, (folder, kernel) in kernelspec.installed().items():
        mode = kernel.get("metadata", {}).get("ebpfkit", {}).get("mode")
        mark = f"[ebpfkit: {mode}]" if mode else ""
        print(f"{name:<16} {kernel.get('display_name', ''):<30} {mark:<18} {folder}")
    return 0


def _check(name: str, quiet: bool, folder=None) -> int:
    ok, line = kernelspec.check(name, folder=folder)
    if not ok:
        print(f"ebpfkit kernel: {line}", file=sys.stderr)
    elif not quiet:
        print(f"ok: {line}")
    return 0 if ok else 1
