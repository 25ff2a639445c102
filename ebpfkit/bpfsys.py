"""The bpf(2) system call, through ctypes: one home for every command we issue directly.

libbcc wraps most commands, but creating maps and loading programs from bytecode we
already hold (loader.py), and reading maps in bulk (mapread.py), are simplest and
exact with the kernel's own ``union bpf_attr`` layout (include/uapi/linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import os
import platform

MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24

# The syscall's number differs by architecture (asm/unistd.h).
_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """The kernel refused a bpf(2) command; ``errno`` says why."""


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Issue ``cmd`` with ``attr``; the kernel's non-negative answer, or BpfError."""
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(0, f"the bpf() syscall's number on {platform.machine()} is not known here")
    size = ctypes.c_uint(ctypes.sizeof(attr))
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), ctypes.byref(attr), size)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return int(ret)


def address(buffer) -> int:
    """The address of a ctypes buffer, as the u64 the kernel's attributes take."""
    return ctypes.addressof(buffer) if buffer is not None else 0


class _InfoByFd(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


# struct bpf_prog_info up to recursion_misses (Linux 5.12); older kernels fill less of it.
_PROG_INFO_BYTES = 216
_RECURSION_MISSES_AT = 208


def recursion_misses(prog_fd: int) -> int:
    """How many times the kernel skipped this program because a BPF program was already
    running on that CPU (``bpf_prog_info.recursion_misses``; 0 before Linux 5.12)."""
    info = (ctypes.c_uint8 * _PROG_INFO_BYTES)()
    attr = _InfoByFd(prog_fd, _PROG_INFO_BYTES, address(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    if attr.info_len < _PROG_INFO_BYTES:  # the kernel's struct ends before the field
        return 0
    return int.from_bytes(bytes(info[_RECURSION_MISSES_AT:_PROG_INFO_BYTES]), "little")
