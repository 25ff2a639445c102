#!/usr/bin/env bash
# The kprobe lane. Our own kernel has no kprobes, so this boots Debian's stock kernel
# (CONFIG_KPROBES=y) in a virtual machine, over this machine's own root filesystem
# (virtme-ng, software emulation: KVM crashes in early boot here), and runs inside it
# `ebpfkit check`, the kprobe tests and the notebooks whose subject is a kprobe.
# Installs what it needs; fails with a message, never hangs, if the VM does not come up.
#
#   scripts/vm-lane.sh                    the lane (make test, make test-vm): scripts/vm-guest.sh
#   scripts/vm-lane.sh COMMAND [ARG ...]  runs COMMAND in the same guest instead, from the
#                                         repository's folder, once vm-guest.sh has seen kprobes work
#
# The guest sees this machine's files read-only (its writes to /etc, /tmp, /var ... stay in the
# guest), except, with a COMMAND, the folder notebooks/, which it may write: what it records
# there (scripts/record-lessons.sh --vm) comes back.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'vm-lane: %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

bash scripts/setup.sh

# The guest kernel: the stock Debian kernel whose headers BCC already uses, so BCC in the
# guest compiles against its own exact headers; signed or unsigned image, whichever the
# archive offers, else its newest stock kernel (scripts/vm_kernel.py decides and says why).
build=$(readlink -f "/lib/modules/$(uname -r)/build" || true)
wanted=$(basename "$build" | sed -n 's/^linux-headers-\(.*\)$/\1/p')
# Exact headers for the running kernel: there is no stock kernel to match, take the newest.
[ "$wanted" != "$(uname -r)" ] || wanted=""
$SUDO apt-get update -qq
if ! choice=$(.venv/bin/python scripts/vm_kernel.py $wanted); then
  say "$choice"
  exit 1
fi
{ read -r version; read -r packages; read -r reason; } <<<"$choice"
say "guest kernel $reason"

need=()
for p in qemu-system-x86 busybox-static $packages; do
  installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x .venv/bin/vng ] || .venv/bin/python -m pip install -q virtme-ng >/dev/null 2>&1

kernel="/boot/vmlinuz-$version"
limit=${VM_TIMEOUT:-2400}
log=$(mktemp)
say "booting $kernel (software emulation, limit ${limit}s)"
start=$(date +%s)
set +e
writable=()
if [ $# -gt 0 ]; then
  say "guest command: $*"
  writable=(--rwdir "$PWD/notebooks")
fi
# The guest reads this machine's /etc/hostname: it gets this machine's name too (virtme-ng's
# own, "virtme-ng", would make a recording's hostname disagree with what `cat /etc/hostname` printed).
PATH="$PWD/.venv/bin:$PATH" timeout -k 20 "$limit" \
  vng -r "$kernel" --name "$(uname -n)" --user root --disable-kvm --cpus 2 --memory 4G "${writable[@]}" -- \
  "$PWD/scripts/vm-guest.sh" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
say "guest finished in $(( $(date +%s) - start ))s with status $rc"
if ! grep -q "^guest kernel: $version" "$log"; then
  say "FAILED: the virtual machine did not come up (no guest output; status $rc)"
  exit 1
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  say "FAILED: the guest did not finish within ${limit}s"
  exit 1
fi
exit "$rc"
