"""The borrowed-headers warning: programs that read kernel structs are told, before they run."""

from __future__ import annotations

import pytest
from helpers import needs_root

from ebpfkit import _bcc, checks, layout

READS_TASK = r"""
#include <linux/sched.h>
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    bpf_trace_printk("ppid %d\n", t->real_parent->tgid);
    return 0;
}
"""

HELPERS_ONLY = r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    bpf_trace_printk("pid %d\n", bpf_get_current_pid_tgid() >> 32);
    return 0;
}
"""


def test_structs_used_are_found():
    used = layout.kernel_structs_used(READS_TASK)
    assert set(used) == {"task_struct"}
    assert {"real_parent", "tgid"} <= used["task_struct"]
    assert layout.kernel_structs_used(HELPERS_ONLY) == {}
    # A struct the cell defines itself is not a kernel struct.
    own = "struct task_struct { int x; }; int f(struct task_struct *t) { return t->x; }"
    assert layout.kernel_structs_used(own) == {}


@needs_root
def test_mismatch_reported_exactly_when_headers_differ_from_btf():
    bcc = _bcc.bcc()
    headers = checks.header_offsets(bcc, ("real_parent", "tgid"))
    kernel = checks.btf_offsets(("real_parent", "tgid"))
    found = {(m.struct, m.member): m for m in layout.mismatches(READS_TASK)}
    for member in ("real_parent", "tgid"):
        if headers[member] == kernel[member]:
            assert ("task_struct", member) not in found
        else:
            m = found[("task_struct", member)]
            assert (m.headers, m.kernel) == (headers[member], kernel[member])
    assert layout.mismatches(HELPERS_ONLY) == []


@needs_root
def test_mismatches_skip_what_a_prelude_corrected():
    headers = checks.header_offsets(_bcc.bcc(), ("tgid",))
    if headers["tgid"] == checks.btf_offsets(("tgid",))["tgid"]:
        pytest.skip("these kernel headers lay task_struct out like the running kernel")
    assert {m.struct for m in layout.mismatches(READS_TASK)} == {"task_struct"}
    assert layout.mismatches(READS_TASK, skip={"task_struct"}) == []


@needs_root
def test_measurer_names_what_the_headers_lack():
    """One query per line: clang's errors say which records the headers lack; the
    rest is measured without them, and equals what the check reports."""
    query = [
        ("struct", "task_struct", None),
        ("struct", "task_struct", "tgid"),
        ("struct", "ebpfkit_no_such_struct", "x"),
        ("struct", "task_struct", "ebpfkit_no_such_member"),
    ]
    first = layout.header_layout("#include <linux/sched.h>", tuple(query))
    assert first.values is None
    assert first.rejected == {2, 3}, first.error
    values, lacking = layout.records_layout("#include <linux/sched.h>", query[:3])
    assert lacking == {"ebpfkit_no_such_struct"}
    assert values[("task_struct", "tgid")] == checks.header_offsets(_bcc.bcc(), ("tgid",))["tgid"]
    assert values[("task_struct", None)] > values[("task_struct", "tgid")]


@needs_root
def test_session_warns_before_running_with_headers_layout():
    headers = checks.header_offsets(_bcc.bcc(), ("tgid",))
    if headers["tgid"] == checks.btf_offsets(("tgid",))["tgid"]:
        pytest.skip("these kernel headers lay task_struct out like the running kernel")
    seen = []
    from ebpfkit.session import Session

    with Session(READS_TASK, exact=False, on_warning=seen.append) as s:
        assert seen, "the warning must come before the trace runs"
        result = s.run(duration=0.2)
    assert "struct task_struct" in seen[0]
    assert "bpf_get_current_pid_tgid" in seen[0]
    assert result.warnings == seen
    assert "warning" in result._repr_html_()


@needs_root
def test_session_corrects_the_layout_by_default_and_says_so():
    headers = checks.header_offsets(_bcc.bcc(), ("tgid",))
    if headers["tgid"] == checks.btf_offsets(("tgid",))["tgid"]:
        pytest.skip("these kernel headers lay task_struct out like the running kernel")
    warnings, notes = [], []
    from ebpfkit.session import Session

    with Session(READS_TASK, on_warning=warnings.append, on_note=notes.append) as s:
        result = s.run(duration=0.2)
    assert warnings == []
    assert any("task_struct" in n and "running kernel's offsets" in n for n in notes), notes
    assert result.notes == notes
