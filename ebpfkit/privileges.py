"""Whether this process may load tracing programs: root, or CAP_BPF and CAP_PERFMON.

Below the session (which refuses to start without them) and the recordings (which replay
where they are missing): both ask here.
"""

from __future__ import annotations

import os

from .checks import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, capabilities
from .errors import NotPermitted


def require_privileges() -> None:
    """NotPermitted, saying how to get them, unless this process may load tracing programs."""
    if os.geteuid() == 0:
        return
    caps = capabilities()
    if CAP_SYS_ADMIN in caps or {CAP_BPF, CAP_PERFMON} <= caps:
        return
    raise NotPermitted(
        f"loading tracing programs needs root (or CAP_BPF and CAP_PERFMON); this process runs "
        f"as uid {os.geteuid()} without them. Start Jupyter with the root kernel "
        "(`make lab`), or run `sudo ebpfkit ...`."
    )


def may_load_bpf() -> bool:
    """True when this process has the rights to load tracing programs."""
    try:
        require_privileges()
    except NotPermitted:
        return False
    return True
