#!/usr/bin/env bash
# Record the lessons' traces again: runs each notebook with EBPFKIT_MODE=record, so that every
# `%%bpf --recording NAME` cell (and `ebpfkit.trace(..., recording=NAME)`) traces live and
# saves notebooks/recordings/NAME.ebpfkit, which Binder and non-root users then replay.
#
#   scripts/record-lessons.sh [--vm] [--save] [NOTEBOOK.ipynb ...]   (default: every notebooks/*.ipynb)
#
# Run it as root on a real kernel, one lesson at a time on a quiet machine (other processes
# show up in machine-wide traces). Without --save the notebooks are left as they are: the
# executed copies go to a temporary folder, removed at the end (KEEP=1 keeps it). With --save
# each lesson that ran through gets this run's outputs, without the cells' execution
# timestamps (scripts/tidy_notebooks.py), so a re-run's diff shows only what changed.
# At the end it lists the recordings made, each with what it attached (kprobe or tracepoint).
#
# --vm records in the kprobe lane's virtual machine instead: scripts/vm-lane.sh boots Debian's
# stock kernel, which has kprobes, over this machine's files and runs this script there (without
# --vm). On a kernel without kprobes the kprobe cells (`-k ... --fallback ...`, `kprobe=`) record
# the tracepoint fallback, so the lessons with kprobe cells are recorded this way, and a replay
# shows a real kprobe:
#
#   scripts/record-lessons.sh --vm --save notebooks/01-hello-kprobe.ipynb notebooks/10-fast-track.ipynb
#
# Only notebooks/ is writable from the guest: the recordings and the saved notebooks come back
# there, so only lessons inside it can be recorded this way. The guest is emulated in software:
# count minutes per lesson, plus a few to boot; VM_TIMEOUT (seconds, 2400 by default) bounds the
# whole run. The recordings then say they were made on Linux 6.12.N+debN-amd64.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "record-lessons: run it as root (sudo $0): a recording is a live trace" >&2
  exit 1
fi
if [ ! -x .venv/bin/jupyter-nbconvert ]; then
  echo "record-lessons: .venv/bin/jupyter-nbconvert is missing: run scripts/setup.sh first" >&2
  exit 1
fi

vm=0
save=0
while [ $# -gt 0 ]; do
  case "$1" in
    --vm) vm=1; shift ;;
    --save) save=1; shift ;;
    *) break ;;
  esac
done
if [ "$vm" = 1 ]; then
  for nb in "$@"; do
    case "$(realpath -m "$nb")" in
      "$PWD"/notebooks/*) ;;
      *) echo "record-lessons: --vm: the guest writes only into notebooks/, and $nb is not in it" >&2
         exit 1 ;;
    esac
  done
  again=()
  [ "$save" = 1 ] && again+=(--save)
  exec bash scripts/vm-lane.sh scripts/record-lessons.sh "${again[@]}" "$@"
fi
if [ $# -gt 0 ]; then notebooks=("$@"); else notebooks=(notebooks/*.ipynb); fi
out=$(mktemp -d /tmp/record-lessons.XXXXXX)
stamp="$out/.started"
touch "$stamp"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$out"' EXIT
export PATH="$PWD/.venv/bin:$PATH"
# A home that cannot be written (root's, read-only in the VM guest) makes matplotlib warn with paths of
# this machine in the saved outputs: give it a folder of its own.
[ -w "${HOME:-/nonexistent}" ] || export MPLCONFIGDIR="$out/matplotlib"

failed=()
folders=()
for nb in "${notebooks[@]}"; do
  folder=$(cd "$(dirname "$nb")" && pwd)
  folders+=("$folder/recordings")
  echo "== $nb"
  # nbconvert runs the kernel in the notebook's folder; the variable says the same, to be sure.
  if ! EBPFKIT_MODE=record EBPFKIT_RECORDINGS="$folder/recordings" \
    jupyter nbconvert --to notebook --execute --output-dir "$out" \
      --ExecutePreprocessor.kernel_name=python3 --ExecutePreprocessor.timeout=900 "$nb"; then
    failed+=("$nb")
  elif [ "$save" = 1 ]; then
    python scripts/tidy_notebooks.py "$out/$(basename "$nb")" >/dev/null
    cp "$out/$(basename "$nb")" "$nb"
    echo "saved $nb with this run's outputs"
  fi
done

echo
mapfile -t folders < <(printf '%s\n' "${folders[@]}" | sort -u)
existing=()
for f in "${folders[@]}"; do [ -d "$f" ] && existing+=("$f"); done
[ ${#existing[@]} -gt 0 ] || existing=(/nonexistent)
echo "recordings made now (with what each attached):"
mapfile -t made < <(find "${existing[@]}" -name '*.ebpfkit' -newer "$stamp" 2>/dev/null | sort)
if [ ${#made[@]} -gt 0 ]; then
  python - "${made[@]}" <<'EOF'
import os
import sys

from ebpfkit.recording import load

for path in sys.argv[1:]:
    try:
        attached = "; ".join(load(path).attached) or "nothing attached"
    except Exception as e:  # noqa: BLE001 - list it all the same
        attached = f"not read back: {e}"
    print(f"  {path} ({os.path.getsize(path)} bytes): {attached}")
EOF
fi
stale=$(find "${existing[@]}" -name '*.ebpfkit' ! -newer "$stamp" 2>/dev/null | sort)
if [ -n "$stale" ]; then
  echo "recordings NOT made again (no cell names them any more, or their notebook failed):"
  printf '  %s\n' $stale
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "record-lessons: these notebooks failed: ${failed[*]}" >&2
  exit 1
fi
[ "${KEEP:-0}" = 1 ] && echo "executed notebooks: $out"
exit 0
