"""``%%bpf``: the cell's C, traced live; the magic only parses and delegates."""

from __future__ import annotations

import os
import shlex

from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Float, Int, Unicode
from traitlets.config import Configurable

from . import channels, recording
from .errors import BadArguments
from .kinds import KINDS
from .session import Run, Session, load, printer
from .sources import read_program


def _hist(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        name, _, kind = v.partition("=")
        if kind not in ("log2", "linear"):
            raise BadArguments(f"--hist {v!r}: give NAME=log2 or NAME=linear")
        out[name] = kind
    return out


def _probe_options(func):
    """The magic's option of each probe kind (-k/--kprobe ...), from the registry, in its order."""
    for kind in reversed(KINDS.values()):
        func = argument(
            *kind.option_strings, action="append", metavar=kind.metavar, help=kind.help
        )(func)
    return func


def _pid(text: str) -> int:
    """``--pid``'s value: a process id, or ``self`` for this notebook's own process."""
    if text.strip().lower() == "self":
        return os.getpid()
    try:
        return int(text)
    except ValueError:
        raise BadArguments(f"--pid {text!r}: give a process id, or self (this notebook)") from None


def _loaded_line(names: list[str]) -> str:
    """What ``--load-only`` says it loaded (and freed again)."""
    if names:
        return "loaded into the kernel (not attached): " + ", ".join(names)
    return (
        "nothing was loaded into the kernel: no probe option names a function of the cell, "
        "and none is named the bcc way (TRACEPOINT_PROBE(...), kprobe__..., tracepoint__..., "
        "raw_tracepoint__...); name one with an option, e.g. --load-only -t CATEGORY:EVENT=fn"
    )


def _given(args) -> dict:
    """The options as given (those set), kept with a background trace's recording."""
    return {k: v for k, v in vars(args).items() if v is not None and v is not False}


@magics_class
class BpfMagics(Magics, Configurable):
    """The ``%%bpf`` cell magic. Settings: ``%config BpfMagics.duration = 10``."""

    duration = Float(5.0, help="Seconds to trace when neither --duration nor --run is given.").tag(
        config=True
    )
    buffer_pages = Int(
        channels.DEFAULT_PERF_PAGES, help="Pages per CPU for each perf buffer (a power of two)."
    ).tag(config=True)
    memory_budget = Unicode(
        channels.DEFAULT_BUDGET,
        help="The memory a trace's events may take: bytes (2G, 500M) or a share of the memory "
        "available when the trace starts (50%).",
    ).tag(config=True)
    on_budget = Enum(
        list(channels.ON_BUDGET),
        "stop",
        help="What a trace does at its memory budget: stop (and keep what it has) or spill "
        "(go on, the events written to disk as Parquet and read back at the end).",
    ).tag(config=True)
    cache = Bool(
        True,
        help="Keep compiled programs on disk ($XDG_CACHE_HOME/ebpfkit, else ~/.cache/ebpfkit) "
        "and reuse them when a cell, its options and the kernel are unchanged.",
    ).tag(config=True)
    live = Enum(
        ["auto", "widget", "text", "off"],
        "auto",
        help="The live view while a cell traces: a widget panel with a Stop button in a "
        "notebook and a progress line elsewhere (auto), always one of them, or none (off).",
    ).tag(config=True)

    def __init__(self, shell):
        Configurable.__init__(self, config=shell.config)
        Magics.__init__(self, shell=shell)
        self.shell.configurables.append(self)

    # long: by its docstring alone, which is what %%bpf? shows
    @no_var_expand
    @magic_arguments()
    @_probe_options
    @argument(
        "--fallback",
        action="append",
        metavar="CAT:EVENT[=fn]",
        help="where the kernel has no kprobes, attach this tracepoint instead of the "
        "kprobes (and say so), e.g. -k do_sys_openat2=on_open "
        "--fallback syscalls:sys_enter_openat=on_open_tp",
    )
    @argument(
        "-d",
        "--duration",
        type=float,
        help="seconds to trace (default 5; with --run, until the command exits, at most 60)",
    )
    @argument(
        "-r",
        "--run",
        metavar="COMMAND",
        help="shell command started after the probes attach, e.g. --run 'ls; cat /etc/hostname'",
    )
    @argument("-n", "--max-events", type=int, help="stop after this many events")
    @argument(
        "-p",
        "--pid",
        type=_pid,
        metavar="PID|self",
        help="only this process (checked in the kernel); self: this notebook's own process",
    )
    @argument("-c", "--comm", help="only processes with this command name (checked in the kernel)")
    @argument("-o", "--out", metavar="NAME", help="also store the result in this variable")
    @argument(
        "-f", "--file", help="run the C program in this file (e.g. bpf/hello.c) instead of the cell"
    )
    @argument("--buffer-pages", type=int, help="pages per CPU for perf buffers (power of two)")
    @argument(
        "--background",
        metavar="NAME",
        help="keep tracing in the background while other cells run; the handle is stored "
        "as NAME: NAME.frame() the events so far, NAME.stop() (or %%bpf --stop NAME) "
        "the result. Without --duration it traces until stopped (at most an hour). "
        "With --recording it is recorded when stopped, or replayed from the start",
    )
    @argument("--stop", metavar="NAME", help="stop the background trace NAME, show its result")
    @argument("--stop-all", action="store_true", help="stop every background trace")
    @argument("--list", action="store_true", help="list the background traces")
    @argument(
        "--hist",
        action="append",
        metavar="MAP=log2|linear",
        help="read MAP as a histogram of this kind (BPF_HISTOGRAM maps are found by themselves)",
    )
    @argument(
        "--headers-layout",
        action="store_true",
        help="read kernel structs at the offsets of the kernel headers BCC compiles against, "
        "even where the running kernel's BTF says otherwise (to see the difference)",
    )
    @argument(
        "--memory-budget",
        metavar="SIZE",
        help="the memory the events may take: bytes (2G, 500M) or a share of the memory "
        "available (50%%, the default; %%config BpfMagics.memory_budget)",
    )
    @argument(
        "--on-budget",
        choices=list(channels.ON_BUDGET),
        help="at the memory budget: stop the trace and keep what it has (default), or spill "
        "the events to disk and go on (%%config BpfMagics.on_budget)",
    )
    @argument(
        "-W",
        "--workload-only",
        action="store_true",
        help="keep only the events of the --run command and every process it starts, "
        "children started during the trace included (filtered in the kernel)",
    )
    @argument(
        "--no-cache",
        action="store_true",
        help="compile afresh: neither use nor keep a compiled program (%%config BpfMagics.cache)",
    )
    @argument(
        "--load-only",
        action="store_true",
        help="compile and load into the kernel, then free, attaching nothing: the functions "
        "the probe options name and those named the bcc way (TRACEPOINT_PROBE, kprobe__...), "
        "each as its kind of program; the verifier judges each",
    )
    @argument(
        "--recording",
        metavar="NAME",
        help="tie the cell to the recording NAME ($EBPFKIT_RECORDINGS or ./recordings, "
        "NAME.ebpfkit): $EBPFKIT_MODE=auto traces live where eBPF may run and replays it "
        "elsewhere; live, replay, record force one way",
    )
    @argument(
        "--replay",
        metavar="PATH",
        help="show a saved trace (a file from result.save(), or a recording's NAME) "
        "instead of tracing: %%bpf --replay recordings/02-opens.ebpfkit",
    )
    @line_cell_magic
    def bpf(self, line: str, cell: str | None = None):
        """Compile the cell's C with BCC, attach it, trace, and return the result.

        The result has ``events`` (a DataFrame from BPF_PERF_OUTPUT or
        BPF_RINGBUF_OUTPUT records, one column per field of the C struct),
        ``maps`` (each map as a DataFrame; histograms as bucket bounds and
        counts), ``printk`` (bpf_trace_printk lines), ``lost`` (records dropped
        per buffer) and ``duration``. It lands in ``_``; ``-o NAME`` stores it too.

        Functions named the bcc way attach by themselves: ``kprobe__do_sys_openat2``,
        ``kretprobe__...``, ``TRACEPOINT_PROBE(syscalls, sys_enter_openat)``,
        ``RAW_TRACEPOINT_PROBE(sched_switch)``. Other functions attach with the
        options; ``=fn`` picks the function when the cell has several.

        Examples::

            %%bpf --run "ls; cat /etc/hostname"
            TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
                bpf_trace_printk("exec called by PID %d\\n", bpf_get_current_pid_tgid() >> 32);
                return 0;
            }

            %%bpf -u c:malloc -d 2 -o mallocs
            BPF_HASH(calls, u32, u64);
            int count(struct pt_regs *ctx) {
                u32 pid = bpf_get_current_pid_tgid() >> 32;
                calls.increment(pid);
                return 0;
            }

            %%bpf -P cpu-clock:99 -d 1
            BPF_HASH(samples, u32, u64);
            int on_sample(struct bpf_perf_event_data *ctx) {
                u32 cpu = bpf_get_smp_processor_id();
                samples.increment(cpu);
                return 0;
            }

        A program from a file runs as a line magic:
        ``%bpf --file bpf/exec_tracepoint.c --run "ls"``.

        Ctrl-C (or the notebook's stop button) ends the trace and keeps what it gathered.

        Where eBPF cannot run (no root, Binder), ``--recording NAME`` shows a trace
        recorded on a real kernel instead, marked as a recording; ``%bpf --replay PATH``
        shows any saved result (``result.save(PATH)``).
        """
        try:
            # shlex, not IPython's own split, so --run "ls; cat x" loses its quotes.
            args = self.bpf.parser.parse_args(shlex.split(line))
        except ValueError as e:
            raise BadArguments(f"cannot read the options: {e}") from None
        if args.replay:
            result = recording.load(recording.find(args.replay))
            if args.out:
                self.shell.user_ns[args.out] = result
            return result
        if args.stop or args.stop_all or args.list:
            return self._background_command(args)
        source = read_program(args.file) if args.file else (cell or "")
        if not source.strip():
            raise BadArguments(
                "no program: write BPF C in the cell below %%bpf, or give a file "
                "(%bpf --file bpf/exec_tracepoint.c)"
            )
        probes = {kind: getattr(args, kind) for kind in KINDS}
        if args.load_only:
            names = load(source, cache=self.cache and not args.no_cache, **probes)
            print(_loaded_line(names))
            return None
        if args.background and args.out:
            raise BadArguments(
                "--background NAME stores the trace's handle as NAME (its .result after "
                "NAME.stop()); it takes no --out"
            )
        job = self._run_of(args, line, source, probes)
        session = job.session()  # its options checked before a replay too
        if args.background:
            return self._start_background(job, session, args.background)
        # Live, on_warning and on_note print as it runs; a replay's result shows its own.
        result = job.trace(session, announced=True)
        if args.out:
            self.shell.user_ns[args.out] = result
        return result

    def _run_of(self, args, line: str, source: str, probes: dict) -> Run:
        """The run the line asks for: Session's options, with this magic's settings."""
        return Run(
            source,
            {
                **probes,
                "pid": args.pid,
                "comm": args.comm,
                "max_events": args.max_events,
                "perf_pages": args.buffer_pages or self.buffer_pages,
                "hist": _hist(args.hist),
                "fallback": args.fallback,
                "exact": not args.headers_layout,
                "memory_budget": args.memory_budget or self.memory_budget,
                "on_budget": args.on_budget or self.on_budget,
                "cache": self.cache and not args.no_cache,
                "workload_only": args.workload_only,
                "on_warning": printer("warning"),
                "on_note": printer("note"),
            },
            # In the background, no --duration means until stopped.
            duration=args.duration
            if args.duration is not None or args.background
            else (None if args.run else self.duration),
            workload=args.run,
            recording=args.recording,
            progress=self.live,
            # The options as given, kept with the result and its recording.
            shown=_given(args) if args.background else line,
        )

    def _start_background(self, job: Run, session: Session, name: str):
        from . import background

        trace = background.start_session(
            session,
            name=name,
            duration=job.duration,
            run=job.workload,
            progress=job.progress,
            recording_name=job.recording,
            cell=job.cell,
        )
        # Live, on_warning and on_note printed as it started; a replay's result shows its own.
        trace.announced = not isinstance(trace, background.ReplayedTrace)
        self.shell.user_ns[trace.name] = trace
        return trace

    def _background_command(self, args):
        from . import background, live

        if args.list:
            return background.table()
        if args.stop:
            return background.get(args.stop).stop("%bpf --stop")
        for name, outcome in background.stop_all("%bpf --stop-all").items():
            what = live.final_line(outcome) if hasattr(outcome, "stopped_by") else outcome
            print(f"{name}: {what}")
        return None
