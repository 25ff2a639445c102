"""Record and replay: a trace saved to one file comes back exactly, wherever it is opened.

A real trace of the kernel is recorded through ``%%bpf --recording`` (EBPFKIT_MODE=record)
and replayed; every DataFrame must come back equal, dtypes included. Constructed frames
cover every dtype a trace (or a user) may put in a result. Bad files each give their own
clear error. Finally the replay runs where a learner without root runs it: as ``nobody``
with no capabilities, in a mount namespace where BCC's Python module is hidden.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import bpf, needs_root, nobody_readable_dir

import ebpfkit
from ebpfkit import recording
from ebpfkit.errors import AttachError, BadArguments, RecordingError
from ebpfkit.result import TraceResult

# Every open by `cat` (the workload's), as an event, a printk line and a count per PID;
# every read's size as a log2 histogram.
CELL = r"""
struct event_t {
    u64 ts;
    u32 pid;
    u32 ids[2];
    char comm[16];
    char fname[64];
};
BPF_PERF_OUTPUT(events);
BPF_HISTOGRAM(sizes);
BPF_HASH(opens, u32, u64);

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct event_t e = {};
    u64 id = bpf_get_current_pid_tgid();
    e.ts = bpf_ktime_get_ns();
    e.pid = id >> 32;
    e.ids[0] = id >> 32;
    e.ids[1] = (u32)id;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    bpf_probe_read_user_str(&e.fname, sizeof(e.fname), args->filename);
    events.perf_submit(args, &e, sizeof(e));
    opens.increment(e.pid);
    bpf_trace_printk("open %s\n", args->filename);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) {
    sizes.increment(bpf_log2l(args->count));
    return 0;
}
"""
WORKLOAD = "for i in $(seq 40); do cat /etc/hostname > /dev/null; done"
LINE = f'--comm cat --run "{WORKLOAD}" --recording opens'
FIELDS = [
    "lost",
    "received",
    "duration",
    "stopped_by",
    "attached",
    "warnings",
    "notes",
    "output",
    "exit_code",
]


def assert_same_frame(got, want) -> None:
    """Equal values, dtypes, categories, index and column labels; object values of one type."""
    pd.testing.assert_frame_equal(
        got,
        want,
        check_dtype=True,
        check_index_type=True,
        check_column_type=True,
        check_categorical=True,
        check_exact=True,
    )
    assert list(got.dtypes) == list(want.dtypes)
    for i in range(want.shape[1]):
        g, w = got.iloc[:, i], want.iloc[:, i]
        if isinstance(w.dtype, pd.CategoricalDtype):
            pd.testing.assert_index_equal(g.cat.categories, w.cat.categories, exact=True)
            assert g.cat.ordered == w.cat.ordered
        if w.dtype == object:
            # assert_frame_equal takes (1, 2) for [1, 2] and np.int16(3) for 3.
            assert [type(v) for v in g] == [type(v) for v in w]
            for a, b in zip(g, w):
                if isinstance(b, np.ndarray):
                    assert a.dtype == b.dtype and a.shape == b.shape
    assert got.attrs == want.attrs


def assert_same_result(got: TraceResult, want: TraceResult) -> None:
    assert_same_frame(got.events, want.events)
    assert got.events is got.channels[next(iter(got.channels))]
    assert list(got.channels) == list(want.channels)
    for name in want.channels:
        assert_same_frame(got.channels[name], want.channels[name])
    assert list(got.maps) == list(want.maps)
    for name in want.maps:
        assert_same_frame(got.maps[name], want.maps[name])
    assert_same_frame(got.printk, want.printk)
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), name
        assert type(getattr(got, name)) is type(getattr(want, name)), name


@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cell(ip, line: str, cell: str = CELL):
    """The cell's result and what it printed; trace_pipe may be busy with another reader."""
    for attempt in range(20):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                return bpf(ip, line, cell), out.getvalue()
        except AttachError as e:
            if "trace_pipe" not in str(e) or attempt == 19:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def shared_dir():
    with nobody_readable_dir("ebpfkit-rec-") as folder:
        yield folder


@pytest.fixture(scope="module")
def recorded(ip, shared_dir):
    """A real trace, recorded by the magic with EBPFKIT_MODE=record: (result, path, printed)."""
    if os.geteuid() != 0:
        pytest.skip("recording a live trace needs root")
    with env(EBPFKIT_MODE="record", EBPFKIT_RECORDINGS=str(shared_dir)):
        result, printed = run_cell(ip, LINE)
    return result, shared_dir / "opens.ebpfkit", printed


# --------------------------------------------------------------------------- a real trace


@needs_root
def test_record_mode_traces_live_and_writes_the_file(recorded):
    result, path, printed = recorded
    assert path.is_file()
    assert f"recorded to {path.resolve()}" in printed
    assert result.recorded is None and "RECORDING" not in repr(result)
    # The trace really holds what the replay must keep: otherwise the equality proves little.
    ev = result.events
    assert len(ev) >= 40, ev
    assert isinstance(ev["comm"].dtype, pd.CategoricalDtype)
    assert list(ev["comm"].cat.categories) == ["cat"]
    assert ev["ts"].dtype == "datetime64[ns]"
    assert ev["pid"].dtype == np.uint32
    assert ev["ids"].dtype == object and ev["ids"].iloc[0].dtype == np.uint32
    assert (ev["ids"].map(lambda a: a[0]) == ev["pid"]).all()
    assert "/etc/hostname" in set(ev["fname"])
    assert list(result.maps["sizes"].columns) == ["low", "high", "count"]
    assert result.maps["sizes"]["count"].sum() > 0
    assert result.maps["opens"]["value"].sum() == len(ev)
    # Not one line per event: trace_pipe is one per machine, and another reader may take some.
    assert len(result.printk) > 0
    assert set(result.printk["message"].str.removeprefix("open ")) <= set(ev["fname"])
    assert result.printk["time"].dtype == "datetime64[ns]"
    assert result.exit_code == 0


@needs_root
def test_replay_mode_gives_back_the_same_frames(ip, recorded, shared_dir):
    live, path, _ = recorded
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(shared_dir)):
        assert ebpfkit.replaying()
        replayed, printed = run_cell(ip, LINE)
    assert printed == ""  # nothing traced, nothing recorded
    assert_same_result(replayed, live)
    assert replayed.cell == {"source": CELL, "options": LINE}
    meta = replayed.recorded
    assert meta["kernel"] == platform.release()
    assert meta["system"] == "Linux"
    assert meta["hostname"] == socket.gethostname()
    assert meta["ebpfkit"] == ebpfkit.__version__
    assert meta["path"] == str(path)
    made = datetime.datetime.strptime(meta["date"], "%Y-%m-%d %H:%M:%S UTC")
    assert made.year >= 2024
    first = f"RECORDING made on {meta['date']} on Linux {platform.release()} - not a live trace"
    assert repr(replayed).splitlines()[0] == first
    assert first in replayed._repr_html_().split("</div>")[0]
    # The DataFrame work of a lesson runs on it as on a live trace.
    per_pid = replayed.events.groupby("pid").size().sort_index()
    opens = replayed.maps["opens"].set_index("key")["value"].sort_index()
    assert per_pid.to_dict() == opens.to_dict()


@needs_root
def test_replay_of_a_changed_cell_says_so(ip, recorded, shared_dir):
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(shared_dir)):
        replayed, _ = run_cell(ip, LINE, CELL.replace("open %s", "opened %s"))
    assert any("differs from the one recorded" in n for n in replayed.notes)
    assert "differs from the one recorded" in repr(replayed)


@needs_root
def test_replay_and_line_magic_read_any_saved_file(ip, recorded, tmp_path):
    live, path, _ = recorded
    assert_same_result(ebpfkit.replay(path), live)
    copy = live.save(tmp_path / "copy.ebpfkit")
    assert_same_result(ebpfkit.replay(copy), live)
    shown = ip.run_line_magic("bpf", f"--replay {copy} -o shown")
    assert ip.user_ns["shown"] is shown
    assert repr(shown).startswith("RECORDING made on")
    assert_same_result(shown, live)
    with env(EBPFKIT_RECORDINGS=str(path.parent)):
        assert_same_result(ebpfkit.replay("opens"), live)  # a name in the recordings folder


@needs_root
def test_auto_as_root_traces_live_even_with_a_recording(ip, recorded, shared_dir):
    _, path, _ = recorded
    before = path.stat().st_mtime_ns
    with env(EBPFKIT_MODE=None, EBPFKIT_RECORDINGS=str(shared_dir)):
        assert not ebpfkit.replaying()
        result, printed = run_cell(ip, LINE)
    assert result.recorded is None
    assert "RECORDING" not in repr(result) and "recorded to" not in printed
    assert len(result.events) >= 40
    assert path.stat().st_mtime_ns == before  # auto never records
    with env(EBPFKIT_MODE="live", EBPFKIT_RECORDINGS=str(shared_dir)):
        assert not ebpfkit.replaying()


@needs_root
def test_trace_api_records_and_replays(tmp_path):
    source = CELL.split("TRACEPOINT_PROBE(syscalls, sys_enter_read)")[0]
    options = dict(comm="cat", run="cat /etc/hostname", recording="api")
    with env(EBPFKIT_MODE="record", EBPFKIT_RECORDINGS=str(tmp_path)):
        out = io.StringIO()
        for attempt in range(20):
            try:
                with contextlib.redirect_stdout(out):
                    live = ebpfkit.trace(source, **options)
                break
            except AttachError as e:
                if "trace_pipe" not in str(e) or attempt == 19:
                    raise
                time.sleep(0.5)
    assert (tmp_path / "api.ebpfkit").is_file()
    assert "recorded to" in out.getvalue()
    assert live.cell["source"] == source and live.cell["options"]["comm"] == "cat"
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(tmp_path)):
        replayed = ebpfkit.trace(source, **options)
    assert replayed.recorded is not None
    assert_same_result(replayed, live)


def test_replay_mode_without_the_recording_names_the_path(ip, tmp_path):
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(tmp_path)):
        with pytest.raises(RecordingError, match="no recording at .*nothing-here.ebpfkit"):
            bpf(ip, "--recording nothing-here", CELL)


def test_a_bad_mode_or_name_is_refused(ip, tmp_path):
    with env(EBPFKIT_MODE="replau", EBPFKIT_RECORDINGS=str(tmp_path)):
        with pytest.raises(BadArguments, match="EBPFKIT_MODE='replau': give one of auto"):
            bpf(ip, "--recording x", CELL)
    with pytest.raises(BadArguments, match="--recording ''"):
        recording.path_for("")


def test_recordings_folder_defaults_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("EBPFKIT_RECORDINGS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert recording.path_for("x").resolve() == tmp_path / "recordings" / "x.ebpfkit"
    monkeypatch.setenv("EBPFKIT_RECORDINGS", "/srv/rec")
    assert recording.path_for("x.ebpfkit") == Path("/srv/rec/x.ebpfkit")


# --------------------------------------------------------------------------- every dtype

N = 40
BASE = 1_700_000_000 * 10**9


def _frames() -> dict[str, pd.DataFrame]:
    ints = {
        f"{k}{8 * size}": np.array(
            [np.iinfo(f"{k}{size}").min, np.iinfo(f"{k}{size}").max, 0, 1] * (N // 4),
            dtype=f"{k}{size}",
        )
        for k in ("i", "u")
        for size in (1, 2, 4, 8)
    }
    floats = pd.DataFrame(
        {
            "f16": np.array([0.5, -0.0, np.inf, np.nan] * (N // 4), dtype="f2"),
            "f32": np.linspace(-1, 1, N, dtype="f4"),
            "f64": np.r_[np.nan, -np.inf, 5e-324, np.arange(N - 3.0)],
            "c128": np.arange(N) * (1 + 2j),
            "bool": np.arange(N) % 3 == 0,
        }
    )
    times = pd.DataFrame(
        {
            "ns": pd.to_datetime(np.arange(N) * 1_234_567 + BASE, unit="ns"),
            "us": pd.to_datetime(np.arange(N) * 1000 + BASE // 1000, unit="us"),
            "nat": pd.to_datetime([BASE, None] * (N // 2), unit="ns"),
            "paris": pd.date_range("2024-03-31", periods=N, freq="37min", tz="Europe/Paris"),
            "delta": (np.arange(N) * 7).astype("m8[ms]"),
        }
    )
    comms = pd.Series(["bash", "cat", "ls", "bash"] * (N // 4), dtype=object)
    categories = pd.DataFrame(
        {
            "comm": comms.astype("category"),  # as frames.decode_strings makes them
            "unused": pd.Categorical(comms, categories=["zsh", "ls", "cat", "bash"]),
            "ordered": pd.Categorical([2, 1, 3, None] * (N // 4), ordered=True),
            "cpu": pd.Series(np.arange(N) % 2, dtype="u4").astype("category"),
            "str_categories": pd.Series(list("abcd") * (N // 4)).astype("category"),
        }
    )
    objects = pd.DataFrame(
        {
            "text": pd.Series([f"/etc/f{i}" for i in range(N - 2)] + ["ünï €", None], dtype=object),
            "stack": pd.Series(["main;work;compute", "[lost stack]"] * (N // 2), dtype=object),
            "frames": [["main", "work"], []] * (N // 2),
            "ids": list(np.arange(N * 3, dtype="u4").reshape(N, 3)),  # an array field
            "ragged": [np.arange(i % 3, dtype="i8") for i in range(N)],
            "raw": [bytes([i, 0, 255]) for i in range(N)],  # records kept as raw bytes
            "mixed": [None, 1, 2.5, "a", (1, "b"), {"k": [1]}, np.int16(-3), True] * (N // 8),
            "big": [2**70, -(2**65)] * (N // 2),
            "stamps": pd.Series(
                [pd.Timestamp(BASE + i, unit="ns") for i in range(N - 1)] + [pd.NaT], dtype=object
            ),
        }
    )
    strings = pd.DataFrame(
        {
            "str": [f"x{i}" for i in range(N - 1)] + [None],  # pandas 3's default for text
            "string": pd.array(["a", None] * (N // 2), dtype="string"),
            "Int64": pd.array([1, None] * (N // 2), dtype="Int64"),
            "UInt8": pd.array([255, None] * (N // 2), dtype="UInt8"),
            "boolean": pd.array([True, None] * (N // 2), dtype="boolean"),
            "Float64": pd.array([0.5, None] * (N // 2), dtype="Float64"),
        }
    )
    indexed = pd.DataFrame({"v": np.arange(N, dtype="i2")})
    indexed.index = pd.Index(np.arange(N, dtype="u8") * 3, name="row")
    by_time = pd.DataFrame({"v": np.arange(N)}, index=times["ns"].rename("when"))
    by_cat = pd.DataFrame({"v": np.arange(N)}, index=pd.CategoricalIndex(comms, name="comm"))
    multi = pd.DataFrame(
        {"count": np.arange(N, dtype="u8")},
        index=pd.MultiIndex.from_arrays(
            [np.arange(N) % 4, [f"s{i}" for i in range(N)]], names=["cpu", "sym"]
        ),
    )
    stepped = pd.DataFrame({"v": np.arange(N)}, index=pd.RangeIndex(100, 100 + 5 * N, 5))
    dup = pd.DataFrame(np.arange(3 * N).reshape(N, 3), columns=["a", "a", "b"])
    int_labels = pd.DataFrame({0: np.arange(N), 7: np.arange(N) * 1.5})
    int_labels.columns.name = "slot"
    typed_empty = pd.DataFrame(
        {
            "time": pd.Series([], dtype="datetime64[ns]"),
            "pid": pd.Series([], dtype="u4"),
            "comm": pd.Series([], dtype=object).astype("category"),
            "message": pd.Series([], dtype=object),
        }
    )
    with_attrs = pd.DataFrame({"v": [1]})
    with_attrs.attrs["unit"] = "ns"
    return {
        "ints": pd.DataFrame(ints),
        "floats": floats,
        "times": times,
        "categories": categories,
        "objects": objects,
        "strings": strings,
        "indexed": indexed,
        "by_time": by_time,
        "by_cat": by_cat,
        "multi": multi,
        "stepped": stepped,
        "duplicate_columns": dup,
        "int_labels": int_labels,
        "empty": pd.DataFrame(),
        "empty_rows": pd.DataFrame([]),
        "columns_only": pd.DataFrame(columns=["ts", "pid", "comm", "cpu", "message"]),
        "typed_empty": typed_empty,
        "index_only": pd.DataFrame(index=pd.Index(["a", "b"], name="k")),
        "attrs": with_attrs,
    }


FRAMES = _frames()


def test_the_frames_cover_every_dtype():
    dtypes = {str(t) for df in FRAMES.values() for t in df.dtypes}
    want = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    want |= {"float16", "float32", "float64", "complex128", "bool", "datetime64[ns]"}
    want |= {"datetime64[us]", "datetime64[us, Europe/Paris]", "timedelta64[ms]", "category"}
    want |= {"object", "str", "string", "Int64", "UInt8", "boolean", "Float64"}
    assert want <= dtypes, want - dtypes


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_a_frame_of_each_kind_comes_back_exactly(name, tmp_path):
    df = FRAMES[name]
    result = TraceResult(maps={name: df}, events=df, channels={"events": df})
    back = ebpfkit.replay(result.save(tmp_path / "r.ebpfkit"))
    assert_same_frame(back.maps[name], df)
    assert back.events is back.channels["events"]  # one frame, stored once
    assert_same_frame(back.events, df)


def test_every_field_comes_back_with_its_type(tmp_path):
    result = TraceResult(
        events=None,
        printk=None,
        lost={"events": 3, "ring": 0},
        received={"events": 10},
        duration=1.25,
        stopped_by="max events",
        attached=["tracepoint syscalls:sys_enter_openat"],
        warnings=["w ü"],
        notes=["n"],
        output="line 1\nline 2\n",
        exit_code=-15,
        cell={"source": "int x;", "options": "-d 1"},
    )
    result.maps = {"series": pd.Series([1, 2], dtype="u2", name="slots"), "unnamed": pd.Series([])}
    back = ebpfkit.replay(result.save(tmp_path / "r.ebpfkit"))
    for name, series in result.maps.items():
        pd.testing.assert_series_equal(back.maps[name], series, check_exact=True)
    result.maps = back.maps = {}
    for name in [*FIELDS, "events", "printk", "channels", "maps", "cell"]:
        assert getattr(back, name) == getattr(result, name), name
        assert type(getattr(back, name)) is type(getattr(result, name)), name
    assert back.announced is False and back.recorded is not None


def test_values_recordings_cannot_keep_are_refused_and_leave_no_file(tmp_path):
    path = tmp_path / "r.ebpfkit"
    periods = pd.DataFrame({"month": pd.period_range("2024-01", periods=3, freq="M")})
    with pytest.raises(RecordingError, match="column 'month' of the result's maps.*period"):
        TraceResult(maps={"m": periods}).save(path)
    with pytest.raises(RecordingError, match="column 'tags'.*a set value"):
        TraceResult(events=pd.DataFrame({"tags": [{"a"}]})).save(path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(RecordingError, match="cannot write a recording to .*plain/r.ebpfkit"):
        TraceResult().save(tmp_path / "plain" / "r.ebpfkit")


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def good(tmp_path) -> Path:
    result = TraceResult(events=FRAMES["objects"], maps={"ints": FRAMES["ints"]}, duration=2.0)
    return result.save(tmp_path / "good.ebpfkit")


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, change(item.filename, data))
    return dst


def test_missing_file(tmp_path):
    with pytest.raises(RecordingError, match=f"no recording at {tmp_path}/gone.ebpfkit"):
        ebpfkit.replay(tmp_path / "gone.ebpfkit")


def test_truncated_file(good, tmp_path):
    cut = tmp_path / "cut.ebpfkit"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RecordingError, match=f"{cut} is a damaged .* truncated or corrupt"):
        ebpfkit.replay(cut)


def test_zip_of_something_else(tmp_path):
    other = tmp_path / "notes.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(RecordingError, match=f"{other} is a zip file but not an ebpfkit recording"):
        ebpfkit.replay(other)


def test_random_and_empty_files(tmp_path):
    for name, data in (("random.bin", np.random.default_rng(7).bytes(4096)), ("empty", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(RecordingError, match=f"{path} is not an ebpfkit recording"):
            ebpfkit.replay(path)
    with pytest.raises(RecordingError, match="is a folder"):
        ebpfkit.replay(tmp_path)


def test_newer_version(good, tmp_path):
    def newer(name, data):
        if name != recording.MANIFEST:
            return data
        manifest = json.loads(data)
        manifest["version"] = recording.VERSION + 1
        manifest["recorded"]["ebpfkit"] = "9.0"
        return json.dumps(manifest).encode()

    path = _rewrite(good, tmp_path / "newer.ebpfkit", newer)
    with pytest.raises(RecordingError, match=r"made by ebpfkit 9.0 in recording format 2.*Upgrade"):
        ebpfkit.replay(path)


def test_another_format_in_the_manifest(good, tmp_path):
    def other(name, data):
        return b'{"format": "jupyter-widget-state"}' if name == recording.MANIFEST else data

    path = _rewrite(good, tmp_path / "other.ebpfkit", other)
    with pytest.raises(RecordingError, match="says format 'jupyter-widget-state'"):
        ebpfkit.replay(path)


def test_damaged_member(good, tmp_path):
    raw = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("data/0.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 2] ^= 0xFF  # flip bits inside the compressed data: its CRC no longer holds
    bad = tmp_path / "flipped.ebpfkit"
    bad.write_bytes(bytes(raw))
    with pytest.raises(RecordingError, match=f"{bad} is a damaged ebpfkit recording"):
        ebpfkit.replay(bad)


def test_a_pickle_inside_is_refused(good, tmp_path):
    def pickled(name, data):
        if not name.endswith(".npy"):
            return data
        buf = io.BytesIO()
        np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        return buf.getvalue()

    path = _rewrite(good, tmp_path / "pickle.ebpfkit", pickled)
    with pytest.raises(RecordingError, match="damaged.*allow_pickle"):
        ebpfkit.replay(path)


def test_line_magic_with_a_bad_file(ip, tmp_path):
    with pytest.raises(RecordingError, match="no recording at"):
        ip.run_line_magic("bpf", f"--replay {tmp_path}/none.ebpfkit")


# --------------------------------------------------------------------------- without root


def _child(folder: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` as nobody, with no capabilities, where BCC's module cannot be found."""
    for tool in ("unshare", "runuser", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    home = folder / "home"
    home.mkdir(exist_ok=True)
    shutil.chown(home, "nobody")
    (folder / "child.py").write_text(script)
    bcc_dirs = [p for p in recording_bcc_dirs() if os.path.isdir(p)]
    # A private mount namespace: the tmpfs over BCC's folder is seen by the child alone.
    hide = " && ".join(f"mount -t tmpfs -o ro,mode=755 none {d}" for d in bcc_dirs) or "true"
    command = (
        f"{hide} && exec runuser -u nobody -- env -i PATH=/usr/bin:/bin HOME={home} "
        f"EBPFKIT_RECORDINGS={folder} {sys.executable} {folder / 'child.py'}"
    )
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=folder,
        timeout=300,
    )


def recording_bcc_dirs() -> list[str]:
    from ebpfkit import _bcc

    return _bcc.candidates()


CHILD = """
import json, os, sys
sys.path.insert(0, {project!r})
import ebpfkit
from ebpfkit import _bcc
from IPython.core.interactiveshell import InteractiveShell

out = {{"uid": os.geteuid(), "bcc": _bcc.find_bcc() is not None, "replaying": ebpfkit.replaying()}}
for line in open("/proc/self/status"):
    if line.startswith("CapEff:"):
        out["capeff"] = int(line.split()[1], 16)
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ebpfkit")
cell = {cell!r}
r = shell.run_cell_magic("bpf", {line!r}, cell)
out["repr"] = repr(r)
out["html"] = r._repr_html_()
out["dtypes"] = {{c: str(t) for c, t in r.events.dtypes.items()}}
out["rows"] = len(r.events)
out["per_comm"] = r.events.groupby("comm", observed=True).size().to_dict()
out["hist_total"] = int(r.maps["sizes"]["count"].sum())
for name, line in (("missing", "--recording nowhere"), ("plain", "--comm cat -d 1")):
    try:
        shell.run_cell_magic("bpf", line, cell)
        out[name] = "no error"
    except Exception as e:
        out[name] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


@needs_root
def test_replay_as_nobody_without_bcc(recorded, shared_dir):
    live, path, _ = recorded
    project = str(Path(ebpfkit.__file__).parent.parent)
    # Root passes every access check, so read the bits: nobody needs r-x on the venv's path.
    for part in [*Path(sys.executable).parents, Path(project, "ebpfkit")]:
        if part.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{part} is not readable by everyone, so nobody cannot run this Python")
    script = CHILD.format(project=project, cell=CELL, line=LINE)
    done = _child(shared_dir, textwrap.dedent(script))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534 and out["capeff"] == 0
    assert out["bcc"] is False  # BCC's Python module could not be imported at all
    assert out["replaying"] is True
    assert out["repr"].startswith("RECORDING made on ")
    assert "- not a live trace" in out["repr"].splitlines()[0]
    assert "RECORDING made on" in out["html"].split("</div>")[0]
    assert out["dtypes"] == {c: str(t) for c, t in live.events.dtypes.items()}
    assert out["rows"] == len(live.events)
    assert out["per_comm"] == {"cat": len(live.events)}
    assert out["hist_total"] == int(live.maps["sizes"]["count"].sum())
    missing = out["missing"]
    assert missing.startswith("NotPermitted: loading tracing programs needs root"), missing
    assert f"there is none at {shared_dir}/nowhere.ebpfkit" in missing
    assert "EBPFKIT_MODE=record" in missing
    # A cell without --recording behaves as before: the plain error, no replay offered.
    assert out["plain"].startswith("NotPermitted: loading tracing programs needs root")
    assert "recording" not in out["plain"]


def test_a_recording_is_named_from_the_current_folder_when_inside_it(tmp_path, monkeypatch):
    from ebpfkit.recording import shown_path

    (tmp_path / "recordings").mkdir()
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "recordings" / "01-x.ebpfkit") == "recordings/01-x.ebpfkit"
    outside = tmp_path.parent / "elsewhere.ebpfkit"
    assert shown_path(outside) == str(outside.resolve())
