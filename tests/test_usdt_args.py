"""USDT argument operands as the notes write them, and the C that reads each (no root).

x86-64's readers also run for real in tests/test_usdt.py; arm64's are checked here as text
only (this machine is x86-64): the operands GCC writes there and BCC's arm64 pt_regs fields.
"""

from __future__ import annotations

import pytest

from ebpfkit import usdt
from ebpfkit.errors import BadArguments


def _probe(args: str) -> usdt.Probe:
    return usdt.Probe(
        path="/usr/bin/prog",
        provider="app",
        name="event",
        address=0x1000,
        offset=0x1000,
        semaphore=0,
        semaphore_offset=0,
        arguments=tuple(usdt.parse_argument(a) for a in usdt._OPERANDS.findall(args)),
    )


def _reads(args: str, machine: str, monkeypatch) -> list[str]:
    """The line of each reader that computes the value."""
    monkeypatch.setattr(usdt.platform, "machine", lambda: machine)
    c = usdt.reader_c([_probe(args)], "fn")
    lines = [line.strip() for line in c.splitlines()]
    return [line for line in lines if line.startswith(("__v =", "bpf_probe_read_user"))]


def test_operands_split_on_spaces_outside_brackets():
    probe = _probe("-4@[sp, 12] 8@x1  -4@5 8@[x29]")
    assert [str(a) for a in probe.arguments] == ["-4@[sp, 12]", "8@x1", "-4@5", "8@[x29]"]
    assert [(a.size, a.signed) for a in probe.arguments] == [
        (4, True),
        (8, False),
        (4, True),
        (8, False),
    ]


def test_x86_64_registers_memory_and_constants(monkeypatch):
    assert _reads("8@%rbp -4@%eax 8@-16(%rsp) -4@$5", "x86_64", monkeypatch) == [
        "__v = ctx->bp;",
        "__v = ctx->ax;",
        "bpf_probe_read_user(&__v, sizeof(__v), (void *)(ctx->sp + (-16)));",
        "__v = (5);",
    ]


def test_arm64_registers_memory_and_constants(monkeypatch):
    assert _reads(
        "8@x1 -4@w30 8@sp -4@[sp, 12] 8@[x29] 8@[x2, #-8] -4@5 4@#7", "aarch64", monkeypatch
    ) == [
        "__v = ctx->regs[1];",
        "__v = ctx->regs[30];",
        "__v = ctx->sp;",
        "bpf_probe_read_user(&__v, sizeof(__v), (void *)(ctx->sp + (12)));",
        "bpf_probe_read_user(&__v, sizeof(__v), (void *)(ctx->regs[29]));",
        "bpf_probe_read_user(&__v, sizeof(__v), (void *)(ctx->regs[2] + (-8)));",
        "__v = (5);",
        "__v = (7);",
    ]


def test_arm64_register_it_cannot_read_is_named(monkeypatch):
    with pytest.raises(BadArguments, match=r"app:event in /usr/bin/prog: register v0"):
        _reads("8@v0", "aarch64", monkeypatch)


def test_other_machines_are_told_which_ones_are_read(monkeypatch):
    with pytest.raises(BadArguments, match=r"x86-64 and arm64 only; this machine is riscv64"):
        _reads("8@a0", "riscv64", monkeypatch)
