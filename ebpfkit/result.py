"""What a trace gathered, and how it shows itself in a notebook."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from . import plots, recordfile
from .cpus import online_cpus
from .errors import BadArguments

# What a skipped run of the workload scope's own programs (program.SCOPE_*PROBES) means.
_SCOPE_MISSES = {
    "__ebpfkit_fork": "the workload scope's fork tracker: processes started then are not "
    "in the scope, and their events are missing",
    "__ebpfkit_free": "the workload scope's exit tracker: processes freed then stay in the "
    "scope map, so a new process given one of their PIDs would be traced too",
}
# Skips that lose no event (freed PIDs only linger in the scope): a note, not in the losses.
LOSES_NOTHING = {"__ebpfkit_free"}


def missed_text(name: str, n: int) -> str:
    """The warning for ``n`` runs of program ``name`` that the kernel skipped."""
    what = _SCOPE_MISSES.get(name, "what those runs would have recorded is missing")
    return (
        f"the kernel skipped {n:,} runs of {name} (recursion protection: another BPF "
        f"program was running on that CPU, typically one this run interrupted): {what}"
    )


@dataclass
class TraceResult:
    """Events, maps, printk lines and losses of one trace.

    ``events`` is the main event DataFrame (the first output buffer); every
    buffer's frame is in ``channels``; ``maps`` holds each map (histograms as
    bucket bounds and counts); ``lost`` counts records dropped per buffer;
    ``missed`` counts, per program, the runs the kernel skipped (recursion protection).
    """

    events: object = None
    channels: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    printk: object = None
    printk_written: int | None = None
    lost: dict = field(default_factory=dict)
    missed: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    duration: float = 0.0
    stopped_by: str = ""
    attached: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    output: str = ""
    exit_code: int | None = None
    # The memory the trace's events could take (bytes), and how many went to disk on the way.
    memory_budget: int | None = None
    spilled: int = 0
    # The end of what the workload wrote to stderr (it is in ``output`` too).
    workload_error: str = ""
    # The magic prints warnings and notes as they happen; its result then leaves them out.
    announced: bool = False
    # The C source and options that made it (kept in recordings), and for a replayed
    # result, when and where it was recorded (ebpfkit.recording): None for a live trace.
    cell: dict | None = None
    recorded: dict | None = None

    def save(self, path):
        """Save this result to one file that ``ebpfkit.replay(path)`` loads back exactly."""
        return recordfile.save(self, path)

    def recording_line(self) -> str:
        """For a replayed result, the first line of its output: a recording, not live."""
        r = self.recorded or {}
        return (
            f"RECORDING made on {r.get('date', '?')} on {r.get('system', 'Linux')} "
            f"{r.get('kernel', '?')} - not a live trace"
        )

    def workload_message(self) -> str:
        """The last lines the workload wrote to stderr, on one line (the shell's complaint)."""
        lines = [line.strip() for line in self.workload_error.splitlines() if line.strip()]
        return "; ".join(lines[-3:])

    @property
    def total_lost(self) -> int:
        """Records the buffers dropped plus program runs the kernel skipped."""
        return sum(self.lost.values()) + self.total_missed

    @property
    def total_missed(self) -> int:
        """Skipped program runs whose events are missing."""
        return sum(n for name, n in self.missed.items() if name not in LOSES_NOTHING)

    def main_frame(self):
        """The frame to show first: events, else printk lines, else the first map."""
        if self.events is not None and len(self.events):
            return "events", self.events
        if self.printk is not None and len(self.printk):
            return "printk", self.printk
        for name, df in self.maps.items():
            if len(df):
                return f"maps[{name!r}]", df
        if self.events is not None:
            return "events", self.events
        return None, None

    def summary_lines(self) -> list[str]:
        lines = []
        if self.attached:
            lines.append("attached: " + "; ".join(self.attached))
        why = f" (stopped by {self.stopped_by})" if self.stopped_by else ""
        lines.append(f"traced for {self.duration:.2f} s{why}")
        for name in self.channels:
            lost = self.lost.get(name, 0)
            lost_text = f", LOST {lost}" if lost else ", lost 0"
            lines.append(f"{name}: received {self.received.get(name, 0)} events{lost_text}")
        if self.printk_written is not None:
            lost = self.lost.get("printk", 0)
            lost_text = f", LOST {lost} of {self.printk_written} written" if lost else ", lost 0"
            lines.append(f"printk: {len(self.printk)} lines{lost_text}")
        elif self.printk is not None and len(self.printk):
            lines.append(f"printk: {len(self.printk)} lines")
        for name, df in self.maps.items():
            lines.append(f"map {name}: {len(df)} rows")
        for name, n in self.missed.items():
            if n:
                skipped = "skipped" if name in LOSES_NOTHING else "SKIPPED"
                lines.append(f"{name}: {skipped} {n:,} runs (recursion protection)")
        if self.exit_code is not None:
            said = self.workload_message() if self.exit_code else ""
            lines.append(f"workload exit code {self.exit_code}" + (f": {said}" if said else ""))
        return lines

    def __repr__(self) -> str:
        said = (
            []
            if self.announced
            else [
                *(f"warning: {w}" for w in self.warnings),
                *(f"note: {n}" for n in self.notes),
            ]
        )
        parts = [*said, *self.summary_lines()]
        if self.recorded is not None:
            parts.insert(0, self.recording_line())
        label, df = self.main_frame()
        if df is not None and len(df):
            parts.append(f"{label}:\n{df.head(10).to_string()}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        out = []
        if self.recorded is not None:
            out.append(
                "<div style='border:2px solid #8250df;background:#fbefff;padding:2px 8px'>"
                f"<b>{html.escape(self.recording_line())}</b></div>"
            )
        for w in [] if self.announced else self.warnings:
            out.append(f"<div style='color:#9a6700'><b>warning:</b> {html.escape(w)}</div>")
        for n in [] if self.announced else self.notes:
            out.append(f"<div style='color:#0969da'><b>note:</b> {html.escape(n)}</div>")
        items = "".join(f"<li>{html.escape(s)}</li>" for s in self.summary_lines())
        dropped = self.total_lost - self.total_missed
        if dropped:
            items += (
                f"<li style='color:#cf222e'><b>{dropped} events were lost</b>: "
                "the buffer filled faster than it was read (make it bigger, or aggregate in "
                "a map)</li>"
            )
        if self.total_missed:
            items += (
                f"<li style='color:#cf222e'><b>{self.total_missed} program runs were skipped"
                "</b> by the kernel: another BPF program was running on that CPU</li>"
            )
        out.append(f"<ul style='margin:0'>{items}</ul>")
        label, df = self.main_frame()
        if df is not None and len(df):
            out.append(f"<p><b>{html.escape(label)}</b> ({len(df)} rows), first 10:</p>")
            out.append(df.head(10).to_html(index=False, max_cols=12))
        return "\n".join(out)

    # ------------------------------------------------------------ pictures (ebpfkit.plots)

    def _frame_named(self, name: str, what: str):
        if name in self.maps:
            return self.maps[name]
        if name in self.channels:
            return self.channels[name]
        raise BadArguments(
            f"{what}: no map or buffer named {name!r}; this trace has maps "
            f"{', '.join(self.maps) or '(none)'} and buffers {', '.join(self.channels) or '(none)'}"
        )

    def _first(self, test, what: str, hint: str):
        """The events if ``test`` accepts them, else the first map it accepts."""
        for df in [self.events, *self.maps.values()]:
            if df is not None and len(df.columns) and test(df):
                return df
        raise BadArguments(
            f"{what}: {hint}; this trace has maps {', '.join(self.maps) or '(none)'}"
        )

    def plot_hist(self, name: str | None = None, **options):
        """A histogram map as bars (see ``ebpfkit.plots.hist``): ``r.plot_hist("dist")``."""
        if name is None:
            df = self._first(
                lambda d: {"low", "high", "count"} <= set(d.columns),
                "plot_hist()",
                "no histogram map (BPF_HISTOGRAM) to draw",
            )
            name = next((n for n, d in self.maps.items() if d is df), "histogram")
        else:
            df = self._frame_named(name, "plot_hist()")
        kind = "linear" if len(df) and (df["low"] == df["high"]).all() else "log2"
        total = int(df["count"].sum()) if "count" in df.columns else 0
        options.setdefault("title", f"{name}: {total:,} counts, {kind} buckets")
        return plots.hist(df, **options)

    def plot_rate(self, every=None, *, channel: str | None = None, **options):
        """Events per second over time (see ``ebpfkit.plots.rate``):
        ``r.plot_rate(every="100ms", by="comm")``."""
        df = self.events if channel is None else self._frame_named(channel, "plot_rate()")
        if df is None:
            raise BadArguments("plot_rate(): this trace has no events (no output buffer)")
        return plots.rate(df, every, **options)

    def plot_top(self, name: str | None = None, n: int = 10, **options):
        """The n largest counts of a count map, or events counted ``by`` a column
        (see ``ebpfkit.plots.top``): ``r.plot_top("counts", n=10)``, ``r.plot_top(by="comm")``."""
        if name is not None:
            df = self._frame_named(name, "plot_top()")
        elif options.get("by") is not None and self.events is not None:
            df = self.events
        else:
            df = self._first(
                lambda d: "value" in d.columns,
                "plot_top()",
                "name the count map to draw, or count events with by=COLUMN",
            )
        return plots.top(df, n, **options)

    def plot_cpus(self, name: str | None = None, *, hz: float | None = None, **options):
        """Samples per CPU (see ``ebpfkit.plots.cpus``); ``hz`` draws the expected count,
        hz x the seconds traced: ``r.plot_cpus("cpu_samples", hz=99)``."""
        if name is not None:
            df = self._frame_named(name, "plot_cpus()")
        else:
            df = self._first(
                lambda d: "cpu" in d.columns or any(plots._is_cpu_column(c) for c in d.columns),
                "plot_cpus()",
                "no events or map with a cpu column (bpf_get_smp_processor_id()); name the map",
            )
        if hz is not None:
            options.setdefault("expected", hz * self.duration)
        if getattr(self, "recorded", None) is None:  # a live trace: this machine's CPUs
            options.setdefault("cpus", online_cpus())
        return plots.cpus(df, **options)

    def _stacks(self, name: str | None):
        if name is not None:
            return self._frame_named(name, "folded()")
        return self._first(
            lambda d: bool(plots._stack_columns(d)),
            "folded()",
            "no stacks: use a BPF_STACK_TRACE map and keep stacks.get_stackid() ids in a map "
            "or in the events",
        )

    def folded(self, name: str | None = None, *, root: str | None = "comm"):
        """Sampled stacks folded, ``stack`` and ``count`` (see ``ebpfkit.plots.folded``)."""
        return plots.folded(self._stacks(name), root=root)

    def write_folded(self, path, name: str | None = None, *, root: str | None = "comm"):
        """Write the folded stacks for flamegraph.pl, inferno or speedscope; returns the path."""
        return plots.write_folded(self.folded(name, root=root), path)

    def plot_flame(self, name: str | None = None, *, root: str | None = "comm", **options):
        """A flame graph of the sampled stacks, kernel frames in blue
        (see ``ebpfkit.plots.flame``): ``r.plot_flame()``, ``r.plot_flame(icicle=True)``."""
        df = self._stacks(name)
        kernel = set()
        for frames, id_col in plots._stack_columns(df):
            if "user" in frames or frames.startswith("u"):
                continue
            rows = df if id_col is None else df[df[id_col] >= 0]
            kernel.update(f for stack in rows[frames] for f in str(stack).split(";"))
        options.setdefault("kernel", kernel)
        return plots.flame(plots.folded(df, root=root), **options)

    def _events_where(self, which, what: str):
        """A buffer by name, a DataFrame as it is, or a query on the events (``"kind == 0"``)."""
        import pandas as pd  # here, as in every module: `import ebpfkit.result` stays light

        if isinstance(which, pd.DataFrame):
            return which
        if isinstance(which, str) and which in self.channels:
            return self.channels[which]
        if self.events is None:
            raise BadArguments(f"latency({what}=...): this trace has no events")
        try:
            return self.events.query(which)
        except Exception as e:
            raise BadArguments(
                f"latency({what}={which!r}): neither a buffer of this trace "
                f"({', '.join(self.channels) or 'none'}) nor a condition on the events "
                f"like 'kind == 0' ({e})"
            ) from None

    def latency(self, enter, exit, *, key="pid", ts: str | None = None):
        """Enter/exit events paired by ``key``, one row per call with ``latency_ns``
        (see ``ebpfkit.plots.latency``). ``enter`` and ``exit``: buffer names, or
        conditions on the events: ``r.latency("kind == 0", "kind == 1", key="tid")``."""
        return plots.latency(
            self._events_where(enter, "enter"), self._events_where(exit, "exit"), key=key, ts=ts
        )

    def plot_latency(self, enter, exit, *, key="pid", ts: str | None = None, **options):
        """A log2 histogram of the paired calls' latency (see ``ebpfkit.plots.latency_hist``)."""
        return plots.latency_hist(self.latency(enter, exit, key=key, ts=ts), **options)
