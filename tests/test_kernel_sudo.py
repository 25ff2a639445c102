"""The sudo kernel for a non-root user, through the real sudo, end to end.

As root the test installs `ebpfkit kernel install --sudo` into a folder of its own and adds
the rule `sudoers_line()` gives for the user ``nobody`` as a sudoers drop-in (checked with
`visudo -cf`, removed at the end whatever happens). Then, as ``nobody`` (runuser, a home of
its own, JUPYTER_PATH at that folder), jupyter_client starts the kernel by its name and runs
cells in it: it is root, `%%bpf` traces a workload's getppid() calls and counts each one,
and a background trace is left running when the kernel is shut down; a second kernel is
killed (sudo is, and the kernel must notice). After either, neither the kernel nor sudo runs,
and none of the kernel's BPF programs is loaded. `ebpfkit kernel check`
as ``nobody`` says ok with the rule, and without it fails naming the rule to add.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

USER = "nobody"  # present on every Linux system; the test creates no user of its own
CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: it writes a sudoers rule and runs commands as nobody"
)

# Runs as nobody: for each session on stdin (JSON), start the kernel by its kernelspec name,
# run the cells, shut it down (now=True: a kill, as a server does when a kernel will not stop),
# and print what was seen as JSON. The kernel writes to kernel.log, not to the driver's pipe,
# which a kernel that outlives it would hold open.
DRIVER = """\
import json, subprocess, sys
from jupyter_client.manager import KernelManager


def run(cells, now):
    km = KernelManager(kernel_name=sys.argv[1])
    with open("kernel.log", "a") as log:
        km.start_kernel(stdout=log, stderr=subprocess.STDOUT)
    seen = {"launcher_pid": km.provisioner.process.pid, "cells": []}
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        for code in cells:
            text = []

            def hook(msg):
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    text.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    text.append(content["data"].get("text/plain", ""))
                elif kind == "error":
                    text.append(f"{content['ename']}: {content['evalue']}")

            reply = kc.execute_interactive(code, output_hook=hook, timeout=120)
            status = reply["content"]["status"]
            seen["cells"].append({"status": status, "text": "".join(text)})
            if status != "ok":
                break
    finally:
        kc.stop_channels()
        try:
            km.shutdown_kernel(now=now)
        except Exception as e:
            seen["shutdown_error"] = repr(e)
        seen["alive_after_shutdown"] = km.is_alive()
    return seen


print(json.dumps([run(s["cells"], s["now"]) for s in json.load(sys.stdin)]))
"""

# The traced workload: a distinct command name, then a known number of getppid() calls.
WORKLOAD = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
for _ in range(int(sys.argv[2])):
    os.getppid()
"""

TRACE = """\
%%bpf -c {comm} -o seen --run "{python} {workload} {comm} {calls}"
struct event {{ u32 pid; char comm[16]; }};
BPF_RINGBUF_OUTPUT(events, 16);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {{
    struct event e = {{}};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}}"""

# Left running on purpose: shutting the kernel down must take its programs with it.
BACKGROUND = """\
%%bpf --background held
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    return 0;
}"""

HELD_PROGS = """\
ids = set()
for fd in os.listdir('/proc/self/fdinfo'):
    try:
        lines = Path('/proc/self/fdinfo', fd).read_text().splitlines()
    except OSError:
        continue
    ids |= {int(line.split()[1]) for line in lines if line.startswith('prog_id:')}
print('progs', sorted(ids))"""


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    why = f"{tool} is not installed (scripts/setup.sh installs sudo)"
    if CI:
        pytest.fail(f"CI must run the sudo kernel test, but {why}")
    pytest.skip(why)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited too


def _tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def _loaded_progs() -> set[int]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"] for p in json.loads(out or "[]")}


@pytest.fixture
def place():
    """A folder the user can read (pytest's tmp_path is root's alone), with a home for it."""
    _need("sudo")
    _need("visudo")
    _need("runuser")
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"there is no user {USER!r} to run the kernel as")
    root = Path(tempfile.mkdtemp(prefix="ebpfkit-sudo-"))
    root.chmod(0o755)
    home = root / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    yield root, home
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sudoers():
    """Install a sudoers drop-in (validated by visudo); removed at the end, whatever happened."""
    path = Path(f"/etc/sudoers.d/ebpfkit-test-{secrets.token_hex(6)}")

    def add(line: str) -> Path:
        # Written under a name with a dot, which sudo's @includedir skips, then renamed.
        draft = path.with_name(path.name + ".draft")
        draft.write_text(line + "\n")
        draft.chmod(0o440)
        done = subprocess.run(["visudo", "-cf", str(draft)], capture_output=True, text=True)
        if done.returncode != 0:
            draft.unlink()
            pytest.fail(f"visudo rejects {line!r}: {done.stdout}{done.stderr}")
        draft.rename(path)
        return path

    try:
        yield add
    finally:
        for leftover in (path, path.with_name(path.name + ".draft")):
            leftover.unlink(missing_ok=True)


def _as_user(home: Path, jupyter: Path, argv: list[str], **options):
    """Run argv as USER with a clean environment: its own HOME, Jupyter looking at `jupyter`."""
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "JUPYTER_PATH": str(jupyter),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["runuser", "-u", USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], *argv],
        cwd=home,
        capture_output=True,
        text=True,
        **options,
    )


def test_a_non_root_user_gets_a_root_kernel_through_sudo(place, sudoers):
    from ebpfkit.kernelspec import sudoers_line

    root, home = place
    name = f"ebpfkit-sudo-{secrets.token_hex(3)}"
    jupyter = root / "share/jupyter"
    # As root, for others: the spec runs the kernel through sudo whoever installs it.
    done = subprocess.run(
        [sys.executable, "-m", "ebpfkit", "kernel", "install", "--sudo", "--quiet"]
        + ["--prefix", str(root), "--name", name],
        env={**os.environ, "JUPYTER_PATH": str(jupyter)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    folder = jupyter / "kernels" / name
    assert folder.stat().st_mode & 0o005 == 0o005, "other users cannot read the kernelspec"
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][:2] == [shutil.which("sudo"), "-n"]
    assert spec["argv"][3] == sys.executable
    line = sudoers_line(sys.executable, USER)
    assert line == f"{USER} ALL=(root) NOPASSWD:SETENV: {sys.executable}"
    check = [sys.executable, "-m", "ebpfkit", "kernel", "check", "--name", name]

    rule = sudoers(line)
    done = _as_user(home, jupyter, check, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"ok: {name}: starts as uid 0"), (
        done.stderr
    )

    # The kernel, started by nobody as JupyterLab would start it: once shut down as asked,
    # once killed. Each time a background trace is left running.
    comm, calls = f"eksudo-{secrets.token_hex(4)}", 20 + secrets.randbelow(60)
    (root / "driver.py").write_text(DRIVER)
    (root / "workload.py").write_text(WORKLOAD)
    trace = TRACE.format(
        comm=comm, python=sys.executable, workload=root / "workload.py", calls=calls
    )
    whoami = "import os\nfrom pathlib import Path\nprint('uid', os.geteuid(), 'pid', os.getpid())"
    count = "print('counted', len(seen.events), sorted(set(seen.events.comm)), seen.total_lost)"
    sessions = [
        {
            "cells": [whoami, "%load_ext ebpfkit", trace, count, BACKGROUND, HELD_PROGS],
            "now": False,
        },
        {"cells": [whoami, "%load_ext ebpfkit", BACKGROUND, HELD_PROGS], "now": True},
    ]
    done = _as_user(
        home,
        jupyter,
        [sys.executable, str(root / "driver.py"), name],
        input=json.dumps(sessions),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:] + _tail(home / "kernel.log")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for session, seen in zip(sessions, results):
        statuses = [c["status"] for c in seen["cells"]]
        assert statuses == ["ok"] * len(session["cells"]), (
            seen["cells"],
            _tail(home / "kernel.log"),
        )
        seen["texts"] = [c["text"] for c in seen["cells"]]
        assert seen["texts"][0].split()[:2] == ["uid", "0"], seen["texts"][0]

    texts = results[0]["texts"]
    assert "attached: tracepoint syscalls:sys_enter_getppid" in texts[2], texts[2]
    assert texts[3].strip() == f"counted {calls} [{comm!r}] 0", texts[3]

    # Nothing of either kernel outlives it: not the kernel, not sudo, not its BPF programs.
    for seen, how in zip(results, ("shut down", "killed")):
        pid, launcher = int(seen["texts"][0].split()[3]), seen["launcher_pid"]
        held = json.loads(seen["texts"][-1].split(" ", 1)[1])
        assert held, f"the background trace holds no BPF program: {seen['texts'][-2]}"
        assert "shutdown_error" not in seen, seen["shutdown_error"]
        assert seen["alive_after_shutdown"] is False
        deadline = time.monotonic() + 20
        while (_alive(pid) or _alive(launcher)) and time.monotonic() < deadline:
            time.sleep(0.2)
        kernel_left, sudo_left = _alive(pid), _alive(launcher)
        for left in [p for p in (pid, launcher) if _alive(p)]:
            os.kill(left, signal.SIGKILL)  # a failed test leaves no root kernel behind
        assert not kernel_left, f"the root kernel outlived sudo when {how}"
        assert not sudo_left, f"sudo outlived the kernel when {how}"
        # The kernel frees a program after its last file closes, a moment later (RCU).
        while set(held) & _loaded_progs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not set(held) & _loaded_progs(), f"BPF programs {held} outlived the kernel"

    # Without the rule, the check fails and names the rule to add.
    rule.unlink()
    done = _as_user(home, jupyter, check, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "sudo refused" in done.stderr and done.stderr.strip().endswith(line), done.stderr
