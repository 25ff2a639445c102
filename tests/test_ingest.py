"""Events from the kernel's buffers into DataFrames, in bulk, with every loss counted.

A small C program calls getppid() a known number of times; a tracepoint program sends
one record per call, numbered by an in-kernel counter (``produced``), through a ring
buffer or a perf buffer. What arrives is checked record by record: every number once,
in order within each CPU's stream, fields decoded right; and what did not arrive is
counted, so that received + lost == produced exactly, even with a one-page buffer.
No timing is asserted: ``benchmarks/ingest.py`` measures speed.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import needs_root

from ebpfkit.ringbuf import RingReader
from ebpfkit.session import Session

pytestmark = needs_root

COMM = "ebpfkit-ingest"

# {decl}: the buffer; {send}: how a record of {size} bytes is sent through it.
PROGRAM = """
struct event { u64 ts; u32 pid; u32 seq; u32 cpu; char comm[16]; };
{decl}
BPF_ARRAY(produced, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int zero = 0;
    u64 *count = produced.lookup(&zero);
    if (!count) return 0;
    struct event e = {};
    e.seq = __sync_fetch_and_add(count, 1);
    e.ts = bpf_ktime_get_ns();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    e.cpu = bpf_get_smp_processor_id();
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    {send}
    return 0;
}
"""
SENDS = {
    "ring": ("BPF_RINGBUF_OUTPUT(events, {pages});", "events.ringbuf_output(&e, {size}, 0);"),
    "perf": ("BPF_PERF_OUTPUT(events);", "events.perf_submit(args, &e, {size});"),
}
# Records shorter than the struct: only ts and pid (the rest arrives as zeros).
SHORT = 12


def program(kind: str, pages: int = 1024, size: str = "sizeof(e)") -> str:
    decl, send = SENDS[kind]
    return PROGRAM.replace("{decl}", decl.format(pages=pages)).replace(
        "{send}", send.format(size=size)
    )


@pytest.fixture(scope="module")
def loop(getppid_loop):
    """The workload, named COMM: append the number of calls."""
    return f"{getppid_loop} {COMM}"


def run(source: str, workload: str, **options):
    with Session(source, comm=COMM, **options) as s:
        result = s.run(workload=workload)
    produced = int(result.maps["produced"].value.iloc[0])
    return result, produced


def check_records(df, produced: int) -> None:
    """Every record a distinct call, in order within each CPU, fields as the kernel set them."""
    seq = df.seq.to_numpy()
    assert len(np.unique(seq)) == len(seq), "a record arrived twice"
    assert seq.max(initial=0) < produced
    for cpu, group in df.groupby("cpu", observed=True):
        assert (np.diff(group.seq.to_numpy().astype(np.int64)) > 0).all(), f"CPU {cpu} out of order"
    assert str(df.comm.dtype) == "category"
    assert set(df.comm) == {COMM}
    assert df.pid.nunique() == 1


@pytest.mark.parametrize("kind", list(SENDS))
def test_a_burst_arrives_whole_and_in_order(loop, kind):
    result, produced = run(program(kind), f"{loop} 200000")
    df = result.channels["events"]
    assert produced >= 200_000
    assert result.received["events"] + result.lost["events"] == produced
    check_records(df, produced)
    assert len(df) == result.received["events"]
    assert list(df.columns) == ["ts", "pid", "seq", "cpu", "comm"]
    assert str(df.ts.dtype).startswith("datetime64")


@pytest.mark.parametrize("kind", list(SENDS))
def test_a_moderate_burst_loses_nothing_with_the_default_buffer(loop, kind):
    result, produced = run(program(kind), f"{loop} 50000")
    assert result.lost == {"events": 0}
    assert result.received["events"] == produced >= 50_000
    assert sorted(result.events.seq) == list(range(produced))


@pytest.mark.parametrize("kind", list(SENDS))
def test_a_one_page_buffer_counts_every_loss(loop, kind):
    result, produced = run(program(kind, pages=1), f"{loop} 200000", perf_pages=1)
    received, lost = result.received["events"], result.lost["events"]
    assert lost > 0, "a one-page buffer kept up with 200,000 records: the test proves nothing"
    assert received > 0
    assert received + lost == produced
    check_records(result.channels["events"], produced)


def test_ring_records_that_wrap_past_the_end_are_read_whole(loop):
    # One page of data, 48-byte slots (8 header + 40 record): 4096 is no multiple of 48,
    # so once more than 85 records have passed, records straddle the end of the area.
    result, produced = run(program("ring", pages=1), f"{loop} 200000")
    stride = RingReader.stride(40)
    assert 4096 % stride != 0
    assert result.received["events"] * stride > 4 * 4096
    check_records(result.events, produced)
    assert result.received["events"] + result.lost["events"] == produced


@pytest.mark.parametrize("kind", list(SENDS))
def test_short_records_among_full_ones_are_padded_with_zeros(loop, kind):
    # Every other record sends only ts and pid: runs of two record sizes.
    size = f"(e.seq & 1) ? {SHORT} : sizeof(e)"
    result, produced = run(program(kind, size=size), f"{loop} 20000")
    df = result.events
    assert result.received["events"] + result.lost["events"] == produced
    assert result.lost["events"] == 0
    full, short = df[df.comm == COMM], df[df.comm != COMM]
    assert len(full) == len(short) == produced // 2
    assert (full.seq % 2 == 0).all()
    assert (short.seq == 0).all() and (short.cpu == 0).all() and set(short.comm) == {""}
    assert (short.pid == full.pid.iloc[0]).all()  # the first 12 bytes did arrive


@pytest.mark.parametrize("kind", list(SENDS))
def test_max_events_keeps_exactly_that_many(loop, kind):
    with Session(program(kind), comm=COMM, max_events=1000) as s:
        result = s.run(workload=f"{loop} 200000")
    assert len(result.events) == 1000
    assert result.stopped_by == "max events"
    assert result.received["events"] == 1000


def test_recent_shows_the_last_records_while_tracing(loop):
    seen = []

    def progress(s, _elapsed):
        channel = s.channels[0]
        if channel.received >= 100 and len(seen) < 3:
            seen.append((channel.received, channel.recent(10, s.wall_offset)))

    with Session(program("ring"), comm=COMM) as s:
        s.run(workload=f"{loop} 300000", progress=progress)
    assert seen, "no progress call saw 100 records"
    for received, df in seen:
        assert len(df) == 10
        seq = df.seq.to_numpy().astype(np.int64)
        assert (np.diff(seq) == 1).all()  # one thread on a shared ring: consecutive
        assert seq[-1] >= received - 1  # the newest: losses only make the number larger
        assert set(df.comm) == {COMM}


def test_nothing_stays_mapped(loop):
    def mapped():
        with open("/proc/self/maps") as f:
            return sum("bpf-map" in line or "perf_event" in line for line in f)

    before = mapped()
    for kind in SENDS:
        run(program(kind), f"{loop} 1000")
    assert mapped() == before
