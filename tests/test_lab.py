"""The lessons command: scripts/lab.sh (what `make lab` runs), as a student's browser meets it.

Starts it on a free port with a known token, waits for the server, checks that it listens on
127.0.0.1 only and refuses requests without the token, that the notebooks' kernel `ebpfkit`
is listed as the root kernel, then opens a notebook session through the REST API and runs a
notebook's cells over the kernel's websocket, as JupyterLab does: `%load_ext ebpfkit`, a
`%%bpf` ring-buffer trace, a look at the events. Then it shuts the server down and checks
that no process of it, and no BPF program or attachment of its kernel, is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from helpers import GETPPID_CELL as TRACE
from helpers import needs_root

websocket = pytest.importorskip("websocket", reason="websocket-client is not installed")

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 240  # s: lab.sh runs the set-up first (seconds once done, more after a change)

CELLS = [
    "%load_ext ebpfkit",
    "import os\nprint('kernel uid', os.geteuid(), 'pid', os.getpid())",
    TRACE,
    "print('commands seen:', sorted(set(seen.events.comm)))",
]

# Each test that loads programs says so: the others run without root too.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited too.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kernel_pid(kernel_id: str) -> int:
    """The process started with this kernel's connection file."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"kernel-{kernel_id}.json".encode() in cmdline and b"ipykernel" in cmdline:
                return int(entry.name)
    raise AssertionError(f"no process runs kernel {kernel_id}")


def _bpf_held(pid: int) -> dict:
    """BPF programs and maps ``pid`` holds open, and perf attachments it owns."""
    held = {"fds": [], "attachments": []}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("anon_inode:bpf") or target == "anon_inode:[perf_event]":
            held["fds"].append(target)
    out = subprocess.run(
        ["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    held["attachments"] = [a for a in json.loads(out or "[]") if a.get("pid") == pid]
    return held


class Kernel:
    """A kernel's websocket, speaking the Jupyter messaging protocol as JupyterLab does."""

    def __init__(self, base: str, token: str, kernel_id: str):
        url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: token {token}"], timeout=120
        )
        self.session = uuid.uuid4().hex

    def execute(self, code: str) -> tuple[dict, str]:
        """Run a cell; returns its execute_reply content and its outputs as text."""
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": self.session,
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        reply, idle, text = None, False, []
        while reply is None or not idle:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if msg["channel"] == "shell" and kind == "execute_reply":
                reply = content
            elif kind == "stream":
                text.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                text.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                text.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return reply, "".join(text)

    def close(self):
        self.ws.close()


@pytest.fixture
def lab(tmp_path):
    """scripts/lab.sh on a free port with a known token; stopped (its own group) at the end."""
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", "scripts/lab.sh", "--port", str(port), "--token", token],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the server and its kernels
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"lab.sh exited with {proc.returncode}:\n{log.read_text()}")
        try:
            r = requests.get(
                f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=5
            )
            if r.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            pytest.fail(f"no server on port {port} after {START_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.5)
    yield {"base": base, "token": token, "port": port, "proc": proc, "log": log}
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@needs_root
def test_the_lessons_command_serves_the_root_kernel_and_runs_a_notebook(lab):
    base, token, proc = lab["base"], lab["token"], lab["proc"]
    auth = {"Authorization": f"token {token}"}

    # The address with its token, printed for the student to open.
    assert f"http://127.0.0.1:{lab['port']}/lab?token={token}" in lab["log"].read_text()
    # Localhost only, and nothing without the token.
    assert _listening(lab["port"]) == {"0100007F"}, _listening(lab["port"])
    assert requests.get(f"{base}/api/status", timeout=10).status_code == 403
    assert requests.get(f"{base}/api/status?token=wrong{token}", timeout=10).status_code == 403

    specs = requests.get(f"{base}/api/kernelspecs", headers=auth, timeout=10).json()
    assert specs["default"] == "ebpfkit"
    spec = specs["kernelspecs"]["ebpfkit"]["spec"]
    assert spec["display_name"] == "Python 3 (ebpfkit, root)"
    # The server's settings keep the news pop-up ("Would you like to get notified about
    # official Jupyter news?") and update checks away from a workshop room, for any browser.
    notification = requests.get(
        f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification",
        headers=auth,
        timeout=10,
    ).json()
    # overrides.json changes the schema's defaults; a user's own choice would sit in settings.
    defaults = {k: v.get("default") for k, v in notification["schema"]["properties"].items()}
    effective = {**defaults, **notification["settings"]}
    assert effective["fetchNews"] == "false", effective
    assert effective["checkForUpdates"] is False, effective
    # The lesson folder is what the server shows.
    listed = requests.get(f"{base}/api/contents", headers=auth, timeout=10).json()
    assert "00-setup.ipynb" in {item["name"] for item in listed["content"]}

    # Open a notebook as JupyterLab does: a session, whose kernel is the notebook's.
    session = requests.post(
        f"{base}/api/sessions",
        headers=auth,
        json={"path": "test-lab.ipynb", "type": "notebook", "kernel": {"name": "ebpfkit"}},
        timeout=60,
    ).json()
    kernel_id = session["kernel"]["id"]
    assert session["kernel"]["name"] == "ebpfkit"
    kernel = Kernel(base, token, kernel_id)
    try:
        outputs = []
        for cell in CELLS:
            reply, text = kernel.execute(cell)
            assert reply["status"] == "ok", (cell, reply, text)
            outputs.append(text)
    finally:
        kernel.close()
    pid = _kernel_pid(kernel_id)
    assert f"kernel uid 0 pid {pid}" in outputs[1]
    assert "attached: tracepoint syscalls:sys_enter_getppid" in outputs[2], outputs[2]
    assert "events: received" in outputs[2] and "lost 0" in outputs[2], outputs[2]
    assert "'python3'" in outputs[3], outputs[3]
    # The probe did not outlive its cell, though the kernel lives on.
    assert _bpf_held(pid) == {"fds": [], "attachments": []}

    # Shut down through the API, as JupyterLab's File > Shut Down does.
    r = requests.post(f"{base}/api/shutdown", headers=auth, timeout=30)
    assert r.status_code in (200, 204), r.text
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (_alive(pid) or _group_alive(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the kernel outlived the server"
    assert not _group_alive(proc.pid), "a process of the lessons command outlived it"
    assert _listening(lab["port"]) == set()


# --- the kernelspec itself, installed in a folder of the test's own --------------------------


@pytest.fixture
def prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share/jupyter"))
    return str(tmp_path)


@needs_root
def test_the_root_kernel_is_this_python_run_directly(prefix):
    from ebpfkit import kernelspec

    folder = kernelspec.install("ebpfkit", prefix=prefix)
    spec = json.loads((Path(folder) / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable  # the venv's link, not the Python it points to
    assert spec["argv"][-2:] == ["-f", "{connection_file}"]
    assert spec["display_name"] == "Python 3 (ebpfkit, root)"
    assert "EBPFKIT_MODE" not in spec.get("env", {})
    assert kernelspec.check("ebpfkit") == (True, "ebpfkit: starts as uid 0")


def test_a_sudo_kernel_that_sudo_refuses_says_which_rule_to_add(prefix, tmp_path, monkeypatch):
    from ebpfkit import kernelspec

    # A stand-in for sudo that refuses as the real one does without a NOPASSWD rule.
    fake = tmp_path / "bin/sudo"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    kernelspec.install("ebpfkit-sudo", prefix=prefix, sudo=True, env={"LESSON": "1"})
    _, spec = kernelspec.find("ebpfkit-sudo")
    assert spec["argv"][:3] == [
        str(fake),
        "-n",
        "--preserve-env=EBPFKIT_MODE,EBPFKIT_RECORDINGS,JPY_PARENT_PID,LESSON,PYTHONPATH",
    ]
    assert spec["argv"][3] == sys.executable
    ok, line = kernelspec.check("ebpfkit-sudo")
    assert not ok
    assert "a password is required" in line
    assert f"NOPASSWD:SETENV: {sys.executable}" in line


def test_bad_kernel_options_get_one_clear_error(prefix):
    from ebpfkit import kernelspec
    from ebpfkit.errors import BadArguments

    with pytest.raises(BadArguments, match="bad kernel name"):
        kernelspec.install("no spaces", prefix=prefix)
    with pytest.raises(BadArguments, match="needs no root"):
        kernelspec.install("x", prefix=prefix, sudo=True, replay=True)
    with pytest.raises(BadArguments, match="no Jupyter kernel named 'absent'"):
        kernelspec.check("absent")
    done = subprocess.run(
        [sys.executable, "-m", "ebpfkit", "kernel", "install", "--prefix", prefix, "--env", "X"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ebpfkit kernel: --env 'X': give NAME=VALUE, e.g. --env EBPFKIT_MODE=replay"
    )
