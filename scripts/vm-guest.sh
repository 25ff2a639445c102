#!/usr/bin/env bash
# Runs inside the kprobe lane's virtual machine (see vm-lane.sh). With no arguments, the lane's
# checks; with a COMMAND [ARG ...] (vm-lane.sh COMMAND ...), that command instead, from the
# repository's folder, after checking that this kernel has kprobes (the reason to be here).
set -uo pipefail
cd "$(dirname "$0")/.."
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug
echo "guest kernel: $(uname -r)"

if [ $# -gt 0 ]; then
  .venv/bin/python -c '
from ebpfkit import probes
ok, why = probes.kprobes_available()
print("guest kprobes:", "yes" if ok else "NO", f"({why})")
raise SystemExit(0 if ok else 1)' || { echo "guest: no kprobes here: $* not run"; exit 1; }
  exec "$@"
fi

status=0

.venv/bin/ebpfkit check | tee /tmp/ebpfkit-check.txt || status=1
grep -q '^ok    kprobe ' /tmp/ebpfkit-check.txt || { echo "guest: kprobes do not work here"; status=1; }

# Any kprobe test that would skip here is a failure: this lane exists to run them.
export EBPFKIT_REQUIRE_KPROBES=1
.venv/bin/python -m pytest -q -rs -p no:cacheprovider -m kprobes tests || status=1
.venv/bin/python -m pytest -q -rs -p no:cacheprovider -k kprobe \
  tests/test_check.py tests/test_probes.py || status=1

notebooks=$(ls notebooks/01-hello-kprobe.ipynb notebooks/02-reading-data.ipynb \
  notebooks/10-fast-track.ipynb 2>/dev/null)
if [ -n "$notebooks" ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
    --nbval-sanitize-with notebooks/sanitize.cfg $notebooks || status=1
fi
exit $status
