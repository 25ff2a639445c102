"""Live maps (issue 16 part 3): a cell that only aggregates shows its maps while it runs.

In a real Jupyter kernel the panel's rows are the map's top rows, read again a few
times a second while the counts grow; the result's counts are exact all the same. In
a terminal the text line prints the top rows once, at the end.
"""

from __future__ import annotations

import re

import pytest
from helpers import bpf, needs_root
from test_live import kernel, programs_of, widget_states  # noqa: F401 - kernel: a fixture

COMM = "livemaps"
COUNT = """
BPF_HASH(calls, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}
"""
TOTAL = COUNT.replace("calls.increment(pid)", "u32 all = 0; calls.increment(all)")
HIST = """
BPF_HISTOGRAM(sizes);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    sizes.increment(bpf_log2l(bpf_get_prandom_u32() & 1023));
    return 0;
}
"""


def _steps(loop: str, steps: int, calls: int) -> str:
    """A workload that makes ``calls`` getppid() calls, ``steps`` times, with pauses."""
    return "; ".join(f"{loop} {COMM} {calls}; sleep 0.4" for _ in range(steps))


@needs_root
def test_the_panel_shows_the_counts_growing(kernel, getppid_loop):  # noqa: F811 - the fixture
    assert not kernel.run("%load_ext ebpfkit")["errors"]
    cell = kernel.kc.execute(
        f'%%bpf --comm {COMM} --run "{_steps(getppid_loop, 6, 1000)}" -o r\n{TOTAL}'
    )
    widgets: dict[str, dict] = {}
    seen: list = []
    out = None
    for msg in kernel.messages():
        seen.append(msg)
        if msg["msg_type"] == "error":
            pytest.fail(f"the cell failed: {msg['content']['evalue']}")
        found = widget_states(msg)
        if found:
            widgets.setdefault(found[0], {}).update(found[1])
        if (
            msg["parent_header"].get("msg_id") == cell
            and msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            break
    rows_ids = [
        cid for cid, w in widgets.items() if "ebpfkit-live-rows" in w.get("_dom_classes", [])
    ]
    assert len(rows_ids) == 1
    shown = [
        f[1]["value"]
        for m in seen
        if (f := widget_states(m)) and f[0] == rows_ids[0] and "value" in f[1]
    ]
    totals = [int(m.replace(",", "")) for v in shown for m in re.findall(r"<td>([\d,]+)</td>", v)]
    # While it ran, the panel showed the map more than once, its count growing.
    growing = sorted(set(t for t in totals if 0 < t < 6000))
    assert len(growing) >= 2, shown
    assert all("calls" in v for v in shown if v)
    # The panel's last picture is the result's count, and reading it changed nothing.
    out = kernel.run("print(int(r.maps['calls']['value'].sum()))")
    assert out["stdout"].strip() == "6000"
    assert "6,000" in shown[-1] or "6000" in shown[-1]
    # What nbconvert keeps of the panel is the final line, not the changing counts.
    updates = [m for m in seen if m["msg_type"] == "update_display_data"]
    assert updates[-1]["content"]["data"]["text/plain"].startswith("traced ")
    assert programs_of(kernel.pid) == set()


@needs_root
def test_the_text_line_prints_the_top_rows_at_the_end(ip, capsys, getppid_loop):
    result = bpf(ip, f'--comm {COMM} --run "{_steps(getppid_loop, 2, 500)}"', COUNT)
    out = capsys.readouterr().out
    assert int(result.maps["calls"]["value"].sum()) == 1000
    final = out.index("traced ")
    # Once, after the final line: the map's name, its entries and the counts.
    assert out.count("calls (") == 1 and out.index("calls (") > final
    assert re.search(r"calls \(2 entries, top rows\):\n\s*key\s+value\n(\s*\d+\s+500\n){2}", out)


@needs_root
def test_a_histogram_is_drawn_as_bars(ip, capsys, getppid_loop):
    result = bpf(ip, f'--comm {COMM} --run "{getppid_loop} {COMM} 2000"', HIST)
    out = capsys.readouterr().out
    assert int(result.maps["sizes"]["count"].sum()) == 2000
    bars = re.findall(r"^\s*[\d,]+ -> [\d,]+\s+([\d,]+) \|(\**)\s*\|$", out, re.M)
    assert sum(int(n.replace(",", "")) for n, _ in bars) == 2000
    assert max(len(b) for _, b in bars) == 30
