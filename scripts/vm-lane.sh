#!/usr/bin/env bash
# The kprobe lane. Our own kernel has no kprobes, so this boots Debian's stock kernel
# (CONFIG_KPROBES=y) in a virtual machine, over this machine's own root filesystem
# (virtme-ng, software emulation: KVM crashes in early boot here), and runs inside it
# `ebpfkit check`, the kprobe tests and the notebooks whose subject is a kprobe.
# Installs what it needs; fails with a message, never hangs, if the VM does not come up.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'vm-lane: %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

bash scripts/setup.sh

# The guest kernel: the stock Debian kernel whose headers BCC already uses, so BCC in the
# guest compiles against its own exact headers.
build=$(readlink -f "/lib/modules/$(uname -r)/build" || true)
version=$(basename "$build" | sed -n 's/^linux-headers-\(.*\)$/\1/p')
if [ -z "$version" ] || [ "$version" = "$(uname -r)" ]; then
  # Exact headers for the running kernel: take the newest stock Debian kernel instead.
  version=$(apt-cache search --names-only '^linux-image-[0-9.]+\+deb[0-9]+-amd64$' |
    awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -1)
fi
[ -n "$version" ] || { say "no stock Debian kernel found to boot"; exit 1; }

need=()
for p in qemu-system-x86 busybox-static "linux-image-$version" "linux-headers-$version"; do
  installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x .venv/bin/vng ] || .venv/bin/python -m pip install -q virtme-ng >/dev/null 2>&1

kernel="/boot/vmlinuz-$version"
limit=${VM_TIMEOUT:-2400}
log=$(mktemp)
say "booting $kernel (software emulation, limit ${limit}s)"
start=$(date +%s)
set +e
PATH="$PWD/.venv/bin:$PATH" timeout -k 20 "$limit" \
  vng -r "$kernel" --user root --disable-kvm --cpus 2 --memory 4G -- \
  "$PWD/scripts/vm-guest.sh" 2>&1 | tee "$log"
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
