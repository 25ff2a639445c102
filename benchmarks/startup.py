"""Start to attached, and maps into DataFrames: ebpfkit against bcc and bpftrace.

One run, one table (issue 13). First, a lesson-sized cell: a tracepoint on
syscalls:sys_enter_getppid that sends a struct event through a ring buffer and counts
calls in a hash map, timed from the start of the run to attached:

  - ebpfkit cold: a new process (ebpfkit and bcc imported) with an empty compile cache
    (its own new XDG_CACHE_HOME), ``Session(CELL).start()``; median of --cold-runs. With
    --baseline REV, the same for ebpfkit as it was at git revision REV,
  - ebpfkit warm: the same cell started again and again in one process (the first run not
    counted); median of --warm-runs. Where ebpfkit keeps no compiled programs, warm is cold,
  - bcc: ``BPF(text=...)``, ``attach_tracepoint`` and ``open_ring_buffer``, the first time
    in a new process (median of --cold-runs) and again and again in one (median of --runs),
  - bpftrace: the whole run of an equivalent one-liner, a process timed from its start to
    its end (it attaches, runs BEGIN, which exits); median of --runs.

Then a hash map of --entries entries (filled from user space through bcc's
``items_update_batch``) turned into a DataFrame: ebpfkit's ``frames.map_frame`` (read in
bulk) against bcc's ``items()`` loop building the same DataFrame; best of --map-runs each.

    sudo .venv/bin/python benchmarks/startup.py
    sudo .venv/bin/python benchmarks/startup.py --baseline 75fe649   # and the path before
    sudo .venv/bin/python benchmarks/startup.py --entries 200000 --warm-runs 5

The whole benchmark runs with XDG_CACHE_HOME set to a temporary folder, removed at the
end: the user's own cache is neither used nor touched. Timing on a shared machine is
noisy: compare the ratios of one run, not absolute times. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The lesson-sized cell, as a %%bpf cell would hold it.
CELL = r"""
struct event { u64 ts; u32 pid; u32 tid; char comm[16]; };
BPF_RINGBUF_OUTPUT(events, 64);
BPF_HASH(calls, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct event e = {};
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.tid = (u32)id;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.ringbuf_output(&e, sizeof(e), 0);
    calls.increment(e.pid);
    return 0;
}
"""
TRACEPOINT = "syscalls:sys_enter_getppid"
# bcc's own way: the same program, a function attached by name.
BCC_FUNCTION = "on_getppid"
BCC_TEXT = CELL.replace(
    "TRACEPOINT_PROBE(syscalls, sys_enter_getppid)", "int on_getppid(void *args)"
)
BPFTRACE = (
    "tracepoint:syscalls:sys_enter_getppid "
    '{ @[comm] = count(); printf("%d %d %s\\n", pid, tid, comm); } '
    "BEGIN { exit(); }"
)

# A fresh process: imports done, then one start to attached (ebpfkit: with the cache it
# was given; bcc: its own BPF(text=) and attach, as bcc_attach below).
COLD_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ebpfkit._bcc import bcc

bcc = bcc()
cell = sys.stdin.read()
if sys.argv[2] == "ebpfkit":
    from ebpfkit.session import Session

    s = Session(cell)
    start = time.perf_counter()
    s.start()
    took = time.perf_counter() - start
    s.close()
else:
    start = time.perf_counter()
    b = bcc.BPF(text=cell, cflags=["-w"])
    b.attach_tracepoint(tp=sys.argv[3], fn_name=sys.argv[4])
    b["events"].open_ring_buffer(lambda ctx, data, size: None)
    took = time.perf_counter() - start
    b.cleanup()
print(json.dumps({"seconds": took}))
"""


# ---------------------------------------------------------------- start to attached


def cold(runs: int, who: str = "ebpfkit", root: Path = REPO) -> float:
    """Median start to attached in fresh processes, each with a new empty cache folder;
    ``root``: where the ebpfkit package imported comes from."""
    if who == "ebpfkit":
        cell, args = CELL, []
    else:
        cell, args = BCC_TEXT, [TRACEPOINT, BCC_FUNCTION]
    times = []
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="ebpfkit-cold-cache-")
        try:
            done = subprocess.run(
                [sys.executable, "-c", COLD_CHILD, str(root), who, *args],
                input=cell,
                capture_output=True,
                text=True,
                env={**os.environ, "XDG_CACHE_HOME": cache},
            )
            if done.returncode:
                raise SystemExit(f"a cold run ({who}, {root}) failed:\n{done.stderr}")
            times.append(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(times)


def package_at(rev: str, folder: str) -> Path:
    """The ebpfkit package as it was at git revision ``rev``, unpacked in ``folder``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "ebpfkit"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder)  # git archive's own output
    return Path(folder)


def ebpfkit_warm(runs: int) -> float:
    from ebpfkit.session import Session

    times = []
    for i in range(runs + 1):
        s = Session(CELL)
        start = time.perf_counter()
        s.start()
        took = time.perf_counter() - start
        s.close()
        if i:  # the first run fills the cache
            times.append(took)
    return statistics.median(times)


def bcc_attach(bcc, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        b = bcc.BPF(text=BCC_TEXT, cflags=["-w"])
        try:
            b.attach_tracepoint(tp=TRACEPOINT, fn_name=BCC_FUNCTION)
            b["events"].open_ring_buffer(lambda ctx, data, size: None)
            times.append(time.perf_counter() - start)
        finally:
            b.cleanup()
    return statistics.median(times)


def bpftrace_run(runs: int) -> float | None:
    if shutil.which("bpftrace") is None:
        return None
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["bpftrace", "-e", BPFTRACE], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- a big map into a DataFrame


def bcc_items_frame(table):
    """The DataFrame map_frame makes of a u32 -> u64 hash, as bcc's documented loop makes it."""
    import pandas as pd

    df = pd.DataFrame([(k.value, v.value) for k, v in table.items()], columns=["key", "value"])
    return df.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)


def map_to_frame(bcc, entries: int, runs: int) -> tuple[float, float, bool]:
    """Best seconds of ebpfkit and of bcc's loop, and whether their tables are equal."""
    import numpy as np
    import pandas as pd

    from ebpfkit import frames

    b = bcc.BPF(text=f"BPF_HASH(big, u32, u64, {entries});", cflags=["-w"])
    try:
        table = b["big"]
        rng = np.random.default_rng(13)
        keys = rng.choice(2**32, entries, replace=False).astype(np.uint32)
        values = rng.integers(1, 10_000, entries, dtype=np.uint64)  # ties, as counts have
        table.items_update_batch(
            (table.Key * entries).from_buffer(keys), (table.Leaf * entries).from_buffer(values)
        )
        ncpus = len(bcc.utils.get_possible_cpus())
        ours, theirs = [], []
        for _ in range(runs):
            start = time.perf_counter()
            df = frames.map_frame(table, frames.HASH, ncpus)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            reference = bcc_items_frame(table)
            theirs.append(time.perf_counter() - start)
        try:
            pd.testing.assert_frame_equal(df, reference)
            same = len(df) == entries
        except AssertionError:
            same = False
        return min(ours), min(theirs), same
    finally:
        b.cleanup()


# ---------------------------------------------------------------- the table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cold-runs", type=int, default=3, help="fresh processes for cold")
    p.add_argument("--warm-runs", type=int, default=10, help="re-runs for warm")
    p.add_argument("--runs", type=int, default=5, help="runs of bcc and of bpftrace")
    p.add_argument("--entries", type=int, default=1_000_000, help="entries of the hash map")
    p.add_argument("--map-runs", type=int, default=3, help="runs of each map reader")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also time ebpfkit cold as it was at this git revision (75fe649: the last "
        "one compiling in the notebook's own process)",
    )
    a = p.parse_args()

    cache = tempfile.mkdtemp(prefix="ebpfkit-bench-cache-")
    os.environ["XDG_CACHE_HOME"] = cache  # before ebpfkit is imported: it is where it looks
    try:
        from ebpfkit._bcc import bcc as load_bcc

        bcc = load_bcc()
        m = {"cold": cold(a.cold_runs), "before": None}
        if a.baseline:
            with tempfile.TemporaryDirectory() as tree:
                m["before"] = cold(a.cold_runs, root=package_at(a.baseline, tree))
        m["warm"] = ebpfkit_warm(a.warm_runs)
        m["bcc cold"] = cold(a.cold_runs, "bcc")
        m["bcc"] = bcc_attach(bcc, a.runs)
        m["bpftrace"] = bpftrace_run(a.runs)
        m["map"], m["bcc map"], m["same"] = map_to_frame(bcc, a.entries, a.map_runs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    report(a, m)


def report(a, m: dict) -> None:
    import pandas as pd

    n, whole = a.cold_runs, m["bpftrace"]
    attach = [
        (f"ebpfkit cold: new process, empty cache (median of {n})", m["cold"]),
        (f"ebpfkit at {a.baseline} cold: new process (median of {n})", m["before"]),
        (f"ebpfkit warm: same process (median of {a.warm_runs})", m["warm"]),
        (f"bcc BPF(text=) + attach: new process (median of {n})", m["bcc cold"]),
        (f"bcc BPF(text=) + attach: same process (median of {a.runs})", m["bcc"]),
        (f"bpftrace, the whole run (median of {a.runs})", whole),
    ]
    maps = [
        (f"ebpfkit frames.map_frame (best of {a.map_runs})", m["map"]),
        (f"bcc items() loop, the same DataFrame (best of {a.map_runs})", m["bcc map"]),
    ]
    rows = [
        {
            "part": "start to attached",
            "contender": name,
            "seconds": s,
            "/ bpftrace": s / whole if whole else None,
        }
        for name, s in attach
        if s is not None
    ] + [
        {"part": "map -> DataFrame", "contender": name, "seconds": s, "/ ebpfkit": s / m["map"]}
        for name, s in maps
    ]
    table = pd.DataFrame(rows, columns=["part", "contender", "seconds", "/ bpftrace", "/ ebpfkit"])
    print(
        f"a lesson-sized cell ({TRACEPOINT}: a struct event through a ring buffer, a hash "
        f"map), and a {a.entries:,}-entry hash map (u32 -> u64)\n"
    )
    with pd.option_context("display.width", 160, "display.max_colwidth", 70):
        print(
            table.set_index(["part", "contender"]).to_string(
                float_format=lambda v: f"{v:,.3f}", na_rep="-"
            )
        )

    warm = m["warm"]
    print("\ntargets (ratios from this run):")
    ok(f"warm start to attached = {warm * 1000:.0f} ms", warm <= 0.05, "<= 50 ms")
    if whole:
        ok(f"warm / bpftrace's whole run = {warm / whole:.2f}", warm <= whole / 4, "<= 0.25")
    else:
        print("  [skip] warm / bpftrace's whole run: bpftrace is not installed")
    if m["before"] is not None:
        ratio = m["cold"] / m["before"]
        ok(f"cold / cold at {a.baseline} = {ratio:.2f}", ratio <= 1.1, "<= 1.10")
    speedup = m["bcc map"] / m["map"]
    ok(f"map -> DataFrame vs bcc's items() loop = {speedup:.1f}x", speedup >= 10, ">= 10x")
    ok("map -> DataFrame: the same table as bcc's loop", m["same"], "equal")


def ok(what: str, good: bool, target: str) -> None:
    print(f"  [{'met ' if good else 'MISS'}] {what} (target {target})")


if __name__ == "__main__":
    main()
