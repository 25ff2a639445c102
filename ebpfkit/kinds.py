"""The probe kinds: one entry each, holding everything ebpfkit knows about a kind.

From ``KINDS`` come the %%bpf magic's options (``-k/--kprobe`` ...), Session's
keyword arguments (``Session(source, kprobe=...)``), the tools' options, the
parsing of a spec and its error texts, the name check before anything is loaded
(with "did you mean"), the attach call, the program type ``--load-only`` loads,
and the stand-in where this kernel cannot attach the kind (kprobe -> tracepoint).
A new kind (USDT, say) is one ``Kind(...)`` entry below, and its tests.

Specs are written the way bpftrace users name things, with an optional ``=fn``
naming the C function (the default is the cell's only probe function)::

    kprobe        do_sys_openat2            kretprobe  do_sys_openat2=on_return
    tracepoint    syscalls:sys_enter_openat
    uprobe        c:malloc (library name or path, then symbol)
    uretprobe     /bin/bash:readline=on_line
    perf          cpu-clock:99  (event, then frequency in Hz; hardware events too)
    usdt          python3:function__entry  (binary, then [provider:]probe; long option only)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from . import probes, usdt
from .errors import AttachError, BadArguments, EbpfkitError, FeatureMissing, ProbeNotFound


@dataclass
class Spec:
    """One probe to attach: its kind, its target and the C function that runs there."""

    kind: str
    target: str
    fn: str | None = None
    # What the kind's ``prepare`` made for this probe (and ``release`` frees), if anything.
    state: object = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" + (f" -> {self.fn}()" if self.fn else "")


@dataclass(frozen=True)
class Kind:
    """A probe kind: its names, how its target is written and checked, how it attaches."""

    name: str  # the option (--kprobe), Session's keyword (kprobe=), a spec's kind
    letter: str  # the magic's short option: -k ("" for none: --usdt has no free letter)
    metavar: str  # the option's argument in %%bpf? : FUNC[=fn]
    help: str  # the option's help line
    example: str  # a target that works, quoted in error texts
    noun: str  # what the kernel calls one: "kprobe", "perf event"
    # The target as hints write it: a form (CATEGORY:EVENT), or an example where a form says little.
    form: str
    # Name problems before anything is loaded: unknown names (with close ones), missing features.
    check: Callable[[str], object]
    # attach(bcc, bpf, spec, pid): one spec onto the loaded program; pid -1 or None for all.
    attach: Callable[..., None]
    program_type: str  # bcc.BPF's constant for loading its functions: KPROBE, TRACEPOINT ...
    # (first, second) parts of a target of two parts, None when it lacks them; None: one part.
    split: Callable[[str], tuple[str, str] | None] | None = None
    by_name: str = ""  # bcc's prefix for a function it attaches by name itself: kprobe__
    # A warning about a target that exists but will mislead (an IFUNC uprobe); None if none.
    caveat: Callable[[str], str | None] | None = None
    # An attach failure bcc reports vaguely, explained; None to report it as it is.
    explain: Callable[[str, str], EbpfkitError | None] | None = None
    # Whether this kernel can attach the kind at all, and why we think so; None: always.
    available: Callable[[], tuple[bool, str]] | None = None
    # Where it cannot: the tracepoints that see the same events, and the check of the
    # name alone (a misspelt name must not hide behind a stand-in).
    stand_ins: Callable[[str], list[str]] | None = None
    check_name: Callable[[str], object] | None = None
    # A note about a target that works as asked but costs or changes something (a USDT
    # probe's semaphore, raised in the traced processes); None if none.
    note: Callable[[str], str | None] | None = None
    # prepare(spec, pid): C the program needs for this probe, made before it is compiled
    # (USDT's argument readers), keeping what attach needs in ``spec.state``;
    # release(spec) frees that after the probe is detached. None: nothing to make.
    prepare: Callable[[Spec, int | None], str] | None = None
    release: Callable[[Spec], None] | None = None

    @property
    def option(self) -> str:
        return f"--{self.name}"

    @property
    def short(self) -> str:
        return f"-{self.letter}" if self.letter else ""

    @property
    def option_strings(self) -> list[str]:
        """The magic's and the tools' spellings of the option: ``-k --kprobe``, ``--usdt``."""
        return [o for o in (self.short, self.option) if o]


FALLBACK_KIND = "tracepoint"  # what --fallback attaches in place of a kind this kernel lacks


# --- kprobes ---------------------------------------------------------------------------------


def _attach_kprobe(bcc, bpf, spec: Spec, pid: int | None) -> None:
    bpf.attach_kprobe(event=spec.target, fn_name=spec.fn)


def _attach_kretprobe(bcc, bpf, spec: Spec, pid: int | None) -> None:
    bpf.attach_kretprobe(event=spec.target, fn_name=spec.fn)


# --- tracepoints -----------------------------------------------------------------------------


def _split_tracepoint(target: str) -> tuple[str, str] | None:
    category, sep, event = target.replace("/", ":").partition(":")
    return (category, event) if sep else None


def _attach_tracepoint(bcc, bpf, spec: Spec, pid: int | None) -> None:
    # No pid: a tracepoint sees every process; --pid is checked in the kernel instead.
    name = spec.target.replace("/", ":")
    if name.encode() in bpf.tracepoint_fds:
        raise AttachError(
            f"{spec}: this tracepoint already has a function attached in this cell; BCC keeps "
            "one per tracepoint, so put both pieces of work in one function"
        )
    bpf.attach_tracepoint(tp=name, fn_name=spec.fn)


# --- uprobes ---------------------------------------------------------------------------------


def _split_uprobe(target: str) -> tuple[str, str] | None:
    binary, sep, symbol = target.rpartition(":")
    return (binary, symbol) if sep else None


def _check_uprobe(target: str) -> str:
    binary, _, symbol = target.rpartition(":")
    return probes.check_symbol(binary, symbol)


def _ifunc_caveat(target: str) -> str | None:
    binary, _, symbol = target.rpartition(":")
    if not probes.is_ifunc(probes.resolve_binary(binary), symbol):
        return None
    return (
        f"{symbol} in {binary} is a GNU indirect function (IFUNC, `i` in "
        "`nm -D`): the uprobe fires when the dynamic linker resolves it, not on "
        "each call, so the counts will be far too low. Probe a function that is "
        "not an IFUNC (malloc, getpid, ...) or a binary's own function."
    )


def _attach_uprobe(bcc, bpf, spec: Spec, pid: int | None, ret: bool = False) -> None:
    binary, _, symbol = spec.target.rpartition(":")
    path = probes.resolve_binary(binary)
    before = dict(bpf.uprobe_fds)
    method = bpf.attach_uretprobe if ret else bpf.attach_uprobe
    method(name=path, sym=symbol, fn_name=spec.fn, pid=pid or -1)
    # bcc keys uprobes by event name: a second function on the same one replaces the first's
    # fd in its table, and cleanup would never close it. Close it here and say so.
    for name, fd in before.items():
        if bpf.uprobe_fds.get(name) != fd:
            bcc.libbcc.lib.bpf_close_perf_event_fd(fd)
            raise AttachError(
                f"{spec}: this uprobe already has a function attached in this cell; BCC keeps "
                "one per probe point, so put both pieces of work in one function"
            )


# --- perf events -----------------------------------------------------------------------------

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


def _attach_perf(bcc, bpf, spec: Spec, pid: int | None) -> None:
    kind, config, frequency = perf_event(spec.target)
    configs = bcc.PerfSWConfig if kind == "SOFTWARE" else bcc.PerfHWConfig
    bpf.attach_perf_event(
        ev_type=getattr(bcc.PerfType, kind),
        ev_config=getattr(configs, config),
        fn_name=spec.fn,
        sample_freq=frequency,
        pid=pid or -1,
        cpu=-1,
    )


def _explain_perf(target: str, detail: str) -> EbpfkitError | None:
    if perf_event(target)[0] != "HARDWARE":
        return None
    return FeatureMissing(
        f"hardware perf event {target!r} is not available here "
        f"({detail}): this machine exposes no hardware PMU (common in virtual "
        "machines). Sample with the software event instead: --perf cpu-clock:99"
    )


# --- USDT probes -----------------------------------------------------------------------------


def _split_usdt(target: str) -> tuple[str, str] | None:
    parts = usdt.split_target(target)
    return (parts[0], ":".join(p for p in parts[1:] if p)) if parts else None


def _prepare_usdt(spec: Spec, pid: int | None) -> str:
    """The argument readers of the probe's function; its sites kept for attach."""
    sites = usdt.find(spec.target)
    spec.state = sites
    return usdt.reader_c(sites, spec.fn)


def _attach_usdt(bcc, bpf, spec: Spec, pid: int | None) -> None:
    # A uprobe at each site, through perf's uprobe PMU with the semaphore's offset, so
    # the kernel raises the semaphore while attached (usdt.open_site); the descriptors
    # go in BCC's uprobe table, whose detach and cleanup close them.
    sites = spec.state if spec.state is not None else usdt.find(spec.target)
    fn = bpf.load_func(spec.fn.encode(), bcc.BPF.KPROBE)
    for site in sites:
        name = usdt.event_name(site, pid)
        if name in bpf.uprobe_fds:
            raise AttachError(
                f"{spec}: this USDT probe already has a function attached in this cell; "
                "put both pieces of work in one function"
            )
        bpf.uprobe_fds[name] = usdt.open_site(site, fn.fd, pid)


def _semaphore_note(target: str) -> str | None:
    sites = usdt.find(target)
    site = sites[0]
    if not site.semaphore:
        return None
    return (
        f"USDT probe {site.full_name} in {site.path} is behind a semaphore: the program "
        "computes its arguments only while the semaphore is raised. The kernel raises it "
        "while the probe is attached, in the traced process (--pid) or in every process "
        "running that binary, and lowers it when the probe is detached."
    )


# --- the registry ----------------------------------------------------------------------------

# probes' functions are looked up when called (lambdas), so that a test may stand in for one.


def _kernel_function_kind(ret: bool) -> Kind:
    """The kprobe (at a kernel function's entry) or the kretprobe (at its return)."""
    name = "kretprobe" if ret else "kprobe"
    return Kind(
        name=name,
        letter="K" if ret else "k",
        metavar="FUNC[=fn]",
        help="attach fn to the return of kernel function FUNC"
        if ret
        else "attach fn to the entry of kernel function FUNC, e.g. -k do_sys_openat2",
        example="do_sys_openat2",
        noun=name,
        form="FUNCTION",
        check=lambda target: probes.check_kernel_function(target, kind=name),
        attach=_attach_kretprobe if ret else _attach_kprobe,
        program_type="KPROBE",
        by_name=f"{name}__",
        available=lambda: probes.kprobes_available(),
        stand_ins=lambda target: probes.tracepoint_for(target, ret=ret),
        check_name=lambda target: probes.check_kernel_function_name(target, kind=name),
    )


_KINDS = (
    _kernel_function_kind(ret=False),
    _kernel_function_kind(ret=True),
    Kind(
        name="tracepoint",
        letter="t",
        metavar="CAT:EVENT[=fn]",
        help="attach fn to a tracepoint, e.g. -t syscalls:sys_enter_openat",
        example="syscalls:sys_enter_openat",
        noun="tracepoint",
        form="CATEGORY:EVENT",
        check=lambda name: probes.check_tracepoint(name),
        attach=_attach_tracepoint,
        program_type="TRACEPOINT",
        split=_split_tracepoint,
    ),
    Kind(
        name="uprobe",
        letter="u",
        metavar="BIN:SYM[=fn]",
        help="attach fn to a user function: a library name or path, then the symbol, "
        "e.g. -u c:malloc or -u /bin/bash:readline",
        example="c:malloc",
        noun="uprobe",
        form="BINARY:SYMBOL",
        check=_check_uprobe,
        attach=_attach_uprobe,
        program_type="KPROBE",
        split=_split_uprobe,
        caveat=_ifunc_caveat,
    ),
    Kind(
        name="uretprobe",
        letter="U",
        metavar="BIN:SYM[=fn]",
        help="attach fn to the return of a user function",
        example="c:malloc",
        noun="uretprobe",
        form="BINARY:SYMBOL",
        check=_check_uprobe,
        attach=functools.partial(_attach_uprobe, ret=True),
        program_type="KPROBE",
        split=_split_uprobe,
        caveat=_ifunc_caveat,
    ),
    Kind(
        name="perf",
        letter="P",
        metavar="EVENT[:HZ][=fn]",
        help="sample on every CPU: cpu-clock (software) or cycles, instructions "
        "(hardware, where present), e.g. -P cpu-clock:99",
        example="cpu-clock:99",
        noun="perf event",
        form="cpu-clock:99",
        check=perf_event,
        attach=_attach_perf,
        program_type="PERF_EVENT",
        explain=_explain_perf,
    ),
    Kind(
        name="usdt",
        letter="",
        metavar="BIN:[PROVIDER:]PROBE[=fn]",
        help="attach fn to a USDT (static) probe of a binary, e.g. --usdt "
        "python3:function__entry; read its arguments with bpf_usdt_readarg(N, ctx, &x) "
        "or bpf_usdt_readarg_p(N, ctx, buf, size) for strings; `ebpfkit usdt BIN` "
        "lists them. With --pid (or --pid self, this notebook) only that process",
        example="python3:function__entry",
        noun="USDT probe",
        form="BINARY:[PROVIDER:]PROBE",
        check=lambda target: usdt.check(target),
        attach=_attach_usdt,
        program_type="KPROBE",
        split=_split_usdt,
        note=_semaphore_note,
        prepare=_prepare_usdt,
    ),
)

KINDS: dict[str, Kind] = {k.name: k for k in _KINDS}

# The kinds a cell that attaches nothing is pointed to: the ones every kernel has first.
SUGGESTED = ("tracepoint", "uprobe", "perf", "kprobe")

# Functions bcc loads and attaches by their names alone (BPF._trace_autoload), each
# with the program type (bcc.BPF's constant) it is loaded as.
BY_NAME = (
    ("kprobe__", "KPROBE"),
    ("kretprobe__", "KPROBE"),
    ("tracepoint__", "TRACEPOINT"),  # TRACEPOINT_PROBE(category, event)
    ("raw_tracepoint__", "RAW_TRACEPOINT"),  # RAW_TRACEPOINT_PROBE(event)
    ("kfunc__", "TRACING"),  # KFUNC_PROBE(function)
    ("kretfunc__", "TRACING"),  # KRETFUNC_PROBE(function)
    ("lsm__", "LSM"),  # LSM_PROBE(hook)
)


def by_name_type(function: str) -> str | None:
    """The program type of a function named the bcc way (``tracepoint__...``); else None."""
    return next((kind for prefix, kind in BY_NAME if function.startswith(prefix)), None)


def get(name: str) -> Kind:
    """The kind called ``name``; BadArguments naming the kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise BadArguments(f"unknown probe kind {name!r}; one of {', '.join(KINDS)}") from None


def parse(kind: str, text: str) -> Spec:
    """``TARGET[=fn]`` given to option ``--kind`` as a Spec; BadArguments if malformed."""
    k = get(kind)
    target, _, fn = text.strip().partition("=")
    target = target.strip()
    if not target:
        raise BadArguments(f"{k.option} needs a target, e.g. {k.example}")
    if k.split is not None and k.split(target) is None:
        raise BadArguments(f"{k.option} {text!r}: give {k.form}, e.g. {k.example}")
    return Spec(kind, target, fn.strip() or None)


def prepare_all(specs: list[Spec], pid: int | None) -> str:
    """The C the kinds make for ``specs`` before compiling; on failure all is released."""
    made = []
    try:
        for spec in specs:
            prepare = KINDS[spec.kind].prepare
            if prepare is not None:
                made.append(prepare(spec, pid))
    except BaseException:
        release_all(specs)
        raise
    return "".join(made)


def release_all(specs: list[Spec]) -> None:
    """Free what ``prepare_all`` made (after the probes are detached); safe to call twice."""
    for spec in specs:
        release = KINDS[spec.kind].release
        if release is not None and spec.state is not None:
            try:
                release(spec)
            finally:
                spec.state = None


def stand_in(kind: str, target: str) -> str | None:
    """The tracepoint that sees what a ``kind`` probe on ``target`` sees, if the kernel has one."""
    find = get(kind).stand_ins
    found = find(target) if find is not None else []
    return found[0] if found else None


def fall_back(specs: list[Spec], fallback: list[Spec]) -> tuple[list[Spec], str]:
    """The specs to attach, and what the user should be told about them.

    The note says where ``fallback`` stands in for kinds this kernel lacks, and what
    the kinds' ``note`` hooks say about the specs kept (a USDT probe's semaphore).
    Without a fallback, or where every kind can attach, the specs are kept (a kind that
    cannot attach then fails its check with the kernel's reason).
    """
    kept, note = _fall_back(specs, fallback)
    said = [note] if note else []
    for spec in kept:
        hook = KINDS[spec.kind].note
        text = hook(spec.target) if hook is not None else None
        if text and text not in said:
            said.append(text)
    return kept, " ".join(said)


def _fall_back(specs: list[Spec], fallback: list[Spec]) -> tuple[list[Spec], str]:
    """The specs to attach, and a note when ``fallback`` stands in for kinds this kernel lacks."""
    if not fallback:
        return specs, ""
    missing, why = [], ""
    for spec in specs:
        available = KINDS[spec.kind].available
        if available is None:
            continue
        ok, reason = available()
        if not ok:
            missing.append(spec)
            why = why or reason
    if not missing:
        return specs, ""
    for spec in missing:
        check_name = KINDS[spec.kind].check_name
        if check_name is not None:
            check_name(spec.target)
    note = (
        f"this kernel has no kprobes ({why}). Instead of "
        f"{', '.join(str(s) for s in missing)}, ebpfkit attaches "
        f"{', '.join(str(s) for s in fallback)}, which sees the same calls."
    )
    return [s for s in specs if s not in missing] + fallback, note
