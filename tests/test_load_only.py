"""``ebpfkit.load()`` and ``%%bpf --load-only``: every probe function loaded, none attached.

The functions named the bcc way (``TRACEPOINT_PROBE``, ``kprobe__...``,
``raw_tracepoint__...``) are loaded as their own program types, beside those the probe
options name; the verifier judges each. A cell with neither says nothing was loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import bpf, needs_root

import ebpfkit
from ebpfkit import program
from ebpfkit.errors import VerifierError

pytestmark = needs_root

# linux/bpf.h's enum bpf_prog_type
KPROBE, TRACEPOINT, RAW_TRACEPOINT = 2, 5, 17

CELL = r"""
BPF_HASH(counts, u32, u64);
static inline u32 helper(void) { return bpf_get_current_pid_tgid() >> 32; }
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    counts.increment(helper());
    return 0;
}
int kprobe__do_sys_openat2(struct pt_regs *ctx) { return 0; }
int raw_tracepoint__sched_switch(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int spare(void *ctx) { return 0; }
"""
AUTO = [  # in alphabetical order
    "kprobe__do_sys_openat2",
    "raw_tracepoint__sched_switch",
    "tracepoint__syscalls__sys_enter_getppid",
]


def _held() -> dict[int, int]:
    """This process's loaded programs: id -> program type (from /proc/self/fdinfo)."""
    out = {}
    for entry in Path("/proc/self/fdinfo").iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        prog_id = re.search(r"^prog_id:\s*(\d+)", text, re.M)
        if prog_id:
            out[int(prog_id[1])] = int(re.search(r"^prog_type:\s*(\d+)", text, re.M)[1])
    return out


@pytest.fixture
def loaded(monkeypatch):
    """Each program load() loads, with its type as the kernel has it, seen while it is held."""
    seen: dict[str, int] = {}
    real = program.load_or_explain

    def spy(bpf, fn_name, prog_type):
        fn = real(bpf, fn_name, prog_type)
        text = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        seen[fn_name] = int(re.search(r"^prog_type:\s*(\d+)", text, re.M)[1])
        return fn

    monkeypatch.setattr(program, "load_or_explain", spy)
    return seen


def test_functions_named_the_bcc_way_are_loaded_as_their_kinds(loaded):
    before = _held()
    names = ebpfkit.load(CELL, cache=False)
    assert names == AUTO
    assert loaded == {AUTO[0]: KPROBE, AUTO[1]: RAW_TRACEPOINT, AUTO[2]: TRACEPOINT}
    assert _held() == before  # loaded, judged, freed


def test_the_options_functions_come_first(loaded):
    names = ebpfkit.load(CELL, tracepoint="syscalls:sys_enter_getpid=spare", cache=False)
    assert names == ["spare", *AUTO]
    assert loaded["spare"] == TRACEPOINT


def test_the_verifier_judges_a_tracepoint_probe():
    refused = r"""
BPF_HASH(counts, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 k = 0;
    u64 *v = counts.lookup(&k);
    return *v;
}
"""
    with pytest.raises(VerifierError) as e:
        ebpfkit.load(refused, cache=False)
    assert "tracepoint__syscalls__sys_enter_getppid" in str(e.value) and "NULL" in str(e.value)
    ebpfkit.load(refused.replace("return *v;", "return v ? *v : 0;"), cache=False)


def test_the_magic_names_what_it_loaded(ip, capsys):
    before = _held()
    assert bpf(ip, "--load-only --no-cache", CELL) is None
    out = capsys.readouterr().out
    assert f"loaded into the kernel (not attached): {', '.join(AUTO)}" in out
    assert "all functions" not in out
    assert _held() == before


def test_a_cell_with_nothing_to_load_says_so(ip, capsys):
    bpf(ip, "--load-only", "int a(void *ctx) { return 0; }")
    out = capsys.readouterr().out
    assert out.startswith("nothing was loaded into the kernel")
    assert "TRACEPOINT_PROBE" in out and "-t CATEGORY:EVENT=fn" in out
    assert ebpfkit.load("int a(void *ctx) { return 0; }") == []
