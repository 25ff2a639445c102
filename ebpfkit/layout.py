"""Do the kernel headers BCC compiles against lay structs out like the running kernel?

BCC turns ``task->real_parent`` into a read at the offset clang computes from
the headers. With borrowed headers (another kernel version or configuration)
those offsets can be far off, and the program reads wrong memory without any
error. This module holds the one measurer of the headers' layout
(:func:`header_layout`: a tiny program built from the headers and run once by
the kernel), and compares, for the structs and members a program uses, what it
measures with the running kernel's BTF (:func:`mismatches`).

``exact.py`` (the structs redefined from BTF) and ``checks.py`` (the
``task_struct`` rows of ``ebpfkit check``) measure through it too.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "ABI_STRUCTS",
    "HeaderLayout",
    "Mismatch",
    "header_layout",
    "kernel_structs_used",
    "mismatches",
    "records_layout",
    "test_run",
    "warning_text",
]

# Structs whose layout is an ABI (or BCC's own), never taken from kernel headers.
ABI_STRUCTS = frozenset(
    {
        "pt_regs",
        "bpf_perf_event_data",
        "bpf_raw_tracepoint_args",
        "__sk_buff",
        "xdp_md",
        "bpf_sock",
        "bpf_sock_ops",
        "sk_msg_md",
        "bpf_sysctl",
        "bpf_sockopt",
    }
)


@dataclass(frozen=True)
class Mismatch:
    struct: str
    member: str
    headers: int
    kernel: int

    def __str__(self) -> str:
        return f"{self.struct}.{self.member}: headers {self.headers}, running kernel {self.kernel}"


def kernel_structs_used(source: str) -> dict[str, set[str]]:
    """Kernel structs the program reaches through pointers, with the members it names."""
    defined = set(re.findall(r"\bstruct\s+(\w+)\s*\{", source))
    used = set(re.findall(r"\bstruct\s+(\w+)\s*\*", source)) - defined - ABI_STRUCTS
    used = {s for s in used if not s.startswith(("tracepoint__", "bpf_"))}
    members = set(re.findall(r"->\s*(\w+)", source))
    return {s: members for s in used}


# ------------------------------------------------------------------ the measurer

# One question to the headers: (kind, tag, member), or (kind, tag, None) for the size.
Query = tuple[str, str, "str | None"]


class HeaderLayout(NamedTuple):
    """What :func:`header_layout` measured.

    ``values[(tag, member)]`` is a member's offset in bytes, ``values[(tag, None)]``
    the record's size; ``values`` is None when the program did not compile or could
    not run, and then ``rejected`` holds the indices of the queries clang rejected
    (records or members the headers lack) and ``error`` says what went wrong.
    """

    values: dict[tuple[str, str | None], int] | None
    rejected: frozenset[int] = frozenset()
    error: str = ""


@functools.lru_cache(maxsize=64)
def header_layout(directives: str, query: tuple[Query, ...], bcc=None) -> HeaderLayout:
    """Sizes and member offsets of records, as the code clang generates for the
    headers (``directives``: ``#include`` lines and the macros they need) uses them,
    read back by running that code once. ``bcc`` is BCC's module (found if None).

    Each query sits on its own line, so clang's line numbers say which it rejected.
    """
    # Offsets as the generated code uses them, not as offsetof folds them: BCC
    # builds LLVM IR for the host (x86_64) and emits BPF with BPF's data layout,
    # which aligns integers wider than 64 bits (bitfield storage, __int128) to 16
    # bytes. Then clang's offsetof (from its AST) and the real reads disagree;
    # that is the 16-byte error seen with bpftool's vmlinux.h (its `long: 64;`
    # padding). An address computed from a pointer clang cannot fold goes
    # through the IR, like the program's own reads.
    lines = [
        directives,
        f"BPF_ARRAY(__ebpfkit_layout, u64, {len(query)});",
        "int __ebpfkit_layout_probe(struct __sk_buff *skb) {",
        "    u32 k; u64 v; u64 p = skb->len;  /* any address clang cannot fold */",
    ]
    first = sum(part.count("\n") + 1 for part in lines) + 1  # line number of query 0
    for i, (kind, tag, name) in enumerate(query):
        what = f"({kind} {tag} *)p + 1" if name is None else f"&(({kind} {tag} *)p)->{name}"
        lines.append(f"    k = {i}; v = (u64)({what}) - p; __ebpfkit_layout.update(&k, &v);")
    lines += ["    return 0;", "}"]
    if bcc is None:
        from . import _bcc

        try:
            bcc = _bcc.bcc()
        except Exception as e:  # noqa: BLE001 - no BCC: the headers' layout stays unknown
            return HeaderLayout(None, error=str(e))
    from . import compiler, loader

    try:
        # In the compile process, as every compile: clang on the headers may fail too.
        b = loader.load(bcc, compiler.compiled("\n".join(lines), ["-w"]))
    except compiler.Failed as e:
        at = {int(n) - first for n in re.findall(r"main\.c:(\d+):\d+: error", e.stderr)}
        return HeaderLayout(None, frozenset(at & set(range(len(query)))), str(e))
    except loader.MapRefusedByKernel as e:
        return HeaderLayout(None, error=str(e))
    try:
        fn = b.load_func("__ebpfkit_layout_probe", bcc.BPF.SOCKET_FILTER)
        test_run(fn.fd)
        table = b["__ebpfkit_layout"]
        values = {(tag, name): table[table.Key(i)].value for i, (_, tag, name) in enumerate(query)}
        return HeaderLayout(values)
    except Exception as e:  # noqa: BLE001 - cannot run here: the headers' layout stays unknown
        return HeaderLayout(None, error=str(e))
    finally:
        b.cleanup()


def records_layout(
    directives: str, query: list[Query]
) -> tuple[dict[tuple[str, str | None], int] | None, set[str]]:
    """(values, tags the headers lack): :func:`header_layout`, asked again without
    the records whose queries clang rejected (one such spoils the lot), until it
    compiles or nothing is left."""
    lacking: set[str] = set()
    while query:
        values, rejected, _ = header_layout(directives, tuple(query))
        if values is not None or not rejected:
            return values, lacking
        lacking |= {query[i][1] for i in rejected}
        query = [q for q in query if q[1] not in lacking]
    return None, lacking


def test_run(prog_fd: int) -> int:
    """Run a loaded socket-filter program once on a dummy packet; its return value."""
    libc = ctypes.CDLL(None, use_errno=True)
    packet = (ctypes.c_uint8 * 64)()
    attr = (ctypes.c_uint32 * 20)()
    attr[0] = prog_fd
    attr[2] = ctypes.sizeof(packet)  # data_size_in
    addr = ctypes.addressof(packet)
    attr[4], attr[5] = addr & 0xFFFFFFFF, addr >> 32  # data_in (u64)
    attr[8] = 1  # repeat
    nr_bpf = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
    if libc.syscall(nr_bpf, 10, ctypes.byref(attr), ctypes.sizeof(attr)) < 0:  # BPF_PROG_TEST_RUN
        raise OSError(ctypes.get_errno(), "BPF_PROG_TEST_RUN failed")
    return int(attr[1])  # retval


# Not collected by pytest, whose test files import it.
test_run.__test__ = False


# ------------------------------------------------------------------ the warning


def mismatches(source: str, skip: frozenset[str] | set[str] = frozenset()) -> list[Mismatch]:
    """Members (and sizes) the program uses whose header offset differs from BTF.

    Structs in ``skip`` (those a prelude already redefined from BTF) are not measured.
    """
    from .btf import Btf

    used = {s: names for s, names in kernel_structs_used(source).items() if s not in skip}
    if not used:
        return []
    try:
        btf = Btf.load()
    except OSError:
        return []
    includes = "\n".join(re.findall(r"^\s*#\s*include\s*[<\"].*$", source, re.M))
    kernel: dict[str, tuple[int, list[tuple[str, int]]]] = {}
    for struct, names in sorted(used.items()):
        info = btf.find_struct(struct)
        if info is None:
            continue
        members = []
        for m in sorted(names):
            try:
                members.append((m, btf.member_offset(struct, m)))
            except (KeyError, ValueError):
                continue
        kernel[struct] = (info.size, members)
    query = [
        ("struct", struct, m)
        for struct, (_, members) in kernel.items()
        for m in [None, *(name for name, _ in members)]
    ]
    # A struct the included headers lack (or a member they lack) is left out.
    headers, _lacking = records_layout(includes, query) if query else (None, set())
    found = []
    for struct, (size, members) in kernel.items():
        if headers is None or (struct, None) not in headers:
            continue
        for m, kernel_offset in members:
            if headers[(struct, m)] != kernel_offset:
                found.append(Mismatch(struct, m, headers[(struct, m)], kernel_offset))
        if headers[(struct, None)] != size and not any(f.struct == struct for f in found):
            found.append(Mismatch(struct, "(size)", headers[(struct, None)], size))
    return found


def warning_text(found: list[Mismatch]) -> str:
    structs = sorted({f.struct for f in found})
    details = "; ".join(str(f) for f in found[:6])
    return (
        f"this program reads kernel struct fields ({', '.join('struct ' + s for s in structs)}) "
        "through kernel headers whose layout differs from the running kernel "
        f"(byte offsets: {details}). Those reads return wrong values, silently. "
        "Read the same facts from exact sources: helpers (bpf_get_current_pid_tgid, "
        "bpf_get_current_comm, bpf_get_current_uid_gid), tracepoint args, or probe arguments "
        "(PT_REGS_PARM1)."
    )
