"""Find BCC's Python module wherever the distribution put it.

BCC's Python bindings ship only with the distribution (``python3-bpfcc`` on
Debian/Ubuntu, ``python3-bcc`` on Fedora): pure Python over ``libbcc.so.0``.
A virtualenv or conda Python does not see them, and ``pip install bcc`` is an
unrelated project. So we look in the distribution's folders and load the
package from there, without adding those folders to ``sys.path`` (which would
let every other system package shadow the venv's own).

``import ebpfkit`` only installs a finder (``install_finder``): a later ``import bcc``,
by ebpfkit or by the user, finds the distribution's package, and libbcc is loaded then,
not when ebpfkit is imported.
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

INSTALL_HINT = (
    "Install BCC from your distribution: on Debian/Ubuntu `sudo apt install python3-bpfcc "
    "bpfcc-tools`, on Fedora `sudo dnf install python3-bcc bcc-tools` "
    "(`pip install bcc` is an unrelated package). Or run `make lab` / `make test`, "
    "which install it."
)

# Where distributions install the package, newest layouts first.
_SEARCH = [
    "/usr/lib/python3/dist-packages/bcc",
    "/usr/lib/python3*/site-packages/bcc",
    "/usr/lib64/python3*/site-packages/bcc",
    "/usr/local/lib/python3*/dist-packages/bcc",
    "/usr/share/bcc/python/bcc",
]


def _is_real_bcc(module: ModuleType) -> bool:
    # The unrelated PyPI `bcc` has no BPF class.
    return hasattr(module, "BPF")


def candidates() -> list[str]:
    """Folders that hold a ``bcc`` package on this machine."""
    found = []
    for pattern in _SEARCH:
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.path.isfile(os.path.join(path, "__init__.py")) and path not in found:
                found.append(path)
    return found


def _spec_at(path: str) -> importlib.machinery.ModuleSpec:
    return importlib.util.spec_from_file_location(
        "bcc", os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )


def _looks_real(spec: importlib.machinery.ModuleSpec) -> bool:
    # Without importing it: BCC's package has its ctypes bindings in libbcc.py.
    folders = spec.submodule_search_locations or []
    return any(os.path.isfile(os.path.join(folder, "libbcc.py")) for folder in folders)


class _Finder(importlib.abc.MetaPathFinder):
    """``import bcc`` finds BCC's bindings: where Python would, else the distribution's."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "bcc":
            return None
        found = importlib.machinery.PathFinder.find_spec(fullname)
        if found is not None and _looks_real(found):
            return found
        folders = candidates()
        if folders:
            return _spec_at(folders[0])
        return None  # Python's own search goes on, and finds what it finds


_FINDER = _Finder()


def install_finder() -> None:
    """Make ``import bcc`` find the distribution's BCC from any Python, without importing it."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _load_from(path: str) -> ModuleType:
    spec = _spec_at(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["bcc"]
        raise
    return module


def find_bcc() -> ModuleType | None:
    """Return BCC's module, importing it from the distribution if need be; None if absent."""
    module = sys.modules.get("bcc")
    if module is not None and _is_real_bcc(module):
        return module
    try:
        import bcc as module  # noqa: PLC0415
    except ImportError:
        module = None
    except OSError:  # libbcc.so.0 missing or broken
        module = None
    if module is not None and _is_real_bcc(module):
        return module
    sys.modules.pop("bcc", None)
    for path in candidates():
        try:
            return _load_from(path)
        except (ImportError, OSError):
            continue
    return None


def bcc() -> ModuleType:
    """BCC's module, or a clear BccMissing error saying what to install."""
    from .errors import BccMissing  # here: errors loads IPython, which `import ebpfkit` need not

    module = find_bcc()
    if module is None:
        wrong = importlib.util.find_spec("bcc")
        extra = ""
        if wrong is not None and wrong.origin:
            extra = f" (the `bcc` found at {wrong.origin} is not BCC's bindings)"
        raise BccMissing(f"BCC's Python module was not found{extra}. {INSTALL_HINT}")
    return module
