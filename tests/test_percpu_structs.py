"""Per-CPU maps whose value is a struct: one row per key and CPU, the struct's fields as columns.

A per-CPU map of numbers is one row per key (``cpu0``, ``cpu1``... and their sum
``value``); a struct has no sum, so its map is a row per key and CPU. These maps are
filled by real programs on the real kernel, traced with ``ebpfkit.trace``, read in bulk
by mapread.py, and shown by the live view's map text and panel.
"""

from __future__ import annotations

import ctypes as ct
import subprocess

import numpy as np
import pandas as pd
import pytest
from helpers import needs_root

import ebpfkit
from ebpfkit import frames, live, mapread
from ebpfkit._bcc import bcc as get_bcc

pytestmark = needs_root

CALLS = 3000
# Lesson 12's scratch space: a struct too big for the stack, one per CPU.
SCRATCH = r"""
struct big { u64 count; char text[1024]; };
BPF_PERCPU_ARRAY(scratch, struct big, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    int zero = 0;
    struct big *b = scratch.lookup(&zero);
    if (!b)
        return 0;
    b->count++;
    b->text[0] = 'h';
    b->text[1] = 'i';
    return 0;
}
"""


@pytest.fixture(scope="module")
def bcc():
    return get_bcc()


@pytest.fixture
def ncpus(bcc) -> int:
    return len(bcc.utils.get_possible_cpus())


@pytest.fixture(scope="module")
def traced(getppid_loop):
    """The scratch map of a trace scoped to a workload that calls getppid() CALLS times."""
    return ebpfkit.trace(
        SCRATCH,
        run=f"{getppid_loop} pcstruct {CALLS}",
        workload_only=True,
        comm="pcstruct",  # the workload's shell calls getppid() too
        cache=False,
    )


def test_a_traced_per_cpu_map_of_structs_is_a_row_per_cpu(traced, ncpus):
    df = traced.maps["scratch"]
    assert list(df.columns) == ["key", "cpu", "count", "text"]
    assert df.key.tolist() == [0] * ncpus and df.cpu.tolist() == list(range(ncpus))
    assert int(df["count"].sum()) == CALLS  # every call counted once, on its CPU
    ran = df[df["count"] > 0]
    assert len(ran) >= 1 and set(ran.text) == {"hi"}
    assert (df[df["count"] == 0].text == "").all()


def test_the_live_views_show_it(traced):
    text = live.maps_text(traced.maps)
    assert text.startswith("scratch (") and "hi" in text and "cpu" in text
    html = live.maps_html(traced.maps)
    assert "<b>scratch</b>" in html and "<td>hi</td>" in html


def test_the_live_panel_reads_it_while_tracing(getppid_loop, ncpus):
    with ebpfkit.Session(SCRATCH, cache=False) as s:
        subprocess.run([getppid_loop, "pcstruct", "100"], check=True)
        now = s.maps_now()
        assert "hi" in live.maps_text(now)
        assert now["scratch"].cpu.tolist() == list(range(ncpus))
        assert int(now["scratch"]["count"].sum()) >= 100


# Two value layouts: one numpy cuts into columns (a bitfield, a number array), one it
# cannot (an array of structs: read entry by entry through ctypes).
STRUCTS = r"""
struct key { u32 pid; char comm[16]; };
struct val { u64 n; u32 low : 4; u32 high : 28; u16 small[3]; char tag[6]; };
struct pair { u32 a; u32 b; };
struct odd { struct pair pairs[2]; u64 n; };
BPF_PERCPU_HASH(by_key, struct key, struct val, 64);
BPF_PERCPU_ARRAY(odd, struct odd, 4);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct key k = {};
    k.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    if (k.comm[0] != 'p' || k.comm[1] != 'c')
        return 0;
    struct val zero = {}, *v = by_key.lookup_or_try_init(&k, &zero);
    if (v) {
        v->n++;
        v->low = 9;
        v->high = 1000;
        v->small[2] = 7;
        v->tag[0] = 'o';
        v->tag[1] = 'k';
    }
    int i = 2;
    struct odd *o = odd.lookup(&i);
    if (o) {
        o->n++;
        o->pairs[1].b = 5;
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def filled(bcc, getppid_loop):
    b = bcc.BPF(text=STRUCTS, cflags=["-w"])
    try:
        subprocess.run([getppid_loop, "pcfilled", "500"], check=True)
        b.detach_tracepoint(b"syscalls:sys_enter_getppid")
        yield b
    finally:
        b.cleanup()


def test_mapread_reads_each_cpus_struct(filled, ncpus):
    data = mapread.read(filled["by_key"])
    assert data.percpu and data.values.shape == (1, ncpus)
    assert data.value_type is filled["by_key"].sLeaf
    # A bitfield has no numpy dtype: each CPU's struct is its bytes, in its own slot.
    assert data.values.dtype.itemsize == ct.sizeof(data.value_type)
    each = [data.value_type.from_buffer_copy(data.values[0, c].tobytes()) for c in range(ncpus)]
    assert sum(v.n for v in each) == 500
    assert {(v.low, v.high, v.tag) for v in each if v.n} == {(9, 1000, b"ok")}
    assert bytes(data.keys["comm"][0]).rstrip(b"\0") == b"pcfilled"


def test_a_struct_key_and_a_struct_with_bitfields(filled, ncpus):
    df = frames.map_frame(filled["by_key"], frames.PERCPU_HASH, ncpus)
    assert list(df.columns) == ["pid", "comm", "cpu", "n", "low", "high", "small", "tag"]
    assert df.cpu.tolist() == list(range(ncpus)) and set(df.comm) == {"pcfilled"}
    assert int(df.n.sum()) == 500
    ran = df[df.n > 0]
    assert set(ran.low) == {9} and set(ran.high) == {1000} and set(ran.tag) == {"ok"}
    assert all(s == [0, 0, 7] for s in ran.small)
    # The same rows as through ctypes, entry by entry.
    by_row = pd.DataFrame(frames._ctype_cpu_rows(mapread.read(filled["by_key"]), ncpus))
    pd.testing.assert_frame_equal(df, by_row, check_dtype=False)


def test_a_struct_numpy_cannot_cut_is_read_through_ctypes(filled, ncpus):
    df = frames.map_frame(filled["odd"], frames.PERCPU_ARRAY, ncpus)
    assert list(df.columns) == ["key", "cpu", "pairs", "n"]
    assert df.key.tolist() == np.repeat(np.arange(4), ncpus).tolist()
    assert df.cpu.tolist() == list(range(ncpus)) * 4
    assert int(df[df.key == 2].n.sum()) == 500 and int(df[df.key != 2].n.sum()) == 0


def test_a_per_cpu_map_of_numbers_keeps_its_sum(bcc, ncpus):
    with bcc.BPF(text="BPF_PERCPU_ARRAY(c, u64, 2);", cflags=["-w"]) as b:
        t = b["c"]
        t[ct.c_int(1)] = t.Leaf(*[3] * ncpus)
        df = frames.map_frame(t, frames.PERCPU_ARRAY, ncpus)
    assert list(df.columns) == ["key", *(f"cpu{c}" for c in range(ncpus)), "value"]
    assert df.value.tolist() == [0, 3 * ncpus]
