"""``ebpfkit trace``: an strace-like system call tracer (the course's lesson 08).

    ebpfkit trace --run "ls /"                       every call of ls (and its children)
    ebpfkit trace --comm nginx --syscall read write -d 5
    ebpfkit trace --pid 1234 --summary -d 10         counts and latency, like strace -c

Over ``bpf/syscall_trace.c`` (raw_syscalls:sys_enter and sys_exit, paired per thread in
the kernel). The filters are put in front of the C as ``#define`` lines, so they hold
from the first event. The functions here (``program``, ``trace_syscalls``,
``events_frame``, ``format_line``, ``summary``, ``summary_text``) are the ones the
lesson notebook uses.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .. import probes
from . import bpf_source

HELP = "strace-like: each system call with arguments, return value and duration; --summary"

SOURCE_FILE = "syscall_trace.c"

# ---------------------------------------------------------------- syscall names

# The library's, here too for the lesson notebook (tracer.syscall_name).
syscall_name = probes.syscall_name
syscall_number = probes.syscall_number


# ---------------------------------------------------------------- the program


def program(
    *,
    syscalls: list[str] | None = None,
    failed: bool = False,
    skip_tgid: int | None = None,
    follow_from: int | None = None,
    summary_only: bool = False,
) -> str:
    """bpf/syscall_trace.c with the filters defined in front of it.

    ``syscalls``: names (or numbers) to keep; ``failed``: only calls returning an error;
    ``skip_tgid``: a process to ignore (the tracer); ``follow_from``: trace only the
    descendants of this process (the one that starts the workload); ``summary_only``:
    fill the maps but send no events.
    """
    lines = []
    if skip_tgid:
        lines.append(f"#define SKIP_TGID {int(skip_tgid)}")
    if follow_from:
        lines.append(f"#define FOLLOW_FROM {int(follow_from)}")
    if syscalls:
        numbers = sorted({syscall_number(s) for s in syscalls})
        test = " || ".join(f"(id) == {n}" for n in numbers)
        names = ", ".join(syscall_name(n) for n in numbers)
        lines.append(f"/* only {names} */")
        lines.append(f"#define SYSCALL_WANTED(id) ({test})")
    if failed:
        lines.append("#define FAILED_ONLY")
    if summary_only:
        lines.append("#define SUMMARY_ONLY")
    head = "\n".join(lines)
    return (head + "\n" if head else "") + bpf_source(SOURCE_FILE)


def trace_syscalls(
    *,
    pid: int | None = None,
    comm: str | None = None,
    syscalls: list[str] | None = None,
    failed: bool = False,
    duration: float | None = None,
    run: str | None = None,
    summary_only: bool = False,
    on_events=None,
    on_note=None,
    on_start=None,
    on_warning=None,
):
    """Trace system calls; a TraceResult whose ``events`` are ``events_frame`` rows.

    Without ``pid`` or ``comm``, a ``run`` command is followed with its children
    (strace -f); with neither, every process but this one is traced.
    ``on_events(df)`` is called with each batch of new events while tracing, and
    ``on_start()`` once, when the probes are attached and the trace runs.
    ``maps["totals"]`` holds the kernel's own counts (see ``summary_from_totals``);
    with ``summary_only`` there are no events, only the maps.
    """
    from ..session import Session

    me = os.getpid()
    follow = me if run and pid is None and comm is None else None
    source = program(
        syscalls=syscalls,
        failed=failed,
        skip_tgid=me,
        follow_from=follow,
        summary_only=summary_only,
    )
    session = Session(source, pid=pid, comm=comm, on_note=on_note, on_warning=on_warning)
    shown = [0]
    started: list[bool] = []

    def progress(s, _elapsed):
        if on_start is not None and not started:
            started.append(True)
            on_start()
        if on_events is None or not s.channels:
            return
        channel = s.channels[0]
        if channel.dtype is None or channel.received <= shown[0]:
            return
        from .. import frames

        new = channel.records(shown[0])
        shown[0] += len(new)
        on_events(events_frame(frames.decode(new, channel.dtype, s.wall_offset)))

    with session:
        result = session.run(duration=duration, workload=run, progress=progress)
    if result.events is not None and "id" in result.events.columns:
        if on_events is not None and len(result.events) > shown[0]:
            on_events(events_frame(result.events.iloc[shown[0] :]))
        result.events = events_frame(result.events)
    return result


# ---------------------------------------------------------------- rows and lines


def events_frame(df):
    """The program's events with a ``syscall`` name column (and ``dur_us``)."""
    df = df.copy()
    names = {n: syscall_name(n) for n in df["id"].unique()} if len(df) else {}
    df.insert(df.columns.get_loc("id") + 1, "syscall", df["id"].map(names).astype("object"))
    df["dur_us"] = df["dur_ns"] / 1000.0
    return df.reset_index(drop=True)


def format_arg(value: int) -> str:
    """A raw argument as strace would print a number: small ones in decimal,
    a negative int (AT_FDCWD is -100) as such, addresses in hex."""
    v = int(value)
    if v >= 1 << 63:
        v -= 1 << 64
    if 0xFFFFF000 <= v <= 0xFFFFFFFF:  # a negative 32-bit int, zero-extended
        v -= 1 << 32
    if -4096 < v < 1 << 20:
        return str(v)
    return hex(v) if v > 0 else str(v)


def format_ret(ret: int) -> str:
    """``0``, ``5``, ``0x7f...`` or ``-1 ENOENT (No such file or directory)``."""
    ret = int(ret)
    if -4096 < ret < 0:
        code = -ret
        name = errno.errorcode.get(code, f"E{code}")
        return f"-1 {name} ({os.strerror(code)})"
    return hex(ret) if ret >= 1 << 20 else str(ret)


# What the program saw of each call (the event's ``seen`` field).
ENTRY, EXIT = 1, 2
BOTH = ENTRY | EXIT


def format_line(row) -> str:
    """One event as strace prints it: ``write(1, 0x7ffd..., 5) = 5 <0.000006>``."""
    seen = int(row["seen"])
    if seen & ENTRY:
        call = f"{row['syscall']}({format_arg(row['arg0'])}, {format_arg(row['arg1'])}, "
        call += f"{format_arg(row['arg2'])})"
    else:  # the call began before the trace: its arguments were never seen
        call = f"<... {row['syscall']} resumed>)"
    if seen == BOTH:
        end = f" = {format_ret(row['ret'])} <{int(row['dur_ns']) / 1e9:.6f}>"
    elif seen == EXIT:
        end = f" = {format_ret(row['ret'])}"
    else:  # the thread ended inside the call (exit_group, a kill): no return value
        end = " = ?"
    return f"[pid {int(row['tid']):>6}] {call}{end}"


# ---------------------------------------------------------------- the summary


def summary(df):
    """Counts and latency per syscall, like ``strace -c -w``: a DataFrame sorted by time.

    Columns: syscall, calls, errors, seconds (sum of durations), usecs/call,
    % time, max_us. Calls seen only half (``seen`` 1 or 2: begun before the trace, or
    never returned, like exit_group) count as calls but add no time.
    """
    import pandas as pd

    columns = ["syscall", "calls", "errors", "seconds", "usecs/call", "% time", "max_us"]
    if df is None or not len(df):
        return pd.DataFrame(columns=columns)
    timed = df["seen"] == BOTH
    d = df.assign(
        error=((df["seen"] & EXIT) > 0) & (df["ret"] < 0) & (df["ret"] > -4096),
        timed=timed,
        dur=df["dur_ns"].where(timed, 0).astype("float64"),
    )
    g = d.groupby("syscall", sort=False)
    out = pd.DataFrame(
        {
            "calls": g.size(),
            "errors": g["error"].sum().astype(int),
            "seconds": g["dur"].sum() / 1e9,
            "timed": g["timed"].sum(),
            "max_us": g["dur"].max() / 1e3,
        }
    )
    out["usecs/call"] = (out["seconds"] * 1e6 / out["timed"].where(out["timed"] > 0)).fillna(0)
    total = out["seconds"].sum()
    out["% time"] = 100 * out["seconds"] / total if total > 0 else 0.0
    out = out.reset_index().sort_values(
        ["seconds", "calls", "syscall"], ascending=[False, False, True], kind="stable"
    )
    return out[columns].reset_index(drop=True)


def summary_from_totals(totals):
    """The same table from the kernel's ``totals`` map (exact even if events were lost)."""
    import pandas as pd

    columns = ["syscall", "calls", "errors", "seconds", "usecs/call", "% time"]
    if totals is None or not len(totals):
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame(
        {
            "syscall": [syscall_name(k if k < 1 << 63 else k - (1 << 64)) for k in totals["key"]],
            "calls": totals["calls"].astype(int),
            "errors": totals["errors"].astype(int),
            "seconds": totals["total_ns"] / 1e9,
            "timed": totals["timed"],
        }
    )
    out["usecs/call"] = (out["seconds"] * 1e6 / out["timed"].where(out["timed"] > 0)).fillna(0)
    total = out["seconds"].sum()
    out["% time"] = 100 * out["seconds"] / total if total > 0 else 0.0
    out = out.sort_values(
        ["seconds", "calls", "syscall"], ascending=[False, False, True], kind="stable"
    )
    return out[columns].reset_index(drop=True)


def summary_text(table) -> str:
    """The summary as ``strace -c`` prints it, with a total line."""
    rule = f"{'-' * 6} {'-' * 11} {'-' * 11} {'-' * 9} {'-' * 9} {'-' * 16}"
    lines = [f"{'% time':>6} {'seconds':>11} {'usecs/call':>11} {'calls':>9} {'errors':>9} syscall"]
    lines.append(rule)
    for _, r in table.iterrows():
        errors = str(int(r["errors"])) if r["errors"] else ""
        lines.append(
            f"{r['% time']:6.2f} {r['seconds']:11.6f} {r['usecs/call']:11.0f} "
            f"{int(r['calls']):9d} {errors:>9} {r['syscall']}"
        )
    lines.append(rule)
    errors = int(table["errors"].sum()) if len(table) else 0
    total_pct = 100.0 if len(table) and table["seconds"].sum() > 0 else 0.0
    lines.append(
        f"{total_pct:6.2f} {table['seconds'].sum():11.6f} {'':>11} "
        f"{int(table['calls'].sum()):9d} {errors or '':>9} total"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- the command line


def configure(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group()
    who.add_argument("-p", "--pid", type=int, help="only this process (checked in the kernel)")
    who.add_argument("-c", "--comm", help="only processes with this command name")
    parser.add_argument(
        "-s",
        "--syscall",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="only these system calls (checked in the kernel), e.g. --syscall write getppid",
    )
    parser.add_argument(
        "-x", "--failed", action="store_true", help="only calls that failed (return < 0)"
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        help="seconds to trace (default: until Ctrl-C or --run ends)",
    )
    parser.add_argument(
        "-r",
        "--run",
        metavar="CMD",
        help="shell command to start once tracing; without --pid/--comm it and its "
        "children are what is traced (like strace -f)",
    )
    parser.add_argument(
        "--summary",
        action="store_true",
        help="instead of one line per call, a table of counts and latency (like strace -c)",
    )


def main(args: argparse.Namespace) -> int:
    from ..errors import BadArguments
    from ..session import MAX_DURATION, printer

    if args.pid is not None and not os.path.isdir(f"/proc/{args.pid}"):
        raise BadArguments(f"--pid {args.pid}: no such process")
    duration = args.duration
    on_start = None
    if duration is None and not args.run:
        duration = MAX_DURATION

        def on_start():
            print("tracing system calls; Ctrl-C to stop", file=sys.stderr, flush=True)

    def show(df):
        print("\n".join(map(format_line, df.to_dict("records"))), flush=True)

    result = trace_syscalls(
        pid=args.pid,
        comm=args.comm,
        syscalls=args.syscall,
        failed=args.failed,
        duration=duration,
        run=args.run,
        summary_only=args.summary,
        on_events=None if args.summary else show,
        on_note=printer("note", "stderr"),
        on_warning=printer("warning", "stderr"),
        on_start=on_start,
    )
    if args.summary:
        table = summary_from_totals(result.maps.get("totals"))
        print(summary_text(table))
        status = f"{int(table['calls'].sum())} system calls in {result.duration:.2f} s"
    else:
        status = f"{len(result.events)} system calls in {result.duration:.2f} s"
        lost = result.total_lost
        status += f", LOST {lost} (missing above)" if lost else ", lost 0"
    if result.exit_code is not None:
        status += f"; workload exit code {result.exit_code}"
    print(status, file=sys.stderr)
    if result.output:
        print(f"--- output of {args.run!r} ---\n{result.output}", end="", file=sys.stderr)
    return 0
