"""The common eBPF pictures, drawn with matplotlib from ebpfkit's DataFrames.

Each picture is one function over a DataFrame (a map, an event stream, folded
stacks) and a method of ``TraceResult`` of the same name with ``plot_`` in
front::

    r.plot_hist("dist")                      # hist(r.maps["dist"])
    r.plot_rate(by="comm", every="100ms")    # rate(r.events, ...)
    r.plot_top("counts", n=10)               # top(r.maps["counts"])
    r.plot_cpus("cpu_samples", hz=99)        # cpus(r.maps["cpu_samples"])
    r.plot_flame()                           # flame(folded(r.maps["samples"]))
    r.plot_latency("enter", "exit", key="tid")

Every function draws into ``ax`` when given one, else into a new figure, and
returns the Axes, so a test can read the bars back and a notebook can add to
them. Colours are the Okabe-Ito set: told apart by colour-blind readers, and
by lightness once printed in grey. ``save()`` writes a figure for a handout.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

from .errors import BadArguments

# matplotlib, pandas and numpy are imported by the functions that draw or make frames:
# ``TraceResult`` imports this module, and a result that is never drawn needs none of them.

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
LINESTYLES = ["-", "--", "-.", ":"]
FIGSIZE = (8, 4)
BUCKET = ("low", "high", "count")
WEIGHTS = ("count", "samples", "value")  # the column that weighs a row, in this order
EFAULT = 14  # get_stackid's answer where a sample has no stack of that kind

# Time units: how many nanoseconds each holds.
TIME_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
SIZE_UNITS = ("B", "bytes")


# ------------------------------------------------------------------ helpers


def _axes(ax, figsize=FIGSIZE):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _frame(df, what: str):
    import pandas as pd

    if isinstance(df, pd.Series):
        return df.to_frame()
    if not isinstance(df, pd.DataFrame):
        raise BadArguments(f"{what} needs a DataFrame, not {type(df).__name__}")
    return df


def _require(df, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadArguments(
            f"{what} needs the column(s) {', '.join(missing)}; this frame has "
            f"{', '.join(map(str, df.columns)) or 'none'}"
        )


def _nothing(ax, title: str, why: str):
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _num(x: float) -> str:
    """A bound for a tick label: integers as they are, others to 3 significant digits."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _weight_column(df) -> str | None:
    import pandas as pd

    for c in WEIGHTS:
        if c in df.columns and pd.api.types.is_numeric_dtype(df[c]):
            return c
    return None


def _join(values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(str(v) for v in values)


def _name(names, key) -> str:
    """A key's label: ``names`` (a dict or a function) turns it into a name, if given."""
    if names is None:
        return _join(key)
    found = names.get(key) if isinstance(names, dict) else names(key)
    return str(found) if found is not None else _join(key)


def _thousands(axis) -> None:
    """Tick labels with thousands separators: 800,000 rather than 800000 or 8e5."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}" if x >= 10 else f"{x:g}"))


def _is_cpu_column(name) -> bool:
    return re.fullmatch(r"cpu\d+", str(name)) is not None


def save(obj, path, *, dpi: int = 200):
    """Write the figure of ``obj`` (an Axes or a Figure) to ``path`` for a handout.

    The format follows the suffix (``.png``, ``.pdf``, ``.svg``); 200 dpi prints
    sharp on paper. Returns the path.
    """
    fig = obj.figure if hasattr(obj, "figure") and obj.figure is not None else obj
    if not hasattr(fig, "savefig"):
        raise BadArguments(f"save() needs an Axes or a Figure, not {type(obj).__name__}")
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# ------------------------------------------------------------------ histograms


def log2_hist(values):
    """Values counted into log2 buckets as ``BPF_HISTOGRAM`` with ``bpf_log2l()`` does.

    Bucket k holds 2**(k-1) .. 2**k - 1, and bucket 1 also 0: the same ``low``,
    ``high``, ``count`` frame as a histogram map, every bucket from the first
    used to the last.
    """
    import numpy as np
    import pandas as pd

    v = np.asarray(values, dtype="int64")
    if (v < 0).any():
        raise BadArguments("log2 buckets need values of 0 or more")
    if not len(v):
        return pd.DataFrame(columns=list(BUCKET))
    slots = np.array([max(int(x).bit_length(), 1) for x in v])
    counts = np.bincount(slots)
    rows = []
    for slot in range(int(slots.min()), int(slots.max()) + 1):
        low, high = 1 << (slot - 1), (1 << slot) - 1
        rows.append((0 if slot == 1 else low, high, int(counts[slot])))
    return pd.DataFrame(rows, columns=list(BUCKET))


def bucket_labels(df, unit: str | None = None) -> list[str]:
    """Tick labels for histogram buckets: ``2-3``, ``4-7``..., or ``5`` for linear ones.

    With a time unit, buckets from a thousand on are shown in the next unit up
    (``1.02-2.05 ms`` for 1024-2047 µs); with ``B``, from 1024 on in KiB, MiB...
    """
    labels = []
    for low, high in zip(df["low"], df["high"]):
        low, high = int(low), int(high)
        scale, suffix = 1, ""
        if unit in TIME_UNITS:
            names = ["ns", "µs", "ms", "s"]
            base = TIME_UNITS[unit]
            for name in names[names.index("µs" if unit == "us" else unit) + 1 :]:
                if low * base >= TIME_UNITS[name]:
                    scale, suffix = TIME_UNITS[name] / base, f" {name}"
        elif unit in SIZE_UNITS:
            for i, name in enumerate(("KiB", "MiB", "GiB"), start=1):
                if low >= 1024**i:
                    scale, suffix = 1024**i, f" {name}"
        text = _num(low / scale) if low == high else f"{_num(low / scale)}-{_num(high / scale)}"
        labels.append(text + suffix)
    return labels


def hist(
    df,
    *,
    section=None,
    sections=None,
    top: int = 6,
    names=None,
    unit: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str = "count",
    logy: bool = False,
    ax=None,
):
    """A histogram map (``low``, ``high``, ``count``) as a bar chart, one bar per bucket.

    Like bcc's ``print_log2_hist``, drawn. A histogram keyed by more than the
    bucket (a section column, ``id`` of a syscall...) is drawn as one series of
    bars per section: ``section`` names the column(s) (default: every column but
    the bucket's), ``sections`` which values to show in which order (default:
    the ``top`` with the most counts), ``names`` (a function or a dict) their
    labels: ``names=syscall_name`` for an ``id`` section. ``unit`` is the unit of the bucket values
    (``"us"``, ``"ns"``, ``"B"``...) for the axis and readable labels; ``logy``
    a log scale for counts that span orders of magnitude.
    """
    import numpy as np

    df = _frame(df, "hist()")
    _require(df, BUCKET, "a histogram")
    ax = _axes(ax)
    if section is None:
        keys = [c for c in df.columns if c not in BUCKET]
    else:
        keys = [section] if isinstance(section, str) else list(section)
        _require(df, keys, "hist(section=...)")
    total = int(df["count"].sum())
    kind = "linear" if (df["low"] == df["high"]).all() else "log2"
    if xlabel is None:
        xlabel = f"{kind} buckets" + (f" ({unit})" if unit else "")
    if title is None:
        title = f"{total:,} counts in {kind} buckets"
    if not len(df) or total == 0:
        return _nothing(ax, title, "nothing was counted")

    grid = _bucket_grid(df, keys)
    # Every bucket between the first and the last, as the map frame has them.
    labels = bucket_labels(grid.index.to_frame(index=False), unit)
    x = np.arange(len(grid))
    if not keys:
        bars = ax.bar(x, grid["count"].to_numpy(), width=0.8, color=PALETTE[0])
        if len(x) <= 40:
            ax.bar_label(bars, fontsize=8, padding=1)
    else:
        _section_bars(ax, grid, x, keys, sections, top, names)
    return _bucket_axes(ax, labels, title, xlabel, ylabel, logy)


def _bucket_axes(ax, labels: list[str], title: str, xlabel: str, ylabel: str, logy: bool):
    """hist()'s axes: a label under each bucket, the titles, the count scale."""
    n = len(labels)
    ax.set_xticks(range(n), labels, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_xlim(-0.6, n - 0.4)
    if logy:
        ax.set_yscale("log")
        ylabel += " (log scale)"
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _thousands(ax.yaxis)
    return ax


def _bucket_grid(df, keys: list):
    """Counts by bucket (rows, ``low`` and ``high``) and section (a column each, if any)."""
    grid = df.groupby([*keys, "low", "high"], sort=True, observed=True)["count"].sum()
    grid = grid.unstack(keys) if keys else grid.to_frame("count")
    return grid.fillna(0).astype("int64").sort_index(level="low")


def _section_bars(ax, grid, x, keys: list, sections, top: int, names) -> None:
    """hist()'s bars side by side, one series per section shown, and their legend."""
    totals = grid.sum().sort_values(ascending=False, kind="stable")
    if sections is None:
        shown = list(totals.index[:top])
    else:
        shown = [s if not isinstance(s, list) else tuple(s) for s in sections]
        unknown = [s for s in shown if s not in grid.columns]
        if unknown:
            raise BadArguments(
                f"hist(sections=...): no section {_join(unknown[0])!r} in this histogram; "
                f"it has {', '.join(_join(s) for s in totals.index[:20])}"
            )
    width = 0.8 / len(shown)
    for i, name in enumerate(shown):
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            grid[name].to_numpy(),
            width,
            color=PALETTE[i % len(PALETTE)],
            label=f"{_name(names, name)} ({int(grid[name].sum()):,})",
        )
    legend = " / ".join(keys)
    if len(shown) < len(totals):
        legend += f" ({len(shown)} of {len(totals)})"
    ax.legend(title=legend, fontsize=8)


# ------------------------------------------------------------------ events over time


_STEPS = [
    "1us", "2us", "5us", "10us", "20us", "50us", "100us", "200us", "500us",
    "1ms", "2ms", "5ms", "10ms", "20ms", "50ms", "100ms", "200ms", "500ms",
    "1s", "2s", "5s", "10s", "15s", "30s", "1min", "2min", "5min", "10min",
]  # fmt: skip


def _timestamps(df, ts: str | None):
    """The event times as int64 nanoseconds, from ``ts`` or the first datetime column."""
    import pandas as pd

    if ts is None:
        times = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
        ts = times[0] if times else ("ts" if "ts" in df.columns else None)
        if ts is None:
            raise BadArguments(
                "these events carry no time: send a field named ts (bpf_ktime_get_ns()) "
                "with each event, or name the time column with ts=..."
            )
    _require(df, [ts], "the event times")
    col = df[ts]
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.to_numpy().astype("datetime64[ns]").astype("int64"), ts
    if pd.api.types.is_integer_dtype(col):
        return col.astype("int64").to_numpy(), ts
    raise BadArguments(f"column {ts!r} is not a time (datetime or integer nanoseconds)")


def _interval(every, span_ns: int):
    import pandas as pd

    if every is None:
        for step in _STEPS:
            if pd.Timedelta(step).value * 60 >= span_ns:
                return pd.Timedelta(step)
        return pd.Timedelta(_STEPS[-1])
    try:
        interval = pd.Timedelta(every, unit="s") if isinstance(every, (int, float)) else None
        interval = interval if interval is not None else pd.Timedelta(every)
    except ValueError:
        raise BadArguments(
            f"every={every!r} is not an interval: give a number of seconds or a text like "
            "'100ms', '1s'"
        ) from None
    if interval.value <= 0:
        raise BadArguments(f"every={every!r}: the interval must be longer than zero")
    return interval


def interval_text(interval) -> str:
    """``10 ms``, ``1 s``, ``500 µs`` for a Timedelta."""
    ns = interval.value
    for name in ("s", "ms", "µs"):
        if ns >= TIME_UNITS[name]:
            return f"{_num(ns / TIME_UNITS[name])} {name}"
    return f"{ns} ns"


def _series_label(by: str, value) -> str:
    return f"CPU {value}" if by == "cpu" else str(value)


def _series(values, weight, top: int, series):
    """The values of ``by`` that get a series of their own: ``series``, else the top ones."""
    import pandas as pd

    if series is not None:
        return [series] if isinstance(series, (str, int)) else list(series)
    order = pd.Series(weight).groupby(values).sum().sort_values(ascending=False, kind="stable")
    return list(order.index[:top])


def rate_frame(
    df,
    every=None,
    *,
    by: str | None = None,
    top: int = 5,
    series=None,
    ts: str | None = None,
):
    """Events per interval: one row per interval since the first event, one column per series.

    The index is the interval's start in seconds after the first event. With
    ``by`` (``"comm"``, ``"cpu"``...) the ``top`` values with the most events
    each get a column (or those listed in ``series``), the rest share one called
    ``other``. The interval used is in ``.attrs["every"]`` (a Timedelta).
    """
    import numpy as np
    import pandas as pd

    df = _frame(df, "rate()")
    times, _ = _timestamps(df, ts)
    if by is not None:
        _require(df, [by], f"rate(by={by!r})")
    if not len(times):
        out = pd.DataFrame(columns=["events"], dtype="int64")
        out.attrs["every"] = _interval(every, 0)
        return out
    first = times.min()
    interval = _interval(every, int(times.max() - first))
    slot = (times - first) // interval.value
    nslots = int(slot.max()) + 1
    if by is None:
        columns = {"events": np.bincount(slot, minlength=nslots)}
    else:
        values = df[by].astype(str if by != "cpu" else "int64").to_numpy()
        keep = _series(values, np.ones(len(values), dtype="int64"), top, series)
        columns = {}
        for v in keep:
            columns[_series_label(by, v)] = np.bincount(slot[values == v], minlength=nslots)
        rest = ~np.isin(values, keep)
        if rest.any():
            columns["other"] = np.bincount(slot[rest], minlength=nslots)
    index = pd.Index(np.arange(nslots) * interval.value / 1e9, name="seconds")
    out = pd.DataFrame(columns, index=index)
    out.attrs["every"] = interval
    return out


def rate(
    df,
    every=None,
    *,
    by: str | None = None,
    top: int = 5,
    series=None,
    ts: str | None = None,
    title: str | None = None,
    ax=None,
):
    """Events per second over time, counted per interval (``every``: ``"10ms"``, 0.5...).

    Without ``every``, an interval that cuts the trace into about 60 pieces.
    With ``by``, one line per value of that column (``top`` of them, or those
    in ``series``, and ``other``); without, one bar per interval.
    """
    counts = rate_frame(df, every, by=by, top=top, series=series, ts=ts)
    interval = counts.attrs["every"]
    seconds = interval.value / 1e9
    n = int(counts.to_numpy().sum())
    ax = _axes(ax)
    if title is None:
        split = f", by {by}" if by else ""
        title = f"Events per second ({interval_text(interval)} intervals{split}): {n:,} events"
    if not len(counts):
        return _nothing(ax, title, "no events")
    in_ms = counts.index[-1] + seconds < 10
    scale = 1000 if in_ms else 1
    x = counts.index.to_numpy() * scale
    if by is None:
        ax.bar(
            x, counts["events"].to_numpy() / seconds, width=seconds * scale, align="edge",
            color=PALETTE[0],
        )  # fmt: skip
    else:
        for i, name in enumerate(counts.columns):
            y = counts[name].to_numpy() / seconds
            # One step per interval, closed at the end of the last one.
            ax.step(
                [*x, x[-1] + seconds * scale], [*y, y[-1]], where="post",
                color=PALETTE[i % len(PALETTE)], linestyle=LINESTYLES[i % len(LINESTYLES)],
                label=f"{name} ({int(counts[name].sum()):,})",
            )  # fmt: skip
        ax.legend(title=by, fontsize=8)
    ax.set_xlim(0, x[-1] + seconds * scale)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.set_xlabel(f"time since the first event ({'ms' if in_ms else 's'})")
    ax.set_ylabel("events per second")
    _thousands(ax.yaxis)
    return ax


# ------------------------------------------------------------------ top N


def top_frame(df, n: int = 10, *, by=None, value: str | None = None, names=None):
    """The ``n`` largest counts: from a count map (key columns and ``value``) or from
    events (how many rows of each value of ``by``). Columns: ``label``, ``count``;
    ``.attrs`` says what was counted and how many keys there were in all."""
    import pandas as pd

    df = _frame(df, "top()")
    keys = [by] if isinstance(by, str) else list(by or [])
    _require(df, keys, "top(by=...)")
    if value is None and not keys:
        value = _weight_column(df)
        if value is None:
            raise BadArguments(
                "top() needs a count map (key columns and a value column), or by=COLUMN to "
                "count events by that column"
            )
    if value is not None:
        _require(df, [value], "top(value=...)")
        if not keys:
            keys = [
                c
                for c in df.columns
                if c != value
                and c not in WEIGHTS
                and not _is_cpu_column(c)
                and not str(c).endswith("_frames")
                and "stack" not in str(c)
            ]
        if not keys:
            raise BadArguments(f"top(): no key column beside {value!r}")
        counts = df.groupby(keys, observed=True, sort=False)[value].sum()
    else:
        counts = df.groupby(keys, observed=True, sort=False).size()
    counts = counts[counts != 0].sort_values(ascending=False, kind="stable")
    head = counts.head(n)
    labels = [_name(names, k) for k in head.index]
    out = pd.DataFrame({"label": labels, "count": head.to_numpy()})
    out.attrs.update(keys=keys, value=value or "events", total_keys=len(counts))
    return out


def top(
    df,
    n: int = 10,
    *,
    by=None,
    value: str | None = None,
    names=None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    ax=None,
):
    """A horizontal bar chart of the ``n`` largest counts, the largest on top.

    From a count map: the key columns label the bars, ``value`` (default the
    ``value`` or ``count`` column) sizes them. From events: ``by="comm"``
    counts the rows of each command. ``names`` (a function or a dict) turns a
    key into its name: ``names=syscall_name``.
    """
    t = top_frame(df, n, by=by, value=value, names=names)
    keys, total_keys = t.attrs["keys"], t.attrs["total_keys"]
    ax = _axes(ax)
    what = " / ".join(map(str, keys))
    if title is None:
        title = f"Top {len(t)} of {total_keys} {what} by {t.attrs['value']}"
    if not len(t):
        return _nothing(ax, title, "nothing was counted")
    bars = ax.barh(t["label"][::-1], t["count"][::-1], color=PALETTE[0])
    ax.bar_label(bars, padding=3, fontsize=8, fmt="{:,.0f}")
    ax.margins(x=0.12)
    ax.set_title(title)
    ax.set_xlabel(xlabel or t.attrs["value"])
    ax.set_ylabel(ylabel or what)
    _thousands(ax.xaxis)
    return ax


# ------------------------------------------------------------------ per CPU


def cpu_frame(
    df,
    *,
    by: str | None = None,
    top: int = 3,
    series=None,
    value: str | None = None,
    cpus=None,
):
    """Samples per CPU, one row per CPU, one column per series (``samples``, or the
    ``top`` values of ``by`` and ``other``).

    ``series`` lists values of ``by`` to show on their own instead of the top ones.
    Takes events with a ``cpu`` column (a row each), a map with a ``cpu`` column
    and a count, a per-CPU map (``cpu0``, ``cpu1``... columns), or a map of
    ``key`` -> ``value`` whose key is the CPU. ``cpus`` lists CPUs to show even
    when they have no samples.
    """
    import pandas as pd

    df = _frame(df, "cpus()")
    cpu_columns = [c for c in df.columns if _is_cpu_column(c)]
    value = value or _weight_column(df)
    if "cpu" in df.columns:
        cpu = df["cpu"].astype("int64")
        weight = df[value] if value else pd.Series(1, index=df.index)
    elif cpu_columns:
        if by is not None:
            raise BadArguments("cpus(by=...) needs a cpu column, not a per-CPU map")
        sums = {int(c[3:]): int(df[c].sum()) for c in cpu_columns}
        cpu = pd.Series(list(sums), dtype="int64")
        weight = pd.Series(list(sums.values()))
    elif set(df.columns) == {"key", "value"}:
        cpu, weight = df["key"].astype("int64"), df["value"]
    else:
        raise BadArguments(
            "cpus() needs a cpu column (events, or a map keyed by cpu), cpu0, cpu1... "
            f"columns (a per-CPU map), or a map of key (the CPU) to value; this frame has "
            f"{', '.join(map(str, df.columns))}"
        )
    shown = sorted(set(cpu.tolist()) | set(cpus or ()))
    if by is None:
        out = weight.groupby(cpu.to_numpy()).sum().to_frame("samples")
    else:
        _require(df, [by], f"cpus(by={by!r})")
        who = df[by].astype(str).to_numpy()
        keep = [str(v) for v in _series(who, weight.to_numpy(), top, series)]
        label = pd.Series(who).where(pd.Series(who).isin(keep), "other").to_numpy()
        out = weight.groupby([cpu.to_numpy(), label]).sum().unstack(fill_value=0)
        out = out.reindex(columns=[*keep, *(["other"] if "other" in out.columns else [])])
        out = out.fillna(0)
    out = out.reindex(shown, fill_value=0).astype("int64")
    out.index.name = "cpu"
    out.attrs["what"] = "samples" if value or set(df.columns) == {"key", "value"} else "events"
    return out


def cpus(
    df,
    *,
    by: str | None = None,
    top: int = 3,
    series=None,
    value: str | None = None,
    expected: float | None = None,
    cpus=None,
    title: str | None = None,
    ax=None,
):
    """Sample counts per CPU as bars; with ``by`` (``"comm"``), stacked per command
    (the ``top`` ones, or those in ``series``, and ``other``).

    ``expected`` draws the count a sampler that never missed a tick would have
    taken (frequency x seconds) as a dashed line.
    """
    per_cpu = cpu_frame(df, by=by, top=top, series=series, value=value, cpus=cpus)
    total = int(per_cpu.to_numpy().sum())
    ax = _axes(ax)
    if title is None:
        what = per_cpu.attrs.get("what", "samples")
        title = f"{what.capitalize()} per CPU: {total:,} in all" + (f", by {by}" if by else "")
    if not len(per_cpu):
        return _nothing(ax, title, "no samples")
    x = [str(c) for c in per_cpu.index]
    bottom = [0] * len(x)
    for i, name in enumerate(per_cpu.columns):
        heights = per_cpu[name].tolist()
        ax.bar(x, heights, bottom=bottom, color=PALETTE[i % len(PALETTE)], label=str(name))
        bottom = [b + h for b, h in zip(bottom, heights)]
    if expected is not None:
        ax.axhline(expected, color="black", linestyle="--", label=f"expected: {expected:,.0f}")
        ax.set_ylim(0, 1.15 * max(expected, max(bottom)))
    if by is not None or expected is not None:
        ax.legend(title=by, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title)
    ax.set_xlabel("CPU")
    ax.set_ylabel(per_cpu.attrs.get("what", "samples"))
    _thousands(ax.yaxis)
    return ax


# ------------------------------------------------------------------ stacks


def _stack_columns(df) -> list[tuple[str, str | None]]:
    """(frames column, its stack-id column or None), user stacks before kernel ones."""
    ids = {}
    for col in df.columns:
        col = str(col)
        if "stack" in col and col.endswith("id"):
            # The name frames.add_stacks gives the frames of this id column.
            name = "stack" if col == "stack_id" else col.replace("_id", "").replace("id", "")
            ids[name if name == "stack" else name + "_frames"] = col
    frames = [str(c) for c in df.columns if str(c) == "stack" or str(c).endswith("_frames")]
    frames.sort(key=lambda c: 0 if "user" in c or c.startswith("u") else 1)
    return [(c, ids.get(c)) for c in frames]


def _squeeze_unknown(stack: str) -> str:
    """Runs of [unknown] frames (code without symbols or frame pointers) as one."""
    out: list[str] = []
    for frame in stack.split(";"):
        if frame and not (frame == "[unknown]" and out and out[-1] == "[unknown]"):
            out.append(frame)
    return ";".join(out)


def folded(df, *, root: str | None = "comm"):
    """Stacks folded as flame graph tools read them: one row per distinct stack.

    Columns ``stack`` (frames root first, joined by ``;``) and ``count``. Takes a
    map or events with stack frames (``*_frames`` or ``stack``, from stack-id
    columns), user frames first, then kernel frames, each row weighed by its
    ``count``/``samples``/``value`` (a count map), or 1 (events). ``root``: a
    column put in front of every stack (``comm``, when there is one), or None.
    A part whose stack id is -EFAULT (a sample in user mode has no kernel stack)
    is left out; other failures stay as ``[lost stack]``.
    """
    import pandas as pd

    df = _frame(df, "folded()")
    parts = _stack_columns(df)
    if not parts:
        raise BadArguments(
            "folded() needs stack frames: a stack-id column (from stacks.get_stackid()) "
            f"that ebpfkit turned into *_frames; this frame has {', '.join(map(str, df.columns))}"
        )
    weight = _weight_column(df)
    roots = df[root].astype(str).tolist() if root and root in df.columns else None
    stacks = []
    for i in range(len(df)):
        pieces = [roots[i] or "[unnamed]"] if roots else []
        for frames, id_col in parts:
            if id_col is not None and int(df[id_col].iat[i]) == -EFAULT:
                continue
            text = df[frames].iat[i]
            if isinstance(text, str) and text:
                pieces.append(text)
        stacks.append(_squeeze_unknown(";".join(pieces)))
    counts = df[weight].astype("int64").to_numpy() if weight else [1] * len(df)
    out = pd.DataFrame({"stack": stacks, "count": counts})
    out = out[out["stack"] != ""]
    out = out.groupby("stack", as_index=False, sort=False)["count"].sum()
    return out.sort_values(["count", "stack"], ascending=[False, True]).reset_index(drop=True)


def folded_text(stacks) -> str:
    """Folded stacks as flamegraph.pl, inferno and speedscope read them: ``a;b;c 12``."""
    weight = _weight_column(stacks)
    _require(stacks, ["stack"], "folded_text()")
    return "".join(f"{s} {int(n)}\n" for s, n in zip(stacks["stack"], stacks[weight]))


def write_folded(stacks, path):
    """Write folded stacks to ``path`` (``flamegraph.pl FILE > out.svg``, or speedscope)."""
    path = Path(path)
    path.write_text(folded_text(stacks))
    return path


def flame_layout(stacks) -> list[tuple[int, int, int, str, str]]:
    """(depth, x, width, frame, path) of every rectangle of a flame graph.

    A frame is as wide as the samples of every stack through it; its callees
    sit on it, side by side in alphabetical order (flamegraph.pl's order: time
    is not the x axis). ``path`` is the stack from the root to the frame.
    """
    weight = _weight_column(stacks)
    tree: dict = {}
    for stack, n in zip(stacks["stack"], stacks[weight]):
        level = tree
        for frame in str(stack).split(";"):
            node = level.setdefault(frame, [0, {}])
            node[0] += int(n)
            level = node[1]
    rects = []

    def place(level, depth, x, prefix):
        for frame in sorted(level):
            width, callees = level[frame]
            path = f"{prefix};{frame}" if prefix else frame
            rects.append((depth, x, width, frame, path))
            place(callees, depth + 1, x, path)
            x += width

    place(tree, 0, 0, "")
    return rects


def _flame_colour(frame: str, kernel: bool) -> tuple[float, float, float]:
    # A stable shade per name (crc32, not hash(): that changes between runs).
    h = zlib.crc32(frame.encode()) / 0xFFFFFFFF
    if kernel:
        return (0.45 + 0.2 * h, 0.6 + 0.2 * h, 0.85)  # blues
    return (0.95, 0.45 + 0.4 * h, 0.2 + 0.2 * h)  # warm: red to yellow


def flame(
    stacks,
    *,
    icicle: bool = False,
    kernel=None,
    min_width: float = 0.0,
    title: str | None = None,
    ax=None,
):
    """A flame graph of folded stacks (or of anything ``folded()`` takes).

    Each frame is a rectangle as wide as its samples, its callees on top
    (``icicle=True``: hanging below, root on top). ``kernel``, a set of frame
    names, colours those blue and the rest warm. Frames narrower than
    ``min_width`` (a fraction of all samples) are not drawn. Each rectangle's
    ``get_gid()`` is its path from the root, ``a;b;c``.
    """
    from matplotlib.patches import Patch

    stacks = _frame(stacks, "flame()")
    already = len(stacks.columns) == 2 and "stack" in stacks.columns
    if not (already and _weight_column(stacks)):
        stacks = folded(stacks)
    weight = _weight_column(stacks)
    total = int(stacks[weight].sum())
    ax = _axes(ax, figsize=(11, 5))
    if title is None:
        title = f"Flame graph: {total:,} samples in {len(stacks):,} distinct stacks"
    if total == 0:
        return _nothing(ax, title, "no stacks")
    kernel = set(kernel or ())
    depth = _flame_rectangles(ax, flame_layout(stacks), total, kernel, icicle, min_width)
    ax.set_xlim(0, total)
    if icicle:
        ax.set_ylim(-depth, 0)
    else:
        ax.set_ylim(0, depth)
    ticks = range(0, depth, max(1, math.ceil(depth / 10)))
    ax.set_yticks([(-t - 0.5 if icicle else t + 0.5) for t in ticks], [str(t) for t in ticks])
    ax.set_title(title)
    ax.set_xlabel("samples (a frame's width: the samples it was on the stack for)")
    ax.set_ylabel("stack depth (root at the " + ("top)" if icicle else "bottom)"))
    if kernel:
        ax.legend(
            handles=[
                Patch(color=_flame_colour("", False), label="user (and command)"),
                Patch(color=_flame_colour("", True), label="kernel"),
            ],
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
        )
    return ax


def _flame_rectangles(ax, rects, total: int, kernel: set, icicle: bool, min_width: float) -> int:
    """flame()'s frames drawn as labelled rectangles; the depth of the deepest stack."""
    from matplotlib.patches import Rectangle

    # Characters that fit in one sample's width, for cutting labels to their box.
    fontsize = 8
    box_points = ax.get_position().width * ax.figure.get_figwidth() * 72
    chars_per_sample = box_points / (0.6 * fontsize) / total
    for d, x, width, frame, path in rects:
        if width < min_width * total:
            continue
        y = -d - 1 if icicle else d
        rect = Rectangle(
            (x, y + 0.05), width, 0.9, facecolor=_flame_colour(frame, frame in kernel),
            edgecolor="white", linewidth=0.5, gid=path,
        )  # fmt: skip
        ax.add_patch(rect)
        fits = int(width * chars_per_sample)
        if fits >= 3:
            text = frame if len(frame) <= fits else frame[: fits - 2] + ".."
            ax.text(x + width / 2, y + 0.5, text, ha="center", va="center", fontsize=fontsize)
    return max(r[0] for r in rects) + 1


# ------------------------------------------------------------------ latency


def latency(enter, exit, *, key="pid", ts: str | None = None):
    """Pair enter and exit events by ``key`` (a column or a list); one row per pair.

    Each exit is paired with the latest enter of the same key before it; an
    enter followed by another enter (or by nothing), and an exit with no enter
    before it, stay unpaired and are counted in ``.attrs["unpaired"]``. Columns:
    the key, ``enter_ts``, ``exit_ts``, ``latency_ns``, then the exit event's
    other columns (its return value, its command...).
    """
    import numpy as np
    import pandas as pd

    enter, exit = _frame(enter, "latency(enter=...)"), _frame(exit, "latency(exit=...)")
    keys = [key] if isinstance(key, str) else list(key)
    _require(enter, keys, "the enter events")
    _require(exit, keys, "the exit events")
    t_enter, ts_enter = _timestamps(enter, ts)
    t_exit, ts_exit = _timestamps(exit, ts)
    both = pd.concat(
        [
            enter[keys].assign(_t=t_enter, _exit=0, _row=-1),
            exit[keys].assign(_t=t_exit, _exit=1, _row=np.arange(len(exit))),
        ],
        ignore_index=True,
    ).sort_values([*keys, "_t", "_exit"], kind="stable")
    same_key = (both[keys] == both[keys].shift()).all(axis=1).to_numpy()
    after_enter = both["_exit"].shift().eq(0).to_numpy()
    paired = (both["_exit"].to_numpy() == 1) & same_key & after_enter
    began = both["_t"].shift().to_numpy()[paired].astype("int64")
    rows = both["_row"].to_numpy()[paired]
    out = exit.iloc[rows].reset_index(drop=True)
    extra = [c for c in out.columns if c not in keys and c != ts_exit]
    result = out[keys].copy()
    result["enter_ts"] = pd.to_datetime(began) if enter[ts_enter].dtype.kind == "M" else began
    result["exit_ts"] = exit[ts_exit].iloc[rows].to_numpy()
    result["latency_ns"] = t_exit[rows] - began
    for c in extra:
        if c not in result.columns:
            result[c] = out[c].to_numpy()
    result = result.sort_values("exit_ts", kind="stable").reset_index(drop=True)
    result.attrs["unpaired"] = {"enter": len(enter) - len(rows), "exit": len(exit) - len(rows)}
    return result


def _pick_unit(ns) -> str:
    import numpy as np

    median = float(np.median(ns)) if len(ns) else 0.0
    for name in ("s", "ms", "us"):
        if median >= TIME_UNITS[name]:
            return name
    return "ns"


def latency_hist(
    pairs, *, unit: str | None = None, title: str | None = None, logy: bool = False, ax=None
):
    """A log2 histogram of ``latency_ns`` (from ``latency()``) in ``unit``
    (``ns``, ``us``, ``ms``, ``s``; default the one the median reads best in)."""
    pairs = _frame(pairs, "latency_hist()")
    _require(pairs, ["latency_ns"], "latency_hist()")
    ns = pairs["latency_ns"].astype("int64").to_numpy()
    unit = unit or _pick_unit(ns)
    if unit not in TIME_UNITS:
        raise BadArguments(f"unit={unit!r}: use one of ns, us, ms, s")
    buckets = log2_hist(ns // TIME_UNITS[unit])
    shown = "µs" if unit == "us" else unit
    if title is None:
        unpaired = pairs.attrs.get("unpaired", {})
        left = sum(unpaired.values())
        title = f"Latency of {len(ns):,} calls, log2 buckets of {shown}" + (
            f" ({unpaired.get('enter', 0)} enters, {unpaired.get('exit', 0)} exits unpaired)"
            if left
            else ""
        )
    return hist(
        buckets, unit=unit, title=title, xlabel=f"latency ({shown})", ylabel="calls", logy=logy,
        ax=ax,
    )  # fmt: skip
