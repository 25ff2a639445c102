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
import contextlib
import os
import signal
import subprocess
import sys
import time

from .. import tools
from ..errors import BadArguments
from ..session import MAX_DURATION, WORKLOAD_LIMIT, Session

HELP = "sample every CPU at F Hz: samples per CPU, top commands and stacks"
PROGRAM = "cpu_sample.c"


def online_cpus() -> list[int]:
    """The online CPUs, from /sys/devices/system/cpu/online ("0-3,6")."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


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

    from .. import plots

    if samples is None or not len(samples):
        return pd.DataFrame(columns=["stack", "samples"])
    return plots.folded(samples).rename(columns={"count": "samples"})


def folded_text(folded) -> str:
    """Folded stacks as flamegraph.pl, speedscope and inferno read them: ``stack count``."""
    from .. import plots

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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def sample(hz: int, duration: float | None, run: str | None):
    """Sample; return (TraceResult, workload still running when its stacks were read)."""
    if not 1 <= hz <= 100_000:
        raise BadArguments(f"-F {hz}: the frequency must be between 1 and 100000 Hz")
    limit = duration if duration is not None else (WORKLOAD_LIMIT if run else 5.0)
    if not 0 < limit <= MAX_DURATION:
        raise BadArguments(f"duration must be between 0 and {MAX_DURATION:.0f} seconds")
    session = Session(
        tools.bpf_source(PROGRAM),
        perf=f"cpu-clock:{hz}",
        on_warning=lambda text: print(f"warning: {text}", file=sys.stderr),
        on_note=lambda text: print(f"note: {text}", file=sys.stderr),
    )
    proc = None
    with session:
        # The workload is ours, not the session's: it must outlive collect(), where
        # its user stacks are turned into names through /proc/PID/maps.
        start = time.monotonic()
        try:
            if run:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", run], stdin=subprocess.DEVNULL, start_new_session=True
                )
            stopped_by = "duration"
            try:
                while time.monotonic() - start < limit:
                    if proc is not None and proc.poll() is not None:
                        stopped_by = "workload exit"
                        break
                    time.sleep(min(0.05, max(0.0, limit - (time.monotonic() - start))))
            except KeyboardInterrupt:
                stopped_by = "interrupt"
            session.detach()
            elapsed = time.monotonic() - start
            alive = proc is not None and proc.poll() is None
            result = session.collect()
        finally:
            if proc is not None:
                _stop(proc)
    result.duration = elapsed
    result.stopped_by = stopped_by
    if proc is not None:
        result.exit_code = proc.returncode
    return result, alive


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
    print(report(result, args.frequency, args.top, alive))
    if args.run and not alive:
        print(
            "note: the workload had exited before its stacks were read, so its user-space "
            "frames show as [unknown]; give -d shorter than its run time to see them",
            file=sys.stderr,
        )
    if args.folded:
        with open(args.folded, "w") as f:
            f.write(folded_text(folded_stacks(result.maps.get("samples"))))
        print(f"folded stacks written to {args.folded}")
    return 0
