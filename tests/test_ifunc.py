"""Uprobes on GNU indirect functions fire at resolution, not per call: the user is told."""

from __future__ import annotations

import subprocess

from conftest import needs_root

from ebpfkit import probes
from ebpfkit.session import Session

COUNT = "BPF_ARRAY(calls, u64, 1); int on_call(void *ctx) { calls.increment(0); return 0; }"


def test_ifunc_flag_agrees_with_nm():
    libc = probes.resolve_binary("c")
    out = subprocess.run(
        ["nm", "-D", "--defined-only", libc], capture_output=True, text=True, check=True
    ).stdout
    kinds = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            kinds[parts[2].split("@")[0]] = parts[1]
    for name in ("strlen", "memcpy", "malloc", "getpid"):
        assert probes.is_ifunc(libc, name) == (kinds[name] == "i"), name


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
