"""``ebpfkit stats``: the course's syscall counter, a table of SYSCALL and COUNT.

Counts every system call in the kernel (bpf/syscall_count.c, on the
raw_syscalls:sys_enter tracepoint) in a hash map keyed by syscall number, then
prints the map sorted by count with the numbers turned into names::

    ebpfkit stats                              # the whole machine, 2 seconds
    ebpfkit stats --comm ls --run "ls -l /usr/bin"
    ebpfkit stats --pid 1234 -d 10             # Ctrl-C ends it early
    ebpfkit stats --per-cpu --top 5            # one column per CPU, and their sum
"""

from __future__ import annotations

import argparse
import re
import sys

from .. import probes, tools
from ..errors import BadArguments
from ..session import Session, printer

HELP = "count system calls per syscall in an eBPF hash map (the course's `stats`)"
DEFAULT_DURATION = 2.0  # seconds, as the course's tool
PROGRAM = "syscall_count.c"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        help=f"seconds to count (default {DEFAULT_DURATION:g}; with --run, until it exits)",
    )
    parser.add_argument(
        "-r", "--run", metavar="CMD", help="shell command to start once the counter is attached"
    )
    parser.add_argument(
        "-c", "--comm", help="count only processes with this command name (checked in the kernel)"
    )
    parser.add_argument(
        "-p", "--pid", type=int, help="count only this process (checked in the kernel)"
    )
    parser.add_argument(
        "-T", "--top", type=int, default=20, metavar="N", help="show the N most frequent (20)"
    )
    parser.add_argument(
        "--per-cpu",
        action="store_true",
        help="count in a per-CPU hash map and show each CPU's count beside the sum",
    )


# The library's, here too for the lessons (from ebpfkit.tools.stats import syscall_name).
syscall_name = probes.syscall_name


def count_frame(result, top: int | None = None):
    """The ``counts`` map of a syscall_count.c trace as a table: syscall, number, count.

    Per-CPU traces keep their ``cpuN`` columns before the summed ``count``.
    """
    import pandas as pd

    df = result.maps["counts"]
    if df.empty:
        return pd.DataFrame(columns=["syscall", "nr", "count"])
    df = df.rename(columns={"key": "nr", "value": "count"})
    df.insert(0, "syscall", [syscall_name(int(n)) for n in df["nr"]])
    df = df.sort_values(["count", "nr"], ascending=[False, True], kind="stable")
    df = df.reset_index(drop=True)
    return df.head(top) if top else df


def failed_updates(result) -> int:
    full = result.maps.get("full")
    return int(full["value"].sum()) if full is not None and len(full) else 0


def table_text(df) -> str:
    """The course's table: ``SYSCALL`` left, ``COUNT`` right (per-CPU columns between)."""
    cpus = [c for c in df.columns if re.fullmatch(r"cpu\d+", str(c))]
    head = f"{'SYSCALL':<20}" + "".join(f" {c.upper():>10}" for c in cpus) + f" {'COUNT':>10}"
    lines = [head]
    for row in df.itertuples(index=False):
        values = row._asdict()
        cells = "".join(f" {int(values[c]):>10}" for c in cpus)
        lines.append(f"{values['syscall']:<20}{cells} {int(values['count']):>10}")
    if len(df) == 0:
        lines.append("(No data collected)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.top is not None and args.top <= 0:
        raise BadArguments(f"--top {args.top}: give a positive number")
    duration = args.duration
    if duration is None and not args.run:
        duration = DEFAULT_DURATION
    session = Session(
        tools.bpf_source(PROGRAM),
        pid=args.pid,
        comm=args.comm,
        cflags=["-DPER_CPU"] if args.per_cpu else [],
        on_warning=printer("warning", "stderr"),
        on_note=printer("note", "stderr"),
    )
    what = " and ".join(
        f for f in (args.comm and f"comm {args.comm}", args.pid and f"pid {args.pid}") if f
    )
    until = f"{duration:g} s" if duration else "the command exits"
    started = []

    def say_started(_session, _elapsed) -> None:
        # Printed from the trace loop, so Ctrl-C already ends the count (and prints the table).
        if not started:
            started.append(True)
            print(
                f"Counting syscalls{' of ' + what if what else ''} "
                f"(raw_syscalls:sys_enter) until {until}... Ctrl-C to end.",
                flush=True,
            )

    with session:
        result = session.run(duration=duration, workload=args.run, progress=say_started)
    if result.output:
        print(result.output, end="" if result.output.endswith("\n") else "\n")
    df = count_frame(result, args.top)
    print()
    print(table_text(df))
    total = int(result.maps["counts"]["value"].sum()) if len(result.maps["counts"]) else 0
    shown = f", top {len(df)} shown" if len(df) < len(result.maps["counts"]) else ""
    print(
        f"\n{total} syscalls, {len(result.maps['counts'])} different{shown}; "
        f"counted for {result.duration:.2f} s (stopped by {result.stopped_by})"
    )
    failed = failed_updates(result)
    if failed:
        print(f"warning: {failed} updates found the map full and were not counted")
    if result.exit_code:
        print(f"the command exited with status {result.exit_code}", file=sys.stderr)
    return 0
