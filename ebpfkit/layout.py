"""Do the kernel headers BCC compiles against lay structs out like the running kernel?

BCC turns ``task->real_parent`` into a read at the offset clang computes from
the headers. With borrowed headers (another kernel version or configuration)
those offsets can be far off, and the program reads wrong memory without any
error. We compare, for the structs and members a program uses, the headers'
offsets (compiled into a tiny program and run once by the kernel) with the
running kernel's BTF.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ._stderr import capture_stderr

# Structs whose layout is an ABI (or BCC's own), never taken from kernel headers.
_ABI_STRUCTS = {
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
    used = set(re.findall(r"\bstruct\s+(\w+)\s*\*", source)) - defined - _ABI_STRUCTS
    used = {s for s in used if not s.startswith(("tracepoint__", "bpf_"))}
    members = set(re.findall(r"->\s*(\w+)", source))
    return {s: members for s in used}


@functools.lru_cache(maxsize=256)
def _header_offsets(includes: str, struct: str, members: tuple[str, ...]) -> dict[str, int]:
    from . import _bcc
    from .checks import test_run

    bcc = _bcc.bcc()
    funcs = [f"int size_of(struct __sk_buff *s) {{ return sizeof(struct {struct}); }}"]
    funcs += [
        f"int off_{m}(struct __sk_buff *s) {{ return offsetof(struct {struct}, {m}); }}"
        for m in members
    ]
    text = includes + "\n" + "\n".join(funcs)
    with capture_stderr():
        b = bcc.BPF(text=text, cflags=["-w"])
    try:
        out = {}
        for name in ["size_of", *(f"off_{m}" for m in members)]:
            fn = b.load_func(name, bcc.BPF.SOCKET_FILTER)
            out[name] = test_run(fn.fd)
        return out
    finally:
        b.cleanup()


def mismatches(source: str) -> list[Mismatch]:
    """Members (and sizes) the program uses whose header offset differs from BTF."""
    from .btf import Btf

    used = kernel_structs_used(source)
    if not used:
        return []
    try:
        btf = Btf.load()
    except OSError:
        return []
    includes = "\n".join(re.findall(r"^\s*#\s*include\s*[<\"].*$", source, re.M))
    found = []
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
        try:
            headers = _header_offsets(includes, struct, tuple(m for m, _ in members))
        except Exception:  # noqa: BLE001 - the struct may not be in the included headers
            continue
        for m, kernel_offset in members:
            if headers[f"off_{m}"] != kernel_offset:
                found.append(Mismatch(struct, m, headers[f"off_{m}"], kernel_offset))
        if headers["size_of"] != info.size and not any(f.struct == struct for f in found):
            found.append(Mismatch(struct, "(size)", headers["size_of"], info.size))
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
