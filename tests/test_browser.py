"""The live view in a real browser: JupyterLab on localhost, headless Chromium via Playwright.

A notebook runs a ``%%bpf`` cell that traces for up to 60 s; the test sees the live panel's
event counter rise, clicks Stop, and sees the result table. Screenshots are kept in
test-artifacts/browser/: live-panel.png while it traces, live-result.png after Stop,
failure.png when something went wrong. The machinery is in browser_lab.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from browser_lab import (
    Lab,
    chromium_pids,
    first_number,
    in_ci,
    launch,
    missing_browser,
    run_all_cells,
    wait_cell_done,
    wait_for_panel,
)
from helpers import needs_root

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
FN = "ebk_browser_tp"  # the BPF program's name, as `bpftool prog list` shows it
COMM = "ebk-browser"  # the workload's command name; the program traces only it

# The workload: getppid() twenty times a second for longer than the cell's 60 s limit, under
# a name of its own, so the counter rises steadily and other processes' calls are not counted.
WORKLOAD = f"""
import os, time
with open("/proc/self/comm", "w") as f:
    f.write({COMM!r})
for _ in range(1500):
    os.getppid()
    time.sleep(0.05)
"""

CELL = """%%bpf -t syscalls:sys_enter_getppid -d 60 -c {comm} --run "{python} {script}"
struct event {{ u32 pid; char comm[16]; }};
BPF_RINGBUF_OUTPUT(events, 8);
int {fn}(struct tracepoint__syscalls__sys_enter_getppid *args) {{
    struct event e = {{}};
    e.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}}
"""


@pytest.fixture
def lab(tmp_path):
    why = missing_browser()
    if why:
        if in_ci():
            pytest.fail(f"CI must run the browser test, but {why}")
        pytest.skip(f"no browser for the browser test: {why}")
    server = Lab(tmp_path)
    try:
        server.start()
        specs = server.api("kernelspecs")["kernelspecs"]
        if "ebpfkit" not in specs:
            pytest.fail(
                f"no Jupyter kernel 'ebpfkit' (scripts/setup.sh installs it): {list(specs)}"
            )
        server.display_name = specs["ebpfkit"]["spec"]["display_name"]
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(server.log_path, ARTIFACTS / "jupyter.log")


def write_notebook(lab: Lab, name: str, cells: list[str]) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {
        "name": "ebpfkit",
        "display_name": lab.display_name,
        "language": "python",
    }
    nbformat.write(nb, lab.root / name)
    return name


def bpf_programs() -> list[str]:
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return [p.get("name", "") for p in json.loads(out or "[]")]


def workloads() -> list:
    """The workload's processes still running (a zombie has ended; its reaper is not ours)."""
    return [
        p
        for p in psutil.process_iter(["name", "status"])
        if p.info["name"] == COMM and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


@needs_root
def test_live_view_counts_stops_and_shows_the_result(lab):
    script = lab.root / "getppid_loop.py"
    script.write_text(WORKLOAD)
    cell = CELL.format(comm=COMM, python=sys.executable, script=script, fn=FN)
    nb = write_notebook(lab, "live.ipynb", ["%load_ext ebpfkit", cell])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import expect, sync_playwright

    browsers: set[int] = set()
    with sync_playwright() as pw:
        context = launch(pw, lab.tmp / "chromium-profile")
        page = context.pages[0] if context.pages else context.new_page()
        try:
            page.goto(f"{lab.url}/lab/tree/{nb}?token={lab.token}")
            browsers = chromium_pids()
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            lab.wait_kernel_idle()
            run_all_cells(page)
            out = page.locator(".jp-Notebook .jp-Cell").nth(1)
            wait_for_panel(page, 1, ".ebpfkit-live-events")
            lab.note_processes()
            counter = out.locator(".ebpfkit-live-events")
            first = first_number(counter.inner_text())
            # The counter must move on its own: read again until it differs (20 events/s).
            later = first
            for _ in range(40):
                time.sleep(0.5)
                later = first_number(counter.inner_text())
                if later > first:
                    break
            assert later > first, f"the event counter did not rise: {first} then {later}"
            assert FN in bpf_programs(), f"{FN} is not loaded while the panel counts"
            out.locator(".ebpfkit-live").screenshot(path=str(ARTIFACTS / "live-panel.png"))

            button = out.locator(".ebpfkit-live-stop")
            expect(button).to_have_text(re.compile("Stop"))
            button.click()
            expect(out.locator(".ebpfkit-live-status")).to_contain_text("stopped", timeout=30_000)
            # The result's table: the cell's value, not the panel's table of recent rows.
            table = out.locator(".jp-OutputArea-executeResult table.dataframe")
            table.wait_for(timeout=30_000)
            wait_cell_done(page, 1, timeout_ms=30_000)
            area = out.locator(".jp-Cell-outputArea")
            area.scroll_into_view_if_needed()
            area.screenshot(path=str(ARTIFACTS / "live-result.png"))
            status = out.locator(".ebpfkit-live-status").inner_text()
            result = out.locator(".jp-OutputArea-executeResult").inner_text()
            columns = table.locator("th").all_inner_texts()
            comms = set(table.locator("tbody tr td:nth-child(2)").all_inner_texts())
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            context.close()

    # Stop really stopped it, long before the 60 s limit, and the panel and result say so.
    assert "stopped by stop button" in status, status
    m = re.search(r"traced for ([\d.]+) s \(stopped by ([^)]*)\)", result)
    assert m, f"no trace summary in the result:\n{result}"
    assert m.group(2) == "stop button", result
    assert float(m.group(1)) < 45, result
    received = re.search(r"events: received (\d+) events", result)
    assert received and int(received.group(1)) >= later, result
    assert columns == ["pid", "comm"], columns
    assert comms == {COMM}, comms
    # The cell is over: its program is gone while the kernel still runs, its workload too.
    assert FN not in bpf_programs()
    assert not workloads(), f"the workload outlived its cell: {workloads()}"

    assert browsers, "no Chromium process was seen below the test"
    left = browsers & chromium_pids()
    assert not left, f"Chromium processes left after the browser closed: {left}"
    alive = lab.stop()
    assert not alive, f"processes of the lab (server, kernel) left running: {alive}"
    assert FN not in bpf_programs()
