"""`ebpfkit check` against the running kernel.

Every expectation is derived from ground truth read here, independently of
ebpfkit: ``/proc/config.gz``, tracefs, ``/sys/bus/event_source/devices``,
``bpftool feature probe``, ``bpftool btf dump`` and BPF programs of our own.
So the tests hold on this kernel (no kprobes, no PMU, borrowed headers) and on
one that has them.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import needs_root, prog_ids

from ebpfkit import program, session
from ebpfkit._bcc import bcc as get_bcc
from ebpfkit._stderr import capture_stderr

# The module behind `ebpfkit check` (renamed from ebpfkit.check, whose name the package's
# check() function shadowed); `from ebpfkit import check` would give that function.
try:
    check_mod = importlib.import_module("ebpfkit.checks")
except ModuleNotFoundError:
    check_mod = importlib.import_module("ebpfkit.check")

REPO = Path(__file__).resolve().parents[1]
# The console script next to the interpreter running the tests (the venv's bin).
EBPFKIT = Path(sys.executable).parent / "ebpfkit"
SYSTEM_PYTHON = Path("/usr/bin/python3")
NOBODY = 65534

# The fields the issue names; any other task_struct row the report shows is checked too.
LAYOUT_FIELDS = ("pid", "tgid", "real_parent", "comm")
# Rows whose failure must not stop the lessons (the rest are required).
OPTIONAL_ROWS = {
    "kprobe",
    "kretprobe",
    "raw tracepoint",
    "ring buffer",
    "perf event (hardware)",
    "fentry (KFUNC_PROBE)",
    "USDT probe",
    "bpftrace",
}

needs_bpftool = pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")

SEED = r"""
int trace_exec(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    bpf_trace_printk("exec called by PID %d\n", pid);
    return 0;
}
"""


# ---------------------------------------------------------------- ground truth


def _config() -> dict[str, str] | None:
    """/proc/config.gz as {option: value} ("n" for "is not set"); None if absent."""
    path = Path("/proc/config.gz")
    if not path.exists():
        return None
    config = {}
    for line in gzip.decompress(path.read_bytes()).decode(errors="replace").splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line) or re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            config[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
    return config


def _tracefs() -> Path | None:
    """A mounted tracefs, from /proc/mounts."""
    mounts = [
        Path(fields[1])
        for fields in (line.split() for line in Path("/proc/mounts").read_text().splitlines())
        if fields[2] == "tracefs"
    ]
    for preferred in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if preferred in mounts:
            return preferred
    return mounts[0] if mounts else None


def _bpftool_features() -> dict:
    out = subprocess.run(
        ["bpftool", "feature", "probe", "kernel", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out)


def _held_by_others(ids: set[int]) -> set[int]:
    """Ids of programs whose fd another process holds: other sessions may be tracing too."""
    held = set()
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo"):
        if fdinfo.parent.name == str(os.getpid()):
            continue
        try:
            for f in fdinfo.iterdir():
                m = re.search(r"^prog_id:\s*(\d+)$", f.read_text(), re.M)
                if m and int(m.group(1)) in ids:
                    held.add(int(m.group(1)))
        except OSError:  # the process ended, or a file vanished while we read
            continue
    return held


def _wait_unloaded(ids: set[int], seconds: float = 2.0) -> set[int]:
    """The ids among ``ids`` still loaded after up to ``seconds`` (freeing can be deferred),
    leaving out programs that another process holds open."""
    deadline = time.monotonic() + seconds
    while True:
        left = ids & prog_ids()
        if left:
            left -= _held_by_others(left)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _names(ids: set[int]) -> dict[int, str]:
    """{id: name} of loaded programs, for messages."""
    out = subprocess.run(
        ["bpftool", "prog", "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {p["id"]: p.get("name", "?") for p in json.loads(out or "[]") if p["id"] in ids}


def _fdinfo(fd: int) -> dict[str, str]:
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _btf_task_struct_offsets(fields) -> dict[str, int]:
    """Byte offsets of task_struct members, parsed from bpftool's raw BTF dump."""
    raw = subprocess.run(
        ["bpftool", "btf", "dump", "file", check_mod.BTF_PATH, "format", "raw"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout

    def members(header: re.Match[str]) -> list[tuple[str, int, int]]:
        out = []
        for line in raw[header.end() :].split("\n")[1:]:
            m = re.match(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
            if not m:
                break
            out.append((m.group(1), int(m.group(2)), int(m.group(3))))
        return out

    def find(type_members, name, base_bits):
        for member, type_id, bits in type_members:
            if member == name:
                return base_bits + bits
            if member == "(anon)":  # look inside anonymous structs and unions
                header = re.search(rf"^\[{type_id}\] (?:STRUCT|UNION) '\(anon\)'.*$", raw, re.M)
                if header:
                    found = find(members(header), name, base_bits + bits)
                    if found is not None:
                        return found
        return None

    header = re.search(r"^\[\d+\] STRUCT 'task_struct' size=\d+ vlen=\d+$", raw, re.M)
    assert header, "bpftool's raw dump has no STRUCT 'task_struct'"
    top = members(header)
    offsets = {}
    for f in fields:
        bits = find(top, f, 0)
        assert bits is not None, f"task_struct.{f} not in bpftool's dump"
        assert bits % 8 == 0, f"task_struct.{f} is a bitfield"
        offsets[f] = bits // 8
    return offsets


def _header_offsets(fields) -> dict[str, int]:
    """Where the headers BCC compiles against put each field, as a program's own reads
    find it: a tracepoint writes each field's address in this process's task_struct,
    less the struct's, into a map when this process calls getppid(). (Not offsetof,
    which clang folds from its AST and which can disagree with the generated code.)"""
    bcc = get_bcc()
    stores = "".join(
        f"    {{ int k = {i}; u64 v = (u64)&t->{f} - (u64)t; offs.update(&k, &v); }}\n"
        for i, f in enumerate(fields)
    )
    text = (
        "#include <linux/sched.h>\n"
        f"BPF_ARRAY(offs, u64, {len(fields)});\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
        "    if ((bpf_get_current_pid_tgid() >> 32) != OUR_PID) return 0;\n"
        "    struct task_struct *t = (struct task_struct *)bpf_get_current_task();\n"
        f"{stores}    return 0;\n}}\n"
    )
    with capture_stderr():
        b = bcc.BPF(text=text, cflags=["-w", f"-DOUR_PID={os.getpid()}"])
    try:
        os.getppid()
        values = [int(b["offs"][ctypes.c_int(i)].value) for i in range(len(fields))]
    finally:
        b.cleanup()
    assert any(values), "the tracepoint never ran"
    return dict(zip(fields, values, strict=True))


def _fentry_trial() -> tuple[bool, str]:
    """Our own fentry program on a function other than the check's; (saw events, errors)."""
    bcc = get_bcc()
    if not bcc.BPF.support_kfunc():
        return False, "BCC: no kfunc support"
    fn = "ksys_read"
    text = (
        "BPF_ARRAY(n, u64, 1);\n"
        f"KFUNC_PROBE({fn}) {{ int k = 0; u64 *v = n.lookup(&k); "
        "if (v) __sync_fetch_and_add(v, 1); return 0; }\n"
    )
    try:
        with capture_stderr() as err:
            b = bcc.BPF(text=text, cflags=["-w"])
    except Exception as e:  # noqa: BLE001 - BCC raises plain Exception
        return False, f"{err.text}\n{e}"
    try:
        with open("/dev/zero", "rb", buffering=0) as f:
            for _ in range(10):
                f.read(1)
        return int(b["n"][ctypes.c_int(0)].value) > 0, ""
    finally:
        b.cleanup()


# ---------------------------------------------------------------- reports


ROW = re.compile(r"^(ok  |warn|FAIL|    )  (\S.*?)  +(.*)$")
STATUS = {"ok  ": "ok", "warn": "warn", "FAIL": "FAIL", "    ": "info"}


def _cli_rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(2).strip()] = (STATUS[m.group(1)], m.group(3))
    return rows


@pytest.fixture(scope="module", autouse=True)
def nothing_left_loaded():
    """After this module's tests, no BPF program loaded during them is still loaded."""
    if os.geteuid() != 0 or shutil.which("bpftool") is None:
        yield
        return
    before = prog_ids()
    yield
    left = _wait_unloaded(prog_ids() - before)
    assert not left, f"BPF programs still loaded after the tests: {_names(left)}"


@pytest.fixture(scope="module")
def cli():
    proc = subprocess.run(
        [str(EBPFKIT), "check"], capture_output=True, text=True, timeout=120, cwd="/"
    )
    return proc


@pytest.fixture(scope="module")
def api_run():
    """run_checks() in this process, and the programs it left loaded (id: name)."""
    if os.geteuid() != 0 or shutil.which("bpftool") is None:
        return check_mod.run_checks(), None
    before = prog_ids()
    report = check_mod.run_checks()
    return report, _names(_wait_unloaded(prog_ids() - before))


@pytest.fixture(scope="module")
def api_report(api_run):
    return api_run[0]


@pytest.fixture(params=["cli", "api"])
def rows(request) -> dict[str, tuple[str, str]]:
    """The check's rows as {name: (status, detail)}, from the command line or in-process."""
    if request.param == "cli":
        return _cli_rows(request.getfixturevalue("cli").stdout)
    report = request.getfixturevalue("api_report")
    return {r.check: (r.status, r.detail) for r in report.rows}


@pytest.fixture(scope="module")
def truth():
    """What the machine can do, read without ebpfkit."""
    if shutil.which("bpftool") is None:
        pytest.skip("bpftool is not installed: no independent view of the kernel's features")
    tf = _tracefs()
    features = _bpftool_features()
    devices = Path("/sys/bus/event_source/devices")
    config = _config()
    return {
        "config": config,
        "tracefs": tf,
        "kprobe_events": tf is not None and (tf / "kprobe_events").exists(),
        "tracepoint": tf is not None
        and (tf / "events/syscalls/sys_enter_getppid/id").exists()
        and features["program_types"]["have_tracepoint_prog_type"],
        "raw tracepoint": features["program_types"]["have_raw_tracepoint_prog_type"],
        "uprobe": (devices / "uprobe").exists()
        or (tf is not None and (tf / "uprobe_events").exists()),
        "perf event (software)": (devices / "software").exists()
        and features["program_types"]["have_perf_event_prog_type"],
        "perf event (hardware)": (devices / "cpu").exists(),
        "ring buffer": features["map_types"]["have_ringbuf_map_type"],
        "fentry": _fentry_trial(),
    }


# ---------------------------------------------------------------- the command line


@needs_root
def test_cli_exit_status_and_verdict(cli):
    """Exit 0 exactly when no required row fails; the last line says which."""
    assert "Traceback" not in cli.stdout + cli.stderr, cli.stderr
    rows = _cli_rows(cli.stdout)
    assert rows, f"no rows in the output:\n{cli.stdout}\n{cli.stderr}"
    required_fails = [n for n, (s, _) in rows.items() if s == "FAIL" and n not in OPTIONAL_ROWS]
    if required_fails:
        assert cli.returncode == 1, cli.stdout
        assert cli.stdout.rstrip().endswith("the lessons cannot run.")
    else:
        assert cli.returncode == 0, cli.stdout
        assert cli.stdout.rstrip().endswith("the lessons can run here.")


@needs_root
@needs_bpftool
def test_cli_succeeds_where_the_basics_work(cli, truth):
    """Root, a mounted tracefs and working tracepoints, uprobes and software perf events:
    the lessons can run, so `ebpfkit check` exits 0 (the seed's own test)."""
    basics = ("tracepoint", "uprobe", "perf event (software)")
    if truth["tracefs"] is None or not all(truth[k] for k in basics):
        pytest.skip(f"this machine lacks a basic: {[k for k in basics if not truth[k]]}")
    if not Path(f"/lib/modules/{platform.release()}/build").exists() and not os.environ.get(
        "BCC_KERNEL_SOURCE"
    ):
        pytest.skip("no kernel headers for BCC here")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.rstrip().endswith("the lessons can run here.")


@needs_root
@needs_bpftool
def test_run_checks_leaves_nothing_loaded(api_run):
    """In a notebook the process lives on: every trial program must be gone afterwards."""
    _, left = api_run
    assert not left, f"run_checks() left these programs loaded (id: name): {left}"


def test_api_agrees_with_cli(cli, api_report):
    assert api_report.lessons_can_run == (cli.returncode == 0)
    cli_rows = _cli_rows(cli.stdout)
    api_rows = {r.check: r.status for r in api_report.rows}
    assert {n: s for n, (s, _) in cli_rows.items()} == api_rows


def test_python_api_check_can_be_called_twice():
    """`ebpfkit.check()` is the in-process face of `ebpfkit check`; it must keep working."""
    code = (
        "import ebpfkit\n"
        "for _ in range(2):\n"
        "    df = ebpfkit.check(probes_too=False)\n"
        "print(list(df['check'])[:2])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "['kernel', 'BTF']" in proc.stdout


# ---------------------------------------------------------------- probe types


def _expect(rows, name: str, ok: bool) -> str:
    assert name in rows, f"no {name!r} row; rows: {list(rows)}"
    status, detail = rows[name]
    assert status == ("ok" if ok else "FAIL"), f"{name}: {status} {detail}"
    assert detail.strip()
    if ok:
        m = re.search(r"(?:saw|received) (\d+) (?:events|records)", detail) or re.search(
            r"attached", detail
        )
        assert m, f"{name}: ok without evidence: {detail}"
        if m.lastindex:
            assert int(m.group(1)) > 0
    else:
        assert "Exception(" not in detail and "Traceback" not in detail, detail
    return detail


@needs_root
@needs_bpftool
@pytest.mark.parametrize(
    "name",
    ["tracepoint", "raw tracepoint", "uprobe", "uretprobe", "perf event (software)", "ring buffer"],
)
def test_probe_type_verdict_matches_the_kernel(rows, truth, name):
    _expect(rows, name, truth["uprobe" if name == "uretprobe" else name])


@needs_root
@pytest.mark.parametrize("name", ["kprobe", "kretprobe"])
def test_kprobe_verdict_matches_config_and_tracefs(rows, truth, name):
    config = truth["config"]
    if config is None:
        pytest.skip("/proc/config.gz is absent: cannot tell whether the kernel has CONFIG_KPROBES")
    kprobes = config.get("CONFIG_KPROBES", "n") == "y"
    if not kprobes:
        # Without CONFIG_KPROBES there can be no kprobe_events file either.
        assert not truth["kprobe_events"]
        detail = _expect(rows, name, False)
        assert "CONFIG_KPROBES" in detail, detail
    elif truth["kprobe_events"]:
        _expect(rows, name, True)
    else:
        pytest.skip(
            "CONFIG_KPROBES=y but tracefs has no kprobe_events: "
            "whether BCC can attach depends on the kprobe PMU; not decided here"
        )


@needs_root
def test_kprobe_verdict_matches_tracefs_file(rows, truth):
    """The verdict also agrees with <tracefs>/kprobe_events, config or not."""
    if truth["tracefs"] is None:
        pytest.skip("tracefs is not mounted: the kprobe_events file cannot be seen")
    status, detail = rows["kprobe"]
    if truth["kprobe_events"]:
        assert status == "ok", detail
    elif truth["config"] is not None and truth["config"].get("CONFIG_KPROBES") != "y":
        assert status == "FAIL", detail


@needs_root
def test_hardware_perf_verdict_matches_the_pmu(rows, truth):
    has_pmu = truth["perf event (hardware)"]
    detail = _expect(rows, "perf event (hardware)", has_pmu)
    if not has_pmu:
        assert "/sys/bus/event_source/devices/cpu" in detail or "PMU" in detail, detail


@needs_root
def test_fentry_verdict_matches_our_own_trial(rows, truth):
    works, errors = truth["fentry"]
    detail = _expect(rows, "fentry (KFUNC_PROBE)", works)
    if not works:
        # The reason carries what the kernel said to our own attempt, in words.
        said = {os.strerror(e) for e in errno.errorcode if os.strerror(e) in errors}
        said |= {w for w in ("not found", "not supported") if w in errors}
        if said:
            assert any(s.lower() in detail.lower() for s in said), (detail, errors)


# ---------------------------------------------------------------- struct layouts


LAYOUT_ROW = re.compile(r"offset in headers (\d+), in the running kernel \(BTF\) (\d+)")


@pytest.fixture(scope="module")
def layout_truth(api_report):
    """{field: (offset in headers, offset in BTF)}, measured here."""
    shown = {
        r.check.split(".", 1)[1] for r in api_report.rows if r.check.startswith("task_struct.")
    }
    fields = tuple(dict.fromkeys((*LAYOUT_FIELDS, *sorted(shown))))
    btf = _btf_task_struct_offsets(fields)
    headers = _header_offsets(fields)
    return {f: (headers[f], btf[f]) for f in fields}


@needs_root
@needs_bpftool
def test_layout_rows_match_btf_and_headers(rows, layout_truth):
    for f, (in_headers, in_btf) in layout_truth.items():
        name = f"task_struct.{f}"
        assert name in rows, f"no {name} row; rows: {list(rows)}"
        status, detail = rows[name]
        m = LAYOUT_ROW.search(detail)
        assert m, detail
        assert int(m.group(2)) == in_btf, f"{name}: BTF says {in_btf}: {detail}"
        assert int(m.group(1)) == in_headers, f"{name}: headers say {in_headers}: {detail}"
        if in_headers != in_btf:
            assert status == "warn", f"{name} mismatch not reported: {status} {detail}"
            assert str(in_headers) in detail and str(in_btf) in detail
        else:
            assert status == "ok", f"{name} reported although equal: {status} {detail}"
    status, detail = rows["struct layouts"]
    differ = [f for f, (h, b) in layout_truth.items() if h != b]
    if differ:
        assert status == "warn", detail
        assert "differ" in detail
    else:
        assert status == "ok", detail


# ---------------------------------------------------------------- the seed's program


@needs_root
@needs_bpftool
def test_seed_kprobe_program_loads_into_the_kernel(monkeypatch):
    """The seed's trace_exec compiles and the kernel's verifier accepts it as a kprobe
    program, through session.load, even where kprobes cannot be attached."""
    seen = []
    real = program.load_or_explain

    def spy(bpf, fn_name, prog_type):
        fn = real(bpf, fn_name, prog_type)
        info = _fdinfo(fn.fd)  # read while session.load still holds the program
        shown = subprocess.run(
            ["bpftool", "prog", "show", "id", info["prog_id"].strip(), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seen.append((fn_name, info, json.loads(shown)))
        return fn

    monkeypatch.setattr(program, "load_or_explain", spy)
    before = prog_ids()
    names = session.load(SEED, kprobe="__x64_sys_execve")
    assert names == ["trace_exec"]
    assert len(seen) == 1
    fn_name, info, shown = seen[0]
    assert fn_name == "trace_exec"
    assert info["prog_type"].strip() == "2"  # BPF_PROG_TYPE_KPROBE
    assert shown["type"] == "kprobe"
    assert shown["name"] == "trace_exec"
    prog_id = int(info["prog_id"])
    assert prog_id not in before
    assert not _wait_unloaded({prog_id}), "load() left trace_exec in the kernel"


# ---------------------------------------------------------------- without root


@needs_root
def test_non_root_check_explains_itself():
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    drop = [
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    env = {**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [*drop, sys.executable, "-c", "import ebpfkit"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )
    if probe.returncode != 0 and "Permission denied" in probe.stderr:
        last = probe.stderr.strip().splitlines()[-1]
        pytest.skip(f"user nobody cannot run {sys.executable} with ebpfkit: {last}")
    assert probe.returncode == 0, probe.stderr
    proc = subprocess.run(
        [*drop, str(EBPFKIT), "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode != 0, out
    assert "root" in out and "CAP_BPF" in out, out
    assert proc.stdout.rstrip().endswith("the lessons cannot run."), out


@needs_root
@pytest.mark.parametrize(
    ("caps", "allowed"),
    [("", False), ("+bpf", False), ("+bpf,+perfmon", True), ("+sys_admin", True)],
)
def test_privileged_as_another_user_with_capabilities(caps, allowed):
    """checks.privileged() (which session.py's test of privileges uses too), in a process
    of user nobody given exactly these capabilities (setpriv, ambient capabilities)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    given = [f"--inh-caps={caps}", f"--ambient-caps={caps}"] if caps else ["--inh-caps=-all"]
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from ebpfkit import checks; "
        "print(checks.privileged(), sorted(checks.capabilities()))"
    )
    proc = subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *given]
        + [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
        timeout=60,
    )
    if proc.returncode != 0 and "Permission denied" in proc.stderr:
        pytest.skip(f"user nobody cannot run {sys.executable}: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    said, have = proc.stdout.split(" ", 1)
    numbers = {
        "bpf": check_mod.CAP_BPF,
        "perfmon": check_mod.CAP_PERFMON,
        "sys_admin": check_mod.CAP_SYS_ADMIN,
    }
    wanted = {numbers[c] for c in caps.replace("+", "").split(",") if c}
    assert have.strip() == str(sorted(wanted)), proc.stdout
    assert said == str(allowed), proc.stdout


# ---------------------------------------------------------------- BCC from any Python


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A venv of the system Python without its site-packages (so no distribution bcc)."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is absent")
    where = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "venv", "--without-pip", str(where)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert "include-system-site-packages = false" in (where / "pyvenv.cfg").read_text()
    return where / "bin" / "python"


def _run_py(python: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd="/",
        timeout=60,
    )


FIND_BCC = (
    "import importlib.util, sys; s = importlib.util.find_spec('bcc');print(s.origin if s else None)"
)
IMPORT_BOTH = "import ebpfkit, bcc; print(bcc.BPF); print(bcc.__file__)"


def test_bcc_from_a_venv_without_system_packages(bare_venv):
    alone = _run_py(bare_venv, FIND_BCC)
    assert alone.returncode == 0, alone.stderr
    # Plain `import bcc` would fail here: the work below is ebpfkit's.
    assert alone.stdout.strip() == "None", alone.stdout
    proc = _run_py(bare_venv, IMPORT_BOTH)
    assert proc.returncode == 0, proc.stderr
    assert "<class 'bcc.BPF'>" in proc.stdout


def _another_python() -> Path | None:
    """A CPython on PATH that is neither the distribution's nor this venv's (pyenv's, say)."""
    ours = {os.path.realpath(p) for p in (SYSTEM_PYTHON, sys.executable, sys._base_executable)}
    for name in ("python3", "python3.13", "python3.12", "python3.11", "python3.10", "python3.9"):
        found = shutil.which(name)
        if found and os.path.realpath(found) not in ours:
            version = subprocess.run(
                [found, "-c", "import sys; print(sys.implementation.name)"],
                capture_output=True,
                text=True,
            )
            if version.stdout.strip() == "cpython":
                return Path(found)
    return None


def test_bcc_from_another_python():
    other = _another_python()
    if other is None:
        pytest.skip("no Python on PATH besides the distribution's and this venv's")
    proc = _run_py(other, IMPORT_BOTH)
    assert proc.returncode == 0, proc.stderr
    assert "<class 'bcc.BPF'>" in proc.stdout


def test_bcc_missing_is_one_clear_message(bare_venv):
    code = "\n".join(
        [
            "import sys",
            "import ebpfkit._bcc as m",
            "from ebpfkit.errors import BccMissing",
            "m._SEARCH = []",
            "sys.modules.pop('bcc', None)",
            "sys.modules['bcc'] = None",
            "try:",
            "    m.bcc()",
            "except BccMissing as e:",
            "    print('BccMissing:', e)",
            "else:",
            "    print('no error')",
        ]
    )
    proc = _run_py(bare_venv, code)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("BccMissing:"), out
    assert len(out.splitlines()) == 1, out
    assert "python3-bpfcc" in out and "python3-bcc" in out, out


# ---------------------------------------------------------------- USDT and bpftrace


def _readelf_has_function_entry(path: str) -> bool:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True).stdout
    return bool(re.search(r"Provider: python\s+Name: function__entry\b", out))


@needs_root
def test_usdt_row_matches_the_pythons_notes_and_the_kernel(rows):
    """ok with the child's calls counted exactly where a Python has the probe (readelf says)
    and the uprobe PMU takes a semaphore's offset; FAIL otherwise."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is needed for an independent view of the notes")
    python = os.path.realpath(sys.executable)
    pmu = Path("/sys/bus/event_source/devices/uprobe/format/ref_ctr_offset").exists()
    expected = _readelf_has_function_entry(python) and pmu
    status, detail = rows["USDT probe"]
    assert status == ("ok" if expected else "FAIL"), detail
    if expected:
        m = re.search(r"saw (\d+) calls \(it made (\d+)\)", detail)
        assert m and m[1] == m[2] == str(check_mod.USDT_CALLS), detail


@needs_root
def test_bpftrace_row_matches_bpftrace_itself(rows):
    status, detail = rows["bpftrace"]
    binary = shutil.which("bpftrace")
    if binary is None:
        assert status == "FAIL" and "not installed" in detail
        return
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    said = subprocess.run(
        [binary, "-e", 'BEGIN { printf("hello from bpftrace\\n"); exit(); }'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    works = said.returncode == 0 and "hello from bpftrace" in said.stdout
    assert status == ("ok" if works else "FAIL"), detail
    assert detail.startswith(version.strip())
