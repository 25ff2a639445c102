"""The compile process, the portable bytecode and the cache of compiled programs (issue 13).

Real compiles and real loads: every program here is compiled by BCC in the compile
process and loaded into the running kernel by loader.py, and its counts checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import bpf, needs_root, prog_ids

from ebpfkit import bytecode, compiler, progcache
from ebpfkit.errors import CompileError, MapRefused, VerifierError
from ebpfkit.session import Session

COUNT = r"""
BPF_HASH(counts, u32, u64);
struct event { u32 pid; u64 n; };
BPF_RINGBUF_OUTPUT(events, 8);
BPF_PERF_OUTPUT(perf_events);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 k = bpf_get_current_pid_tgid() >> 32;
    if (k != PID) return 0;
    counts.increment(k);
    struct event e = {k, 1};
    events.ringbuf_output(&e, sizeof(e), 0);
    return 0;
}
"""


def _count_program() -> str:
    return COUNT.replace("PID", str(os.getpid()))


def _trace(text: str, calls: int, **options):
    """Trace ``calls`` getppid() calls of this process; (result, compiles it took)."""
    before = compiler.compiler().compiles
    with Session(text, **options) as s:  # compiled and attached here
        for _ in range(calls):
            os.getppid()
        result = s.collect()
    return result, compiler.compiler().compiles - before


@pytest.fixture(scope="module")
def _layout_measured():
    """The headers' layout is measured by a compile of its own, once per process:
    done first, so that the counts below are the program's compiles alone."""
    if os.geteuid() == 0:
        _trace(_count_program(), 1)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch, _layout_measured) -> Path:
    """An empty cache of compiled programs, for this test alone."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "ebpfkit" / "programs"


# ---------------------------------------------------------------- the bytecode


@needs_root
def test_bytecode_names_maps_by_index_and_travels_whole(cache_dir):
    code = compiler.compiled(_count_program(), ["-w"], cache=False)
    names = [m.name for m in code.maps]
    assert {"counts", "events", "perf_events"} <= set(names)
    fn = code.function("tracepoint__syscalls__sys_enter_getppid")
    assert fn is not None and len(fn.insns) % 8 == 0
    # Every map reference points at a map, and no compiling process's descriptor is left.
    assert fn.relocations and {names[m] for _, m in fn.relocations} >= {"counts", "events"}
    for i, _ in fn.relocations:
        assert int.from_bytes(fn.insns[i * 8 + 4 : i * 8 + 8], "little", signed=True) == 0
    assert code.event_fields["events"] == ["pid#u32", "n#u64"]
    again = bytecode.Bytecode.from_json(code.to_json())
    assert again == code
    patched = bytecode.patched(fn, list(range(100, 100 + len(code.maps))))
    for i, m in fn.relocations:
        assert int.from_bytes(patched[i * 8 + 4 : i * 8 + 8], "little") == 100 + m


def test_damaged_bytecode_is_refused():
    code = bytecode.Bytecode(
        [bytecode.Function("f", bytes(16), [(0, 0)])],
        [bytecode.MapDef("m", 1, 4, 8, 10, 0, '"int"', '"unsigned long long"')],
    )
    assert bytecode.Bytecode.from_json(code.to_json()) == code
    text = code.to_json()
    for damaged in (
        "",
        "{}",
        text[: len(text) // 2],
        text.replace('"relocations":[[0,0]]', '"relocations":[[5,0]]'),
        text.replace('"relocations":[[0,0]]', '"relocations":[[0,3]]'),
        text.replace('"format":1', '"format":999'),
    ):
        with pytest.raises(ValueError):
            bytecode.Bytecode.from_json(damaged)


# ---------------------------------------------------------------- the cache


@needs_root
def test_a_warm_run_skips_the_compiler_and_counts_the_same(cache_dir):
    first, compiles = _trace(_count_program(), 1000)
    assert compiles == 1
    assert len(list(cache_dir.glob("*.json"))) == 1
    second, compiles = _trace(_count_program(), 1000)
    assert compiles == 0
    for r in (first, second):
        assert r.maps["counts"]["value"].sum() == 1000
        assert len(r.channels["events"]) == 1000


@needs_root
def test_no_cache_compiles_each_time_and_keeps_nothing(cache_dir, ip):
    for _ in range(2):
        _, compiles = _trace(_count_program(), 10, cache=False)
        assert compiles == 1
    before = compiler.compiler().compiles
    bpf(ip, "-d 0.1 --no-cache", _count_program())
    assert compiler.compiler().compiles == before + 1
    assert not cache_dir.exists() or not list(cache_dir.glob("*.json"))


@needs_root
def test_the_config_switch_turns_the_cache_off(cache_dir, ip):
    ip.run_line_magic("config", "BpfMagics.cache = False")
    try:
        before = compiler.compiler().compiles
        for _ in range(2):
            bpf(ip, "-d 0.1", _count_program())
        assert compiler.compiler().compiles == before + 2
    finally:
        ip.run_line_magic("config", "BpfMagics.cache = True")
    before = compiler.compiler().compiles
    for _ in range(2):
        bpf(ip, "-d 0.1", _count_program())
    assert compiler.compiler().compiles == before + 1


@needs_root
def test_an_entry_made_on_another_kernel_is_never_used(cache_dir, monkeypatch):
    _, compiles = _trace(_count_program(), 10)
    assert compiles == 1
    monkeypatch.setattr(progcache, "kernel_identity", lambda: "6.1.0-other #1 SMP x86_64")
    result, compiles = _trace(_count_program(), 10)
    assert compiles == 1, "the entry of another kernel was used"
    assert result.maps["counts"]["value"].sum() == 10
    assert len(list(cache_dir.glob("*.json"))) == 2


@needs_root
def test_a_damaged_entry_is_ignored_and_rebuilt(cache_dir):
    _trace(_count_program(), 10)
    (entry,) = cache_dir.glob("*.json")
    for damage in (b"", b"{not json", entry.read_bytes()[:100], b"\xff\xfe"):
        entry.write_bytes(damage)
        result, compiles = _trace(_count_program(), 10)
        assert compiles == 1
        assert result.maps["counts"]["value"].sum() == 10
        assert bytecode.Bytecode.from_json(entry.read_text())  # written whole again


def test_the_cache_stays_under_its_limit(cache_dir, monkeypatch):
    monkeypatch.setattr(progcache, "LIMIT_BYTES", 20_000)
    code = bytecode.Bytecode([bytecode.Function("f", bytes(8 * 500))], [])
    for i in range(20):
        progcache.put(f"{i:064x}", code)
        os.utime(cache_dir / f"{i:064x}.json", (i, i))  # entry i used at time i
    files = list(cache_dir.glob("*.json"))
    assert sum(f.stat().st_size for f in files) <= 20_000
    # The most recently used are kept.
    assert (cache_dir / f"{19:064x}.json").exists() and not (cache_dir / f"{0:064x}.json").exists()


def test_the_key_changes_with_the_text_and_the_flags():
    a = progcache.key("int x;", ["-w"])
    assert a == progcache.key("int x;", ["-w"])
    assert a != progcache.key("int y;", ["-w"])
    assert a != progcache.key("int x;", ["-w", "-DX=1"])


# ---------------------------------------------------------------- the compile process


@needs_root
def test_the_compiler_dying_is_an_error_and_the_next_compile_works(cache_dir):
    dies = textwrap.dedent(
        """\
        TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
            char buf[4096] = {};
            bpf_probe_read_user(buf, sizeof(buf), (void *)args->__syscall_nr);
            return buf[7];
        }
        """
    )
    with pytest.raises(CompileError) as e:
        Session(dies).start()
    text = str(e.value)
    assert "memset" in text and "line 2:" in text and "512 bytes" in text
    assert "exited with status" in text
    result, _ = _trace(_count_program(), 100)
    assert result.maps["counts"]["value"].sum() == 100


@needs_root
def test_a_compile_past_the_time_limit_is_stopped(cache_dir, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(compiler, "COMPILE_SECONDS", 0.01)
        with pytest.raises(CompileError, match="did not finish within"):
            Session(_count_program(), cache=False).start()
    result, compiles = _trace(_count_program(), 10)
    assert compiles == 1 and result.maps["counts"]["value"].sum() == 10


@needs_root
def test_the_compile_process_ends_with_the_notebook(tmp_path):
    """However the notebook's process ends (SIGKILL here), its compile process goes too."""
    script = textwrap.dedent(
        """\
        import sys, time
        from ebpfkit import compiler
        compiler.compiler().compile("int x;", ["-w"])
        print(compiler.compiler()._proc.pid, flush=True)
        time.sleep(60)
        """
    )
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo), XDG_CACHE_HOME=str(tmp_path))
    notebook = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    child = int(notebook.stdout.readline())
    os.kill(child, 0)  # alive while its parent is
    notebook.send_signal(signal.SIGKILL)
    notebook.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"compile process {child} outlived its parent")


@needs_root
def test_the_verifier_log_quotes_the_source(cache_dir):
    rejected = _count_program().replace(
        "counts.increment(k);", "u64 *v = counts.lookup(&k); *v += 1;"
    )
    before = prog_ids()
    with pytest.raises(VerifierError) as e:
        Session(rejected).start()
    text = str(e.value)
    assert "map_value_or_null" in text
    assert "*v += 1" in text, "the log lost the program's own lines"
    assert prog_ids() <= before


@needs_root
def test_a_map_the_kernel_refuses_is_named(cache_dir):
    with pytest.raises(MapRefused, match="refused to create map h"):
        Session(
            "BPF_HASH(h, u64, u64, 1 << 30);\n"
            "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }"
        ).start()
