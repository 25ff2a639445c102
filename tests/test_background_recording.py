"""``%%bpf --background NAME --recording REC`` in every $EBPFKIT_MODE.

- record: the trace runs live in the background while other cells run the workload; stopping
  it saves the result to the recording and says where.
- replay: the same cell does no kernel work; NAME is a stand-in, listed by ``%bpf --list`` as
  a recording, whose frame is the recorded events and whose stop gives the recorded result.
- live: as without --recording; nothing is saved.
- The replay works as ``nobody`` without BCC, as a learner without root runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from helpers import bpf, needs_root, nobody_readable_dir
from test_cleanup import held
from test_live import opened, wait_for
from test_recording import _child, env

import ebpfkit
from ebpfkit.background import ReplayedTrace
from ebpfkit.errors import BadArguments, NotPermitted, RecordingError

COMM = "ebpfkit-bgrec"  # the copy of cat: the traces see only the test's opens

OPENS = r"""
struct open_event {
    u64 ts;
    u32 pid;
    char comm[16];
    char path[64];
};
BPF_PERF_OUTPUT(events);
BPF_HASH(per_pid, u32, u64);

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct open_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    bpf_probe_read_user_str(&e.path, sizeof(e.path), args->filename);
    events.perf_submit(args, &e, sizeof(e));
    per_pid.increment(e.pid);
    return 0;
}
"""
LINE = f"--background bgopens --comm {COMM} --recording bg-opens"


@pytest.fixture(scope="module")
def folder():
    """The recordings folder, readable by nobody (the replay runs as nobody)."""
    with nobody_readable_dir("ebpfkit-bgrec-") as path:
        yield path


@pytest.fixture(scope="module")
def cat(folder) -> Path:
    path = folder / COMM
    shutil.copy(shutil.which("cat"), path)
    return path


@pytest.fixture
def marker() -> str:
    """A path short enough for the event's 64 bytes; it need not exist, only be opened."""
    return f"/tmp/ebpfkit-bgrec-{os.getpid()}-{random.randrange(10**9)}"


def open_in_cell(ip, cat, marker, n: int) -> None:
    """Another cell, run while the trace runs: it opens the marker n times through cat."""
    ip.run_cell(
        "import subprocess\n"
        f"for _i in range({n}):\n"
        f"    subprocess.run([{str(cat)!r}, {str(marker)!r}], capture_output=True)\n"
    ).raise_error()


def printed(call):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        value = call()
    return value, out.getvalue()


@pytest.fixture(scope="module")
def recorded(ip, folder, cat):
    """The background cell in record mode, stopped by %bpf --stop: (result, path, printed)."""
    if os.geteuid() != 0:
        pytest.skip("recording a live trace needs root")
    marker = f"/tmp/ebpfkit-bgrec-{os.getpid()}-rec"
    before = held()
    with env(EBPFKIT_MODE="record", EBPFKIT_RECORDINGS=str(folder)):
        handle, _ = printed(lambda: bpf(ip, LINE, OPENS))
        try:
            assert type(handle) is ebpfkit.background.BackgroundTrace
            assert handle.status == "tracing"
            open_in_cell(ip, cat, marker, 3)
            wait_for("3 opens in the frame so far", lambda: opened(handle.frame(), marker) == 3)
            assert not (folder / "bg-opens.ebpfkit").exists()  # saved when stopped, not before
        finally:
            result, out = printed(lambda: ip.run_line_magic("bpf", "--stop bgopens"))
    assert held() == before
    assert ebpfkit.sessions() == {}
    return result, folder / "bg-opens.ebpfkit", out, marker


@needs_root
def test_record_mode_saves_when_stopped(recorded):
    result, path, out, marker = recorded
    assert path.is_file()
    assert out == f"recorded to {path.resolve()}\n"
    assert result.recorded is None and "RECORDING" not in repr(result)
    assert result.stopped_by == "%bpf --stop"
    assert opened(result.events, marker) == 3
    assert set(result.events["comm"]) == {COMM}
    assert result.maps["per_pid"]["value"].sum() == len(result.events)
    assert result.cell["source"] == OPENS
    assert result.cell["options"]["recording"] == "bg-opens"


@needs_root
def test_replay_mode_stands_in_with_the_recorded_events(ip, recorded, folder):
    live, path, _, _ = recorded
    before = held()
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(folder)):
        handle, out = printed(lambda: bpf(ip, LINE, OPENS))
        assert out == ""  # nothing traced, nothing recorded
        assert isinstance(handle, ReplayedTrace)
        assert ip.user_ns["bgopens"] is handle
        assert ebpfkit.sessions() == {"bgopens": handle}
        assert held() == before  # no program, no perf event, no buffer
        listed = ip.run_line_magic("bpf", "--list").set_index("name").loc["bgopens"]
        assert "recording" in listed["status"]
        assert listed["events"] == len(live.events)
        assert listed["attached"] == "nothing: a recording"
        assert repr(handle).startswith("background trace bgopens: RECORDING made on")
        pd.testing.assert_frame_equal(handle.frame(), live.events)
        pd.testing.assert_frame_equal(handle.events, live.events)
        pd.testing.assert_frame_equal(handle.frame("events"), live.events)
        replayed = handle.stop()
    assert ebpfkit.sessions() == {}
    assert replayed.recorded["path"] == str(path)
    assert repr(replayed).startswith("RECORDING made on")
    assert replayed.stopped_by == live.stopped_by
    pd.testing.assert_frame_equal(replayed.events, live.events)
    pd.testing.assert_frame_equal(replayed.maps["per_pid"], live.maps["per_pid"])
    assert not any("differs" in n for n in replayed.notes)


@needs_root
def test_replay_stops_by_the_magics_and_notes_a_changed_program(ip, recorded, folder):
    live, _, _, _ = recorded
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(folder)):
        bpf(ip, LINE, OPENS.replace("per_pid.increment", "per_pid.atomic_increment"))
        replayed = ip.run_line_magic("bpf", "--stop bgopens")
        assert any("differs from the one recorded" in n for n in replayed.notes)
        pd.testing.assert_frame_equal(replayed.events, live.events)
        bpf(ip, LINE, OPENS)
        _, out = printed(lambda: ip.run_line_magic("bpf", "--stop-all"))
    assert out.startswith("bgopens: traced ")
    assert ebpfkit.sessions() == {}
    with pytest.raises(BadArguments, match="no background trace named 'bgopens'"):
        ip.run_line_magic("bpf", "--stop bgopens")


@needs_root
def test_live_mode_saves_nothing(ip, cat, marker, tmp_path):
    before = held()
    with env(EBPFKIT_MODE="live", EBPFKIT_RECORDINGS=str(tmp_path)):
        handle = bpf(ip, LINE, OPENS)
        try:
            assert not isinstance(handle, ReplayedTrace)
            open_in_cell(ip, cat, marker, 2)
            wait_for("2 opens in the frame so far", lambda: opened(handle.frame(), marker) == 2)
        finally:
            result, out = printed(handle.stop)
    assert opened(result.events, marker) == 2
    assert out == "" and list(tmp_path.iterdir()) == []
    assert held() == before


def test_replay_without_the_recording_names_the_path(ip, tmp_path):
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(tmp_path)):
        with pytest.raises(RecordingError, match="no recording at .*nothing-here.ebpfkit"):
            bpf(ip, "--background nothing --recording nothing-here", OPENS)
    assert "nothing" not in ebpfkit.sessions()
    assert "nothing" not in ip.user_ns


def test_out_is_still_refused(ip, tmp_path):
    with env(EBPFKIT_MODE="replay", EBPFKIT_RECORDINGS=str(tmp_path)):
        with pytest.raises(BadArguments, match="takes no --out"):
            bpf(ip, "--background x --out y --recording r", OPENS)
    assert ebpfkit.sessions() == {}


CHILD = """
import json, sys
sys.path.insert(0, {project!r})
import ebpfkit
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ebpfkit")
out = {{"replaying": ebpfkit.replaying()}}
handle = shell.run_cell_magic("bpf", {line!r}, {cell!r})
out["listed"] = shell.run_line_magic("bpf", "--list")["status"].tolist()
out["rows"] = len(handle.frame())
out["paths"] = handle.frame()["path"].tolist()
r = shell.run_line_magic("bpf", "--stop bgopens")
out["repr"] = repr(r)
out["sessions"] = list(ebpfkit.sessions())
try:
    shell.run_cell_magic("bpf", "--background other --recording nowhere", {cell!r})
    out["missing"] = "no error"
except Exception as e:
    out["missing"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


@needs_root
def test_replay_as_nobody_without_bcc(recorded, folder):
    live, _, _, _ = recorded
    project = str(Path(ebpfkit.__file__).parent.parent)
    for part in [*Path(sys.executable).parents, Path(project, "ebpfkit")]:
        if part.stat().st_mode & 0o005 != 0o005:
            pytest.skip(f"{part} is not readable by everyone, so nobody cannot run this Python")
    script = CHILD.format(project=project, cell=OPENS, line=LINE)
    done = _child(folder, textwrap.dedent(script))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replaying"] is True
    assert out["listed"] == ["recording (replayed, not live)"]
    assert out["rows"] == len(live.events)
    assert out["paths"] == live.events["path"].tolist()
    assert out["repr"].startswith("RECORDING made on ")
    assert out["sessions"] == []
    missing = out["missing"]
    assert missing.startswith(f"{NotPermitted.__name__}: loading tracing programs needs root")
    assert f"there is none at {folder}/nowhere.ebpfkit" in missing
