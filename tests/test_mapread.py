"""Maps read in bulk (mapread.py) and their DataFrames (frames.map_frame, histogram_frame).

Against the real kernel: maps filled by real programs or through bcc's own table writes,
read back by BPF_MAP_LOOKUP_BATCH and by next-key and lookup, compared with what was
written and with the DataFrames bcc's ``items()`` loop gave before (kept below as the
reference the bulk path must equal, column for column and dtype for dtype).
"""

from __future__ import annotations

import ctypes as ct
import subprocess

import numpy as np
import pandas as pd
import pytest
from helpers import needs_root

from ebpfkit import frames, mapread
from ebpfkit._bcc import bcc as get_bcc

pytestmark = needs_root

MAPS = r"""
struct skey { u32 pid; char comm[16]; u8 tag[4]; };
struct sval { u64 count; s32 delta; u16 small[3]; };
struct bkey { u32 low : 4; u32 high : 28; s32 neg : 5; };
struct hkey { char comm[16]; u64 slot; };
BPF_HASH(plain, u32, u64, 10240);
BPF_HASH(big, u32, u64, 200000);
BPF_HASH(signed_vals, u32, s64, 64);
BPF_HASH(structs, struct skey, struct sval, 64);
BPF_HASH(bits, struct bkey, u64, 64);
BPF_HASH(empty, u32, u64, 64);
BPF_TABLE("lru_hash", u64, u32, lru, 64);
BPF_ARRAY(arr, u64, 64);
BPF_PERCPU_ARRAY(pcarr, u64, 8);
BPF_PERCPU_HASH(pchash, u32, u64, 64);
BPF_PERCPU_HASH(pchash32, u32, u32, 64);
BPF_PERCPU_HASH(pcempty, u32, u64, 64);
BPF_HISTOGRAM(dist, int, 65);
BPF_HISTOGRAM(by_comm, struct hkey, 256);
BPF_HISTOGRAM(hempty, int, 64);
"""


@pytest.fixture(scope="module")
def bcc():
    return get_bcc()


@pytest.fixture(scope="module")
def maps(bcc):
    """One module's maps (no programs), created for these tests and freed after them."""
    b = bcc.BPF(text=MAPS, cflags=["-w"])
    yield b
    b.cleanup()


@pytest.fixture
def ncpus(bcc) -> int:
    return len(bcc.utils.get_possible_cpus())


# ---------------------------------------------------------------- the reference: bcc's loop


def items_map_frame(table, map_type: int, ncpus: int):
    """frames.map_frame as it was: one Python row per ``table.items()`` entry."""
    rows = []
    percpu = map_type in (frames.PERCPU_HASH, frames.PERCPU_ARRAY, frames.LRU_PERCPU_HASH)
    for k, v in table.items():
        row = frames._ctype_columns(k, "key")
        if percpu:
            values = [int(x.value if hasattr(x, "value") else x) for x in v][:ncpus]
            for cpu, x in enumerate(values):
                row[f"cpu{cpu}"] = x
            row["value"] = sum(values)
        else:
            row.update(frames._ctype_columns(v, "value"))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if map_type in (frames.ARRAY, frames.PERCPU_ARRAY):
        return df.sort_values(list(df.columns[:1])).reset_index(drop=True)
    if "value" in df.columns and pd.api.types.is_numeric_dtype(df["value"]):
        return df.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    return df


def items_histogram_frame(table, kind: str):
    """frames.histogram_frame as it was, over ``table.items()``."""
    counts: dict = {}
    sections: set = set()
    for k, v in table.items():
        key = frames._ctype_columns(k, "key")
        slot_name = "slot" if "slot" in key else "key"
        slot = int(key.pop(slot_name))
        section = tuple(key.items())
        sections.add(section)
        counts[(section, slot)] = counts.get((section, slot), 0) + int(v.value)
    rows = []
    for section in sorted(sections):
        slots = [s for (sec, s), c in counts.items() if sec == section and c]
        if not slots:
            continue
        for slot in range(min(slots), max(slots) + 1):
            if kind == "log2":
                low, high = (1 << slot) >> 1, (1 << slot) - 1
                if low == high:
                    low = max(low - 1, 0)
            else:
                low = high = slot
            row = dict(section)
            row.update(low=low, high=high, count=counts.get((section, slot), 0))
            rows.append(row)
    first = sorted(sections)[0] if sections else ()
    return pd.DataFrame(rows, columns=[*(k for k, _ in first), "low", "high", "count"])


def same_frame(table, map_type: int, ncpus: int) -> pd.DataFrame:
    """map_frame's DataFrame, checked equal (values, dtypes, order) to the reference's."""
    ours = frames.map_frame(table, map_type, ncpus)
    pd.testing.assert_frame_equal(ours, items_map_frame(table, map_type, ncpus))
    return ours


def fill(table, keys, values) -> None:
    """Write entries through bcc's own batch update."""
    n = len(keys)
    table.items_update_batch((table.Key * n)(*keys), (table.Leaf * n)(*values))


# ---------------------------------------------------------------- hash maps


def test_a_hash_map_reads_back_exactly_what_was_written(maps, ncpus):
    t = maps["plain"]
    t.clear()
    keys = list(range(7, 7 + 500))
    fill(t, keys, [k * k for k in keys])
    data = mapread.read(t)
    assert data.batched
    assert data.keys.dtype == np.dtype("u4") and data.values.dtype == np.dtype("u8")
    got = dict(zip(data.keys.tolist(), data.values.tolist()))
    assert got == {k: k * k for k in keys}
    df = same_frame(t, frames.HASH, ncpus)
    assert list(df.columns) == ["key", "value"] and len(df) == 500
    assert df.key.iloc[0] == 506 and df.value.iloc[0] == 506 * 506  # largest value first
    t.clear()


def test_signed_values_and_an_lru_hash(maps, ncpus):
    t = maps["signed_vals"]
    fill(t, [1, 2, 3], [-5, 0, 2**62])
    data = mapread.read(t)
    assert dict(zip(data.keys.tolist(), data.values.tolist())) == {1: -5, 2: 0, 3: 2**62}
    same_frame(t, frames.HASH, ncpus)
    lru = maps["lru"]
    fill(lru, [2**40, 5], [9, 4_000_000_000])
    data = mapread.read(lru)
    assert data.batched and data.values.dtype == np.dtype("u4")
    assert dict(zip(data.keys.tolist(), data.values.tolist())) == {2**40: 9, 5: 4_000_000_000}
    same_frame(lru, frames.LRU_HASH, ncpus)


def test_struct_keys_and_values_are_flattened_as_before(maps, ncpus):
    t = maps["structs"]
    for i, comm in enumerate([b"bash", b"python3", b"bash", b""]):
        k = t.Key(pid=100 + i, comm=comm)
        k.tag[:] = [65 + i, 66, 0, 1]
        v = t.Leaf(count=10 * i + 1, delta=-i)
        v.small[:] = [i, 2 * i, 65535]
        t[k] = v
    data = mapread.read(t)
    assert data.keys.dtype.names[:2] == ("pid", "comm")
    df = same_frame(t, frames.HASH, ncpus)
    # the key's fields, then the value's; char arrays as text, other arrays as lists
    assert list(df.columns) == ["pid", "comm", "tag", "count", "delta", "small"]
    rows = {r.pid: r for r in df.itertuples()}
    assert sorted(rows) == [100, 101, 102, 103]
    assert [rows[p].comm for p in sorted(rows)] == ["bash", "python3", "bash", ""]
    assert [rows[p].tag for p in sorted(rows)] == ["AB", "BB", "CB", "DB"]  # u8[]: text too
    assert [rows[p].count for p in sorted(rows)] == [1, 11, 21, 31]
    assert rows[103].delta == -3 and rows[103].small == [3, 6, 65535]
    assert df.dtypes.astype(str).tolist() == ["int64", "str", "str", "int64", "int64", "object"]


def test_bitfield_keys(maps, ncpus):
    # bcc's items() rows could not be flattened here (its ctypes fields have a bit width):
    # the columns are checked against what was written and against entry-by-entry ctypes.
    t = maps["bits"]
    for i in range(5):
        t[t.Key(low=i, high=1000 + i, neg=-i)] = ct.c_ulonglong(i * 7)
    data = mapread.read(t)
    assert data.batched and len(data) == 5
    df = frames.map_frame(t, frames.HASH, ncpus)
    assert list(df.columns) == ["low", "high", "neg", "value"]
    assert df.low.tolist() == [4, 3, 2, 1, 0] and df.high.tolist() == [1004, 1003, 1002, 1001, 1000]
    assert df.neg.tolist() == [-4, -3, -2, -1, 0] and df.value.tolist() == [28, 21, 14, 7, 0]
    by_row = pd.DataFrame(frames._ctype_rows(data, ncpus))
    by_row = by_row.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(df, by_row)


def test_a_hash_map_filled_by_a_real_program(bcc, getppid_loop, ncpus):
    text = r"""
    struct key { u32 pid; char comm[16]; };
    BPF_HASH(calls, struct key, u64, 10240);
    BPF_PERCPU_HASH(per_cpu, u32, u64, 10240);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        struct key k = {};
        k.pid = bpf_get_current_pid_tgid() >> 32;
        bpf_get_current_comm(&k.comm, sizeof(k.comm));
        calls.increment(k);
        u64 zero = 0, *n = per_cpu.lookup_or_try_init(&k.pid, &zero);
        if (n) (*n)++;
        return 0;
    }
    """
    with bcc.BPF(text=text, cflags=["-w"]) as b:
        proc = subprocess.run([getppid_loop, "mapread-test", "12345"], check=True)
        b.detach_tracepoint(b"syscalls:sys_enter_getppid")
        df = same_frame(b["calls"], frames.HASH, ncpus)
        per_cpu = same_frame(b["per_cpu"], frames.PERCPU_HASH, ncpus)
    assert proc.returncode == 0
    mine = df[df.comm == "mapread-test"]
    assert mine.value.tolist() == [12345]
    pid = int(mine.pid.iloc[0])
    row = per_cpu[per_cpu.key == pid]
    assert row.value.tolist() == [12345]
    assert int(row[[f"cpu{c}" for c in range(ncpus)]].sum(axis=1).iloc[0]) == 12345


# ---------------------------------------------------------------- arrays and per-CPU maps


def test_an_array_has_every_index(maps, ncpus):
    t = maps["arr"]
    for i in (0, 5, 63):
        t[ct.c_int(i)] = ct.c_ulonglong(i + 1000)
    data = mapread.read(t)
    assert data.batched
    assert data.keys.tolist() == list(range(64))
    expected = np.zeros(64, "u8")
    expected[[0, 5, 63]] = [1000, 1005, 1063]
    np.testing.assert_array_equal(data.values, expected)
    df = same_frame(t, frames.ARRAY, ncpus)
    assert df.key.tolist() == list(range(64))


def test_per_cpu_maps_give_each_cpu_its_value(maps, ncpus):
    arr = maps["pcarr"]
    for i in range(8):
        arr[ct.c_int(i)] = arr.Leaf(*[i * 100 + cpu for cpu in range(ncpus)])
    data = mapread.read(arr)
    assert data.percpu and data.values.shape == (8, ncpus)
    np.testing.assert_array_equal(
        data.values, [[i * 100 + cpu for cpu in range(ncpus)] for i in range(8)]
    )
    df = same_frame(arr, frames.PERCPU_ARRAY, ncpus)
    assert list(df.columns) == ["key", *(f"cpu{c}" for c in range(ncpus)), "value"]
    assert df.value.tolist() == [sum(i * 100 + c for c in range(ncpus)) for i in range(8)]

    h = maps["pchash"]
    fill(h, [3, 4], [h.Leaf(*[2**40 + c for c in range(ncpus)]), h.Leaf(*[7] * ncpus)])
    data = mapread.read(h)
    assert data.batched
    got = {k: v for k, v in zip(data.keys.tolist(), data.values.tolist())}
    assert got == {3: [2**40 + c for c in range(ncpus)], 4: [7] * ncpus}
    same_frame(h, frames.PERCPU_HASH, ncpus)


def test_per_cpu_values_narrower_than_8_bytes(maps, ncpus):
    # The kernel keeps each CPU's 4 bytes in an 8-byte slot.
    h = maps["pchash32"]
    h[h.Key(1)] = h.Leaf(*[4_000_000_000 - c for c in range(ncpus)])
    h[h.Key(2)] = h.Leaf(*[c for c in range(ncpus)])
    data = mapread.read(h)
    assert data.values.dtype == np.dtype("u4") and data.values.shape == (2, ncpus)
    got = {k: v for k, v in zip(data.keys.tolist(), data.values.tolist())}
    assert got == {1: [4_000_000_000 - c for c in range(ncpus)], 2: list(range(ncpus))}
    same_frame(h, frames.PERCPU_HASH, ncpus)


# ---------------------------------------------------------------- histograms


def test_histograms_equal_the_reference(maps):
    dist = maps["dist"]
    for slot, count in ((1, 4), (3, 10), (6, 1), (64, 2)):
        dist[ct.c_int(slot)] = ct.c_ulonglong(count)
    for kind in ("log2", "linear"):
        df = frames.histogram_frame(dist, kind)
        pd.testing.assert_frame_equal(df, items_histogram_frame(dist, kind))
    df = frames.histogram_frame(dist, "log2")
    assert df["count"].tolist() == [4, 0, 10, 0, 0, 1] + [0] * 57 + [2]  # slots 1 to 64
    assert df.low.iloc[0] == 0 and df.high.iloc[2] == 7 and df.high.iloc[-1] == 2**64 - 1

    by_comm = maps["by_comm"]
    entries = {(b"sh", 2): 3, (b"sh", 5): 1, (b"cat", 0): 9, (b"idle", 4): 0}
    for (comm, slot), count in entries.items():
        by_comm[by_comm.Key(comm=comm, slot=slot)] = ct.c_ulonglong(count)
    df = frames.histogram_frame(by_comm, "log2")
    pd.testing.assert_frame_equal(df, items_histogram_frame(by_comm, "log2"))
    assert list(df.columns) == ["comm", "low", "high", "count"]
    assert df.comm.tolist() == ["cat"] + ["sh"] * 4  # a section with no count is left out
    assert df["count"].tolist() == [9, 3, 0, 0, 1]


def test_a_histogram_filled_by_a_real_program(bcc, getppid_loop):
    text = r"""
    BPF_HISTOGRAM(dist);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        char comm[16];
        bpf_get_current_comm(&comm, sizeof(comm));
        if (comm[0] != 'h' || comm[1] != 'i' || comm[2] != 's' || comm[3] != 't') return 0;
        u32 tid = bpf_get_current_pid_tgid();
        dist.increment(bpf_log2l(tid & 1023));
        return 0;
    }
    """
    with bcc.BPF(text=text, cflags=["-w"]) as b:
        subprocess.run([getppid_loop, "hist-test", "3000"], check=True)
        b.detach_tracepoint(b"syscalls:sys_enter_getppid")
        df = frames.histogram_frame(b["dist"], "log2")
        pd.testing.assert_frame_equal(df, items_histogram_frame(b["dist"], "log2"))
    assert df["count"].sum() == 3000 and (df["count"] > 0).sum() == 1


# ---------------------------------------------------------------- size, fallback, empty


def test_a_map_of_150_000_entries(maps, ncpus):
    t = maps["big"]
    n = 150_000
    rng = np.random.default_rng(13)
    keys = rng.choice(2**31, n, replace=False).astype("u4")
    values = rng.permutation(n).astype("u8") * 3 + 1  # distinct: the order is fixed
    fill(t, keys.tolist(), values.tolist())
    data = mapread.read(t)
    assert data.batched and len(data) == n > mapread.CHUNK  # more than one batch
    order = np.argsort(data.keys)
    np.testing.assert_array_equal(data.keys[order], np.sort(keys))
    np.testing.assert_array_equal(data.values[order], values[np.argsort(keys)])
    df = frames.map_frame(t, frames.HASH, ncpus)
    by_value = np.argsort(-values.astype("i8"), kind="stable")
    expected = pd.DataFrame({"key": keys[by_value].astype("i8"), "value": values[by_value]})
    expected["value"] = expected["value"].astype("i8")
    pd.testing.assert_frame_equal(df, expected)


def test_small_batches_resume_where_they_stopped(maps, monkeypatch):
    # One entry per call at first: a bucket of more is refused (ENOSPC) and retried larger.
    t = maps["plain"]
    t.clear()
    fill(t, list(range(3000)), list(range(3000)))
    monkeypatch.setattr(mapread, "CHUNK", 1)
    data = mapread.read(t)
    assert data.batched
    assert sorted(data.keys.tolist()) == list(range(3000))
    assert dict(zip(data.keys.tolist(), data.values.tolist())) == {k: k for k in range(3000)}
    t.clear()


@pytest.mark.parametrize("name", ["structs", "arr", "pcarr", "pchash32", "lru", "dist"])
def test_next_key_and_lookup_read_the_same_entries(maps, name):
    t = maps[name]
    if not len(mapread.read(t)):
        t[t.Key(1)] = t.Leaf()  # the tests above may not have run
    batched, one_by_one = mapread.read(t), mapread.read(t, batch=False)
    assert batched.batched and not one_by_one.batched
    assert len(one_by_one) > 0
    np.testing.assert_array_equal(one_by_one.keys, batched.keys)
    np.testing.assert_array_equal(one_by_one.values, batched.values)


def test_a_stack_trace_map_falls_back_to_next_key(bcc, getppid_loop):
    # Stack trace maps have no batch lookup: the kernel says so, and entries come one by one.
    text = r"""
    BPF_STACK_TRACE(stacks, 64);
    BPF_HASH(ids, u32, int);
    TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
        char comm[16];
        bpf_get_current_comm(&comm, sizeof(comm));
        if (comm[0] != 's' || comm[1] != 't' || comm[2] != 'k') return 0;
        u32 zero = 0;
        int id = stacks.get_stackid(args, BPF_F_USER_STACK);
        ids.update(&zero, &id);
        return 0;
    }
    """
    with bcc.BPF(text=text, cflags=["-w"]) as b:
        subprocess.run([getppid_loop, "stk-test", "50"], check=True)
        b.detach_tracepoint(b"syscalls:sys_enter_getppid")
        stacks = b["stacks"]
        data = mapread.read(stacks)
        reference = {k.value: list(v.ip) for k, v in stacks.items()}
        stack_id = b["ids"][ct.c_uint(0)].value
    assert not data.batched
    assert stack_id >= 0 and stack_id in reference
    assert {k: v["ip"].tolist() for k, v in zip(data.keys.tolist(), data.values)} == reference


def test_empty_maps(maps, ncpus):
    for name, ttype in (("empty", frames.HASH), ("pcempty", frames.PERCPU_HASH)):
        t = maps[name]
        data = mapread.read(t)
        assert data.batched and len(data) == 0
        assert data.keys.dtype == np.dtype("u4")
        assert mapread.read(t, batch=False).keys.shape == (0,)
        df = same_frame(t, ttype, ncpus)
        assert df.empty
    hempty = maps["hempty"]
    df = frames.histogram_frame(hempty, "log2")
    pd.testing.assert_frame_equal(df, items_histogram_frame(hempty, "log2"))
    assert df.empty and list(df.columns) == ["low", "high", "count"]
