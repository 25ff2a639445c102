"""Tests of ebpfkit.probes against the real machine: its tracefs, kernel, libraries."""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ebpfkit import probes
from ebpfkit.errors import BadArguments, FeatureMissing, ProbeNotFound

LIBC_FUNCTIONS = ["malloc", "free", "strlen", "memcpy", "printf", "open", "read", "write"]

needs_tracefs = pytest.mark.skipif(
    probes.tracefs() is None,
    reason="tracefs is not mounted (as root: mount -t tracefs nodev /sys/kernel/tracing)",
)
x86_64_only = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="offsets and syscall wrapper names of x86-64"
)


def _config_kprobes() -> str | None:
    """CONFIG_KPROBES as /proc/config.gz says, read here independently of probes.py."""
    text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    if "# CONFIG_KPROBES is not set" in text.splitlines():
        return "n"
    return "y" if "CONFIG_KPROBES=y" in text.splitlines() else None


def _has_kprobes() -> bool:
    return probes.kprobes_available()[0]


@pytest.fixture
def with_kprobes(monkeypatch):
    """Pretend the kernel has kprobes, to test the name checks against the real list."""
    monkeypatch.setattr(probes, "kprobes_available", lambda: (True, "pretended by the test"))


# --- tracepoints ---------------------------------------------------------------------------


@needs_tracefs
def test_tracefs_has_available_events():
    assert (probes.tracefs() / "available_events").is_file()


@needs_tracefs
def test_list_tracepoints_has_the_teaching_ones():
    names = probes.list_tracepoints()
    assert "syscalls:sys_enter_openat" in names
    assert "sched:sched_switch" in names
    assert names == sorted(set(names))
    assert all(n.count(":") == 1 for n in names)


@needs_tracefs
def test_openat_fields_are_the_syscall_arguments():
    fields = {f["name"]: f for f in probes.tracepoint_fields("syscalls", "sys_enter_openat")}
    assert {"dfd", "filename", "flags", "mode"} <= fields.keys()
    assert fields["common_pid"]["common"] and fields["common_pid"]["signed"]
    assert not fields["filename"]["common"]
    # compare with the format file, read here independently
    fmt = (probes.tracefs() / "events/syscalls/sys_enter_openat/format").read_text()
    assert f"field:const char * filename;\toffset:{fields['filename']['offset']};" in fmt
    assert f"field:umode_t mode;\toffset:{fields['mode']['offset']};" in fmt


@needs_tracefs
@x86_64_only
def test_openat_field_offsets_are_the_known_ones():
    fields = {f["name"]: f for f in probes.tracepoint_fields("syscalls", "sys_enter_openat")}
    assert fields["filename"]["type"] == "const char *"
    assert (fields["filename"]["offset"], fields["filename"]["size"]) == (24, 8)
    assert fields["dfd"]["offset"] == 16
    assert fields["flags"]["offset"] == 32
    assert fields["mode"]["offset"] == 40


@needs_tracefs
def test_array_fields_keep_their_bounds():
    fields = {f["name"]: f for f in probes.tracepoint_fields("sched", "sched_switch")}
    assert fields["prev_comm"]["type"] == "char[16]"
    assert fields["prev_comm"]["size"] == 16
    assert fields["next_pid"]["type"] == "pid_t"


@needs_tracefs
def test_fields_of_a_misspelt_tracepoint_suggest_the_right_one():
    with pytest.raises(ProbeNotFound, match="sched:sched_switch"):
        probes.tracepoint_fields("sched", "sched_swich")


@needs_tracefs
@pytest.mark.parametrize(
    "spec", ["sched:sched_switch", "sched/sched_switch", "sched/sched_switch "]
)
def test_check_tracepoint_accepts_both_spellings(spec):
    assert probes.check_tracepoint(spec) == "sched:sched_switch"


@needs_tracefs
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("syscalls:sys_enter_opnat", "syscalls:sys_enter_openat"),
        ("sched:sched_swich", "sched:sched_switch"),
        ("sched/sched_swich", "sched:sched_switch"),
        ("raw_syscalls:sys_entr", "raw_syscalls:sys_enter"),
    ],
)
def test_misspelt_tracepoint_suggests_the_right_one_first(spec, expected):
    with pytest.raises(ProbeNotFound) as info:
        probes.check_tracepoint(spec)
    message = str(info.value)
    assert spec.replace("/", ":") in message
    assert f"did you mean: {expected}" in message
    assert info.value.suggestions[0] == expected


@needs_tracefs
def test_unknown_category_is_named():
    with pytest.raises(ProbeNotFound) as info:
        probes.check_tracepoint("syscall:sys_enter_openat")
    assert "category 'syscall'" in str(info.value)
    assert info.value.suggestions[0] == "syscalls:sys_enter_openat"


@needs_tracefs
def test_nothing_close_gives_a_plain_sentence():
    with pytest.raises(ProbeNotFound) as info:
        probes.check_tracepoint("zzqqxx:zzqqxx")
    assert "did you mean" not in str(info.value)
    assert info.value.suggestions == []


@needs_tracefs
def test_event_without_category_is_bad_arguments():
    with pytest.raises(BadArguments, match="did you mean: syscalls:sys_enter_openat"):
        probes.check_tracepoint("sys_enter_openat")


@needs_tracefs
def test_tracepoints_frame_filters_by_glob():
    pytest.importorskip("pandas", reason="pandas is not installed")
    frame = probes.tracepoints_frame("sched:*")
    assert list(frame.columns) == ["category", "event"]
    assert set(frame["category"]) == {"sched"}
    assert "sched_switch" in set(frame["event"])
    openat = probes.tracepoints_frame("*openat")  # no colon: matches event names too
    assert ("syscalls", "sys_enter_openat") in set(openat.itertuples(index=False, name=None))
    assert len(probes.tracepoints_frame()) == len(probes.list_tracepoints())


# --- kprobes and kernel functions ----------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/config.gz").exists(), reason="no /proc/config.gz here")
def test_kprobes_verdict_agrees_with_kernel_config():
    available, reason = probes.kprobes_available()
    config = _config_kprobes()
    if config == "y":
        assert available
    else:
        assert not available
        assert "CONFIG_KPROBES" in reason
        if config == "n":
            assert "# CONFIG_KPROBES is not set in /proc/config.gz" in reason
    tf = probes.tracefs()
    if tf is not None and (tf / "kprobe_events").exists():
        assert available


@needs_tracefs
@pytest.mark.skipif(_has_kprobes(), reason="this kernel has kprobes")
def test_kprobe_without_kprobes_offers_the_tracepoint():
    with pytest.raises(FeatureMissing) as info:
        probes.check_kernel_function("do_sys_openat2")
    message = str(info.value)
    assert "this kernel has no kprobes: built without CONFIG_KPROBES" in message
    assert "syscalls:sys_enter_openat" in message
    assert info.value.tracepoints[0] == "syscalls:sys_enter_openat"


@needs_tracefs
@pytest.mark.skipif(_has_kprobes(), reason="this kernel has kprobes")
def test_kretprobe_without_kprobes_offers_the_exit_tracepoint():
    with pytest.raises(FeatureMissing, match="syscalls:sys_exit_read"):
        probes.check_kernel_function("vfs_read", kind="kretprobe")


def test_check_kernel_function_rejects_an_unknown_kind():
    with pytest.raises(BadArguments, match="kretprobe"):
        probes.check_kernel_function("vfs_read", kind="fentry")


def test_list_kernel_functions_is_clean_and_cached():
    names = probes.list_kernel_functions()
    if not names:
        pytest.skip("neither available_filter_functions nor /proc/kallsyms is readable")
    assert "vfs_read" in names
    assert names == sorted(set(names))
    assert not any(" " in n or n.startswith("__pfx_") for n in names)
    start = time.perf_counter()
    probes.list_kernel_functions()
    assert time.perf_counter() - start < 0.05  # the second call is the cached list


@x86_64_only
def test_syscall_function_suggests_the_arch_wrapper(with_kprobes):
    if "__x64_sys_execve" not in probes.list_kernel_functions():
        pytest.skip("this kernel has no __x64_sys_execve symbol")
    with pytest.raises(ProbeNotFound) as info:
        probes.check_kernel_function("sys_execve")
    assert info.value.suggestions[0] == "__x64_sys_execve"
    assert "did you mean: __x64_sys_execve" in str(info.value)


def test_misspelt_kernel_function_suggests_the_right_one(with_kprobes):
    if "vfs_read" not in probes.list_kernel_functions():
        pytest.skip("this kernel's function list has no vfs_read")
    assert probes.check_kernel_function("vfs_read") == "vfs_read"
    with pytest.raises(ProbeNotFound) as info:
        probes.check_kernel_function("vfs_raed")
    assert info.value.suggestions[0] == "vfs_read"


@pytest.mark.kprobes
@pytest.mark.skipif(not _has_kprobes(), reason="this kernel has no kprobes")
def test_kernel_function_on_a_kprobes_kernel():
    assert probes.check_kernel_function("vfs_read", kind="kretprobe") == "vfs_read"
    with pytest.raises(ProbeNotFound, match="vfs_read"):
        probes.check_kernel_function("vfs_raed")


@needs_tracefs
@x86_64_only
def test_tracepoint_for_syscall_wrappers():
    assert "syscalls:sys_enter_execve" in probes.tracepoint_for("__x64_sys_execve")
    assert "syscalls:sys_exit_execve" in probes.tracepoint_for("__x64_sys_execve", ret=True)


@needs_tracefs
@pytest.mark.parametrize(
    "function, expected",
    [
        ("sys_execve", "syscalls:sys_enter_execve"),
        ("ksys_read", "syscalls:sys_enter_read"),
        ("do_sys_openat2", "syscalls:sys_enter_openat"),
        ("do_execveat_common", "sched:sched_process_exec"),
        ("vfs_write", "syscalls:sys_enter_write"),
        ("do_exit", "sched:sched_process_exit"),
        ("finish_task_switch.isra.0", "sched:sched_switch"),
        ("wake_up_new_task", "sched:sched_process_fork"),
    ],
)
def test_tracepoint_for_teaching_functions(function, expected):
    if expected not in probes.list_tracepoints():
        pytest.skip(f"this kernel has no tracepoint {expected}")
    assert expected in probes.tracepoint_for(function)


@needs_tracefs
def test_tracepoint_for_returns_only_what_exists():
    assert probes.tracepoint_for("__x64_sys_no_such_call") == []
    assert probes.tracepoint_for("some_private_helper") == []
    existing = set(probes.list_tracepoints())
    assert set(probes.tracepoint_for("do_sys_openat2")) <= existing


# --- binaries and symbols ------------------------------------------------------------------


@pytest.fixture(scope="module")
def libc() -> str:
    try:
        return probes.resolve_binary("c")
    except ProbeNotFound:
        pytest.skip("no libc in the ldconfig cache (a musl or static system?)")


def test_resolve_libc_by_its_names(libc):
    assert libc.endswith("libc.so.6")
    assert os.path.isabs(libc) and os.path.isfile(libc)
    assert probes.resolve_binary("libc") == libc
    assert probes.resolve_binary("libc.so.6") == libc
    assert probes.resolve_binary("libc.so") == libc
    assert probes.resolve_binary(libc) == libc


def test_resolve_pthread():
    assert "libpthread.so" in probes.resolve_binary("pthread")


def test_resolve_a_program_on_path():
    ls = shutil.which("ls")
    if ls is None:
        pytest.skip("no ls on PATH")
    assert probes.resolve_binary("ls") == os.path.abspath(ls)


def test_missing_binary_is_named():
    with pytest.raises(ProbeNotFound) as info:
        probes.resolve_binary("libfoo_ebpfkit_test")
    assert "No binary or library named 'libfoo_ebpfkit_test'" in str(info.value)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(ProbeNotFound, match="No file"):
        probes.resolve_binary(str(tmp_path / "nothing"))


def test_misspelt_library_suggests_the_right_one():
    with pytest.raises(ProbeNotFound) as info:
        probes.resolve_binary("libpthred")
    assert "libpthread" in info.value.suggestions


def test_a_script_is_not_a_binary(tmp_path):
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(BadArguments, match="not an ELF"):
        probes.resolve_binary(str(script))


def test_elf_symbols_of_libc_has_the_known_functions(libc):
    symbols = probes.elf_symbols(libc)
    assert set(LIBC_FUNCTIONS) <= set(symbols)
    assert not any("@" in s for s in symbols)
    assert symbols == sorted(set(symbols))


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils' nm is not installed")
def test_elf_symbols_agree_with_nm(libc):
    out = subprocess.run(
        ["nm", "-D", "--defined-only", libc], capture_output=True, text=True, check=True
    ).stdout
    kinds = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            kinds[parts[2].split("@", 1)[0]] = parts[1]
    ours = set(probes.elf_symbols(libc))
    strong = {name for name, kind in kinds.items() if kind in "Ti"}  # text and IFUNC
    assert strong <= ours
    # IFUNCs (`i`) are flagged as such, and plain functions are not
    for name in strong:
        assert probes.is_ifunc(libc, name) == (kinds[name] == "i"), name
    # everything we call a function nm shows as code: T, W (weak) or i (IFUNC)
    assert all(kinds.get(name) in ("T", "W", "i") for name in ours)
    for name in LIBC_FUNCTIONS:
        assert kinds[name] in ("T", "W", "i")


def test_elf_symbols_reads_a_changed_file_again(tmp_path, libc):
    true = shutil.which("true")
    if true is None:
        pytest.skip("no true on PATH")
    copy = tmp_path / "lib.so"
    shutil.copy(true, copy)
    before = probes.elf_symbols(copy)
    shutil.copy(libc, copy)
    os.utime(copy, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert "malloc" in probes.elf_symbols(copy)
    assert "malloc" not in before


def test_elf_symbols_rejects_a_non_elf_file(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is no ELF\n")
    with pytest.raises(BadArguments, match="not an ELF"):
        probes.elf_symbols(text)


def test_check_symbol_returns_the_path(libc):
    assert probes.check_symbol("c", "malloc") == libc
    assert probes.check_symbol("c", "malloc@@GLIBC_2.2.5") == libc


def test_misspelt_symbol_suggests_malloc(libc):
    with pytest.raises(ProbeNotFound) as info:
        probes.check_symbol("c", "mallok")
    message = str(info.value)
    assert "'mallok'" in message and libc in message
    assert f"nm -D --defined-only {libc}" in message
    assert "did you mean: malloc" in message


# --- suggest -------------------------------------------------------------------------------


def test_suggest_small_lists():
    assert probes.suggest("mallok", ["free", "malloc", "calloc"])[0] == "malloc"
    assert probes.suggest("x", []) == []
    # a name inside a longer one is found even when difflib's ratio is low
    assert "__x64_sys_execve" in probes.suggest("sys_execve", ["__x64_sys_execve", "zzz"])


def test_suggest_on_the_kernel_function_list_is_fast():
    names = probes.list_kernel_functions()
    if len(names) < 10_000:
        pytest.skip("the kernel function list is not readable here")
    query = "security_inode_permision_check_for_a_long_name"
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared and noisy
        start = time.perf_counter()
        matches = probes.suggest(query, names)
        best = min(best, time.perf_counter() - start)
    assert best < 0.5
    assert matches and matches[0].startswith("security_inode_")
