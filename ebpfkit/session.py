"""One program's life: compile, attach, run the workload, drain, always detach.

    with Session(source, tracepoint=["syscalls:sys_enter_openat"]) as s:
        result = s.run(duration=2)

or in one call, ``trace(source, tracepoint=..., duration=...)``. Whatever ends
the trace (time, workload exit, max events, Ctrl-C, an error), every probe is
detached and every program and map closed before control returns.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import attach, bpfsys, channels, exact, frames, kinds, layout, probes, program
from ._bcc import bcc as _bcc
from .errors import BadArguments, NothingAttached, NotPermitted
from .privileges import require_privileges
from .result import LOSES_NOTHING, TraceResult, missed_text
from .running import check_trace_pipe

DEFAULT_DURATION = 5.0  # seconds, when there is no workload to wait for
WORKLOAD_LIMIT = 60.0  # seconds, the default cap while waiting for a workload
MAX_DURATION = 3600.0
POLL_MS = 50
QUICK_FAILURE = 1.0  # s: a workload that fails sooner than this did not really run
STDERR_TAIL = 4096  # bytes of the workload's stderr kept for the result
# Tables that are plumbing rather than results.
_OUR_MAPS = (program.LOST_MAP, program.PRINTK_MAP, program.SCOPE_MAP, program.SCOPE_FULL_MAP)
_WORKLOAD_ONLY_NEEDS_RUN = (
    "--workload-only keeps the events of the --run command and the processes it starts: "
    "give the command with --run"
)
_SKIP_TABLES = {frames.PERF_EVENT_ARRAY, frames.RINGBUF, frames.STACK_TRACE, frames.PROG_ARRAY}


def time_order(channel: channels.Channel) -> str | None:
    """The field a buffer's records are sorted by, if any: the program's own timestamp.

    Per-CPU perf buffers interleave their CPUs' records; a ring buffer is in order already.
    """
    times = frames.time_fields(channel.dtype) if channel.kind == "perf" and channel.dtype else []
    return times[0] if times else None


def check_duration(duration: float | None) -> None:
    if duration is not None and not 0 < duration <= MAX_DURATION:
        raise BadArguments(
            f"--duration {duration:g}: give a number of seconds above 0 and at most "
            f"{MAX_DURATION:.0f}"
        )


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def printer(label: str, stream: str = "stdout") -> Callable[[str], None]:
    """An ``on_warning`` or ``on_note`` that prints ``label: text`` as it comes.

    The notebook prints both to stdout, under the cell; the command line tools send
    warnings to stderr (``stream="stderr"``), apart from the lines they print.
    """

    def show(text: str) -> None:
        # sys.stdout looked up now: IPython swaps it for each cell.
        print(f"{label}: {text}", file=getattr(sys, stream), flush=True)

    return show


def _check_options(comm, perf_pages, max_events, on_budget, memory_budget) -> None:
    """BadArguments for an option a Session cannot take, before anything is compiled."""
    if comm is not None and len(comm.encode()) > 15:
        raise BadArguments(f"--comm {comm!r}: the kernel keeps only 15 characters of a name")
    if perf_pages <= 0 or perf_pages & (perf_pages - 1):
        raise BadArguments(f"perf buffer pages must be a power of two, not {perf_pages}")
    if max_events is not None and max_events <= 0:
        raise BadArguments(f"--max-events {max_events}: give a number of events above 0")
    if on_budget not in channels.ON_BUDGET:
        raise BadArguments(
            f"--on-budget {on_budget!r}: give stop (end the trace and keep what it has) "
            "or spill (go on, with the events written to disk)"
        )
    channels.budget_bytes(memory_budget)  # a value it cannot read is an error now


def specs_of(given: dict[str, Iterable[str] | str | None]) -> list[attach.Spec]:
    """The specs of ``{kind: spec or specs}``, in the registry's order of kinds.

    A keyword that names no kind is a TypeError, as for any function, with close names.
    """
    unknown = [k for k in given if k not in kinds.KINDS]
    if unknown:
        close = probes.suggest(unknown[0], list(kinds.KINDS))
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TypeError(f"Session() got an unexpected keyword argument {unknown[0]!r}{hint}")
    return [attach.parse(k, text) for k in kinds.KINDS for text in _as_list(given.get(k))]


_AUTO_MACRO = re.compile(
    r"\b(?:TRACEPOINT_PROBE|RAW_TRACEPOINT_PROBE|KFUNC_PROBE|KRETFUNC_PROBE|LSM_PROBE)\s*\("
)
_ANY_DEF = re.compile(r"\b(?:int|u32|u64|long|void)\s+(\w+)\s*\([^;{}()]*\)\s*\{")


def attached_by_name(text: str) -> bool:
    """Whether bcc attaches something of the cell by itself (kprobe__..., TRACEPOINT_PROBE)."""
    if _AUTO_MACRO.search(text):
        return True
    return any(name.startswith(program.AUTO_PREFIXES) for name in _ANY_DEF.findall(text))


def check_something_attaches(specs: list[attach.Spec], text: str) -> None:
    """A cell that would attach nothing is an error, not a silent empty trace."""
    if specs or attached_by_name(text):
        return
    functions = attach.candidate_functions(text)
    # Helpers called by other functions are not meant to be attached: name the others.
    entry = [f for f in functions if len(re.findall(rf"\b{re.escape(f)}\s*\(", text)) < 2]
    named = entry or functions
    if named:
        fn = named[0]
        what = (
            f"its function{'s' if len(named) > 1 else ''} "
            f"{', '.join(f + '()' for f in named)} {'are' if len(named) > 1 else 'is'} "
            "neither named the bcc way nor given to an attach option"
        )
        options = ", ".join(
            f"{k.short} {k.form}={fn} for a {k.noun}" for k in map(kinds.get, kinds.SUGGESTED)
        )
        how = (
            f"attach {fn}() with an option ({options}), or name it the bcc way "
            "(TRACEPOINT_PROBE(CATEGORY, EVENT) { ... }, tracepoint__CATEGORY__EVENT, "
            "kprobe__FUNCTION)"
        )
    else:
        what = "it defines no function to attach"
        how = (
            "write a probe function: TRACEPOINT_PROBE(CATEGORY, EVENT) { ... }, or "
            "int fn(void *ctx) { ... } with an option such as -t CATEGORY:EVENT=fn"
        )
    raise NothingAttached(
        f"the cell attaches nothing, so the trace would see nothing: {what}. To trace, {how}. "
        "To only load the programs into the kernel, use --load-only."
    )


class Session:
    """A compiled, attached program and what it has sent so far."""

    def __init__(
        self,
        source: str,
        *,
        fallback: Iterable[str] | str | None = None,
        pid: int | None = None,
        comm: str | None = None,
        max_events: int | None = None,
        perf_pages: int = channels.DEFAULT_PERF_PAGES,
        hist: dict[str, str] | None = None,
        cflags: Iterable[str] = (),
        exact: bool = True,
        on_warning: Callable[[str], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        memory_budget: int | str | None = None,
        on_budget: str = "stop",
        spill_dir: str | None = None,
        cache: bool = True,
        workload_only: bool = False,
        **by_kind: Iterable[str] | str | None,
    ):
        # The probes by kind, one keyword per entry of kinds.KINDS: kprobe=, tracepoint= ...
        self.source = source
        self.specs = specs_of(by_kind)
        _check_options(comm, perf_pages, max_events, on_budget, memory_budget)
        self.memory_budget, self.on_budget, self.spill_dir = memory_budget, on_budget, spill_dir
        self.budget: channels.MemoryBudget | None = None
        self.pid, self.comm = (os.getpid() if pid == "self" else pid), comm  # self: this process
        self.max_events = max_events
        self.perf_pages = perf_pages
        self.hist = dict(hist or {})
        self.cflags = list(cflags)
        self.exact = exact
        self.cache = cache
        # Keep, in the kernel, only the events of the workload's processes (run(workload=)).
        self.workload_only = workload_only
        self.on_warning = on_warning
        self.on_note = on_note
        self.warnings: list[str] = []
        self.notes: list[str] = []
        # Tracepoints to use instead of the kprobes where the kernel has none.
        self.fallback = [attach.parse(kinds.FALLBACK_KIND, t) for t in _as_list(fallback)]
        self.bpf = None
        self.channels: list[channels.Channel] = []
        self.printk: channels.PrintkReader | None = None
        self.src: program.Source | None = None
        self.started_at = 0.0
        self.wall_offset = frames.monotonic_to_wall_ns()
        # Re-entrant: Ctrl-C's handler detaches, and it may run while this very thread is
        # already inside detach() (max events reached in the reader).
        self._detach_lock = threading.RLock()
        self.stop_reason = ""

    # ------------------------------------------------------------ life cycle

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        if self.on_warning:
            self.on_warning(text)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if self.on_note:
            self.on_note(text)

    def _use_fallback(self) -> None:
        """On a kernel without kprobes, swap the kprobe specs for the fallback tracepoints."""
        self.specs, note = kinds.fall_back(self.specs, self.fallback)
        if note:
            self._note(note)

    def start(self) -> Session:
        """Compile, open the buffers and attach every probe; on any failure, clean up."""
        # A second run of the same Session begins afresh (each buffer has its loss slot),
        # the first one's programs detached: started twice, they would stay attached.
        self.close()
        self.channels, self.printk, self.stop_reason = [], None, ""
        if self.on_budget == "spill":
            # Imported before the trace: at the first spill it would stall the reading.
            import pyarrow.parquet  # noqa: F401
        # Measured now: a share of the memory available when this trace starts.
        self.budget = channels.MemoryBudget(
            channels.budget_bytes(self.memory_budget),
            self.on_budget,
            self.spill_dir,
            on_stop=self._stop_producers,
        )
        try:
            require_privileges()
        except NotPermitted:
            # A misspelt name is the error to show first, as far as this user can read the
            # kernel's names (kallsyms and ELF symbols yes, root-only tracefs no).
            with contextlib.suppress(NotPermitted, PermissionError):
                self._check_names()
            raise
        bcc = _bcc()
        self._check_names()
        try:
            self.src = program.prepare(
                self.source,
                pid=self.pid,
                comm=self.comm,
                fn_names={s.fn for s in self.specs},
                generated=kinds.prepare_all(self.specs, self.pid),
                scoped=self.workload_only,
            )
            if self.src.uses_printk:
                check_trace_pipe(self)  # a background trace of ours may hold trace_pipe
            self._compile(bcc)
            # After compiling: a cell that does not compile says so first.
            check_something_attaches(self.specs, self.source)
            self._open_channels(bcc)
            program.autoload(bcc, self.bpf)
            if self.src.uses_printk:
                self.printk = channels.PrintkReader(self.src.printk_tag)
            for spec in self.specs:
                attach.attach(bcc, self.bpf, spec, pid=self.pid)
            if self.workload_only:
                for fn, tracepoint in program.SCOPE_PROBES.items():
                    self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn)
                for fn, tracepoint in program.SCOPE_RAW_PROBES.items():
                    self.bpf.attach_raw_tracepoint(tp=tracepoint, fn_name=fn)
        except BaseException:
            self.close()
            raise
        self.started_at = time.monotonic()
        return self

    def _check_names(self) -> None:
        """Every probe's target exists (else close matches); kprobes may fall back."""
        self._use_fallback()
        attach.assign_functions(self.specs, self.source)
        attach.precheck_auto(self.source)
        for spec in self.specs:
            attach.precheck(spec)
            caveat = kinds.KINDS[spec.kind].caveat
            text = caveat(spec.target) if caveat else None
            if text:
                self._warn(text)

    def _compile(self, bcc) -> None:
        if self.exact:
            # Kernel structs whose borrowed-header layout is wrong are redefined from BTF.
            # ebpfkit's own #include lines go through it too: a header included after it
            # would meet the redefined structs.
            self.src.use_layout(exact.build_prelude(program.includes(self.source) + self.source))
        # Compiled without the prelude where it is what breaks the cell (src.layout empty).
        self.bpf = program.compile_source(bcc, self.src, self.cflags, cache=self.cache)
        for note in self.src.layout.notes:
            self._note(note)
        found = layout.mismatches(self.source, skip=self.src.layout.corrected)
        if found:
            self._warn(layout.warning_text(found))

    def _open_channels(self, bcc) -> None:
        # In the order of program.Source.buffers(): each one's slot in the lost counter.
        for name, kind in self.src.buffers():
            try:
                dtype = frames.event_dtype(frames.event_fields(bcc, self.bpf, name))
            except frames.LayoutError as e:
                self._warn(f"{name}: {e}; its records are kept as raw bytes")
                dtype = None
            if dtype is not None and not dtype.names:
                dtype = None  # nothing sent through it yet: BCC saw no submit call
            channel = channels.Channel(
                name, kind, dtype, limit=self.max_events, stop=self._stop_producers
            )
            channel.open(self.bpf, self.perf_pages)
            self.channels.append(channel)

    def _stop_producers(self, why: str) -> None:
        """End the trace early: detaching stops new records, so the readers finish."""
        self.stop_reason = self.stop_reason or why
        self.detach()

    def poll(self, timeout_ms: int = POLL_MS) -> None:
        channels.poll(self.bpf, self.channels, timeout_ms, self.budget)
        if self.printk:
            self.printk.read()

    def received(self) -> int:
        return sum(c.received for c in self.channels)

    def detach(self, why: str = "") -> None:
        """Detach every probe but keep maps and buffers readable; safe from any thread."""
        with self._detach_lock:
            b = self.bpf
            if b is None:
                return
            for table, detach in (
                (b.kprobe_fds, b.detach_kprobe_event),
                (b.uprobe_fds, b.detach_uprobe_event),
                (b.tracepoint_fds, b.detach_tracepoint),
                (b.raw_tracepoint_fds, b.detach_raw_tracepoint),
                (b.kfunc_entry_fds, b.detach_kfunc),
                (b.kfunc_exit_fds, b.detach_kretfunc),
            ):
                for key in list(table):
                    with contextlib.suppress(Exception):  # close() frees whatever is left
                        detach(key)
            for ev_type, ev_config in list(b.open_perf_events):
                with contextlib.suppress(Exception):
                    b.detach_perf_event(ev_type, ev_config)

    def close(self) -> None:
        """Detach and free everything; safe to call twice."""
        if self.printk:
            self.printk.close()
        # Not while another thread detaches (a Stop button, the deadline timer).
        with self._detach_lock:
            for channel in self.channels:
                channel.close()  # our own mappings of the buffers; cleanup() frees the maps
            if self.bpf is not None:
                try:
                    self.bpf.cleanup()
                finally:
                    self.bpf = None
            kinds.release_all(self.specs)  # after the probes that needed it are detached

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ running

    def run(
        self,
        duration: float | None = None,
        workload: str | None = None,
        progress: Callable[[Session, float], None] | bool | str | None = None,
    ) -> TraceResult:
        """Trace until the duration ends, the workload exits, or max events; then collect.

        ``progress(session, elapsed)`` is called after each read of the buffers. True
        (or "auto", "widget", "text") shows the live view instead: a panel with a Stop
        button in a notebook, a progress line elsewhere (``ebpfkit.live``).
        """
        check_duration(duration)
        if self.workload_only and not workload:
            raise BadArguments(_WORKLOAD_ONLY_NEEDS_RUN)
        if self.bpf is None:
            self.start()
        from .live import watched

        return watched(progress, self, lambda view: self._run(duration, workload, view))

    def _admit(self, gate: int) -> None:
        """The workload's gate into the scope: every process it starts is traced, it not."""
        table = self.bpf[program.SCOPE_MAP]
        table[table.Key(gate)] = table.Leaf(2)

    def _run(self, duration, workload, progress) -> TraceResult:
        limit = duration or (WORKLOAD_LIMIT if workload else DEFAULT_DURATION)
        if self.bpf is None:
            self.start()
        proc, out, errors = None, None, None
        stopped_by = "duration"
        ended_after = None
        start = time.monotonic()
        # The deadline is kept by a timer, not by the loop: under a flood of records BCC's
        # readers do not return until the buffer is empty, which may be never.
        deadline = threading.Timer(limit, self._stop_producers, args=("duration",))
        deadline.daemon = True
        previous_sigint = _catch_sigint(lambda: self._stop_producers("interrupt"))
        try:
            deadline.start()
            if workload:
                out = tempfile.TemporaryFile()
                # Started after every probe is attached, so the trace sees it from the start;
                # in the workload's scope, once its gate is in the scope map.
                admit = self._admit if self.workload_only else None
                proc, errors = _start_workload(workload, out, admit)
            while True:
                elapsed = time.monotonic() - start
                if elapsed >= limit or self.stop_reason:
                    stopped_by = self.stop_reason or "duration"
                    break
                self.poll(min(POLL_MS, max(1, int((limit - elapsed) * 1000))))
                if progress:
                    progress(self, time.monotonic() - start)
                if self.stop_reason:
                    stopped_by = self.stop_reason
                    break
                if proc is not None and proc.poll() is not None:
                    stopped_by = "workload exit"
                    ended_after = time.monotonic() - start
                    self.poll(POLL_MS)  # records still on their way from the last instructions
                    break
        except KeyboardInterrupt:
            stopped_by = "interrupt"
        except BaseException:
            if proc is not None:
                _kill_group(proc)
            raise
        finally:
            deadline.cancel()
            _restore_sigint(previous_sigint)
            self.detach()
        elapsed = time.monotonic() - start
        try:
            # The workload lives until its stacks are symbolized: naming user addresses
            # needs its /proc/PID/maps. The probes are already detached.
            result = self.collect()
        finally:
            if proc is not None:
                _kill_group(proc)  # and whatever it left running in the background
        result.duration = elapsed
        result.stopped_by = stopped_by
        if proc is not None:
            self._workload_said(result, workload, proc, out, errors, ended_after)
        return result

    def _workload_said(self, result, workload, proc, out, errors, ended_after) -> None:
        """The workload's exit code and output in the result; a warning if it failed at once."""
        result.exit_code = proc.returncode
        errors.join(timeout=1)  # its stderr, copied into the output until the end
        result.workload_error = errors.text()
        out.seek(0)
        result.output = out.read().decode("utf-8", "replace")
        out.close()
        if proc.returncode and ended_after is not None and ended_after < QUICK_FAILURE:
            said = result.workload_message()
            text = (
                f"the workload failed at once: `{workload}` exited with code "
                f"{proc.returncode} after {ended_after:.2f} s"
                + (f" ({said})" if said else "")
                + ", so the trace saw little or nothing of it"
            )
            result.warnings.append(text)
            self._warn(text)

    def collect(self) -> TraceResult:
        """Detach, drain the buffers, read every map; then free everything."""
        bcc = _bcc()
        try:
            self.detach()
            channels.drain(self.bpf, self.channels, self.budget)
            if self.printk:
                self.printk.read()
            if self.channels:
                channels.count_lost(self.bpf, program.LOST_MAP, self.channels)
            result = TraceResult(
                attached=self.attached(), warnings=list(self.warnings), notes=list(self.notes)
            )
            stacks = self._stack_table()
            self._budget_said(result)
            if self.workload_only:
                self._scope_said(result)
            for c in self.channels:
                alloc = None
                if self.budget is not None and c.store is not None:
                    alloc = self.budget.alloc(c.store.rows * c.store.row_bytes)
                df = c.take_frame(self.wall_offset, sort_by=time_order(c), alloc=alloc)
                if self.max_events and len(df) > self.max_events:
                    df = df.head(self.max_events)
                if stacks is not None:
                    df = frames.add_stacks(df, self.bpf, stacks)
                result.channels[c.name] = df
                result.lost[c.name] = c.lost
                result.received[c.name] = c.received
            if self.channels:
                result.events = result.channels[self.channels[0].name]
            result.maps = self._maps(bcc, stacks)
            if self.printk:
                result.printk = self.printk.frame(self.wall_offset)
                self._count_printk(result)
            self._misses_said(result)
            return result
        finally:
            if self.budget is not None:
                self.budget.cleanup()
            self.close()

    def _scope_said(self, result: TraceResult) -> None:
        """Processes the scope map had no room for: their events are missing, say so."""
        missed = sum(self.bpf[program.SCOPE_FULL_MAP][0])
        if missed:
            text = (
                f"{missed:,} processes of the workload were started while the scope map was "
                f"full ({program.SCOPE_ENTRIES:,} processes): their events are not in the trace"
            )
            self._warn(text)
            result.warnings.append(text)

    def _misses_said(self, result: TraceResult) -> None:
        """Runs the kernel skipped because a BPF program was already running on that CPU
        (bpf_prog_info.recursion_misses). Read once detached, so no run comes after."""
        for key, fn in self.bpf.funcs.items():
            name = key.decode()
            try:
                missed = bpfsys.recursion_misses(fn.fd)
            except OSError:  # a kernel without OBJ_GET_INFO_BY_FD: nothing to say
                continue
            result.missed[name] = missed
            if missed and name in LOSES_NOTHING:
                result.notes.append(missed_text(name, missed))
                self._note(result.notes[-1])
            elif missed:
                result.warnings.append(missed_text(name, missed))
                self._warn(result.warnings[-1])

    def _budget_said(self, result: TraceResult) -> None:
        """What the memory budget did, in the result and as it happens."""
        budget = self.budget
        if budget is None:
            return
        result.memory_budget = budget.limit
        result.spilled = budget.spilled
        if not budget.reached:
            return
        limit = channels.size_text(budget.limit)
        if budget.action == "spill" and budget.spilled:
            self._note(
                f"the events outgrew the memory budget of {limit}: {budget.spilled:,} of them "
                f"({channels.size_text(budget.spilled_bytes)}) were spilled to disk (Parquet) "
                "while tracing, and read back into the DataFrame at the end"
            )
            result.notes.append(self.notes[-1])
        if self.stop_reason == "memory budget":
            kept = sum(c.received for c in self.channels)
            self._warn(
                f"the trace stopped at its memory budget of {limit} and kept the "
                f"{kept:,} events it had. To trace longer: spill the events to disk "
                "(--on-budget spill, on_budget='spill'), raise the budget (--memory-budget, "
                "%config BpfMagics.memory_budget, memory_budget=), or send fewer events "
                "(filter with --pid/--comm, or count in a map)"
            )
            result.warnings.append(self.warnings[-1])

    def printk_lost(self) -> tuple[int, int]:
        """(lines the program wrote, lines of them lost so far)."""
        produced = channels.count_printk(self.bpf, program.PRINTK_MAP)
        return produced, max(produced - self.printk.delivered, 0)

    def _count_printk(self, result: TraceResult) -> None:
        produced, lost = self.printk_lost()
        result.lost["printk"] = lost
        result.printk_written = produced
        if lost:
            text = (
                f"bpf_trace_printk: {lost:,} of {produced:,} lines were lost: the kernel's "
                "trace buffer (one for the whole machine) overwrote them before trace_pipe "
                "was read. printk is for a few lines of debugging; for one event per call, "
                "send a struct through a ring buffer (BPF_RINGBUF_OUTPUT) instead"
            )
            result.warnings.append(text)
            self._warn(text)

    def attached(self) -> list[str]:
        out = [str(s) for s in self.specs]
        for name in re.findall(
            r"\b((?:kprobe|kretprobe|tracepoint|raw_tracepoint)__\w+)\s*\(", self.source
        ):
            out.append(f"{name} (by name)")
        for cat, ev in re.findall(r"\bTRACEPOINT_PROBE\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", self.source):
            out.append(f"tracepoint {cat}:{ev}")
        return out

    def _tables(self, bcc):
        """(name, map type) of each of the program's maps."""
        return self.bpf.table_types()

    def maps_now(self) -> dict:
        """The program's maps as they are at this moment, read in bulk and left as they
        are: the live view's picture of a trace that only aggregates."""
        return self._maps(_bcc(), None)

    def _stack_table(self):
        bcc = _bcc()
        for name, ttype in self._tables(bcc):
            if ttype == frames.STACK_TRACE:
                return self.bpf[name]
        return None

    def _maps(self, bcc, stacks) -> dict:
        kind = "log2" if re.search(r"\bbpf_log2l?\s*\(", self.source) else "linear"
        histograms = {n: kind for n in re.findall(r"BPF_HISTOGRAM\s*\(\s*(\w+)", self.source)}
        histograms.update(self.hist)
        ncpus = len(bcc.utils.get_possible_cpus())
        out = {}
        for name, ttype in self._tables(bcc):
            if ttype in _SKIP_TABLES or name in _OUR_MAPS:
                continue
            table = self.bpf[name]
            if name in histograms:
                out[name] = frames.histogram_frame(table, histograms[name])
            else:
                df = frames.map_frame(table, ttype, ncpus)
                if stacks is not None:
                    df = frames.add_stacks(df, self.bpf, stacks)
                out[name] = df
        return out


def _signature_with_kinds(init: Callable) -> inspect.Signature:
    """Session's signature as help() and completion show it: a keyword per probe kind."""
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    by_kind = [
        inspect.Parameter(
            k, inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Iterable[str] | str | None"
        )
        for k in kinds.KINDS
    ]
    return sig.replace(parameters=params[:2] + by_kind + params[2:])


Session.__init__.__signature__ = _signature_with_kinds(Session.__init__)


def _catch_sigint(stop: Callable[[], None]):
    """Make Ctrl-C stop the trace rather than raise.

    A KeyboardInterrupt raised while BCC's reader runs our callback is swallowed by
    ctypes and the trace would go on; a handler that stops the producers cannot be lost.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        stop()

    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


class _StderrCopy(threading.Thread):
    """Copies the workload's stderr into its output file and keeps the last bytes of it."""

    def __init__(self, fd: int, out):
        super().__init__(daemon=True, name="ebpfkit-workload-stderr")
        self.fd, self.out = fd, out
        self.tail = b""

    def run(self) -> None:
        try:
            while True:
                data = os.read(self.fd, 65536)
                if not data:
                    return
                # The same open file as the workload's stdout: one offset, nothing overwritten.
                os.write(self.out.fileno(), data)
                self.tail = (self.tail + data)[-STDERR_TAIL:]
        except OSError:
            return
        finally:
            os.close(self.fd)

    def text(self) -> str:
        return self.tail.decode("utf-8", "replace")


# The gate of a workload in scope: a shell that waits on its stdin until it is in the
# scope map, then runs the workload as its child (so the gate's own start is not traced).
_GATE = 'read -r go && exec </dev/null && /bin/sh -c "$0"'


def _start_workload(
    workload: str, out, admit: Callable[[int], None] | None = None
) -> tuple[subprocess.Popen, _StderrCopy]:
    """The workload under /bin/sh: stdout to ``out``, stderr to ``out`` and kept aside.

    ``admit(pid)``: called with the pid of the gate before the workload may start.
    """
    read, write = os.pipe()
    gate_read, gate_write = os.pipe() if admit else (None, None)
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", _GATE, workload] if admit else ["/bin/sh", "-c", workload],
            stdout=out,
            stderr=write,
            stdin=gate_read if admit else subprocess.DEVNULL,
            start_new_session=True,
        )
        if admit:
            try:
                admit(proc.pid)
                os.write(gate_write, b"go\n")
            except BaseException:
                _kill_group(proc)
                raise
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
        for fd in (gate_read, gate_write):
            if fd is not None:
                os.close(fd)
    copy = _StderrCopy(read, out)
    copy.start()
    return proc, copy


def _kill_group(proc: subprocess.Popen) -> None:
    """End the workload and every process it started: nothing outlives the cell."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever ignored SIGTERM
    proc.wait()


@dataclass
class Run:
    """One trace as asked for, by the magic, ``trace()`` or ``start()``: built once, checked once.

    ``options`` are Session's keyword arguments; ``shown`` the options as the user gave
    them (the magic's line), kept with the result and its recording; by default they
    are made from ``duration``, ``workload`` and ``options``.
    """

    source: str
    options: dict[str, Any] = field(default_factory=dict)
    duration: float | None = None
    workload: str | None = None
    recording: str | None = None
    progress: Callable[[Session, float], None] | bool | str | None = None
    shown: str | dict | None = None

    def __post_init__(self) -> None:
        check_duration(self.duration)
        if self.options.get("workload_only") and not self.workload:
            raise BadArguments(_WORKLOAD_ONLY_NEEDS_RUN)

    def session(self) -> Session:
        """The Session of this run, its options checked (nothing compiled yet)."""
        return Session(self.source, **self.options)

    @property
    def cell(self) -> dict:
        """The program and its options, kept with the result (and its recording)."""
        shown = self.shown
        if shown is None:
            plain = (str, int, float, list, dict, type(None))
            kept = {
                k: v if isinstance(v, plain) else repr(v)
                for k, v in self.options.items()
                if not callable(v)  # on_warning= is no data
            }
            shown = {"duration": self.duration, "run": self.workload, **kept}
        return {"source": self.source, "options": shown}

    def trace(self, session: Session | None = None, *, announced: bool = False) -> TraceResult:
        """Trace in the foreground (live, or replayed or recorded as ``recording`` says).

        ``session``: one already made from this run; ``announced``: its warnings and notes
        were printed as they came, so the result need not show them again.
        """

        def live() -> TraceResult:
            with session or self.session() as s:
                result = s.run(
                    duration=self.duration, workload=self.workload, progress=self.progress
                )
            if announced:
                result.announced = True
            result.cell = self.cell
            return result

        if self.recording is None:
            return live()
        from .recording import run_or_replay

        return run_or_replay(self.recording, live, source=self.source)


def trace(
    source: str,
    *,
    duration: float | None = None,
    run: str | None = None,
    recording: str | None = None,
    progress: Callable[[Session, float], None] | bool | str | None = None,
    **options,
) -> TraceResult:
    """Compile ``source``, attach it, trace, and return what it gathered.

    ``options`` are Session's: a spec or a list of specs for each probe kind
    (``kprobe``, ``kretprobe``, ``tracepoint``, ``uprobe``, ``uretprobe``, ``perf``: see
    ``ebpfkit.kinds``), ``pid``, ``comm``, ``max_events``, ``perf_pages``, ``hist``,
    ``cflags``, ``cache``, ``workload_only``. ``progress=True`` shows the live view while
    it traces (see ``Session.run``).

    ``recording=NAME`` ties the trace to ``<recordings dir>/NAME.ebpfkit``: traced live,
    replayed or recorded as ``$EBPFKIT_MODE`` says (see ``ebpfkit.recording``).

    >>> r = trace('''
    ... TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    ...     bpf_trace_printk("%s\\\\n", args->filename);
    ...     return 0;
    ... }''', run="cat /etc/hostname")          # doctest: +SKIP
    """
    job = Run(source, options, duration, run, recording, progress)
    return job.trace()


def load(source: str, **options) -> list[str]:
    """Compile and load the probe functions into the kernel without attaching them.

    Loaded: the functions the probe options name (``kprobe=``, ``tracepoint=`` ...), as
    their kinds' program types, and those named the bcc way, as bcc would load them:
    ``kprobe__``/``kretprobe__`` (kprobe), ``TRACEPOINT_PROBE``/``tracepoint__``
    (tracepoint), ``RAW_TRACEPOINT_PROBE``/``raw_tracepoint__`` (raw tracepoint),
    ``kfunc__``/``kretfunc__`` (fentry/fexit) and ``lsm__``. Any other function is
    not loaded. Returns the names of the loaded programs, the options' first, then the
    others in alphabetical order; an empty list when there was none. Each is freed
    before this returns. This works even where the kernel cannot attach them (a kprobe
    program on a kernel without kprobes).
    """
    require_privileges()
    bcc = _bcc()
    specs = specs_of({k: v for k, v in options.items() if k in kinds.KINDS})
    attach.assign_functions(specs, source)
    # The kinds' own C (a USDT probe's argument readers) is part of what the cell loads.
    src = program.prepare(source, generated=kinds.prepare_all(specs, None))
    try:
        b = program.compile_source(
            bcc, src, options.get("cflags"), cache=options.get("cache", True)
        )
        try:
            types = {s.fn: kinds.KINDS[s.kind].program_type for s in specs}
            for name in sorted(b.function_names()):
                types.setdefault(name, kinds.by_name_type(name))
            loaded = [name for name, kind in types.items() if kind is not None]
            for name in loaded:
                program.load_or_explain(b, name, getattr(bcc.BPF, types[name]))
            return loaded
        finally:
            b.cleanup()
    finally:
        kinds.release_all(specs)
