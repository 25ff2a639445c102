"""What a trace gathered, and how it shows itself in a notebook."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class TraceResult:
    """Events, maps, printk lines and losses of one trace.

    ``events`` is the main event DataFrame (the first output buffer); every
    buffer's frame is in ``channels``; ``maps`` holds each map (histograms as
    bucket bounds and counts); ``lost`` counts records dropped per buffer.
    """

    events: object = None
    channels: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    printk: object = None
    lost: dict = field(default_factory=dict)
    received: dict = field(default_factory=dict)
    duration: float = 0.0
    stopped_by: str = ""
    attached: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    output: str = ""
    exit_code: int | None = None
    # The magic prints warnings and notes as they happen; its result then leaves them out.
    announced: bool = False

    @property
    def total_lost(self) -> int:
        return sum(self.lost.values())

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
        if self.printk is not None and len(self.printk):
            lines.append(f"printk: {len(self.printk)} lines")
        for name, df in self.maps.items():
            lines.append(f"map {name}: {len(df)} rows")
        if self.exit_code is not None:
            lines.append(f"workload exit code {self.exit_code}")
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
        label, df = self.main_frame()
        if df is not None and len(df):
            parts.append(f"{label}:\n{df.head(10).to_string()}")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        out = []
        for w in [] if self.announced else self.warnings:
            out.append(f"<div style='color:#9a6700'><b>warning:</b> {html.escape(w)}</div>")
        for n in [] if self.announced else self.notes:
            out.append(f"<div style='color:#0969da'><b>note:</b> {html.escape(n)}</div>")
        items = "".join(f"<li>{html.escape(s)}</li>" for s in self.summary_lines())
        if self.total_lost:
            items += (
                f"<li style='color:#cf222e'><b>{self.total_lost} events were lost</b>: "
                "the buffer filled faster than it was read (make it bigger, or aggregate in "
                "a map)</li>"
            )
        out.append(f"<ul style='margin:0'>{items}</ul>")
        label, df = self.main_frame()
        if df is not None and len(df):
            out.append(f"<p><b>{html.escape(label)}</b> ({len(df)} rows), first 10:</p>")
            out.append(df.head(10).to_html(index=False, max_cols=12))
        return "\n".join(out)
