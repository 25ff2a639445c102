"""The catalogue of attach points, and "did you mean" for names that do not exist.

Everything here reads the running machine: tracefs for tracepoints and kernel
functions, ``/proc/config.gz`` for kernel features, the ldconfig cache and PATH
for binaries, and the ELF files themselves for user-space symbols. Nothing
imports BCC at import (syscall names read its table when asked), so a bad name
is caught (with suggestions) before any compile:
``check_tracepoint("sched:sched_swich")`` raises ProbeNotFound with the message
"No tracepoint sched:sched_swich on this kernel; did you mean: sched:sched_switch, ...?"
"""

from __future__ import annotations

import ctypes.util
import difflib
import fnmatch
import functools
import gzip
import heapq
import mmap
import os
import platform
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from .errors import BadArguments, FeatureMissing, NotPermitted, ProbeNotFound

if TYPE_CHECKING:  # pandas is imported only when a frame is asked for
    import pandas

__all__ = [
    "check_kernel_function",
    "check_kernel_function_name",
    "check_symbol",
    "check_tracepoint",
    "elf_symbols",
    "kprobes_available",
    "list_kernel_functions",
    "list_tracepoints",
    "resolve_binary",
    "suggest",
    "syscall_name",
    "syscall_number",
    "tracefs",
    "tracepoint_fields",
    "tracepoint_for",
    "tracepoints_frame",
]

_TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_CONFIG_GZ = Path("/proc/config.gz")
_KALLSYMS = Path("/proc/kallsyms")


# --- "did you mean" -------------------------------------------------------------------------

_CUTOFF = 0.6
_BIG = 2000  # above this many candidates, narrow the pool before difflib
_POOL = 400  # how many candidates difflib sees at most for a big list
_MARGIN = 0.2  # keep matches whose ratio is within this of the best one


def suggest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates close to ``name``, best first.

    difflib's ratio over the candidates, then names that contain ``name`` (so that
    ``sys_execve`` finds ``__x64_sys_execve`` even when the ratio is low).
    Lists of tens of thousands of names (kernel functions) are first narrowed
    to the few hundred sharing the most letter triples with ``name``: difflib
    over all of them takes over a second for long names.
    """
    candidates = candidates if isinstance(candidates, (list, tuple)) else list(candidates)
    pool = candidates if len(candidates) <= _BIG else _narrow(name, candidates)
    matches = _near_the_best(name, difflib.get_close_matches(name, pool, n, _CUTOFF))
    if len(matches) < n and len(name) >= 3:
        contain = sorted((c for c in candidates if name in c and c != name), key=len)
        matches += [c for c in contain if c not in matches][: n - len(matches)]
    return matches


def _narrow(name: str, candidates: list[str]) -> list[str]:
    """The candidates that could pass difflib's cutoff, at most _POOL of them."""
    # ratio = 2*matches/(len(a)+len(b)) >= cutoff bounds the length of a match.
    low = len(name) * _CUTOFF / (2 - _CUTOFF)
    high = len(name) * (2 - _CUTOFF) / _CUTOFF
    k = 3 if len(name) >= 6 else 2
    grams = {name[i : i + k] for i in range(len(name) - k + 1)}
    pool = [c for c in candidates if low <= len(c) <= high and any(g in c for g in grams)]
    if len(pool) > _POOL:
        pool = heapq.nlargest(_POOL, pool, key=lambda c: sum(g in c for g in grams))
    return pool


def _near_the_best(name: str, matches: list[str]) -> list[str]:
    """Drop matches far behind the best: one right answer beats four distractions."""
    ratios = [difflib.SequenceMatcher(None, name, m).ratio() for m in matches]
    best = max(ratios, default=0.0)
    return [m for m, r in zip(matches, ratios) if r >= best - _MARGIN]


def _did_you_mean(matches: list[str]) -> str:
    return f"; did you mean: {', '.join(matches)}?" if matches else "."


def _not_found(message: str, matches: list[str]) -> ProbeNotFound:
    err = ProbeNotFound(message + _did_you_mean(matches))
    err.suggestions = matches  # for callers that offer the matches as buttons or retries
    return err


# --- tracefs and kernel features ------------------------------------------------------------


def tracefs() -> Path | None:
    """The mounted tracing directory, or None when tracefs is mounted nowhere."""
    for path in _TRACEFS_DIRS:
        try:
            if (path / "available_events").exists():
                return path
        except PermissionError:
            # Mounted but root-only: it exists, this user just cannot look inside.
            return path
    return None


def _read_tracefs(relative: str) -> str:
    """The text of a tracefs file, with errors a user can act on."""
    root = tracefs()
    if root is None:
        raise FeatureMissing(
            "tracefs is not mounted, so tracepoints cannot be listed; "
            "as root: mount -t tracefs nodev /sys/kernel/tracing"
        )
    try:
        return (root / relative).read_text()
    except PermissionError:  # tracefs is root's alone by default
        raise NotPermitted(f"Cannot read {root / relative}: tracing needs root") from None


@functools.lru_cache(maxsize=1)
def _kernel_config() -> dict[str, str] | None:
    """``/proc/config.gz`` as {option: value}, "n" for "is not set"; None if absent."""
    try:
        text = gzip.decompress(_CONFIG_GZ.read_bytes()).decode(errors="replace")
    except OSError:
        return None
    config = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            config[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2:].split()[0]] = "n"
    return config


def kprobes_available() -> tuple[bool, str]:
    """Whether this kernel can attach kprobes, and why we think so."""
    tf = tracefs()
    try:
        if tf is not None and (tf / "kprobe_events").exists():
            return True, f"{tf}/kprobe_events exists"
    except PermissionError:
        pass  # tracefs is root-only: the kernel's config can still tell
    config = _kernel_config()
    if config is not None:
        value = config.get("CONFIG_KPROBES")
        if value == "y":  # present, though tracefs may just not be mounted yet
            return True, "CONFIG_KPROBES=y in /proc/config.gz"
        if value == "n":
            why = "# CONFIG_KPROBES is not set in /proc/config.gz"
            return False, f"kernel built without CONFIG_KPROBES ({why})"
        return False, "kernel built without CONFIG_KPROBES (it is absent from /proc/config.gz)"
    # perf's kprobe PMU is how BCC attaches when there is no tracefs
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        return True, "/sys/bus/event_source/devices/kprobe exists"
    if tf is None:
        return False, "tracefs is not mounted and there is no /proc/config.gz to tell"
    return False, f"no {tf}/kprobe_events and no /proc/config.gz to tell"


# --- tracepoints ----------------------------------------------------------------------------


def list_tracepoints() -> list[str]:
    """Every tracepoint of this kernel as ``"category:event"``, sorted."""
    text = _read_tracefs("available_events")
    return sorted({line.strip() for line in text.splitlines() if ":" in line})


class Field(TypedDict):
    """One field of a tracepoint's record, as its ``format`` file describes it."""

    name: str
    type: str  # the C type; arrays keep their bounds: "char[16]", "__data_loc char[]"
    offset: int
    size: int
    signed: bool
    common: bool  # common_type, common_pid, ...: the header every record starts with


_FIELD = re.compile(
    r"field:(?P<decl>[^;]*);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);"
    r"(?:\s*signed:(?P<signed>\d+);)?"
)
_DECL = re.compile(r"^(?P<type>.*?)\s*\b(?P<name>\w+)\s*(?P<array>\[[^\]]*\])?$")


def tracepoint_fields(category: str, event: str) -> list[Field]:
    """The fields of tracepoint ``category:event`` in record order, from its format file."""
    category, event = check_tracepoint(f"{category}:{event}").split(":", 1)
    text = _read_tracefs(f"events/{category}/{event}/format")
    return [_parse_field(m) for m in _FIELD.finditer(text)]


def _parse_field(match: re.Match[str]) -> Field:
    decl = _DECL.match(match["decl"].strip())
    if decl is None:  # never seen; keep the raw text rather than fail the listing
        ctype, name = match["decl"], match["decl"]
    else:
        ctype, name = decl["type"] + (decl["array"] or ""), decl["name"]
    return Field(
        name=name,
        type=ctype,
        offset=int(match["offset"]),
        size=int(match["size"]),
        signed=match["signed"] == "1",
        common=name.startswith("common_"),
    )


def tracepoints_frame(pattern: str | None = None) -> pandas.DataFrame:
    """A DataFrame of tracepoints (columns ``category``, ``event``), filtered by a glob.

    The glob matches ``"category:event"`` (``"sched:*"``, ``"*:*openat*"``); a glob
    without a colon also matches the event name alone (``"sched_*"``).
    """
    import pandas as pd

    names = list_tracepoints()
    if pattern:
        pattern = pattern.replace("/", ":")
        names = [n for n in names if _glob_matches(n, pattern)]
    rows = [n.split(":", 1) for n in names]
    return pd.DataFrame(rows, columns=["category", "event"])


def _glob_matches(name: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    return ":" not in pattern and fnmatch.fnmatchcase(name.split(":", 1)[1], pattern)


def check_tracepoint(spec: str) -> str:
    """``spec`` as ``"category:event"`` if that tracepoint exists; ProbeNotFound otherwise.

    Accepts ``"cat:event"`` and ``"cat/event"`` (and bpftrace's ``"tracepoint:cat:event"``).
    """
    spec = spec.strip()
    for prefix in ("tracepoint:", "t:"):
        if spec.startswith(prefix) and spec.count(":") == 2:
            spec = spec[len(prefix) :]
    name = spec.replace("/", ":", 1) if ":" not in spec else spec
    names = list_tracepoints()
    if name in names:
        return name
    category, sep, event = name.partition(":")
    if not sep or not category or not event:
        same_event = [n for n in names if n.split(":", 1)[1] == name]
        raise BadArguments(
            f"A tracepoint is named category:event (like sched:sched_switch), not {spec!r}"
            + _did_you_mean(same_event or suggest(name, names))
        )
    by_category = _group_by_category(names)
    if category not in by_category:
        raise _not_found(
            f"No tracepoint category {category!r} on this kernel, so no {name}",
            _tracepoint_matches(category, event, by_category, names),
        )
    raise _not_found(
        f"No tracepoint {name} on this kernel",
        _tracepoint_matches(category, event, by_category, names),
    )


def _group_by_category(names: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for full in names:
        category, _, event = full.partition(":")
        groups.setdefault(category, []).append(event)
    return groups


def _tracepoint_matches(
    category: str, event: str, by_category: dict[str, list[str]], names: list[str]
) -> list[str]:
    """Close tracepoints: the event within this (or a close) category first, then any name."""
    categories = [category] if category in by_category else suggest(category, by_category, 3)
    matches = []
    for cat in categories:
        matches += [f"{cat}:{e}" for e in suggest(event, by_category[cat], 5)]
    # the right event under a wrong category: "syscall:sys_enter_openat"
    matches += [n for n in names if n.split(":", 1)[1] == event]
    if not matches:  # a poor guess at the category: compare whole names
        matches = suggest(f"{category}:{event}", names, 5)
    return list(dict.fromkeys(matches))[:5]


# --- kernel functions (kprobes) -------------------------------------------------------------


def list_kernel_functions() -> list[str]:
    """The kernel's function names, sorted: ftrace's list and /proc/kallsyms' text symbols."""
    return list(_kernel_functions())


@functools.lru_cache(maxsize=1)
def _kernel_functions() -> tuple[str, ...]:
    tf = tracefs()
    names: set[str] = set()
    if tf is not None:
        try:  # "name" or "name [module]"; reading it can be refused even to root
            with open(tf / "available_filter_functions") as f:
                names = {line.split(None, 1)[0] for line in f if line.strip()}
        except OSError:
            names = set()
    # kprobes attach by kallsyms name, and some entry points are missing from ftrace's
    # list (6.12 lists __do_sys_getppid, not its alias __x64_sys_getppid): take both.
    names |= _kallsyms_functions()
    return tuple(sorted(names))


def _kallsyms_functions() -> set[str]:
    names = set()
    try:
        with open(_KALLSYMS) as f:
            for line in f:
                parts = line.split(None, 3)  # address, type, name, [module]
                if len(parts) < 3 or parts[1] not in ("t", "T"):
                    continue
                name = parts[2]
                # __pfx_/__cfi_ are padding before each function, .cold the split-off
                # unlikely paths: none is a function entry anyone would probe
                if name.startswith(("__pfx_", "__cfi_")) or ".cold" in name:
                    continue
                names.add(name)
    except OSError:
        pass
    return names


_SYSCALL_ENTRY = re.compile(
    r"^(?:__x64_|__arm64_|__ia32_|__s390x_|__riscv_|__se_|__do_)?sys_(\w+)$"
    r"|^(?:ksys|do_sys)_(\w+)$"
)

# Kernel functions that lessons and bcc's examples kprobe, and the tracepoints
# that see the same events on a kernel without kprobes.
_FUNCTION_TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "do_sys_openat2": ("syscalls:sys_enter_openat", "syscalls:sys_enter_openat2"),
    "do_sys_open": ("syscalls:sys_enter_openat", "syscalls:sys_enter_openat2"),
    "do_filp_open": ("syscalls:sys_enter_openat", "syscalls:sys_enter_openat2"),
    "do_execveat_common": ("sched:sched_process_exec", "syscalls:sys_enter_execve"),
    "bprm_execve": ("sched:sched_process_exec", "syscalls:sys_enter_execve"),
    "vfs_read": ("syscalls:sys_enter_read",),
    "vfs_write": ("syscalls:sys_enter_write",),
    "do_unlinkat": ("syscalls:sys_enter_unlinkat", "syscalls:sys_enter_unlink"),
    "do_nanosleep": ("syscalls:sys_enter_nanosleep", "syscalls:sys_enter_clock_nanosleep"),
    "do_exit": ("sched:sched_process_exit",),
    "wake_up_new_task": ("sched:sched_process_fork",),
    "kernel_clone": ("sched:sched_process_fork",),
    "_do_fork": ("sched:sched_process_fork",),
    "copy_process": ("sched:sched_process_fork",),
    "finish_task_switch": ("sched:sched_switch",),
    "__schedule": ("sched:sched_switch",),
    "try_to_wake_up": ("sched:sched_wakeup",),
    "ttwu_do_wakeup": ("sched:sched_wakeup",),
    "tcp_v4_connect": ("sock:inet_sock_set_state",),
    "tcp_v6_connect": ("sock:inet_sock_set_state",),
    "tcp_set_state": ("sock:inet_sock_set_state",),
    "inet_csk_accept": ("sock:inet_sock_set_state",),
    "tcp_retransmit_skb": ("tcp:tcp_retransmit_skb",),
    "blk_mq_start_request": ("block:block_rq_issue",),
    "blk_start_request": ("block:block_rq_issue",),
    "blk_account_io_start": ("block:block_rq_insert", "block:block_rq_issue"),
    "blk_mq_end_request": ("block:block_rq_complete",),
    "blk_account_io_done": ("block:block_rq_complete",),
    "kfree_skb": ("skb:kfree_skb",),
    "kfree_skb_reason": ("skb:kfree_skb",),
    "sk_skb_reason_drop": ("skb:kfree_skb",),
    "handle_mm_fault": ("exceptions:page_fault_user", "exceptions:page_fault_kernel"),
    "__kmalloc": ("kmem:kmalloc",),
    "kmalloc_trace": ("kmem:kmalloc",),
    "kfree": ("kmem:kfree",),
    "oom_kill_process": ("oom:mark_victim",),
    "__send_signal": ("signal:signal_generate",),
    "__send_signal_locked": ("signal:signal_generate",),
    "get_signal": ("signal:signal_deliver",),
    "handle_irq_event": ("irq:irq_handler_entry",),
    "__do_softirq": ("irq:softirq_entry",),
    "handle_softirqs": ("irq:softirq_entry",),
}


def tracepoint_for(function: str, ret: bool = False) -> list[str]:
    """The tracepoints of this kernel that see what a kprobe on ``function`` sees.

    With ``ret``, what a kretprobe sees: a syscall's exit tracepoint.
    """
    function = _strip_clone_suffix(function)
    wanted = list(_FUNCTION_TRACEPOINTS.get(function, ()))
    syscall = _syscall_of(function)
    if syscall:
        wanted.append(f"syscalls:sys_enter_{syscall}")
    if ret:  # the syscall's return is its exit tracepoint; other events have one moment
        wanted = [w.replace("syscalls:sys_enter_", "syscalls:sys_exit_") for w in wanted]
    try:
        existing = set(list_tracepoints())
    except (FeatureMissing, NotPermitted):  # no tracefs, or root's: we cannot vouch for any
        return []
    return [w for w in dict.fromkeys(wanted) if w in existing]


def _syscall_of(function: str) -> str | None:
    """``"execve"`` for ``__x64_sys_execve``, ``sys_execve``, ``ksys_execve`` ...; else None."""
    match = _SYSCALL_ENTRY.match(function)
    return (match[1] or match[2]) if match else None


def _strip_clone_suffix(function: str) -> str:
    # gcc's clones (finish_task_switch.isra.0) are the same function for our purpose
    return function.split(".", 1)[0]


def _arch_syscall_prefix() -> str:
    machine = platform.machine()
    prefixes = {"x86_64": "__x64_", "aarch64": "__arm64_", "s390x": "__s390x_"}
    return prefixes.get(machine, "__riscv_" if machine.startswith("riscv") else "")


def check_kernel_function(name: str, kind: str = "kprobe") -> str:
    """``name`` if a ``kind`` ("kprobe" or "kretprobe") can attach to it here.

    FeatureMissing when this kernel has no kprobes, naming the tracepoints that see
    the same events; ProbeNotFound with close names when there is no such function.
    """
    if kind not in ("kprobe", "kretprobe"):
        raise BadArguments(f"kind must be 'kprobe' or 'kretprobe', not {kind!r}")
    available, reason = kprobes_available()
    if not available:
        raise _no_kprobes(name, kind, reason)
    return check_kernel_function_name(name, kind)


def check_kernel_function_name(name: str, kind: str = "kprobe") -> str:
    """``name`` if the kernel has such a function, whether or not it has kprobes.

    ProbeNotFound with close names otherwise: a misspelt name must not hide behind a
    tracepoint that stands in for the kprobe on a kernel without them.
    """
    functions = _kernel_functions()
    if name in _kernel_function_set() or not functions:  # no list: let the attach judge
        return name
    raise _not_found(
        f"No kernel function {name!r} to attach a {kind} to",
        _function_matches(name, functions),
    )


@functools.lru_cache(maxsize=1)
def _kernel_function_set() -> frozenset[str]:
    return frozenset(_kernel_functions())


def _no_kprobes(name: str, kind: str, reason: str) -> FeatureMissing:
    tracepoints = tracepoint_for(name, ret=kind == "kretprobe")
    message = f"Cannot attach {kind} {name}: this kernel has no kprobes: "
    message += reason.removeprefix("kernel ") + "."
    if tracepoints:
        message += f" Use the tracepoint {' or '.join(tracepoints)} instead."
    else:
        message += " Look for a tracepoint that sees the same event (list_tracepoints())."
    err = FeatureMissing(message)
    err.tracepoints = tracepoints  # for callers that offer to switch the probe
    return err


def _function_matches(name: str, functions: tuple[str, ...]) -> list[str]:
    """Close kernel functions; the arch's syscall wrapper and gcc's clones come first."""
    present = _kernel_function_set()
    first = []
    syscall = _syscall_of(name)
    if syscall:  # sys_execve is __x64_sys_execve on x86-64 since 4.17
        wrapper = f"{_arch_syscall_prefix()}sys_{syscall}"
        if wrapper in present and wrapper != name:
            first.append(wrapper)
    first += [f for f in functions if f.startswith(name + ".")][:2]  # do_foo.isra.0
    return list(dict.fromkeys(first + suggest(name, functions, 5)))[:5]


# --- system calls (raw_syscalls tracepoints carry their numbers) ----------------------------

_UNISTD = (
    "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "/usr/include/aarch64-linux-gnu/asm/unistd.h",
    "/usr/include/asm/unistd_64.h",
)


@functools.lru_cache(maxsize=1)
def _syscall_table() -> dict[int, str]:
    """Syscall number -> name: bcc's table, completed from the C library's headers.

    bcc's table (``bcc.syscall``) stops at the syscalls of its day (x86_64: 334, rseq);
    newer ones (clone3 435, openat2 437 ...) come from asm/unistd_64.h where present.
    """
    try:  # bcc's table is plain Python, but importing it loads libbcc: only when asked
        from bcc import syscall as bcc_syscall

        table = {int(k): v.decode() for k, v in bcc_syscall.syscalls.items()}
    except ImportError:
        table = {}
    for path in _UNISTD:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for name, number in re.findall(r"#define __NR_(\w+)\s+(\d+)", text):
            table.setdefault(int(number), name)
        break
    return table


def syscall_name(number: int) -> str:
    """The name of syscall ``number`` (bcc's table, then the headers); ``syscall_N`` if unknown."""
    return _syscall_table().get(int(number), f"syscall_{int(number)}")


def syscall_number(name: str) -> int:
    """The number of syscall ``name`` (or of a number given as text); BadArguments, with
    close names, when there is no such system call."""
    by_name = {v: k for k, v in _syscall_table().items()}
    if name in by_name:
        return by_name[name]
    if name.isdigit():
        return int(name)
    close = suggest(name, sorted(by_name))
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise BadArguments(f"--syscall {name!r}: no system call of that name{hint}")


# --- binaries and their symbols (uprobes) ---------------------------------------------------


def resolve_binary(name_or_path: str) -> str:
    """An absolute path to the ELF file that ``name_or_path`` names.

    A path that exists; a program on PATH (``"bash"``); a library, by any of the
    names a user writes for it (``"c"``, ``"libc"``, ``"libc.so.6"``, ``"pthread"``).
    """
    name = name_or_path.strip()
    if "/" in name or name.startswith("~"):
        path = Path(name).expanduser()
        if not path.exists():
            raise _not_found(f"No file {name}", [])
        return _elf_path(path)
    is_library = name.startswith("lib") or ".so" in name
    program = None if is_library else shutil.which(name)
    if program:
        return _elf_path(Path(program))
    library = _find_library(name)
    if library:
        return _elf_path(Path(library))
    raise _not_found(
        f"No binary or library named {name!r} (searched PATH and the ldconfig cache)",
        _binary_matches(name),
    )


def _elf_path(path: Path) -> str:
    """The absolute path, after checking that it is an ELF file (not a script)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except IsADirectoryError:
        raise BadArguments(f"{path} is a directory, not a binary") from None
    if magic != b"\x7fELF":
        raise BadArguments(f"{path} is not an ELF binary (a script?); probe its interpreter")
    return os.path.abspath(path)


@functools.lru_cache(maxsize=1)
def _ldconfig_cache() -> tuple[tuple[str, str, str], ...]:
    """The ldconfig cache as (soname, flags, path), e.g. ("libc.so.6", "libc6,x86-64", ...)."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run(
            [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    entries = []
    for line in out.splitlines():
        match = re.match(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)$", line)
        if match:
            entries.append((match[1], match[2], match[3]))
    return tuple(entries)


def _arch_flag() -> str | None:
    """How ldconfig tags libraries of this machine's architecture."""
    return {"x86_64": "x86-64", "aarch64": "AArch64"}.get(platform.machine())


def _find_library(name: str) -> str | None:
    """The path of library ``name`` (c, libc, libc.so.6), this machine's arch first."""
    stem = name.split(".so", 1)[0]
    stem = stem if stem.startswith("lib") else f"lib{stem}"
    exact = ".so." in name  # libc.so.6 names one version; libc.so means any
    arch = _arch_flag()
    found = [
        (soname, flags, path)
        for soname, flags, path in _ldconfig_cache()
        if (soname == name if exact else soname == f"{stem}.so" or soname.startswith(f"{stem}.so."))
    ]
    if found:
        # this arch first, then the versioned soname (libz.so.1) over the dev link (libz.so)
        found.sort(key=lambda e: (arch is not None and arch not in e[1], e[0] == f"{stem}.so"))
        return found[0][2]
    # an exact soname (libc.so.7) must not fall back to another version
    return None if exact else _find_library_ctypes(name)


def _find_library_ctypes(name: str) -> str | None:
    # ctypes knows gcc's and ld's search paths too; it answers a soname, not a path
    soname = ctypes.util.find_library(name.removeprefix("lib").split(".so", 1)[0])
    if soname is None:
        return None
    if os.path.isabs(soname):
        return soname
    for entry_soname, _flags, path in _ldconfig_cache():
        if entry_soname == soname:
            return path
    for directory in ("/lib", "/usr/lib", f"/lib/{platform.machine()}-linux-gnu"):
        path = os.path.join(directory, soname)
        if os.path.exists(path):
            return path
    return None


def _binary_matches(name: str) -> list[str]:
    """Close library names (as typed: libfoo or foo) and programs on PATH."""
    sonames = {soname for soname, _flags, _path in _ldconfig_cache()}
    stems = {soname.split(".so", 1)[0] for soname in sonames}
    if ".so" in name:
        return suggest(name, sorted(sonames))
    if name.startswith("lib"):
        return suggest(name, sorted(stems))
    shorts = {s.removeprefix("lib") for s in stems}
    return suggest(name, sorted(shorts | _programs_on_path()))


def _programs_on_path() -> set[str]:
    programs = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        try:
            programs.update(e.name for e in os.scandir(directory) if e.is_file())
        except OSError:
            continue
    return programs


# A small reader of ELF64 little-endian symbol tables: all uprobes need.
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def elf_symbols(path: str | os.PathLike[str]) -> list[str]:
    """The defined function names of an ELF64 little-endian file, sorted.

    From ``.dynsym`` and ``.symtab``: FUNC and GNU IFUNC symbols with a section and
    a non-zero value, version suffixes (``@@GLIBC_2.2.5``) removed.
    """
    return list(_elf_table(path)[0])


def is_ifunc(path: str | os.PathLike[str], symbol: str) -> bool:
    """Whether ``symbol`` is a GNU indirect function (``i`` in ``nm -D``).

    A uprobe on one fires when the dynamic linker runs its resolver, once, not on each
    call: glibc's strlen, memcpy and strcmp are such functions.
    """
    return symbol.split("@", 1)[0] in _elf_table(path)[1]


def _elf_table(path) -> tuple[tuple[str, ...], frozenset[str]]:
    stat = os.stat(path)
    return _elf_symbols(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _elf_symbols(path: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, ...], frozenset[str]]:
    # mtime and size are in the key so that a rebuilt binary is read again
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise BadArguments(f"{path} is empty, not an ELF file") from None
    with data:
        sections = _section_headers(data, path)
        names: set[str] = set()
        ifuncs: set[str] = set()
        for section in sections:
            if section[1] in (_SHT_SYMTAB, _SHT_DYNSYM):
                for name, ifunc in _function_names(data, section, sections[section[6]]):
                    names.add(name)
                    if ifunc:
                        ifuncs.add(name)
    return tuple(sorted(names)), frozenset(ifuncs)


def _section_headers(data: mmap.mmap, path: str) -> list[tuple[int, ...]]:
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF":
        raise BadArguments(f"{path} is not an ELF file")
    if data[4] != 2 or data[5] != 1:  # EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian
        raise BadArguments(f"{path} is not a 64-bit little-endian ELF file")
    header = _EHDR.unpack_from(data)
    shoff, shentsize, shnum = header[6], header[11], header[12]
    if shoff == 0:
        return []
    if shnum == 0:  # more than 0xff00 sections: the count lives in section 0
        shnum = _SHDR.unpack_from(data, shoff)[5]
    return [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]


def _function_names(
    data: mmap.mmap, symtab: tuple[int, ...], strtab: tuple[int, ...]
) -> Iterable[tuple[str, bool]]:
    offset, size = symtab[4], symtab[5]
    strings = data[strtab[4] : strtab[4] + strtab[5]]
    table = data[offset : offset + size - size % _SYM.size]
    for st_name, info, _other, shndx, value, _size in _SYM.iter_unpack(table):
        if info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or shndx == 0 or value == 0:
            continue
        end = strings.find(b"\0", st_name)
        name = strings[st_name:end].decode(errors="replace").split("@", 1)[0]
        if name:
            yield name, info & 0xF == _STT_GNU_IFUNC


def check_symbol(binary: str, symbol: str) -> str:
    """The resolved path of ``binary`` if it defines function ``symbol``; else ProbeNotFound."""
    path = resolve_binary(binary)
    symbol = symbol.split("@", 1)[0]
    symbols = elf_symbols(path)
    if symbol in symbols:
        return path
    if not symbols:
        raise _not_found(f"No function {symbol!r} in {path}: it has no symbol table (stripped)", [])
    raise _not_found(
        f"No function {symbol!r} in {path} (`nm -D --defined-only {path}` lists what it exports)",
        suggest(symbol, symbols),
    )
