"""``ebpfkit perf``: sample every CPU with a timer; samples per CPU, per command, per stack.

Attaches ``bpf/cpu_sample.c`` to the software perf event ``cpu-clock`` at
``-F`` Hz on every online CPU, then prints the samples per CPU against the
number a sampler that never missed a tick would take ("% of expected
samples"), the commands seen most, and the most sampled stacks, folded
(``command;user frames;kernel frames``, root first), as flame graph tools read
them (``--folded FILE`` writes them all)::

    ebpfkit perf -d 2
    ebpfkit perf -F 99 -d 3 --run "taskset -c 0 ./busy" --folded busy.folded

A ``--run`` command is stopped when sampling ends, after its stacks are read:
user-space addresses become names only while the process (its memory map) is
still there.
"""

from __future__ import annotations

import argparse
import signal

from .. import plots, tools
from ..cpus import online_cpus
from ..errors import BadArguments
from ..session import WORKLOAD_LIMIT, Session, check_duration, printer

# pandas is imported where a table is made: `ebpfkit --help` imports every tool.

HELP = "sample every CPU at F Hz: samples per CPU, top commands and stacks"
PROGRAM = "cpu_sample.c"


def cpu_table(cpu_samples, hz: int, seconds: float, cpus: list[int] | None = None):
    """Samples per CPU, the number expected (hz x seconds), and the percentage."""
    import pandas as pd

    counts = {}
    if cpu_samples is not None and len(cpu_samples):
        counts = {int(k): int(v) for k, v in zip(cpu_samples["key"], cpu_samples["value"])}
    cpus = sorted(set(cpus if cpus is not None else online_cpus()) | set(counts))
    expected = hz * seconds
    rows = [
        {
            "cpu": cpu,
            "samples": counts.get(cpu, 0),
            "expected": round(expected),
            "% of expected samples": round(100.0 * counts.get(cpu, 0) / expected, 1),
        }
        for cpu in cpus
    ]
    return pd.DataFrame(rows, columns=["cpu", "samples", "expected", "% of expected samples"])


def folded_stacks(samples):
    """The ``samples`` map as folded stacks: one row per distinct stack, most sampled first.

    A stack is ``command;user frames;kernel frames``, root first, leaf last: the
    user part is where the program was, the kernel part (when the timer fired in
    the kernel) what the kernel was doing for it (``ebpfkit.plots.folded``).
    """
    import pandas as pd

    if samples is None or not len(samples):
        return pd.DataFrame(columns=["stack", "samples"])
    return plots.folded(samples).rename(columns={"count": "samples"})


def folded_text(folded) -> str:
    """Folded stacks as flamegraph.pl, speedscope and inferno read them: ``stack count``."""
    return plots.folded_text(folded)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-F",
        "--frequency",
        type=int,
        default=99,
        metavar="HZ",
        help="samples per second on each CPU (default 99)",
    )
    parser.add_argument(
        "-d",
        "--duration",
        type=float,
        help=f"seconds to sample (default 5; with --run, until it exits, at most "
        f"{WORKLOAD_LIMIT:.0f})",
    )
    parser.add_argument(
        "-r",
        "--run",
        metavar="CMD",
        help="shell command started once the samplers are attached, stopped when sampling "
        "ends (after its stacks are read)",
    )
    parser.add_argument("--top", type=int, default=10, help="rows of each table (default 10)")
    parser.add_argument("--folded", metavar="FILE", help="write every folded stack to FILE")


def sample(hz: int, duration: float | None, run: str | None):
    """Sample; return (TraceResult, workload still running when its stacks were read).

    ``Session.run`` keeps the workload alive until the stacks are read (user-space
    addresses become names through its memory map), then stops its process group.
    """
    if not 1 <= hz <= 100_000:
        raise BadArguments(f"-F {hz}: the frequency must be between 1 and 100000 Hz")
    check_duration(duration)
    session = Session(
        tools.bpf_source(PROGRAM),
        perf=f"cpu-clock:{hz}",
        on_warning=printer("warning", "stderr"),
        on_note=printer("note", "stderr"),
    )
    with session:
        result = session.run(duration=duration, workload=run)
    return result, _was_running(result)


def _was_running(result) -> bool:
    """Whether the workload was still there when sampling ended: it did not end the trace,
    and its end came from the signal that stopped it, not from an exit of its own."""
    if result.exit_code is None or result.stopped_by == "workload exit":
        return False
    return -result.exit_code in (signal.SIGTERM, signal.SIGKILL)


def _workload_line(result, alive: bool) -> str:
    if alive:
        return "workload stopped when sampling ended (after its stacks were read)"
    return f"workload exit code {result.exit_code}"


def report(result, hz: int, top: int, alive: bool = False) -> str:
    cpus = cpu_table(result.maps.get("cpu_samples"), hz, result.duration)
    samples = result.maps.get("samples")
    total = int(cpus["samples"].sum())
    lines = [
        f"perf cpu-clock at {hz} Hz on {len(cpus)} CPUs for {result.duration:.2f} s "
        f"(stopped by {result.stopped_by}): {total} samples",
        "",
        f"{'CPU':>4}  {'SAMPLES':>8}  {'EXPECTED':>8}  % OF EXPECTED SAMPLES",
    ]
    for row in cpus.itertuples(index=False):
        lines.append(f"{row[0]:>4}  {row[1]:>8}  {row[2]:>8}  {row[3]:>20.1f}")
    if samples is not None and len(samples):
        by_comm = (
            samples.groupby(["pid", "comm"], as_index=False)["value"]
            .sum()
            .sort_values(["value", "pid"], ascending=[False, True])
            .head(top)
        )
        lines += ["", "TOP COMMANDS", f"{'PID':>7}  {'COMM':<16}  {'SAMPLES':>8}  {'%':>6}"]
        for row in by_comm.itertuples(index=False):
            share = 100.0 * row.value / total if total else 0.0
            lines.append(f"{row.pid:>7}  {row.comm:<16}  {row.value:>8}  {share:>6.1f}")
        folded = folded_stacks(samples).head(top)
        lines += ["", "TOP STACKS (command;user frames;kernel frames)", f"{'SAMPLES':>8}  STACK"]
        for stack, n in zip(folded["stack"], folded["samples"]):
            lines.append(f"{n:>8}  {stack}")
    if result.exit_code is not None:
        lines += ["", _workload_line(result, alive)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    result, alive = sample(args.frequency, args.duration, args.run)
    if result.output:  # what the workload wrote, then the report
        print(result.output, end="" if result.output.endswith("\n") else "\n")
    print(report(result, args.frequency, args.top, alive))
    if args.run and not alive:
        printer("note", "stderr")(
            "the workload had exited before its stacks were read, so its user-space "
            "frames show as [unknown]; give -d shorter than its run time to see them"
        )
    if args.folded:
        with open(args.folded, "w") as f:
            f.write(folded_text(folded_stacks(result.maps.get("samples"))))
        print(f"folded stacks written to {args.folded}")
    return 0
