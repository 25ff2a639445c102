"""``ebpfkit uprobe BINARY SYMBOL``: calls of a user-space function, counted per process.

    $ sudo ebpfkit uprobe c malloc --comm python3 --run 'python3 -c "x = bytearray(5000)"'
    Counting calls to malloc in /lib/x86_64-linux-gnu/libc.so.6 ... until the command exits ...

    3100 calls of malloc in 0.71 s (stopped by workload exit)
         PID  COMM                CALLS
       20125  python3              3100

BINARY is a path, a program on PATH (``bash``) or a library by any of its names
(``c``, ``libc``, ``libc.so.6``). The program is the entry half of
``bpf/malloc_count.c`` (a uprobe counting calls per PID and command in a map),
which works for any function. A binary or symbol that does not exist stops the
command with ebpfkit's message (and close names) and exit status 2.
"""

from __future__ import annotations

import argparse

from .. import probes
from ..session import Session, printer
from . import bpf_source

HELP = "count the calls of a user-space function (uprobe) per process: PID, COMM, CALLS"

PROGRAM = "malloc_count.c"
FUNCTION = "on_entry"  # the uprobe half of the program: calls per (pid, comm)
UNTIL_CTRL_C = 3600.0  # seconds: Session's longest trace
MAX_ROWS = 30


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "binary",
        metavar="BINARY",
        help="path, program on PATH (bash) or library (c, libc.so.6, /lib/.../libssl.so.3)",
    )
    parser.add_argument("symbol", metavar="SYMBOL", help="function name, e.g. malloc, readline")
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        metavar="SECONDS",
        help="seconds to trace; 0 = until Ctrl-C (default: until the --run command exits, "
        "else until Ctrl-C)",
    )
    parser.add_argument(
        "-r",
        "--run",
        metavar="CMD",
        help="shell command started once the probe is attached",
    )
    parser.add_argument(
        "-p",
        "--pid",
        type=int,
        help="only this process (the uprobe is attached to it alone)",
    )
    parser.add_argument(
        "-c", "--comm", help="only processes with this name (checked in the kernel)"
    )


def main(args: argparse.Namespace) -> int:
    # Resolve first: a missing binary or symbol ends here with ebpfkit's own message.
    path = probes.check_symbol(args.binary, args.symbol)
    session = Session(
        bpf_source(PROGRAM),
        uprobe=f"{path}:{args.symbol}={FUNCTION}",
        pid=args.pid,
        comm=args.comm,
        on_note=printer("note"),
        on_warning=printer("warning", "stderr"),
    )
    duration = args.duration
    if duration == 0 or (duration is None and not args.run):
        duration = UNTIL_CTRL_C
    with session:
        until = (
            f"for {duration:g} s or until Ctrl-C"
            if duration and duration < UNTIL_CTRL_C
            else "until the command exits or Ctrl-C"
            if args.run
            else "until Ctrl-C"
        )
        who = f" in PID {args.pid}" if args.pid else ""
        print(f"Counting calls to {args.symbol} in {path}{who} ... {until}", flush=True)
        result = session.run(duration=duration, workload=args.run)

    calls = result.maps.get("calls")
    rows = []
    if calls is not None and len(calls):
        rows = sorted(
            ((int(r.pid), str(r.comm), int(r.value)) for r in calls.itertuples()),
            key=lambda row: (-row[2], row[0]),
        )
    total = sum(n for _pid, _comm, n in rows)
    print(
        f"\n{total} calls of {args.symbol} in {result.duration:.2f} s "
        f"(stopped by {result.stopped_by})"
    )
    if rows:
        print(f"{'PID':>8}  {'COMM':<16} {'CALLS':>8}")
        for pid, comm, n in rows[:MAX_ROWS]:
            print(f"{pid:>8}  {comm:<16} {n:>8}")
        if len(rows) > MAX_ROWS:
            rest = sum(n for _pid, _comm, n in rows[MAX_ROWS:])
            print(f"{'':>8}  ... {len(rows) - MAX_ROWS} more processes, {rest} calls")
    if args.run:
        print(f"\noutput of the command (exit code {result.exit_code}):")
        print(result.output, end="" if result.output.endswith("\n") else "\n")
    return 0
