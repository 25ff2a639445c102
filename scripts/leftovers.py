"""Nothing of ours outlives the test suite: no BPF program, no map, no compile process.

    python3 scripts/leftovers.py snapshot FILE   # before the suite: what is loaded already
    python3 scripts/leftovers.py check FILE      # after it: anything new is a leak

Programs and maps are compared by id with the snapshot (the machine may run BPF of
its own, systemd's for one); a process running ebpfkit's compiler is ours by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _listed(what: str) -> dict[int, str]:
    out = subprocess.run(
        ["bpftool", what, "list", "--json"], capture_output=True, text=True, check=True
    ).stdout
    return {item["id"]: item.get("name", "?") for item in json.loads(out or "[]")}


def _compile_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "ebpfkit.compiler" in cmdline:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def main() -> int:
    command, path = sys.argv[1], Path(sys.argv[2])
    if command == "snapshot":
        path.write_text(json.dumps({w: list(_listed(w)) for w in ("prog", "map")}))
        return 0
    before = json.loads(path.read_text())
    # The kernel frees a closed program or map after an RCU grace period: give it a moment.
    for _ in range(20):
        new = {w: {i: n for i, n in _listed(w).items() if i not in before[w]} for w in before}
        processes = _compile_processes()
        if not any(new.values()) and not processes:
            print("leftovers: no BPF program, map or compile process of the suite is left")
            return 0
        time.sleep(0.5)
    for what, items in new.items():
        for i, name in sorted(items.items()):
            print(f"leftovers: {what} {i} ({name}) is still loaded")
    for line in processes:
        print(f"leftovers: compile process still running: {line}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
