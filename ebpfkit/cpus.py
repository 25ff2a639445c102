"""The CPUs of this machine that can run code now: where perf events are opened, per-CPU
samples are expected, and per-CPU buffers are read."""

from __future__ import annotations

import os

ONLINE = "/sys/devices/system/cpu/online"


def parse_cpu_list(text: str) -> list[int]:
    """A kernel CPU list (``0-3,6``) as numbers."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def online_cpus() -> list[int]:
    """The online CPUs, as /sys lists them; every CPU Python counts where /sys is unreadable."""
    try:
        with open(ONLINE) as f:
            return parse_cpu_list(f.read())
    except OSError:
        return list(range(os.cpu_count() or 1))
