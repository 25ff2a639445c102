#!/usr/bin/env bash
# Record the lessons' traces again: runs each notebook with EBPFKIT_MODE=record, so that every
# `%%bpf --recording NAME` cell (and `ebpfkit.trace(..., recording=NAME)`) traces live and
# saves notebooks/recordings/NAME.ebpfkit, which Binder and non-root users then replay.
#
#   scripts/record-lessons.sh [--save] [NOTEBOOK.ipynb ...]   (default: every notebooks/*.ipynb)
#
# Run it as root on a real kernel, one lesson at a time on a quiet machine (other processes
# show up in machine-wide traces). Without --save the notebooks are left as they are: the
# executed copies go to a temporary folder, removed at the end (KEEP=1 keeps it). With --save
# each lesson that ran through gets this run's outputs, without the cells' execution
# timestamps (scripts/tidy_notebooks.py), so a re-run's diff shows only what changed.
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

save=0
if [ "${1:-}" = --save ]; then save=1; shift; fi
if [ $# -gt 0 ]; then notebooks=("$@"); else notebooks=(notebooks/*.ipynb); fi
out=$(mktemp -d /tmp/record-lessons.XXXXXX)
stamp="$out/.started"
touch "$stamp"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$out"' EXIT
export PATH="$PWD/.venv/bin:$PATH"

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
echo "recordings made now:"
find "${existing[@]}" -name '*.ebpfkit' -newer "$stamp" -printf '  %p (%s bytes)\n' 2>/dev/null | sort
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
