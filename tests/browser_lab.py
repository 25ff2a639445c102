"""The browser test's machinery: a private JupyterLab server and a headless Chromium.

The server runs on 127.0.0.1 with a random token, its settings, workspaces, runtime files and
IPython profile in a temporary folder, so nothing of the user's own lab state leaks in or out.
Chromium is Debian's (/usr/bin/chromium), driven by Playwright; Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ebpfkit.handouts import HEADLESS_FLAGS

CHROMIUM = "/usr/bin/chromium"
# What Chromium needs here, as root (the handouts' printer uses the same).
CHROMIUM_ARGS = list(HEADLESS_FLAGS)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does it)"
    return None


def _jupyter() -> str:
    venv = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "jupyter"
    if venv.exists():
        return str(venv)
    return str(Path(sys.executable).with_name("jupyter"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list:
    """Every live process below pid (psutil objects)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class Lab:
    """A JupyterLab server of our own; ``stop()`` ends it, its kernels and their children."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.root = tmp / "notebooks"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "jupyter.log"
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, object] = {}  # every process the server started, kernels included

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var, sub in (
            ("JUPYTER_CONFIG_DIR", "config"),
            ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"),
            ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
            ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
            ("IPYTHONDIR", "ipython"),
        ):
            path = self.tmp / sub
            path.mkdir(parents=True, exist_ok=True)
            env[var] = str(path)
        env.pop("JUPYTER_CONFIG_PATH", None)
        env.pop("JUPYTER_PATH", None)
        env["EBPFKIT_MODE"] = "live"  # the kernel itself, never a recording
        # Its toast asking about Jupyter news would sit over the notebook in the screenshots.
        notes = self.tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True, exist_ok=True)
        (notes / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        return env

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            _jupyter(),
            "lab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            # No calls home: the news feed and the update check would only time out here.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            env=self.env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.25)

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(
            f"{self.url}/api/{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def note_processes(self) -> None:
        """Remember the server's children now (kernels live in sessions of their own)."""
        if self.proc is not None:
            for p in descendants(self.proc.pid):
                self.seen.setdefault(p.pid, p)

    def kernels(self) -> list[dict]:
        return self.api("kernels")

    def wait_kernel_idle(self, timeout: float = 60.0) -> dict:
        """Wait until the lab has a kernel and it is idle; return its model."""
        deadline = time.monotonic() + timeout
        kernels: list[dict] = []
        while time.monotonic() < deadline:
            try:
                kernels = self.kernels()
            except urllib.error.HTTPError as e:
                # Seen once while the kernel was starting: a 500 that the next ask did not get.
                kernels = [{"execution_state": f"HTTP {e.code} from /api/kernels"}]
                time.sleep(0.25)
                continue
            self.note_processes()
            if kernels and all(k["execution_state"] == "idle" for k in kernels):
                return kernels[0]
            time.sleep(0.25)
        raise AssertionError(f"no idle kernel after {timeout:.0f} s: {kernels}\n{self.log()}")

    def stop(self) -> list:
        """Shut the server and its kernels down; return the processes still alive after it."""
        import psutil

        if self.proc is None:
            return []
        self.note_processes()
        try:
            self.api("shutdown", method="POST")  # shuts every kernel down first
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        procs = list(self.seen.values())
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:  # only processes this server started
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc = None
        return alive


def chromium_pids() -> set[int]:
    """Chromium processes below this test process (other sessions' browsers are not ours)."""
    return {p.pid for p in descendants(os.getpid()) if "chrom" in p.name().lower()}


def launch(playwright, profile: Path):
    """A headless Chromium context with a fresh, empty profile."""
    if profile.exists():
        shutil.rmtree(profile)
    profile.mkdir(parents=True)
    return playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
    )


NUMBER = re.compile(r"\d+(?:[,\u00a0\u202f']\d{3})*")


def first_number(text: str) -> int:
    """The first number in a text, thousands separators allowed ("events 12,345" -> 12345)."""
    m = NUMBER.search(text)
    if not m:
        raise AssertionError(f"no number in {text!r}")
    return int(re.sub(r"\D", "", m.group()))


def run_all_cells(page) -> None:
    """Run > Run All Cells, from the menu bar, as a person would."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def wait_cell_done(page, index: int, timeout_ms: float) -> None:
    """Wait until cell ``index`` shows an execution count (not ``[*]``)."""
    prompt = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt")
    page.wait_for_function(
        "el => /\\[\\d+\\]/.test(el.textContent)", arg=prompt.element_handle(), timeout=timeout_ms
    )


def wait_for_panel(page, index: int, selector: str, timeout: float = 90.0) -> None:
    """Wait until the running cell ``index`` shows ``selector``; fail at once, with the
    notebook's text, when the cell ends (or is aborted by an earlier error) without it."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cells.nth(index).locator(selector).count():
            return
        # "[*]:" while queued or running; "[3]:" once done, "[ ]:" when aborted.
        if "*" not in cells.nth(index).locator(".jp-InputPrompt").inner_text():
            texts = "\n---\n".join(c.inner_text() for c in cells.all())
            raise AssertionError(f"cell {index} ended without {selector}:\n{texts}")
        time.sleep(0.25)
    raise AssertionError(f"no {selector} in cell {index} after {timeout:.0f} s")
