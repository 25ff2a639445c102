"""--workload-only keeps a workload process's whole life, to its very last event.

A process leaves the CPU for the last time after sched_process_exit, in the zombie state:
the scope must still hold it then (it is removed when the task is freed), or lesson 06's
"every process leaves the CPU at least once: when it exits" is not seen under -W.
"""

from __future__ import annotations

import subprocess

from helpers import needs_root

from ebpfkit.session import trace

SWITCHES = """
struct sw { u32 pid; s64 state; };
BPF_RINGBUF_OUTPUT(switches, 64);
TRACEPOINT_PROBE(sched, sched_switch) {
    struct sw e = {.pid = args->prev_pid, .state = args->prev_state};
    switches.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
"""
EXITED = 0x10 | 0x20  # TASK_DEAD's exit states: X (nobody waits), Z (a zombie until reaped)


@needs_root
def test_each_workload_process_is_seen_leaving_the_cpu_for_the_last_time():
    decoy = subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.05; done"])
    try:
        r = trace(
            SWITCHES,
            comm="sleep",
            workload_only=True,
            run="sleep 0.1 & echo pid=$!; wait; sleep 0.1 & echo pid=$!; wait",
            cache=False,
        )
    finally:
        decoy.kill()
        decoy.wait()
    pids = {int(line[4:]) for line in r.output.split() if line.startswith("pid=")}
    events = r.events
    assert set(events["pid"]) == pids, events  # the two sleeps, none of the decoy's
    last = events.groupby("pid")["state"].last()
    assert (last & EXITED).all(), last
