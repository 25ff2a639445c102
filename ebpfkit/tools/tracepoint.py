"""``ebpfkit tracepoint CATEGORY:EVENT``: who hits a tracepoint, and what it carries.

Attaches ``count_hits`` of ``bpf/sched_switch.c`` to any tracepoint and prints
the hits per process; ``--fields`` prints the tracepoint's record layout (its
``events/CATEGORY/EVENT/format`` file) instead of tracing::

    ebpfkit tracepoint sched:sched_switch --fields
    ebpfkit tracepoint syscalls:sys_enter_openat --run "cat /etc/hostname"
    ebpfkit tracepoint sched:sched_switch -d 1 --top 5
"""

from __future__ import annotations

import argparse

from .. import kinds, probes, tools
from ..session import WORKLOAD_LIMIT, Session, printer

HELP = "count hits of a tracepoint per process, or show its fields (--fields)"
PROGRAM = "sched_switch.c"


def configure(parser: argparse.ArgumentParser) -> None:
    form = kinds.get("tracepoint").form  # CATEGORY:EVENT
    parser.add_argument("tracepoint", metavar=form, help="e.g. sched:sched_switch")
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        help=f"seconds to trace (default 5; with --run, until it exits, at most "
        f"{WORKLOAD_LIMIT:.0f})",
    )
    parser.add_argument("-r", "--run", metavar="CMD", help="shell command started once attached")
    parser.add_argument("-p", "--pid", type=int, help="count only this process")
    parser.add_argument("-c", "--comm", help="count only processes with this command name")
    parser.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    parser.add_argument(
        "--fields", action="store_true", help="print the tracepoint's fields and exit"
    )


def fields_text(name: str) -> str:
    """The fields of tracepoint ``name`` as a table, from its format file."""
    category, event = probes.check_tracepoint(name).split(":", 1)
    rows = probes.tracepoint_fields(category, event)
    width = max([len("FIELD")] + [len(f["name"]) for f in rows])
    twidth = max([len("TYPE")] + [len(f["type"]) for f in rows])
    lines = [
        f"tracepoint {category}:{event}: fields of events/{category}/{event}/format",
        f"{'FIELD':<{width}}  {'TYPE':<{twidth}}  OFFSET  SIZE  SIGNED",
    ]
    for f in rows:
        lines.append(
            f"{f['name']:<{width}}  {f['type']:<{twidth}}  {f['offset']:>6}  {f['size']:>4}  "
            f"{'yes' if f['signed'] else 'no':>6}" + ("  (common header)" if f["common"] else "")
        )
    return "\n".join(lines)


def hits_text(name: str, result, top: int, kind: str = "tracepoint") -> str:
    """The total and the hits per process, most first (``ebpfkit usdt`` prints the same)."""
    hits = result.maps.get("hits")
    total = int(hits["value"].sum()) if hits is not None and len(hits) else 0
    lines = [
        f"{kind} {name}: {total} hits in {result.duration:.2f} s (stopped by {result.stopped_by})"
    ]
    if total:
        lines.append(f"{'PID':>7}  {'COMM':<16}  {'HITS':>9}")
        shown = hits.sort_values(["value", "pid"], ascending=[False, True]).head(top)
        for row in shown.itertuples():
            lines.append(f"{row.pid:>7}  {row.comm:<16}  {row.value:>9}")
        if len(hits) > top:
            rest = int(hits["value"].sum() - shown["value"].sum())
            lines.append(f"{'':>7}  {f'({len(hits) - top} more)':<16}  {rest:>9}")
    if result.exit_code is not None:
        lines.append(f"workload exit code {result.exit_code}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    name = probes.check_tracepoint(args.tracepoint)
    if args.fields:
        print(fields_text(name))
        return 0
    session = Session(
        tools.bpf_source(PROGRAM),
        tracepoint=f"{name}=count_hits",
        pid=args.pid,
        comm=args.comm,
        on_warning=printer("warning", "stderr"),
        on_note=printer("note", "stderr"),
    )
    duration = args.duration if args.duration is not None else (None if args.run else 5.0)
    with session:
        result = session.run(duration=duration, workload=args.run)
    print(hits_text(name, result, args.top))
    if result.output.strip():
        out = result.output.rstrip().splitlines()
        print(f"workload output ({len(out)} lines{', last 20' if len(out) > 20 else ''}):")
        print("\n".join(out[-20:]))
    return 0
