"""The command line: ``ebpfkit check`` and the course's tool commands."""

from __future__ import annotations

import argparse
import sys

from . import tools
from .checks import run_checks
from .errors import EbpfkitError


def _check(args: argparse.Namespace) -> int:
    report = run_checks(probes_too=not args.quick)
    print(report.text())
    return 0 if report.lessons_can_run else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ebpfkit", description="eBPF tracing for learners, in Python and Jupyter."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="what this kernel and machine can do for eBPF tracing")
    p.add_argument("--quick", action="store_true", help="skip trying each probe type")
    p.set_defaults(func=_check)
    for name in tools.names():
        tool = tools.load(name)
        p = sub.add_parser(name, help=tool.HELP, description=tool.HELP)
        tool.configure(p)
        p.set_defaults(func=tool.main)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except EbpfkitError as e:
        # The user's mistake or the kernel's limit: the message alone, no traceback.
        print(f"ebpfkit {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
