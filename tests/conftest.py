"""Shared fixtures: a real IPython shell with ebpfkit loaded (helpers and marks: helpers.py)."""

from __future__ import annotations

import os

import pytest
from helpers import KPROBES, KPROBES_WHY, build_getppid_loop

if os.environ.get("EBPFKIT_REQUIRE_KPROBES") and not KPROBES:
    # The kprobe lane (scripts/vm-guest.sh): a skip there would hide the very thing it tests.
    raise RuntimeError(f"EBPFKIT_REQUIRE_KPROBES is set but {KPROBES_WHY}")


@pytest.fixture(scope="session")
def ip():
    """An InteractiveShell with ``%load_ext ebpfkit`` done."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "ebpfkit")
    return shell


@pytest.fixture(scope="session")
def getppid_loop(tmp_path_factory) -> str:
    """The getppid() workload, built once: ``f"{getppid_loop} NAME CALLS"``."""
    return build_getppid_loop(tmp_path_factory.mktemp("workload"))
