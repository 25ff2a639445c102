"""The live view and background traces, in a plain IPython shell and in real kernels.

- Without widgets (a terminal IPython, here the ``ip`` fixture) a ``%%bpf`` cell prints a
  progress line and returns its TraceResult.
- A background trace sees the events of workloads that other cells run while it traces,
  its ``.frame()`` grows, ``stop()`` returns every event, and nothing stays attached.
- In a real kernel (jupyter_client), the panel's Stop button, clicked while the cell is
  busy tracing (a ``comm_msg`` like the browser's), ends the trace and keeps its data;
  an execute request sent meanwhile runs after the cell, in order.
- A kernel shut down with a background trace running detaches it: its programs are gone.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import bpf, needs_root, prog_ids
from test_cleanup import TRACE_PIPE_BUSY, held

import ebpfkit
from ebpfkit.errors import AttachError, BadArguments

pytestmark = needs_root

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds to wait for something that should happen much sooner
COMM = "ebpfkit-livecat"  # 15 characters: the kernel keeps them all

OPENS = r"""
struct open_event {
    u64 ts;
    u32 pid;
    char comm[16];
    char path[64];
};
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    struct open_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    bpf_probe_read_user_str(&e.path, sizeof(e.path), args->filename);
    events.perf_submit(args, &e, sizeof(e));
    return 0;
}
"""


@pytest.fixture
def cat(tmp_path) -> Path:
    """A copy of cat with a command name of its own: the traces see only the test's opens."""
    path = tmp_path / COMM
    shutil.copy(shutil.which("cat"), path)
    return path


@pytest.fixture
def marker() -> str:
    """A path short enough for the event's 64 bytes; it need not exist, only be opened."""
    return f"/tmp/ebpfkit-live-{os.getpid()}-{random.randrange(10**9)}"


def wait_for(what: str, condition, timeout: float = WAIT):
    """Wait until ``condition()`` is true; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what}: not seen within {timeout:.0f} s")


def opened(df, path) -> int:
    return int((df["path"] == str(path)).sum()) if df is not None and len(df) else 0


# --- a plain IPython shell: the text line ------------------------------------------------


def test_text_progress_line_then_the_result(ip, capsys, cat, marker):
    result = bpf(ip, f"--comm {COMM} --run '{cat} {marker}; {cat} {marker}'", OPENS)
    out = capsys.readouterr().out
    assert isinstance(result, ebpfkit.TraceResult)
    assert opened(result.events, marker) == 2
    # The progress line while it traced, then the final line with the result's figures.
    assert re.search(r"^tracing: \d+\.\d s, [\d,]+ events \([\d,]+/s\), lost \d+$", out, re.M)
    events = result.received["events"]
    final = f"{events:,} events, lost {result.total_lost} (stopped by workload exit)"
    assert re.search(rf"^traced \d+\.\d\d s, {re.escape(final)}$", out, re.M), out


def test_live_off_prints_nothing(ip, capsys):
    ip.run_line_magic("config", "BpfMagics.live = 'off'")
    try:
        result = bpf(ip, "-d 0.2", OPENS)
    finally:
        ip.run_line_magic("config", "BpfMagics.live = 'auto'")
    assert result.stopped_by == "duration"
    assert "tracing:" not in capsys.readouterr().out


# --- background traces in the same shell -------------------------------------------------


def test_background_trace_sees_other_cells_work(ip, cat, marker):
    before = held()
    handle = bpf(ip, f"--background opens --comm {COMM}", OPENS)
    try:
        assert ip.user_ns["opens"] is handle
        assert ebpfkit.sessions() == {"opens": handle}
        assert handle.status == "tracing"
        # Other cells run while it traces: each opens the marker through the copy of cat.
        workload = (
            "import subprocess\n"
            "for _i in range({n}):\n"
            f"    subprocess.run([{str(cat)!r}, {str(marker)!r}], capture_output=True)\n"
        )
        ip.run_cell(workload.format(n=3)).raise_error()
        wait_for("3 opens in the frame so far", lambda: opened(handle.frame(), marker) == 3)
        ip.run_cell(workload.format(n=2)).raise_error()
        wait_for("5 opens in the frame so far", lambda: opened(handle.frame(), marker) == 5)
        assert "opens" in ip.run_line_magic("bpf", "--list")["name"].tolist()
    finally:
        result = handle.stop()
    assert result.stopped_by == "stop()"
    assert opened(result.events, marker) == 5
    assert result.total_lost == 0
    assert handle.result is result and handle.status == "stopped by stop()"
    assert opened(handle.frame(), marker) == 5  # after stop: the result's events
    assert ebpfkit.sessions() == {}
    assert held() == before


def test_stop_magics_and_unload_detach_everything(ip):
    before = held()
    bpf(ip, "--background one -d 600", OPENS)
    bpf(ip, "--background two", OPENS)
    with pytest.raises(BadArguments, match="named one is running"):
        bpf(ip, "--background one", OPENS)
    result = ip.run_line_magic("bpf", "--stop one")
    assert result.stopped_by == "%bpf --stop"
    assert set(ebpfkit.sessions()) == {"two"}
    two = ebpfkit.sessions()["two"]
    ip.run_line_magic("unload_ext", "ebpfkit")
    try:
        assert ebpfkit.sessions() == {}
        assert two.result.stopped_by == "%unload_ext ebpfkit"
        assert held() == before
    finally:
        ip.run_line_magic("load_ext", "ebpfkit")
    with pytest.raises(BadArguments, match="no background trace named 'two'"):
        ip.run_line_magic("bpf", "--stop two")


def test_foreground_printk_refused_while_a_background_trace_holds_trace_pipe(ip):
    printk = r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    bpf_trace_printk("getppid\n");
    return 0;
}
"""
    try:
        handle = ebpfkit.start(printk, name="printer", progress=False)
    except AttachError as e:
        if TRACE_PIPE_BUSY in str(e):
            pytest.skip("another process reads trace_pipe right now")
        raise
    try:
        with pytest.raises(AttachError, match="background trace printer holds"):
            bpf(ip, "-d 0.2", printk)
        os.getppid()
        wait_for("a printk line so far", lambda: len(handle.printk) > 0)
    finally:
        result = handle.stop()
    assert len(result.printk) > 0


# --- a real kernel -----------------------------------------------------------------------


class Kernel:
    """A kernel started as Jupyter starts it, driven through its channels."""

    def __init__(self):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        names = KernelSpecManager().find_kernel_specs()
        self.km = KernelManager(kernel_name="ebpfkit" if "ebpfkit" in names else "python3")
        self.km.start_kernel(cwd=str(ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=WAIT)
        self.pid = int(self.run("import os; print(os.getpid())")["stdout"])

    def messages(self, timeout: float = WAIT * 2):
        """iopub messages as they come; fails if none comes for ``timeout`` seconds."""
        import queue

        while True:
            try:
                yield self.kc.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"the kernel said nothing for {timeout:.0f} s")

    def run(self, code: str) -> dict:
        """Execute ``code``; its stdout, results and errors once the kernel is idle."""
        msg_id = self.kc.execute(code)
        return self.collect(msg_id)

    def collect(self, msg_id: str, seen=None) -> dict:
        out = {"stdout": "", "results": [], "errors": []}
        for msg in self.messages():
            if seen is not None:
                seen.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out["stdout"] += content["text"]
            elif kind == "execute_result":
                out["results"].append(content["data"])
            elif kind == "error":
                out["errors"].append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel()


def programs_of(pid: int) -> set[int]:
    """IDs of the BPF programs process ``pid`` holds through a descriptor."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        ids |= {int(m) for m in re.findall(r"^prog_id:\s+(\d+)", info, re.M)}
    return ids


@pytest.fixture
def kernel():
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


def widget_states(msg) -> tuple[str, dict] | None:
    if msg["msg_type"] == "comm_open" or (
        msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update"
    ):
        return msg["content"]["comm_id"], msg["content"]["data"].get("state", {})
    return None


def test_stop_button_ends_a_busy_cell_and_keeps_the_data(kernel, cat, marker):
    assert not kernel.run("%load_ext ebpfkit")["errors"]
    assert programs_of(kernel.pid) == set()
    loop = f"while :; do {cat} {marker}; sleep 0.05; done"
    cell = kernel.kc.execute(f'%%bpf --comm {COMM} -d 120 --run "{loop}"\n{OPENS}')
    widgets: dict[str, dict] = {}
    seen: list = []
    for msg in kernel.messages():
        seen.append(msg)
        if msg["msg_type"] == "error":
            pytest.fail(f"the cell failed: {msg['content']['evalue']}")
        found = widget_states(msg)
        if found:
            widgets.setdefault(found[0], {}).update(found[1])
        counters = [
            w for w in widgets.values() if "ebpfkit-live-events" in w.get("_dom_classes", [])
        ]
        if counters and int(re.sub(r"\D", "", counters[0].get("value", "")) or 0) > 0:
            break  # the counter rose: the cell is busy tracing
    (stop_id,) = [
        cid
        for cid, w in widgets.items()
        if w.get("description") == "Stop" and "ebpfkit-live-stop" in w.get("_dom_classes", [])
    ]
    roots = [w for w in widgets.values() if "ebpfkit-live" in w.get("_dom_classes", [])]
    assert len(roots) == 1
    # A cell sent while the trace runs must wait for it, whatever the click does.
    after = kernel.kc.execute("print('after the trace')")
    click = {"comm_id": stop_id, "data": {"method": "custom", "content": {"event": "click"}}}
    kernel.kc.shell_channel.send(kernel.kc.session.msg("comm_msg", click))
    out = kernel.collect(cell, seen)
    assert not out["errors"], out["errors"]
    text = out["results"][0]["text/plain"]
    assert "(stopped by stop button)" in text, text
    assert "text/html" in out["results"][0]
    received = int(re.search(r"events: received (\d+) events", text)[1])
    assert received > 0
    # The panel's own end: its status and the plain text nbconvert would keep.
    statuses = [
        s["value"]
        for m in seen
        if (f := widget_states(m))
        and (s := f[1])
        and "value" in s
        and "ebpfkit-live-status" in widgets[f[0]].get("_dom_classes", [])
    ]
    assert statuses and "stopped by stop button" in statuses[-1]
    updates = [m for m in seen if m["msg_type"] == "update_display_data"]
    assert updates and updates[-1]["content"]["data"]["text/plain"].startswith("traced ")
    assert f"{received:,} events" in updates[-1]["content"]["data"]["text/plain"]
    later = kernel.collect(after)
    assert later["stdout"] == "after the trace\n"
    assert programs_of(kernel.pid) == set()


def test_kernel_shutdown_detaches_a_background_trace(tmp_path):
    report = tmp_path / "at-exit.json"
    k = Kernel()
    try:
        assert not k.run("%load_ext ebpfkit")["errors"]
        # Registered before ebpfkit's own exit hook, so it runs after it (last in, first out).
        setup = (
            "import atexit, json\n"
            "def _report():\n"
            f"    open({str(report)!r}, 'w').write(json.dumps(bg.status))\n"
            "atexit.register(_report)\n"
        )
        assert not k.run(setup)["errors"]
        started = k.run(f"%%bpf --background bg\n{OPENS}")
        assert not started["errors"], started["errors"]
        ours = programs_of(k.pid)
        assert ours
        assert ours <= prog_ids()
    finally:
        k.close()  # a shutdown request, as Jupyter sends it
    assert json.loads(report.read_text()) == "stopped by kernel shutdown"
    assert not ours & prog_ids()


def test_shell_subprocess_exit_detaches(tmp_path):
    """A terminal IPython that exits with a background trace running leaves nothing."""
    script = tmp_path / "session.ipy"
    script.write_text(
        "%load_ext ebpfkit\n"
        "import atexit, ebpfkit\n"
        # Registered before ebpfkit's own exit hook, so it runs after it (last in, first out).
        "atexit.register(lambda: print('STATUS', bg.status))\n"
        f"bg = ebpfkit.start('''{OPENS}''', name='bg')\n"
        "import os, re, pathlib\n"
        "ids = set()\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try: info = pathlib.Path(f'/proc/self/fdinfo/{fd}').read_text()\n"
        "    except OSError: continue\n"
        "    ids |= {int(m) for m in re.findall(r'^prog_id:\\s+(\\d+)', info, re.M)}\n"
        "print('IDS', sorted(ids))\n"
    )
    ipython = ROOT / ".venv" / "bin" / "ipython"
    if not ipython.exists():
        pytest.skip(f"no IPython launcher at {ipython}")
    proc = subprocess.run(
        [str(ipython), "--quick", "--no-banner", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    ids = set(json.loads(re.search(r"^IDS (\[.*\])$", proc.stdout, re.M)[1]))
    assert ids
    assert "STATUS stopped by kernel shutdown" in proc.stdout
    assert not ids & prog_ids()
