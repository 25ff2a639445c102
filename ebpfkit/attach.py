"""Attach specs: where each program function goes, and attaching it with clear errors.

Specs are written the way bpftrace users name things, with an optional ``=fn``
naming the C function (the default is the cell's only probe function)::

    kprobe        do_sys_openat2            kretprobe  do_sys_openat2=on_return
    tracepoint    syscalls:sys_enter_openat
    uprobe        c:malloc (library name or path, then symbol)
    uretprobe     /bin/bash:readline=on_line
    perf          cpu-clock:99  (event, then frequency in Hz; hardware events too)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import probes
from ._stderr import capture_stderr
from .errors import AttachError, BadArguments, FeatureMissing, ProbeNotFound, VerifierError
from .program import AUTO_PREFIXES, explain_verifier_error

KINDS = ("kprobe", "kretprobe", "tracepoint", "uprobe", "uretprobe", "perf")

# perf event names (as `perf list` spells them) -> (type, config) in bcc's enums.
SOFTWARE_EVENTS = {
    "cpu-clock": "CPU_CLOCK",
    "task-clock": "TASK_CLOCK",
    "page-faults": "PAGE_FAULTS",
    "context-switches": "CONTEXT_SWITCHES",
    "cpu-migrations": "CPU_MIGRATIONS",
}
HARDWARE_EVENTS = {
    "cycles": "CPU_CYCLES",
    "cpu-cycles": "CPU_CYCLES",
    "instructions": "INSTRUCTIONS",
    "cache-misses": "CACHE_MISSES",
    "branch-misses": "BRANCH_MISSES",
}
DEFAULT_FREQUENCY = 99


@dataclass
class Spec:
    kind: str
    target: str
    fn: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" + (f" -> {self.fn}()" if self.fn else "")


def parse(kind: str, text: str) -> Spec:
    if kind not in KINDS:
        raise BadArguments(f"unknown probe kind {kind!r}; one of {', '.join(KINDS)}")
    target, _, fn = text.strip().partition("=")
    target = target.strip()
    if not target:
        raise BadArguments(f"--{kind} needs a target, e.g. {_EXAMPLES[kind]}")
    if kind in ("uprobe", "uretprobe") and ":" not in target:
        raise BadArguments(f"--{kind} {text!r}: give BINARY:SYMBOL, e.g. {_EXAMPLES[kind]}")
    if kind == "tracepoint" and ":" not in target.replace("/", ":"):
        raise BadArguments(f"--tracepoint {text!r}: give CATEGORY:EVENT, e.g. {_EXAMPLES[kind]}")
    return Spec(kind, target, fn.strip() or None)


_EXAMPLES = {
    "kprobe": "do_sys_openat2",
    "kretprobe": "do_sys_openat2",
    "tracepoint": "syscalls:sys_enter_openat",
    "uprobe": "c:malloc",
    "uretprobe": "c:malloc",
    "perf": "cpu-clock:99",
}

# A definition starts a line or follows a `;` or `}` (one-line cells are common in tests).
_DEF = re.compile(r"(?:^|(?<=[;}]))[ \t]*(?:int|u32|u64|long)\s+(\w+)\s*\([^;{}]*\)\s*\{", re.M)


def candidate_functions(text: str) -> list[str]:
    """Non-static functions of the cell that bcc does not attach by name."""
    return [n for n in _DEF.findall(text) if not n.startswith(AUTO_PREFIXES)]


def assign_functions(specs: list[Spec], text: str) -> list[Spec]:
    """Fill in ``fn`` where a spec left it out: the cell's only probe function."""
    candidates = candidate_functions(text)
    for spec in specs:
        if spec.fn:
            if spec.fn not in candidates and not re.search(rf"\b{re.escape(spec.fn)}\s*\(", text):
                raise BadArguments(
                    f"{spec}: the cell has no function {spec.fn!r}"
                    + (f"; its functions: {', '.join(candidates)}" if candidates else "")
                )
            continue
        if len(candidates) == 1:
            spec.fn = candidates[0]
        elif not candidates:
            raise BadArguments(f"{spec.kind} {spec.target}: the cell defines no function to attach")
        else:
            raise BadArguments(
                f"{spec.kind} {spec.target}: the cell has several functions "
                f"({', '.join(candidates)}); say which, e.g. "
                f"--{spec.kind} '{spec.target}={candidates[0]}'"
            )
    return specs


def precheck_auto(text: str) -> None:
    """Before compiling: bcc attaches kprobe__/kretprobe__ functions while it loads them."""
    for kind, prefix in (("kprobe", "kprobe__"), ("kretprobe", "kretprobe__")):
        for name in re.findall(rf"\b{prefix}(\w+)\s*\(", text):
            probes.check_kernel_function(name, kind=kind)
    for category, event in re.findall(r"TRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", text):
        probes.check_tracepoint(f"{category}:{event}")


def precheck(spec: Spec) -> None:
    """Name problems before anything is loaded: unknown names, missing kernel features."""
    if spec.kind in ("kprobe", "kretprobe"):
        probes.check_kernel_function(spec.target, kind=spec.kind)
    elif spec.kind == "tracepoint":
        probes.check_tracepoint(spec.target)
    elif spec.kind in ("uprobe", "uretprobe"):
        binary, _, symbol = spec.target.rpartition(":")
        probes.check_symbol(binary, symbol)
    elif spec.kind == "perf":
        perf_event(spec.target)


def perf_event(target: str) -> tuple[str, str, int]:
    """('SOFTWARE'|'HARDWARE', config name, frequency) for ``cpu-clock:99``."""
    name, _, freq = target.partition(":")
    name = name.strip().lower()
    try:
        frequency = int(freq) if freq else DEFAULT_FREQUENCY
    except ValueError:
        raise BadArguments(f"perf {target!r}: the frequency must be a number of Hz") from None
    if not 1 <= frequency <= 100_000:
        raise BadArguments(f"perf {target!r}: frequency {frequency} Hz is out of range 1..100000")
    if name in SOFTWARE_EVENTS:
        return "SOFTWARE", SOFTWARE_EVENTS[name], frequency
    if name in HARDWARE_EVENTS:
        return "HARDWARE", HARDWARE_EVENTS[name], frequency
    known = list(SOFTWARE_EVENTS) + list(HARDWARE_EVENTS)
    matches = probes.suggest(name, known)
    hint = f"; did you mean: {', '.join(matches)}?" if matches else f"; known: {', '.join(known)}"
    raise ProbeNotFound(f"unknown perf event {name!r}{hint}")


def attach(bcc, bpf, spec: Spec, pid: int | None = None) -> None:
    """Attach one spec; every failure becomes an ebpfkit error naming what went wrong."""
    precheck(spec)
    if spec.kind == "tracepoint" and spec.target.replace("/", ":").encode() in bpf.tracepoint_fds:
        raise AttachError(
            f"{spec}: this tracepoint already has a function attached in this cell; BCC keeps "
            "one per tracepoint, so put both pieces of work in one function"
        )
    before = dict(bpf.uprobe_fds)
    try:
        with capture_stderr() as err:
            _attach(bcc, bpf, spec, pid)
    except (FeatureMissing, ProbeNotFound, BadArguments):
        raise
    except Exception as e:  # noqa: BLE001 - bcc raises plain Exception
        if "Failed to load" in str(e):
            # attach loads the function first: the verifier said no.
            raise VerifierError(explain_verifier_error(err.text, e)) from None
        detail = err.text.strip().splitlines()[-1] if err.text.strip() else ""
        if spec.kind == "perf" and perf_event(spec.target)[0] == "HARDWARE":
            raise FeatureMissing(
                f"hardware perf event {spec.target!r} is not available here "
                f"({detail or e}): this machine exposes no hardware PMU (common in virtual "
                "machines). Sample with the software event instead: --perf cpu-clock:99"
            ) from None
        raise AttachError(
            f"could not attach {spec}: {e}" + (f" ({detail})" if detail else "")
        ) from None
    # bcc keys uprobes by event name: a second function on the same one replaces the first's
    # fd in its table, and cleanup would never close it. Close it here and say so.
    for name, fd in before.items():
        if bpf.uprobe_fds.get(name) != fd:
            bcc.libbcc.lib.bpf_close_perf_event_fd(fd)
            raise AttachError(
                f"{spec}: this uprobe already has a function attached in this cell; BCC keeps "
                "one per probe point, so put both pieces of work in one function"
            )


def _attach(bcc, bpf, spec: Spec, pid: int | None) -> None:
    if spec.kind == "kprobe":
        bpf.attach_kprobe(event=spec.target, fn_name=spec.fn)
    elif spec.kind == "kretprobe":
        bpf.attach_kretprobe(event=spec.target, fn_name=spec.fn)
    elif spec.kind == "tracepoint":
        bpf.attach_tracepoint(tp=spec.target.replace("/", ":"), fn_name=spec.fn)
    elif spec.kind in ("uprobe", "uretprobe"):
        binary, _, symbol = spec.target.rpartition(":")
        path = probes.resolve_binary(binary)
        method = bpf.attach_uprobe if spec.kind == "uprobe" else bpf.attach_uretprobe
        method(name=path, sym=symbol, fn_name=spec.fn, pid=pid or -1)
    elif spec.kind == "perf":
        kind, config, frequency = perf_event(spec.target)
        ev_type = getattr(bcc.PerfType, kind)
        configs = bcc.PerfSWConfig if kind == "SOFTWARE" else bcc.PerfHWConfig
        bpf.attach_perf_event(
            ev_type=ev_type,
            ev_config=getattr(configs, config),
            fn_name=spec.fn,
            sample_freq=frequency,
            pid=pid or -1,
            cpu=-1,
        )


def online_cpus() -> int:
    return os.cpu_count() or 1
