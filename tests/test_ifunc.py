"""Uprobes on GNU indirect functions fire at resolution, not per call: the user is told.

That the IFUNC flag agrees with `nm -D` is tested in test_probes.py.
"""

from __future__ import annotations

from helpers import needs_root

from ebpfkit.session import Session

COUNT = "BPF_ARRAY(calls, u64, 1); int on_call(void *ctx) { calls.increment(0); return 0; }"


@needs_root
def test_uprobe_on_ifunc_warns_and_plain_function_does_not():
    warned = []
    with Session(COUNT, uprobe="c:strlen", on_warning=warned.append) as s:
        s.run(duration=0.1)
    assert any("IFUNC" in w and "strlen" in w for w in warned), warned
    warned.clear()
    with Session(COUNT, uprobe="c:malloc", on_warning=warned.append) as s:
        s.run(duration=0.1)
    assert not any("IFUNC" in w for w in warned), warned
