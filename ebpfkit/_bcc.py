"""Find BCC's Python module wherever the distribution put it.

BCC's Python bindings ship only with the distribution (``python3-bpfcc`` on
Debian/Ubuntu, ``python3-bcc`` on Fedora): pure Python over ``libbcc.so.0``.
A virtualenv or conda Python does not see them, and ``pip install bcc`` is an
unrelated project. So we look in the distribution's folders and load the
package from there, without adding those folders to ``sys.path`` (which would
let every other system package shadow the venv's own).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from types import ModuleType

from .errors import BccMissing

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


def _load_from(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bcc", os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
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
    module = find_bcc()
    if module is None:
        wrong = importlib.util.find_spec("bcc")
        extra = ""
        if wrong is not None and wrong.origin:
            extra = f" (the `bcc` found at {wrong.origin} is not BCC's bindings)"
        raise BccMissing(f"BCC's Python module was not found{extra}. {INSTALL_HINT}")
    return module
