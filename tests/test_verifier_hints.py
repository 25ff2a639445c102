"""What a verifier refusal means: the hint comes from the refusal, never from earlier lines.

The verifier's log walks the program instruction by instruction, naming each register's
state (``R0=map_value_or_null(...)`` after any hash lookup); its last lines, before
``processed N insns``, say why it stopped. Each program here is refused by the real
kernel, through ``ebpfkit.load``, and its hint checked against that refusal.
"""

from __future__ import annotations

import re

import pytest
from helpers import needs_root

import ebpfkit
from ebpfkit import program
from ebpfkit.errors import VerifierError

CHUNK = r"""
#define CHUNK 1024
struct chunk { u32 fd; u32 newlines; u64 count; char data[CHUNK]; };
BPF_RINGBUF_OUTPUT(events, 64);
BPF_HASH(seen, u32, u64);
"""
# Lesson 12's loop bounded only by args->count, after a hash lookup tested for NULL.
PAST_THE_BUFFER = (
    CHUNK
    + r"""
int on_write(struct tracepoint__syscalls__sys_enter_write *args) {
    u32 fd = args->fd;
    u64 *n = seen.lookup(&fd);
    if (n)
        (*n)++;
    struct chunk *c = events.ringbuf_reserve(sizeof(struct chunk));
    if (!c)
        return 0;
    u64 size = args->count < CHUNK ? args->count : CHUNK;
    c->newlines = 0;
    bpf_probe_read_user(c->data, size, args->buf);
    for (u64 i = 0; i < args->count; i++)
        if (c->data[i] == '\n')
            c->newlines++;
    events.ringbuf_submit(c, 0);
    return 0;
}
"""
)
# A constant bound, but 16,384 rounds with a test in each.
TOO_MANY_BRANCHES = (
    CHUNK
    + r"""
int on_write(struct tracepoint__syscalls__sys_enter_write *args) {
    struct chunk *c = events.ringbuf_reserve(sizeof(struct chunk));
    if (!c)
        return 0;
    u32 n = 0;
    for (u32 i = 0; i < 16384; i++)
        if (c->data[i & (CHUNK - 1)] == '\n')
            n++;
    c->newlines = n;
    events.ringbuf_submit(c, 0);
    return 0;
}
"""
)
RECORD = r"""
struct e { u64 n; };
BPF_RINGBUF_OUTPUT(events, 8);
int on_write(struct tracepoint__syscalls__sys_enter_write *args) {
    struct e *e = events.ringbuf_reserve(sizeof(struct e));
    BODY
    return 0;
}
"""


def refusal(source: str) -> str:
    """The VerifierError's text for ``source`` loaded at sys_enter_write."""
    with pytest.raises(VerifierError) as e:
        ebpfkit.load(source, tracepoint="syscalls:sys_enter_write", cache=False)
    return str(e.value)


def hint(text: str) -> str:
    return text.split("\nwhat it means: ", 1)[1]


@needs_root
def test_a_read_past_the_buffer_is_not_a_missing_null_test(monkeypatch):
    logs = []
    real = program.explain_verifier_error
    monkeypatch.setattr(
        program, "explain_verifier_error", lambda log, e: logs.append(log) or real(log, e)
    )
    text = refusal(PAST_THE_BUFFER)
    assert "map_value_or_null" in logs[-1]  # in the log, from the lookup: not the refusal
    assert "invalid access to memory, mem_size=1040 off=1040 size=1" in text
    assert "NULL" not in hint(text)
    assert hint(text).startswith("a read or write may fall outside the memory it points into")


@needs_root
def test_too_many_jumps_is_not_the_instruction_budget():
    text = refusal(TOO_MANY_BRANCHES)
    assert re.search(r"The sequence of \d+ jumps is too complex", text)
    processed = int(re.search(r"processed (\d+) insns", text)[1])
    assert processed < 1_000_000
    assert hint(text).startswith("too many branches to explore")
    assert "1,000,000" not in hint(text)


@needs_root
def test_a_helper_this_program_type_lacks():
    func_ip = refusal(
        "BPF_HASH(calls, u64, u64);\n"
        "int on_write(void *args) { calls.increment(bpf_get_func_ip(args)); return 0; }"
    )
    assert "not supported for program type 5" in func_ip
    assert hint(func_ip) == (
        "bpf_get_func_ip is not available to tracepoint programs: "
        "kprobe programs (kprobes and uprobes) and fentry/fexit may call it"
    )
    perf = refusal(
        "int on_write(void *args) { struct bpf_perf_event_value v = {};\n"
        "    return bpf_perf_prog_read_value(args, &v, sizeof(v)); }"
    )
    assert "program of this type cannot use helper bpf_perf_prog_read_value" in perf
    assert hint(perf).endswith("only perf event programs (-P) may call it")
    other = refusal("int on_write(void *args) { return bpf_override_return(args, 0); }")
    assert "cannot use helper bpf_override_return" in other
    assert hint(other) == (
        "bpf_override_return is not available to tracepoint programs: "
        "bpf-helpers(7) says which programs may call it"
    )


@needs_root
def test_a_ring_buffer_record_used_as_a_number():
    unchecked = refusal(RECORD.replace("BODY", "e->n = 1; events.ringbuf_submit(e, 0);"))
    assert "invalid mem access 'scalar'" in unchecked
    assert hint(unchecked).startswith("ringbuf_reserve()'s result was used on the path where")
    after = RECORD.replace(
        "BODY", "if (!e) return 0; e->n = 1; events.ringbuf_submit(e, 0); e->n = 2;"
    )
    text = refusal(after)
    assert "invalid mem access 'scalar'" in text
    assert hint(text).startswith("the ring buffer record was used after ringbuf_submit()")
    plain = refusal("int on_write(void *args) { return *(volatile char *)bpf_ktime_get_ns(); }")
    assert hint(plain).endswith("bpf_probe_read_kernel() or bpf_probe_read_user()")


@needs_root
def test_a_missing_null_test_is_still_named():
    text = refusal(
        "BPF_HASH(bytes, u32, u64);\n"
        "int on_write(void *args) { u32 k = 0; u64 *v = bytes.lookup(&k); return *v; }"
    )
    assert hint(text) == "a map lookup result was used without checking it for NULL"


def test_the_budget_hint_needs_the_budget_reached():
    exc = Exception("Failed to load BPF program f: Argument list too long")
    log = (
        "12: (07) r1 += 1\n; x++; @ main.c:3\n13: (05) goto pc-3\n"
        "BPF program is too large. Processed 1000001 insn\n"
        "processed 1000001 insns (limit 1000000) max_states_per_insn 4 total_states 9\n"
    )
    assert "checked 1,000,000 instructions" in program.explain_verifier_error(log, exc)
    jumps = log.replace(
        "BPF program is too large. Processed 1000001 insn",
        "The sequence of 8193 jumps is too complex.",
    ).replace("1000001 insns", "139279 insns")
    assert "too many branches" in program.explain_verifier_error(jumps, exc)
    # No log at all: the exception's E2BIG alone.
    assert "too large for the kernel to load" in program.explain_verifier_error("", exc)
