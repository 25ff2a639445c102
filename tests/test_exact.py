"""Kernel struct reads at the running kernel's offsets (ebpfkit.exact), against ground truth.

A child process we start calls getppid(); a tracepoint program reads its
task_struct and what hangs off it, and we compare every value with what the
process itself, /proc and stat() say. The same program compiled without the
prelude (BCC with the machine's kernel headers) is compared too: where those
headers were borrowed from another kernel, it must read wrong values.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading

import pytest
from helpers import needs_root

from ebpfkit.exact import (
    Prelude,
    build_prelude,
    hoisted_directives,
)

HAS_BTF = os.path.exists("/sys/kernel/btf/vmlinux")
X86_64 = platform.machine() == "x86_64"
NOFILE = 777  # a soft RLIMIT_NOFILE no process has by chance

needs_btf = pytest.mark.skipif(
    not HAS_BTF, reason="the kernel has no BTF (/sys/kernel/btf/vmlinux)"
)


def needs_kernel(test):
    """Root, to load programs, and the kernel's BTF."""
    return needs_root(needs_btf(test))


def _bcc():
    from ebpfkit import _bcc

    try:
        return _bcc.bcc()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"BCC is not available: {e}")


# Every read goes through BCC's own rewriting of `->` chains, the way a learner
# writes it; members inside anonymous structs (mm_struct), an anonymous union
# (inode.i_nlink / __i_nlink, qstr.len / hash_len), embedded structs (se, pwd,
# d_name, thread) and an array of structs (signal->rlim[]) are all among them.
PROGRAM = r"""
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/mm_types.h>
#include <linux/fs_struct.h>
#include <linux/fs.h>
#include <linux/dcache.h>

struct data_t {
    u32 pid, tgid, ppid, gppid, parent_pid, name_len, nlink, nlink2;
    u64 start_code, end_code, start_stack, arg_start, arg_end, env_start, env_end;
    u64 vruntime, ino, hash_len, nofile, fsbase, exe_ino, mmap_base, mmap_base_raw;
    char comm[16];
    char name[32];
};
BPF_HASH(out, u32, struct data_t);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct data_t d = {};
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    d.pid = t->pid;
    d.tgid = t->tgid;
    d.ppid = t->real_parent->tgid;
    d.gppid = t->real_parent->real_parent->tgid;
    d.parent_pid = t->real_parent->pid;
    bpf_probe_read_kernel_str(&d.comm, sizeof(d.comm), t->comm);
    struct mm_struct *mm = t->mm;
    d.start_code = mm->start_code;
    d.end_code = mm->end_code;
    d.start_stack = mm->start_stack;
    d.arg_start = mm->arg_start;
    d.arg_end = mm->arg_end;
    d.env_start = t->mm->env_start;
    d.env_end = t->mm->env_end;
    d.exe_ino = mm->exe_file->f_inode->i_ino;
    // No /proc file shows mmap_base: the truth is a plain read at its BTF offset.
    d.mmap_base = mm->mmap_base;
    bpf_probe_read_kernel(&d.mmap_base_raw, 8, (void *)((u64)mm + MMAP_BASE_OFFSET));
    d.vruntime = t->se.vruntime;
    d.ino = t->fs->pwd.dentry->d_inode->i_ino;
    d.nlink = t->fs->pwd.dentry->d_inode->i_nlink;
    d.nlink2 = t->fs->pwd.dentry->d_inode->__i_nlink;
    d.name_len = t->fs->pwd.dentry->d_name.len;
    d.hash_len = t->fs->pwd.dentry->d_name.hash_len;
    bpf_probe_read_kernel_str(&d.name, sizeof(d.name), t->fs->pwd.dentry->d_name.name);
    // BCC does not rewrite a member of an array element (p->arr[i].x): copy the element.
    struct rlimit lim = {};
    bpf_probe_read_kernel(&lim, sizeof(lim), &t->signal->rlim[RLIMIT_NOFILE]);
    d.nofile = lim.rlim_cur;
    FSBASE
    u32 key = bpf_get_current_pid_tgid() >> 32;
    out.update(&key, &d);
    return 0;
}
"""
PROGRAM = PROGRAM.replace("FSBASE", "d.fsbase = t->thread.fsbase;" if X86_64 else "")

# The child: sets facts the program reads (comm, rlimit, cwd, one CPU so the
# scheduler's vruntime stays on one runqueue), calls getppid(), reports, waits.
CHILD = r"""
import ctypes, json, os, resource, sys
libc = ctypes.CDLL(None, use_errno=True)
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
libc.prctl(15, b"ebpfkit-exact", 0, 0, 0)  # PR_SET_NAME
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_NOFILE, hard))
fsbase = ctypes.c_ulong(0)
if sys.argv[2] == "x86_64":
    libc.syscall(158, 0x1003, ctypes.byref(fsbase))  # arch_prctl(ARCH_GET_FS)
os.chdir(sys.argv[1])
os.getppid()
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "fsbase": fsbase.value}), flush=True)
sys.stdin.readline()
""".replace("SOFT_NOFILE", str(NOFILE))


def _stat_fields(pid: int) -> dict[int, int]:
    """/proc/<pid>/stat as {field number (man 5 proc): value}, numeric fields only."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return {n: int(v) for n, v in enumerate(rest, start=3) if v.lstrip("-").isdigit()}


def _vruntime_ns(pid: int) -> int:
    with open(f"/proc/{pid}/sched") as f:
        for line in f:
            if line.startswith("se.vruntime"):
                ms, _, frac = line.split(":")[1].strip().partition(".")
                return int(ms) * 1_000_000 + int(frac.ljust(6, "0")[:6])
    raise AssertionError("no se.vruntime in /proc/<pid>/sched")


def _run_child(cwd: str, *programs):
    """Start the child, wait until it has called getppid(), read each program's
    record for it and the ground truth, then let it go."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, cwd, platform.machine()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        said = json.loads(child.stdout.readline())
        pid = said["pid"]
        stat, grand = _stat_fields(pid), _stat_fields(said["ppid"])
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        st = os.stat(cwd)
        truth = {
            "pid": pid,
            "tgid": pid,
            "ppid": said["ppid"],
            "gppid": grand[4],
            "parent_pid": threading.get_native_id(),  # the thread that started the child
            "comm": comm,
            "start_code": stat[26],
            "end_code": stat[27],
            "start_stack": stat[28],
            "arg_start": stat[48],
            "arg_end": stat[49],
            "env_start": stat[50],
            "env_end": stat[51],
            "vruntime": _vruntime_ns(pid) if os.path.exists(f"/proc/{pid}/sched") else None,
            "ino": st.st_ino,
            "exe_ino": os.stat(f"/proc/{pid}/exe").st_ino,
            "nlink": st.st_nlink,
            "nlink2": st.st_nlink,
            "name": os.path.basename(cwd),
            "name_len": len(os.path.basename(cwd)),
            "nofile": NOFILE,
            "fsbase": said["fsbase"] if X86_64 else None,
        }
        reads = []
        for b in programs:
            table = b["out"]
            rec = next((v for k, v in table.items() if k.value == pid), None)
            assert rec is not None, "the program saw no getppid() from the child"
            read = {name: getattr(rec, name) for name, _ in rec._fields_}
            for name in ("comm", "name"):
                read[name] = read[name].decode(errors="replace")
            reads.append(read)
        return truth, reads
    finally:
        child.stdin.close()
        child.wait(timeout=10)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The program compiled with and without the prelude, both run on one child."""
    from ebpfkit.btf import Btf

    bcc = _bcc()
    program = PROGRAM.replace(
        "MMAP_BASE_OFFSET", str(Btf.load().member_offset("mm_struct", "mmap_base"))
    )
    cwd = tmp_path_factory.mktemp("ebpfkit-exact")
    for sub in ("a", "b", "c"):
        (cwd / sub).mkdir()  # a directory's link count: 2 + its subdirectories
    prelude = build_prelude(program)
    exact = bcc.BPF(text=prelude.text + program, cflags=["-w"])
    plain = bcc.BPF(text=program, cflags=["-w"])
    try:
        truth, (with_prelude, without) = _run_child(str(cwd), exact, plain)
    finally:
        exact.cleanup()
        plain.cleanup()
    return {
        "prelude": prelude,
        "notes": list(prelude.notes),
        "truth": truth,
        "exact": with_prelude,
        "plain": without,
    }


EXACT_FIELDS = [
    "pid", "tgid", "ppid", "gppid", "parent_pid", "comm",
    "start_code", "end_code", "start_stack", "arg_start", "arg_end", "env_start", "env_end",
    "ino", "exe_ino", "nlink", "nlink2", "name", "name_len", "nofile", "fsbase",
]  # fmt: skip


@needs_kernel
@pytest.mark.parametrize("name", EXACT_FIELDS)
def test_reads_equal_ground_truth(measured, name):
    truth = measured["truth"][name]
    if truth is None:
        pytest.skip(f"no ground truth for {name} on {platform.machine()}")
    assert measured["exact"][name] == truth, (
        f"{name}: read {measured['exact'][name]!r}, the kernel says {truth!r}\n"
        + "\n".join(measured["notes"])
    )


@needs_kernel
def test_mmap_base_read_where_btf_puts_it(measured):
    # KERNEL.md saw BCC's rewriter read mmap_base 16 bytes off with a bpftool
    # vmlinux.h (nested anonymous structs); the flat definition must not.
    read = measured["exact"]
    assert read["mmap_base"] == read["mmap_base_raw"]
    assert 0 < read["mmap_base"] < 1 << 57 and read["mmap_base"] % 4096 == 0


@needs_kernel
def test_hash_len_overlaps_len(measured):
    # qstr's anonymous union: hash_len holds len in its high half (little-endian).
    if sys.byteorder != "little":
        pytest.skip("hash_len packs len in the high half only on little-endian")
    assert measured["exact"]["hash_len"] >> 32 == measured["truth"]["name_len"]


@needs_kernel
def test_vruntime_inside_embedded_struct(measured):
    # /proc/<pid>/sched shows se.vruntime when the child went to sleep, a little
    # after our read: equal, or ahead by the little CPU time it used in between.
    truth = measured["truth"]["vruntime"]
    if truth is None:
        pytest.skip("no /proc/<pid>/sched on this kernel (CONFIG_SCHED_DEBUG off)")
    read = measured["exact"]["vruntime"]
    assert 0 <= truth - read < 500_000_000, f"se.vruntime read {read}, /proc says {truth}"


@needs_kernel
def test_without_prelude_reads_are_wrong(measured):
    if not measured["prelude"]:
        pytest.skip("the headers agree with the running kernel here: nothing to correct")
    truth, plain = measured["truth"], measured["plain"]
    wrong = [n for n in ("pid", "tgid", "ppid", "start_code", "ino") if plain[n] != truth[n]]
    assert wrong, f"the headers' layout read the right values too: {plain}"


@needs_kernel
def test_notes_name_what_was_corrected(measured):
    prelude = measured["prelude"]
    if not prelude:
        pytest.skip("the headers agree with the running kernel here: nothing to correct")
    task = next(n for n in measured["notes"] if n.startswith("struct task_struct:"))
    for member in ("pid", "tgid", "real_parent", "comm"):
        assert member in task
    assert prelude.corrected >= {"task_struct", "mm_struct", "inode"}


@needs_kernel
def test_prelude_carries_what_it_replaced(measured):
    """Each replaced record, with its BTF size and members, and why: the same as the
    text's own static asserts and notes say, without reading the text back."""
    import re

    from ebpfkit.btf import Btf

    prelude = measured["prelude"]
    if not prelude:
        pytest.skip("the headers agree with the running kernel here: nothing to correct")
    btf = Btf.load()
    sizes = re.findall(r"sizeof\((struct|union) (\w+)\) == (\d+)", prelude.text)
    members = re.findall(r"offsetof\((struct|union) (\w+), (\w+)\) == (\d+)", prelude.text)
    assert sorted((r.kind, r.tag, r.size) for r in prelude.replaced) == sorted(
        (kind, tag, int(size)) for kind, tag, size in sizes
    )
    assert sorted((r.tag, m, off) for r in prelude.replaced for m, off in r.members) == sorted(
        (tag, name, int(offset)) for _, tag, name, offset in members
    )
    task = next(r for r in prelude.replaced if r.tag == "task_struct")
    assert task.size == btf.find_struct("task_struct").size
    assert dict(task.members)["pid"] == btf.member_offset("task_struct", "pid")
    # Why it was replaced: the headers' offsets that differ, as the note shows them.
    note = next(n for n in prelude.notes if n.startswith("struct task_struct:"))
    if task.headers:
        member, in_headers, in_kernel = task.headers[0]
        assert f"{member} {in_headers} -> {in_kernel}" in note
    assert len(prelude.notes) >= len(prelude.replaced)


@needs_kernel
def test_generated_code_uses_btf_offsets(measured):
    """Every member of the generated definitions, at the address the compiled
    code computes (not offsetof, which clang folds from its AST and which can
    disagree with BCC's code), sits where BTF says."""
    import re

    from ebpfkit import layout
    from ebpfkit.btf import Btf

    prelude = measured["prelude"].text
    if not prelude:
        pytest.skip("the headers agree with the running kernel here: nothing generated")
    btf = Btf.load()
    sizes = re.findall(r"sizeof\((struct|union) (\w+)\) == (\d+)", prelude)
    members = re.findall(r"offsetof\((struct|union) (\w+), (\w+)\) == (\d+)", prelude)
    assert {tag for _, tag, _ in sizes} >= {"task_struct", "mm_struct", "inode"}
    query = [(kind, tag, None) for kind, tag, _ in sizes]
    query += [(kind, tag, name) for kind, tag, name, _ in members]
    values, rejected, error = layout.header_layout(prelude, tuple(query))
    assert values is not None, f"the prelude alone does not compile (queries {rejected}): {error}"
    for kind, tag, size in sizes:
        info = btf.find_struct(tag, kind=kind)
        assert values[(tag, None)] == info.size == int(size), tag
    for _kind, tag, name, offset in members:
        assert values[(tag, name)] == btf.member_offset(tag, name) == int(offset), (tag, name)


# Members the borrowed headers may not have at all (6.14 replaced dentry's
# d_iname with the union d_shortname, and put d_name in a union with __d_name):
# defined from BTF, read right.
SHORTNAME = r"""
#include <linux/sched.h>
#include <linux/fs_struct.h>
#include <linux/dcache.h>
struct data_t { char name[40]; u32 len, len2; };
BPF_HASH(out, u32, struct data_t);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    struct data_t d = {};
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    struct dentry *cwd = t->fs->pwd.dentry;
    bpf_probe_read_kernel_str(&d.name, sizeof(d.name), cwd->d_shortname.string);
    d.len = cwd->d_name.len;
    d.len2 = cwd->__d_name.len;  // overlaps d_name: an anonymous union of two structs
    u32 key = bpf_get_current_pid_tgid() >> 32;
    out.update(&key, &d);
    return 0;
}
"""


@needs_kernel
def test_union_member_the_headers_lack(tmp_path):
    from ebpfkit.btf import Btf

    btf = Btf.load()
    if btf.find_struct("shortname_store", kind="union") is None:
        pytest.skip("this kernel has no union shortname_store (before 6.14)")
    bcc = _bcc()
    prelude = build_prelude(SHORTNAME)
    assert "union shortname_store {" in prelude.text, prelude.notes
    assert "shortname_store" in prelude.corrected
    b = bcc.BPF(text=prelude.text + SHORTNAME, cflags=["-w"])
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), platform.machine()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        pid = json.loads(child.stdout.readline())["pid"]
        child.stdin.close()
        child.wait(timeout=10)
        rec = next(v for k, v in b["out"].items() if k.value == pid)
        assert rec.name.decode() == tmp_path.name
        assert rec.len == rec.len2 == len(tmp_path.name)
    finally:
        b.cleanup()


@needs_kernel
def test_bitfield_keeps_the_headers_layout_with_a_note():
    src = """
#include <linux/sched.h>
int f(struct pt_regs *ctx) {
    struct task_struct *t = (struct task_struct *)bpf_get_current_task();
    return t->in_execve + t->pid;
}
"""
    _bcc()
    from ebpfkit.btf import Btf

    info = Btf.load().find_struct("task_struct")
    if not any(m.name == "in_execve" and m.bitfield_size for m in info.members):
        pytest.skip("task_struct.in_execve is not a bitfield in this kernel")
    prelude = build_prelude(src)
    assert "struct task_struct {" not in prelude.text
    assert "task_struct" not in prelude.corrected
    assert any("in_execve" in n and "bitfield" in n for n in prelude.notes), prelude.notes


@needs_kernel
@pytest.mark.parametrize(
    "includes",
    [
        ["linux/sched.h"],
        ["linux/fs.h", "linux/sched.h"],
        ["linux/mm_types.h", "linux/sched.h", "linux/fs.h", "linux/fs_struct.h"],
        ["linux/skbuff.h", "linux/sched.h"],
        ["net/sock.h", "linux/sched.h"],
    ],
)
def test_common_headers_still_compile(includes):
    """The rename touches every token `task_struct` (and the rest) in the headers:
    whatever compiled without the prelude must still compile with it."""
    bcc = _bcc()
    from ebpfkit._stderr import capture_stderr

    src = "".join(f"#include <{h}>\n" for h in includes) + (
        "int f(struct pt_regs *ctx) {\n"
        "    struct task_struct *t = (struct task_struct *)bpf_get_current_task();\n"
        "    return t->real_parent->tgid;\n}\n"
    )
    try:
        with capture_stderr():
            bcc.BPF(text=src, cflags=["-w"]).cleanup()
    except Exception:  # noqa: BLE001
        pytest.skip(f"does not compile even without the prelude here: {includes}")
    prelude = build_prelude(src)
    if not prelude:
        pytest.skip("the headers agree with the running kernel here")
    with capture_stderr() as err:
        try:
            bcc.BPF(text=prelude.text + src, cflags=["-w"]).cleanup()
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{e}\n{err.text[-3000:]}\n{prelude.text}")


@needs_kernel
def test_headers_that_agree_get_no_prelude():
    # struct rlimit is two longs in every kernel: measured, found equal, left alone.
    _bcc()
    src = """
#include <linux/resource.h>
int f(struct pt_regs *ctx) {
    struct rlimit *r = (struct rlimit *)PT_REGS_PARM1(ctx);
    return r->rlim_cur + r->rlim_max;
}
"""
    assert build_prelude(src) == Prelude()


@needs_kernel
def test_no_kernel_struct_no_prelude():
    src = """
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u64 id = bpf_get_current_pid_tgid();
    bpf_trace_printk("pid %d->%d\\n", args->__syscall_nr, id >> 32);
    return 0;
}
"""
    assert build_prelude(src) == Prelude()


def test_hoisted_directives_keep_defines_before_includes():
    src = (
        '#define KBUILD_MODNAME "x"\n'
        "#include <linux/sched.h>\n"
        "#define LONG(a) \\\n  ((a) + 1)\n"
        "#include <linux/fs.h>\n"
        "#define AFTER 1\n"
        "int x;\n"
    )
    assert hoisted_directives(src) == (
        '#define KBUILD_MODNAME "x"\n'
        "#include <linux/sched.h>\n"
        "#define LONG(a) \\\n  ((a) + 1)\n"
        "#include <linux/fs.h>"
    )


def test_source_takes_the_prelude_and_gives_it_back():
    """program.Source puts the prelude's text in front and counts its lines (so compile
    errors still name the cell's own lines); Prelude() takes it away again."""
    from ebpfkit.program import prepare

    src = prepare("int x;\n")
    plain, lines = src.final, src.prelude_lines
    prelude = Prelude("/* one */\n/* two */\n", ("a note",))
    assert prelude and prelude.lines == 2 and prelude.corrected == frozenset()
    src.use_layout(prelude)
    assert src.final == prelude.text + plain
    assert src.prelude_lines == lines + 2
    assert src.layout is prelude
    src.use_layout(Prelude())
    assert (src.final, src.prelude_lines) == (plain, lines)
    assert not Prelude(notes=("kept",))  # notes alone put no text in front


@needs_root
def test_compile_without_the_prelude_when_it_breaks_the_cell():
    """A header's macro can name a member the redefinition lacks (dcache.h's
    ``d_lock`` is ``d_lockref.lock``): then the cell is compiled as bcc would, without
    the prelude; any other compile error is the cell's own and is raised."""
    from ebpfkit.errors import CompileError
    from ebpfkit.exact import Replaced
    from ebpfkit.program import compile_source, prepare

    bcc = _bcc()
    # A redefinition that lacks the member the cell reads, as one reached through a
    # header's macro does.
    text = (
        "#define rlimit __ebpfkit_hdr_rlimit\n#include <linux/resource.h>\n#undef rlimit\n"
        "struct rlimit { char __ebpfkit_pad1[16]; } __attribute__((packed));\n"
    )
    breaking = Prelude(text, ("a note",), (Replaced("struct", "rlimit", 16, (), ()),))
    cell = (
        "#include <linux/resource.h>\n"
        "int f(void *ctx) { struct rlimit r = {}; return r.rlim_cur; }\n"
    )

    src = prepare(cell)
    plain = src.final
    src.use_layout(breaking)
    compile_source(bcc, src).cleanup()
    assert src.layout == Prelude() and src.final == plain

    harmless = Prelude("/* ebpfkit */\n", (), breaking.replaced)
    src = prepare("int f(void *ctx) { return ebpfkit_undefined; }\n")
    src.use_layout(harmless)
    with pytest.raises(CompileError, match="ebpfkit_undefined"):
        compile_source(bcc, src)
    assert src.layout is harmless

    # A prelude that corrected nothing is never the one to blame.
    src = prepare(cell)
    src.use_layout(Prelude(text))
    with pytest.raises(CompileError, match="no member named 'rlim_cur'"):
        compile_source(bcc, src)
