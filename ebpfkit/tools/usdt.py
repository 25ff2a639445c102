"""``ebpfkit usdt BINARY [PROBE]``: a binary's static (USDT) probes, listed or counted.

Without PROBE it lists the probes of BINARY with their arguments, read from the
file's ``.note.stapsdt`` notes (like bcc's ``tplist -l``)::

    $ ebpfkit usdt /usr/bin/python3.11
    python:function__entry  3 args: 8@%rbp 8@%r12 -4@%eax  [semaphore 0xa84260]
    ...

With PROBE (``NAME`` or ``PROVIDER:NAME``) it attaches ``count_hits`` of
``bpf/usdt_count.c`` there and prints the hits per process, for a few seconds or
while ``--run CMD`` runs::

    $ sudo ebpfkit usdt /usr/bin/python3.11 gc__start --run "python3 -c 'import gc; gc.collect()'"

A probe behind a semaphore is enabled by the kernel while it is attached (the
note on stderr says so). A binary or probe that does not exist stops the command
with close names and exit status 2.
"""

from __future__ import annotations

import argparse

from .. import probes, usdt
from ..session import WORKLOAD_LIMIT, Session, printer
from . import bpf_source
from .tracepoint import hits_text

HELP = "list a binary's USDT probes with their arguments, or count a probe's hits per process"
PROGRAM = "usdt_count.c"
FUNCTION = "count_hits"
DEFAULT_SECONDS = 5.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "binary", metavar="BINARY", help="path or program on PATH, e.g. /usr/bin/python3.11"
    )
    parser.add_argument(
        "probe",
        metavar="PROBE",
        nargs="?",
        help="[PROVIDER:]NAME to count, e.g. function__entry; without it, list the probes",
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        help=f"seconds to count (default {DEFAULT_SECONDS:g}; with --run, until it exits, at "
        f"most {WORKLOAD_LIMIT:.0f})",
    )
    parser.add_argument("-r", "--run", metavar="CMD", help="shell command started once attached")
    parser.add_argument("-p", "--pid", type=int, help="only this process (attached to it alone)")
    parser.add_argument(
        "-c", "--comm", help="only processes with this name (checked in the kernel)"
    )
    parser.add_argument("--top", type=int, default=20, help="rows to print (default 20)")


def main(args: argparse.Namespace) -> int:
    path = probes.resolve_binary(args.binary)
    if not args.probe:
        text = usdt.listing(path)
        print(text or f"{path} has no USDT probes (no .note.stapsdt notes)")
        return 0
    target = f"{path}:{args.probe}"
    site = usdt.find(target)[0]  # a probe that does not exist ends here, with close names
    session = Session(
        bpf_source(PROGRAM),
        usdt=f"{target}={FUNCTION}",
        pid=args.pid,
        comm=args.comm,
        on_warning=printer("warning", "stderr"),
        on_note=printer("note", "stderr"),
    )
    duration = (
        args.duration if args.duration is not None else (None if args.run else DEFAULT_SECONDS)
    )
    with session:
        result = session.run(duration=duration, workload=args.run)
    print(hits_text(f"{site.full_name} in {path}", result, args.top, kind="usdt"))
    if result.output.strip():
        out = result.output.rstrip().splitlines()
        print(f"workload output ({len(out)} lines{', last 20' if len(out) > 20 else ''}):")
        print("\n".join(out[-20:]))
    return 0
