"""USDT probes: a binary's static probes, read from its ELF notes, and attached as uprobes.

A program built with ``<sys/sdt.h>`` (``DTRACE_PROBE``, ``STAP_PROBE``) carries one
``.note.stapsdt`` note per probe site: the provider and probe name, the address of
the site (a ``nop`` the probe turns into a breakpoint), the address of its
semaphore (a counter the program checks before computing the probe's arguments;
0 when the probe has none) and where each argument lives at that instruction
(``8@%rbp``: 8 bytes in register rbp; ``-4@112(%rsp)``: a signed int on the stack).

Everything here is read from the file in pure Python, before anything is loaded:
listing (``ebpfkit usdt BINARY``, like bcc's ``tplist -l``), the name check with
"did you mean" from the binary's own probes, the C readers that
``bpf_usdt_readarg(n, ctx, &x)`` calls (BCC's frontend rewrites the call into
``_bpf_readarg_FN_n(ctx, &x, sizeof(x))``; we generate those functions, as bcc's
``USDT.get_text()`` does), and the attach: one uprobe per site, opened through
perf's uprobe PMU with the semaphore's file offset (``ref_ctr_offset``), so that the
kernel itself raises the semaphore in each traced process while the probe is
attached, and lowers it when the probe's descriptor closes, however the notebook
ends. (BCC 0.26 can only raise a semaphore by writing into one process's memory,
and refuses a probe with a semaphore when no process is named.)
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import mmap
import os
import platform
import re
import struct
from dataclasses import dataclass

from . import probes
from .errors import AttachError, BadArguments, ProbeNotFound

__all__ = ["Probe", "check", "find", "listing", "read_probes", "reader_c", "split_target"]

_NOTE_SECTION = b".note.stapsdt"
_BASE_SECTION = b".stapsdt.base"
_NT_STAPSDT = 3
_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_ET_EXEC = 2


@dataclass(frozen=True)
class Argument:
    """One argument as the note writes it: ``-4@%eax``, ``8@16(%rsp)``, ``4@$5``."""

    text: str  # the operand after the @
    size: int  # bytes
    signed: bool

    def __str__(self) -> str:
        return f"{-self.size if self.signed else self.size}@{self.text}"


@dataclass(frozen=True)
class Probe:
    """One probe site of a binary; addresses as the note gives them, offsets in the file."""

    path: str
    provider: str
    name: str
    address: int  # the site's virtual address in the ELF file
    offset: int  # ... and its offset in the file, where a uprobe is placed
    semaphore: int  # the semaphore's virtual address, 0 if none
    semaphore_offset: int  # ... and its file offset (the kernel's ref_ctr_offset)
    arguments: tuple[Argument, ...]

    @property
    def full_name(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def args_text(self) -> str:
        return " ".join(str(a) for a in self.arguments)


# ---------------------------------------------------------------- reading the notes


def read_probes(path: str) -> list[Probe]:
    """Every probe site of the ELF file ``path``, in the order of its notes."""
    stat = os.stat(path)
    return list(_read_probes(os.path.abspath(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_probes(path: str, _mtime_ns: int, _size: int) -> tuple[Probe, ...]:
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise BadArguments(f"{path} is empty, not an ELF file") from None
    with data:
        sections = probes._section_headers(data, path)
        named = _sections_by_name(data, sections)
        notes = named.get(_NOTE_SECTION)
        if notes is None:
            return ()
        base = named.get(_BASE_SECTION)
        loads = _load_segments(data)
        raw = data[notes[4] : notes[4] + notes[5]]
    out = []
    for pc, note_base, sema, provider, name, args in _notes(raw):
        # A prelinked file moved its sections: the note's base says by how much.
        shift = base[3] - note_base if base is not None and note_base else 0
        pc, sema = pc + shift, sema + shift if sema else 0
        out.append(
            Probe(
                path=path,
                provider=provider,
                name=name,
                address=pc,
                offset=_file_offset(loads, pc, path),
                semaphore=sema,
                semaphore_offset=_file_offset(loads, sema, path) if sema else 0,
                arguments=tuple(parse_argument(a) for a in _OPERANDS.findall(args)),
            )
        )
    return tuple(out)


def _sections_by_name(data: mmap.mmap, sections: list[tuple[int, ...]]) -> dict[bytes, tuple]:
    if not sections:
        return {}
    shstrndx = probes._EHDR.unpack_from(data)[13]
    strings = sections[shstrndx]
    table = data[strings[4] : strings[4] + strings[5]]
    out = {}
    for s in sections:
        end = table.find(b"\0", s[0])
        out.setdefault(table[s[0] : end], s)
    return out


def _load_segments(data: mmap.mmap) -> list[tuple[int, int, int]]:
    """(virtual address, file offset, size in the file) of each PT_LOAD segment."""
    header = probes._EHDR.unpack_from(data)
    phoff, phentsize, phnum = header[5], header[9], header[10]
    out = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = _PHDR.unpack_from(
            data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            out.append((vaddr, offset, filesz))
    return out


def _file_offset(loads: list[tuple[int, int, int]], address: int, path: str) -> int:
    for vaddr, offset, size in loads:
        if vaddr <= address < vaddr + size:
            return address - vaddr + offset
    raise BadArguments(f"{path}: USDT address {address:#x} is in no loaded segment of the file")


def _notes(raw: bytes):
    """(pc, base, semaphore, provider, name, arguments) of each stapsdt note."""
    at = 0
    while at + 12 <= len(raw):
        namesz, descsz, ntype = struct.unpack_from("<III", raw, at)
        at += 12
        owner = raw[at : at + namesz].rstrip(b"\0")
        at += (namesz + 3) & ~3
        desc = raw[at : at + descsz]
        at += (descsz + 3) & ~3
        if owner != b"stapsdt" or ntype != _NT_STAPSDT or len(desc) < 24:
            continue
        pc, base, sema = struct.unpack_from("<QQQ", desc)
        provider, name, args = (desc[24:].split(b"\0") + [b"", b""])[:3]
        yield pc, base, sema, provider.decode(), name.decode(), args.decode()


_ARG = re.compile(r"^(-?)(\d+)@(.+)$")
# The arguments are separated by spaces, but arm64's memory operands hold one: -4@[sp, 12].
_OPERANDS = re.compile(r"(?:[^\s\[]|\[[^\]]*\])+")


def parse_argument(text: str) -> Argument:
    """``-4@%eax`` as an Argument; a bare operand (old notes) is 8 bytes, unsigned."""
    m = _ARG.match(text)
    if m is None:
        return Argument(text, 8, False)
    return Argument(m[3], int(m[2]), m[1] == "-")


# ---------------------------------------------------------------- names and checks


def split_target(target: str) -> tuple[str, str | None, str] | None:
    """``BINARY:[PROVIDER:]PROBE`` as (binary, provider or None, probe); None if malformed."""
    parts = target.split(":")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    return None


def find(target: str) -> list[Probe]:
    """The sites of the probe ``target`` names; ProbeNotFound with close names otherwise."""
    parts = split_target(target)
    if parts is None:
        raise BadArguments(
            f"--usdt {target!r}: give BINARY:[PROVIDER:]PROBE, e.g. python3:function__entry"
        )
    binary, provider, name = parts
    path = probes.resolve_binary(binary)
    found = read_probes(path)
    if not found:
        raise probes._not_found(
            f"{path} has no USDT probes (no .note.stapsdt notes: it was built without "
            "<sys/sdt.h> probes, e.g. without --with-dtrace)",
            [],
        )
    sites = [p for p in found if p.name == name and provider in (None, p.provider)]
    if sites:
        providers = {p.provider for p in sites}
        if len(providers) > 1:
            choices = ", ".join(f"{binary}:{p}:{name}" for p in sorted(providers))
            raise BadArguments(
                f"{path} has probe {name} from several providers: say which, {choices}"
            )
        return sites
    names = list(dict.fromkeys(p.full_name for p in found))
    wanted = f"{provider}:{name}" if provider else name
    close = probes.suggest(wanted, names if provider else [n.split(":", 1)[1] for n in names])
    full = [n for n in names if n in close or n.split(":", 1)[1] in close]
    raise probes._not_found(
        f"No USDT probe {wanted} in {path} (`ebpfkit usdt {binary}` lists its {len(names)} probes)",
        [f"{binary}:{n}" for n in full],
    )


def check(target: str) -> str:
    """The binary's path if the probe exists (see ``find``)."""
    return find(target)[0].path


def probe_names(path: str) -> list[str]:
    """``provider:name`` of each probe of ``path``, once each, in the notes' order."""
    return list(dict.fromkeys(p.full_name for p in read_probes(path)))


def listing(binary: str, pattern: str | None = None) -> str:
    """The probes of ``binary`` with their arguments, one line each, like ``tplist -l``::

    python:function__entry  3 args: 8@%rbp 8@%r12 -4@%eax
    """
    path = probes.resolve_binary(binary)
    found = read_probes(path)
    if pattern:
        found = [p for p in found if pattern in (p.name, p.full_name) or pattern in p.full_name]
    by_name: dict[str, list[Probe]] = {}
    for p in found:
        by_name.setdefault(p.full_name, []).append(p)
    lines = []
    width = max((len(n) for n in by_name), default=0)
    for name, sites in by_name.items():
        first = sites[0]
        n = len(first.arguments)
        text = f"{name:<{width}}  {n} arg{'' if n == 1 else 's'}" + (
            f": {first.args_text}" if n else ""
        )
        if len(sites) > 1:
            text += f"  ({len(sites)} sites)"
        if first.semaphore:
            text += f"  [semaphore {first.semaphore:#x}]"
        lines.append(text)
    return "\n".join(lines)


# ---------------------------------------------------------------- argument readers

# x86-64 register names in the notes -> BCC's struct pt_regs fields.
_X86_REGS = {
    **{r: r for r in ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")},
    **{f"r{n}{s}": f"r{n}" for n in range(8, 16) for s in ("d", "w", "b")},
    **{r: field for field in ("ax", "bx", "cx", "dx") for r in (f"r{field}", f"e{field}", field)},
    **{f"{field[0]}l": field for field in ("ax", "bx", "cx", "dx")},
    **{r: field for field in ("si", "di", "bp", "sp") for r in (f"r{field}", f"e{field}", field)},
    **{f"{field}l": field for field in ("si", "di", "bp", "sp")},
    "rip": "ip",
}
_MEMORY = re.compile(
    r"^(?P<disp>-?(?:0x[0-9a-fA-F]+|\d+))?\(%(?P<base>\w+)(?:,%(?P<index>\w+)(?:,(?P<scale>\d))?)?\)$"
)


def _register(name: str, probe: Probe) -> str:
    field = _X86_REGS.get(name)
    if field is None or field == "ip":
        raise BadArguments(
            f"USDT probe {probe.full_name} in {probe.path}: register %{name} of an argument "
            "is not one ebpfkit can read"
        )
    return f"ctx->{field}"


def _value_c(arg: Argument, probe: Probe) -> str:
    """C statements that leave the argument's value in ``__v``."""
    machine = platform.machine()
    if machine == "aarch64":
        return _arm64_value_c(arg, probe)
    if machine != "x86_64":
        raise BadArguments(
            f"USDT arguments are read on x86-64 and arm64 only; this machine is {machine}"
        )
    operand = arg.text
    if operand.startswith("$"):
        return f"__v = ({operand[1:]});"
    if operand.startswith("%"):
        return f"__v = {_register(operand[1:], probe)};"
    m = _MEMORY.match(operand)
    if m is None or m["base"] == "rip":
        raise BadArguments(
            f"USDT probe {probe.full_name} in {probe.path}: argument {arg} is in a form "
            "ebpfkit cannot read (a global variable?); read it from a uprobe instead"
        )
    address = _register(m["base"], probe)
    if m["disp"]:
        address += f" + ({int(m['disp'], 0)})"
    if m["index"]:
        address += f" + {_register(m['index'], probe)} * {int(m['scale'] or 1)}"
    return f"bpf_probe_read_user(&__v, sizeof(__v), (void *)({address}));"


# arm64 operands: a constant (5, #5), a register (x0, w1, sp), memory ([x29], [sp, -16]).
_ARM64_NUMBER = r"-?(?:0x[0-9a-fA-F]+|\d+)"
_ARM64_MEMORY = re.compile(rf"^\[(?P<base>\w+)(?:,\s*#?(?P<disp>{_ARM64_NUMBER}))?\]$")


def _arm64_register(name: str, probe: Probe) -> str:
    if name in ("sp", "wsp"):
        return "ctx->sp"
    m = re.fullmatch(r"[xw](\d+)", name)
    if m is None or int(m[1]) > 30:
        raise BadArguments(
            f"USDT probe {probe.full_name} in {probe.path}: register {name} of an argument "
            "is not one ebpfkit can read"
        )
    return f"ctx->regs[{m[1]}]"  # arm64's struct pt_regs: regs[31], sp, pc, pstate


def _arm64_value_c(arg: Argument, probe: Probe) -> str:
    operand = arg.text
    if re.fullmatch(f"#?{_ARM64_NUMBER}", operand):
        return f"__v = ({operand.lstrip('#')});"
    m = _ARM64_MEMORY.match(operand)
    if m is None:
        return f"__v = {_arm64_register(operand, probe)};"
    address = _arm64_register(m["base"], probe)
    if m["disp"]:
        address += f" + ({int(m['disp'], 0)})"
    return f"bpf_probe_read_user(&__v, sizeof(__v), (void *)({address}));"


def _ctype(arg: Argument) -> str:
    if arg.size not in (1, 2, 4, 8):
        raise BadArguments(f"USDT argument {arg}: a size of {arg.size} bytes is not an integer")
    return f"{'s' if arg.signed else 'u'}{arg.size * 8}"


def reader_c(sites: list[Probe], fn: str) -> str:
    """The functions ``bpf_usdt_readarg(n, ctx, &x)`` in ``fn`` calls, for these sites.

    Each is ``_bpf_readarg_FN_N(ctx, dest, len)``, as BCC's frontend names them: it
    copies argument N into ``dest`` if ``len`` is its size, else returns -1. They are
    guarded, so that two probes sharing a function whose arguments are alike (a
    function's entry and return in Python) share one reader.
    """
    first = sites[0]
    if any(s.arguments != first.arguments for s in sites[1:]):
        raise BadArguments(
            f"USDT probe {first.full_name} in {first.path} keeps its arguments in different "
            f"places at its {len(sites)} sites; ebpfkit reads arguments of alike sites only"
        )
    out = []
    for n, arg in enumerate(first.arguments, 1):
        ctype = _ctype(arg)
        body = (
            f"static __always_inline int _bpf_readarg_{fn}_{n}"
            f"(struct pt_regs *ctx, void *dest, size_t len) {{\n"
            f"  {ctype} __v = 0;\n"
            f"  if (len != sizeof({ctype})) return -1;\n"
            f"  {_value_c(arg, first)}\n"
            f"  *(({ctype} *)dest) = __v;\n"
            f"  return 0;\n"
            f"}}\n"
        )
        guard = f"__EBPFKIT_USDT_{fn}_{n}_{hashlib.sha1(body.encode()).hexdigest()[:12]}"
        out.append(f"#ifndef {guard}\n#define {guard}\n{body}#endif\n")
    return "".join(out)


# ---------------------------------------------------------------- attaching

_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_FLAG_FD_CLOEXEC = 8
_UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"


class _PerfEventAttr(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 56),  # up to PERF_ATTR_SIZE_VER7, zero
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _pmu_type() -> int:
    try:
        with open(f"{_UPROBE_PMU}/type") as f:
            return int(f.read())
    except OSError:
        raise AttachError(
            f"USDT probes attach through perf's uprobe PMU, and {_UPROBE_PMU} is missing "
            "(a kernel before 4.17, or without CONFIG_UPROBE_EVENTS)"
        ) from None


def open_site(site: Probe, prog_fd: int, pid: int | None) -> int:
    """A perf event running ``prog_fd`` at ``site``: its descriptor (closing it detaches).

    With the semaphore's offset as ``ref_ctr_offset`` the kernel raises the semaphore in
    every process the event covers (``pid``, or all that map the binary, now or later).
    """
    path = ctypes.create_string_buffer(site.path.encode())
    attr = _PerfEventAttr(
        type=_pmu_type(),
        size=ctypes.sizeof(_PerfEventAttr),
        config=site.semaphore_offset << 32,
        sample_period=1,
        wakeup_events=1,
        config1=ctypes.addressof(path),
        config2=site.offset,
    )
    nr = _PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise AttachError(f"perf_event_open's number on {platform.machine()} is not known here")
    target = pid if pid and pid > 0 else -1
    cpu = -1 if target > 0 else 0  # a process on any CPU, or every process (as bcc does)
    fd = _libc.syscall(
        ctypes.c_long(nr),
        ctypes.byref(attr),
        ctypes.c_int(target),
        ctypes.c_int(cpu),
        ctypes.c_int(-1),
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        where = f"{site.path} at offset {site.offset:#x}"
        if site.semaphore and err == 22:  # EINVAL
            why = "the kernel refused its semaphore (ref_ctr_offset needs Linux 4.20+)"
        elif err == 3:  # ESRCH
            why = f"there is no process {pid}"
        else:
            why = os.strerror(err)
        raise AttachError(f"USDT probe {site.full_name}: cannot attach to {where}: {why}")
    fd = int(fd)
    for request, arg in ((_PERF_EVENT_IOC_SET_BPF, prog_fd), (_PERF_EVENT_IOC_ENABLE, 0)):
        if _libc.ioctl(ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_int(arg)) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise AttachError(
                f"USDT probe {site.full_name}: the kernel would not run the program there "
                f"({os.strerror(err)})"
            )
    return fd


def event_name(site: Probe, pid: int | None) -> bytes:
    """The key of a site's descriptor in BCC's ``uprobe_fds`` (so that its detach and
    cleanup close it): unique per site and process, never a tracefs event's name."""
    return f"ebpfkit_usdt_{site.path}_{site.offset:x}_{pid or -1}".encode()


def semaphore_value(pid: int, site: Probe) -> int:
    """The semaphore of ``site`` in process ``pid`` as it is now (root or the same user).

    For a non-PIE executable the note's address is the address in the process; for a
    position-independent file the load address is added, read from /proc/PID/maps.
    """
    address = site.semaphore + _load_bias(pid, site.path)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return struct.unpack("<H", mem.read(2))[0]


def _load_bias(pid: int, path: str) -> int:
    with open(path, "rb") as f:
        if struct.unpack_from("<H", f.read(18), 16)[0] == _ET_EXEC:
            return 0
    real = os.path.realpath(path)
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise ProbeNotFound(f"process {pid} does not map {real}")
