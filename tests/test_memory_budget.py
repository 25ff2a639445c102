"""A trace's memory: bounded by its DataFrame, and by a budget it keeps (issue 14).

Each trace runs in a child process of its own, so that the peak it reports
(VmHWM of /proc/self/status, reset through /proc/self/clear_refs once the program
is compiled and attached) is the trace's own: reading, decoding into columns, spilling
and building the final DataFrame. The workload is a C loop calling getppid(); the
program sends a 16-byte event per call through a ring buffer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import needs_root

pytestmark = needs_root

COMM = "ebpfkit-memory"
CHILD = textwrap.dedent(
    r'''
    import json, sys
    from ebpfkit.session import Session

    PROGRAM = """
    struct event { u64 ts; u32 pid; u32 seq; };
    BPF_RINGBUF_OUTPUT(events, 4096);
    BPF_ARRAY(produced, u64, 1);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        int zero = 0;
        u64 *count = produced.lookup(&zero);
        if (!count) return 0;
        struct event e = {};
        e.seq = __sync_fetch_and_add(count, 1);
        e.ts = bpf_ktime_get_ns();
        e.pid = bpf_get_current_pid_tgid() >> 32;
        events.ringbuf_output(&e, sizeof(e), 0);
        return 0;
    }
    """

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    workload, comm, budget, action = sys.argv[1:5]
    session = Session(PROGRAM, comm=comm, memory_budget=budget, on_budget=action)
    with session:
        import pandas  # noqa: F401  (loaded before the measure starts)

        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM starts again from the current RSS
        r = session.run(workload=workload)
    peak = status("VmHWM")
    df = r.events
    seq = df.seq.to_numpy().astype("i8")
    print(json.dumps({
        "base": base, "peak": peak, "frame": int(df.memory_usage(index=False, deep=True).sum()),
        "rows": len(df), "received": r.received["events"], "lost": r.lost["events"],
        "produced": int(r.maps["produced"].value.iloc[0]), "stopped_by": r.stopped_by,
        "spilled": r.spilled, "budget": r.memory_budget, "warnings": r.warnings,
        "notes": r.notes, "in_order": bool((seq[1:] > seq[:-1]).all()),
        "columns": list(df.columns), "ts": str(df.ts.dtype),
    }))
    '''
)
# What a trace may take beyond 1.5 times its DataFrame: the reader's copies of the
# buffer, a chunk per column, Parquet's buffers.
FIXED = 64 << 20
CALLS = 2_000_000


@pytest.fixture(scope="module")
def loop(getppid_loop):
    """The workload, named COMM: append the number of calls."""
    return f"{getppid_loop} {COMM}"


def traced(loop: str, budget: str, action: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, f"{loop} {CALLS}", COMM, budget, action],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The trace's own peak, within 1.5 times its DataFrame and a fixed amount.
    grew = out["peak"] - out["base"]
    assert grew <= 1.5 * out["frame"] + FIXED, out
    assert out["rows"] == out["received"] > 0
    assert out["in_order"], "records out of order or twice"
    assert out["columns"] == ["ts", "pid", "seq"] and out["ts"].startswith("datetime64")
    return out


def test_a_trace_within_its_budget_holds_its_frame_once(loop):
    out = traced(loop, "50%", "stop")
    assert out["stopped_by"] == "workload exit"
    assert out["received"] + out["lost"] == out["produced"] == CALLS
    assert out["spilled"] == 0 and not out["warnings"]
    assert out["frame"] >= 16 * out["rows"]


def test_at_its_budget_a_trace_stops_and_says_why(loop):
    budget = 8 << 20  # 8 MiB: half a million 16-byte events, of 2,000,000
    out = traced(loop, str(budget), "stop")
    assert out["budget"] == budget
    assert out["stopped_by"] == "memory budget"
    assert out["received"] + out["lost"] == out["produced"] < CALLS
    # What it kept: the budget's worth, and at most what the buffer still held (16 MiB).
    assert budget // 2 <= out["frame"] <= budget + (16 << 20)
    assert any("stopped at its memory budget of 8.0 MiB" in w for w in out["warnings"])


def test_at_its_budget_a_trace_spills_to_disk_and_goes_on(loop):
    budget = 8 << 20
    out = traced(loop, str(budget), "spill")
    assert out["stopped_by"] == "workload exit"
    assert out["spilled"] > 0
    assert out["received"] + out["lost"] == out["produced"] == CALLS
    assert out["frame"] > budget  # more than the budget, in one DataFrame
    assert any("spilled to disk (Parquet)" in n for n in out["notes"])
