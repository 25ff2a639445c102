"""Compiled programs kept on disk, so an unchanged cell skips the compiler.

The key holds everything that can change the bytecode: the C text as compiled
(the user's cell with ebpfkit's prelude and layout structs, so its options too),
the cflags, ebpfkit's and BCC's versions, the running kernel (release, build, and
the identity of its BTF) and the kernel headers BCC compiles against. An entry
made on one kernel is never found on another.

One file per program under ``$XDG_CACHE_HOME/ebpfkit/programs`` (else
``~/.cache``), written whole or not at all; the folder is kept under
``LIMIT_BYTES`` by dropping the least recently used, and may be deleted at any
time. An entry that does not read back as a program is ignored and rebuilt.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import tempfile

from . import bytecode
from ._version import __version__

LIMIT_BYTES = 64 << 20


def folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ebpfkit", "programs")


def _digest_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def kernel_identity() -> str:
    """This kernel exactly: its release and build, its build id (in /sys/kernel/notes),
    its BTF. Fixed while the process lives, hence computed once."""
    u = os.uname()
    parts = [u.release, u.version, u.machine]
    parts += [_digest_file("/sys/kernel/notes"), _digest_file("/sys/kernel/btf/vmlinux")]
    return "\n".join(parts)


def headers_identity() -> str:
    """The headers BCC would compile against (bcc's kbuild_helper and loader look in
    BCC_KERNEL_SOURCE, /lib/modules/RELEASE/{source,build}, then the kheaders module).
    Where they point and when they changed: installing others changes the key."""
    release = os.uname().release
    places = [os.environ.get("BCC_KERNEL_SOURCE", "")]
    places += [f"/lib/modules/{release}/{d}" for d in ("source", "build")]
    out = []
    for place in places:
        real = os.path.realpath(place) if place else ""
        for name in ("include/generated/autoconf.h", "Makefile"):
            try:
                st = os.stat(os.path.join(real, name))
                out.append(f"{real}/{name}:{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                pass
    if not out and os.path.exists("/sys/kernel/kheaders.tar.xz"):
        out.append("kheaders")
    return "\n".join(out)


def _bcc_version() -> str:
    from ._bcc import bcc

    try:
        return str(getattr(bcc(), "__version__", "?"))
    except Exception:  # noqa: BLE001 - no BCC: nothing will compile anyway
        return "?"


_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def key(text: str, cflags: list[str]) -> str:
    """The name of ``text``'s entry: a digest of everything its bytecode depends on."""
    h = hashlib.sha256()
    # Files the program includes by a relative name are part of its text.
    includes = [_digest_file(p) for p in _QUOTED_INCLUDE.findall(text)]
    for part in (
        str(bytecode.FORMAT),
        __version__,
        _bcc_version(),
        kernel_identity(),
        headers_identity(),
        json.dumps(cflags),
        json.dumps(includes),
        text,
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def get(name: str) -> bytecode.Bytecode | None:
    path = os.path.join(folder(), name + ".json")
    try:
        with open(path) as f:
            code = bytecode.Bytecode.from_json(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # missing or damaged: compiled again and written over
    try:
        os.utime(path)  # recently used: the last to be dropped
    except OSError:
        pass
    return code


def put(name: str, code: bytecode.Bytecode) -> None:
    """Keep ``code``; a cache that cannot be written is no error, only slower."""
    where = folder()
    try:
        os.makedirs(where, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=where, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(code.to_json())
        os.replace(tmp, os.path.join(where, name + ".json"))
        _trim(where)
    except OSError:
        pass


def _trim(where: str) -> None:
    entries = []
    for path in glob.glob(os.path.join(where, "*.json")):
        try:
            st = os.stat(path)
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= LIMIT_BYTES:
            break
        try:
            os.unlink(path)
            total -= size
        except OSError:
            pass
