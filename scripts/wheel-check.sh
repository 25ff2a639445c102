#!/usr/bin/env bash
# An ordinary install, as a user makes it: build ebpfkit's wheel, install it into a new
# virtualenv outside the repository (with the system's site-packages, for BCC), and from an
# unrelated folder run `ebpfkit check`, `ebpfkit stats -d 1` and a %%bpf cell that runs a
# program from bpf/ with --file. Each must work. (`make test-wheel`; CI runs it.)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'wheel-check: %s\n' "$*"; }

bash scripts/setup.sh
work=$(mktemp -d /tmp/ebpfkit-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

.venv/bin/python -m pip wheel -q --no-deps --disable-pip-version-check -w "$work/dist" . \
  >"$work/build.log" 2>&1 || { cat "$work/build.log"; say "building the wheel failed"; exit 1; }
wheel=$(ls "$work"/dist/ebpfkit-*.whl)
say "built $(basename "$wheel")"

/usr/bin/python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel" \
  >"$work/install.log" 2>&1 || { cat "$work/install.log"; say "installing the wheel failed"; exit 1; }
say "installed into a new virtualenv, $work/venv"

mkdir "$work/elsewhere"
cd "$work/elsewhere"
# The installed package, not this checkout: the checkout is not on sys.path from here.
where=$("$work/venv/bin/python" -c 'import ebpfkit, os; print(os.path.dirname(ebpfkit.__file__))')
case "$where" in
  "$work"/venv/*) ;;
  *) say "FAILED: ebpfkit imported from $where, not from the installed wheel"; exit 1 ;;
esac

say "ebpfkit check"
"$work/venv/bin/ebpfkit" check
say "ebpfkit stats -d 1"
"$work/venv/bin/ebpfkit" stats -d 1 | tee "$work/stats.txt"
grep -q '[0-9]' "$work/stats.txt" || { say "FAILED: stats printed no counts"; exit 1; }

say "%bpf --file bpf/exec_tracepoint.c --run ..."
"$work/venv/bin/python" - <<'EOF'
from IPython.core.interactiveshell import InteractiveShell

shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ebpfkit")
r = shell.run_line_magic("bpf", "--file bpf/exec_tracepoint.c --run 'ls /; cat /etc/hostname'")
names = set(r.events["filename"])
print(r)
assert {"/usr/bin/ls", "/usr/bin/cat"} <= names or {"/bin/ls", "/bin/cat"} <= names, names
print("wheel-check: the cell traced the workload's execs:", sorted(names)[:6])
EOF
say "ok: the installed wheel works from $PWD"
