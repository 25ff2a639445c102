"""``ebpfkit kprobe FUNC``: the course's hello kprobe, one line per call of a kernel function.

    $ sudo ebpfkit kprobe do_sys_openat2 --comm cat --run 'cat /etc/hostname'
    Tracing do_sys_openat2 (kprobe) ... until the command exits or Ctrl-C
    kprobe triggered by PID 4242 (cat)
    ...

The program is ``bpf/hello_kprobe.c`` (bpf_trace_printk). On a kernel built
without kprobes the same function is attached to the tracepoint that sees the
same calls (``kinds.stand_in``; ``--fallback`` picks another), and a
``note:`` line says so. Where no tracepoint fits, the command stops with the
kernel's reason and exit status 2.
"""

from __future__ import annotations

import argparse
import re

from .. import kinds
from ..session import Session, printer
from . import bpf_source

HELP = "one line per call of a kernel function: 'kprobe triggered by PID N (comm)'"

PROGRAM = "hello_kprobe.c"
UNTIL_CTRL_C = 3600.0  # seconds: Session's longest trace
# What the program prints; trace_pipe is shared, so lines of other programs are skipped.
_LINE = re.compile(r"^kprobe triggered by PID (\d+) \((.*)\)$")


def configure(parser: argparse.ArgumentParser) -> None:
    kprobe = kinds.get("kprobe")
    parser.add_argument("function", metavar="FUNC", help=f"kernel function, e.g. {kprobe.example}")
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
        help="shell command started once the probe is attached, e.g. 'cat /etc/hostname'",
    )
    parser.add_argument(
        "-c", "--comm", help="only processes with this name (checked in the kernel)"
    )
    parser.add_argument("-p", "--pid", type=int, help="only this process (checked in the kernel)")
    parser.add_argument(
        "--fallback",
        metavar="CAT:EVENT",
        help="tracepoint to attach where the kernel has no kprobes "
        "(default: the one that sees the same calls, e.g. syscalls:sys_enter_openat)",
    )


def main(args: argparse.Namespace) -> int:
    # Where the kernel has no kprobes, Session attaches the fallback instead (and checks the
    # function's name all the same).
    fallback = args.fallback or kinds.stand_in("kprobe", args.function)
    session = Session(
        bpf_source(PROGRAM),
        kprobe=args.function,
        fallback=fallback,
        pid=args.pid,
        comm=args.comm,
        on_note=printer("note"),  # on stdout, before the lines it explains
        on_warning=printer("warning", "stderr"),
    )
    duration = args.duration
    if duration == 0 or (duration is None and not args.run):
        duration = UNTIL_CTRL_C
    counts: dict[tuple[int, str], int] = {}
    shown = 0

    def show(message: str) -> None:
        m = _LINE.match(message)
        if m:
            print(message, flush=True)
            key = (int(m[1]), m[2])
            counts[key] = counts.get(key, 0) + 1

    def progress(s: Session, _elapsed: float) -> None:
        nonlocal shown
        rows = s.printk.rows if s.printk else []
        for row in rows[shown:]:
            show(row[-1])
        shown = len(rows)

    with session:
        probe = "; ".join(session.attached())
        until = (
            f"for {duration:g} s or until Ctrl-C"
            if duration and duration < UNTIL_CTRL_C
            else "until the command exits or Ctrl-C"
            if args.run
            else "until Ctrl-C"
        )
        print(f"Tracing {args.function} ({probe}) ... {until}", flush=True)
        result = session.run(duration=duration, workload=args.run, progress=progress)
    if result.printk is not None:
        for message in list(result.printk["message"])[shown:]:
            show(message)

    total = sum(counts.values())
    print(f"\n{total} calls in {result.duration:.2f} s (stopped by {result.stopped_by})")
    if counts:
        print(f"{'PID':>8}  {'COMM':<16} {'CALLS':>6}")
        for (pid, comm), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"{pid:>8}  {comm:<16} {n:>6}")
    if args.run:
        print(f"\noutput of the command (exit code {result.exit_code}):")
        print(result.output, end="" if result.output.endswith("\n") else "\n")
    return 0
