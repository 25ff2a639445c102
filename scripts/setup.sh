#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs before the lessons or the tests run:
# BCC and bpftool from the distribution, kernel headers for BCC, tracefs mounted, and a
# virtualenv that sees the distribution's BCC. Safe to run again: each step checks first,
# so a second run takes seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
say() { printf 'setup: %s\n' "$*"; }

# strace: lessons and tests compare their counts with it. chromium: the browser test drives
# JupyterLab with it through Playwright (Playwright's own browser downloads are not used).
# sudo: the kernel a non-root user starts gets root through `sudo -n` (tests/test_kernel_sudo.py).
# poppler-utils: the handouts tests read the PDFs with pdftotext and pdfimages.
# bpftrace: the %%bpftrace cell magic runs it (Debian's 0.17 reads kernel structs through BTF).
# gcc: the lessons and tests build their C workloads (tests/workloads/, 07's burn.c, 11's waits).
# g++: test_usdt builds a C++ program to trace libstdc++'s throw/catch probes. binutils:
# readelf, which test_usdt compares ebpfkit's USDT listing with (Debian's names, stable).
APT_PACKAGES=(python3-bpfcc bpfcc-tools bpftool python3-venv strace chromium sudo poppler-utils bpftrace gcc g++ binutils)
KREL=$(uname -r)
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. BCC, its tools and bpftool, from the distribution (pip's `bcc` is unrelated).
missing=()
for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

# 2. Kernel headers for BCC. The exact package when the distribution has one; otherwise
# the nearest Debian headers, wired in where BCC looks (/lib/modules/$KREL/build and
# source). Their struct layouts may not match this kernel: `ebpfkit check` measures that.
headers_ok() { [ -e "/lib/modules/$KREL/build/include/linux/kconfig.h" ] || [ -e "/lib/modules/$KREL/build/include/generated/autoconf.h" ]; }
if ! headers_ok; then
  if installed "linux-headers-$KREL" || { [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }; apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; }; then
    installed "linux-headers-$KREL" || apt_install "linux-headers-$KREL"
    say "kernel headers: exact match linux-headers-$KREL"
  else
    [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
    # Candidates look like linux-headers-6.12.117+deb12-amd64 or linux-headers-6.1.0-47-amd64.
    want=$(echo "$KREL" | awk -F. '{print $1*1000+$2}')
    best=$(apt-cache search --names-only "^linux-headers-[0-9][0-9.+a-z-]*-$ARCH\$" \
      | awk '{print $1}' | grep -Ev -- '-(cloud|rt)-' \
      | sed -e 's/^linux-headers-//' -e "s/-$ARCH\$//" \
      | awk -v want="$want" -F'[.+-]' '{d=($1*1000+$2)-want; if (d<0) d=-d; print d"\t"$0}' \
      | sort -k1,1n -k2,2V | awk -F'\t' 'NR==1{d=$1} $1==d{v=$2} END{print v}')
    if [ -z "$best" ]; then
      say "no kernel headers found for $KREL nor any nearby version; BCC cannot compile programs"
      exit 1
    fi
    installed "linux-headers-$best-$ARCH" || apt_install "linux-headers-$best-$ARCH"
    $SUDO mkdir -p "/lib/modules/$KREL"
    $SUDO ln -sfn "/usr/src/linux-headers-$best-$ARCH" "/lib/modules/$KREL/build"
    common="/usr/src/linux-headers-$best-common"
    [ -d "$common" ] || common="/usr/src/linux-headers-${best%-*}-common"
    $SUDO ln -sfn "$common" "/lib/modules/$KREL/source"
    say "kernel headers: no linux-headers-$KREL in the distribution; using the nearest, $best"
    say "  (their struct layouts may differ from this kernel: run 'ebpfkit check')"
  fi
fi

# 3. tracefs and debugfs: BCC reads /sys/kernel/debug/tracing; newer tools /sys/kernel/tracing.
if ! mountpoint -q /sys/kernel/debug 2>/dev/null; then
  $SUDO mount -t debugfs nodev /sys/kernel/debug && say "mounted debugfs at /sys/kernel/debug"
fi
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
  $SUDO mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs at /sys/kernel/tracing"
fi

# 4. The virtualenv: the distribution's Python, so it imports the distribution's BCC.
VENV=.venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  say "created $VENV (with the system's site-packages, for BCC)"
fi
stamp="$VENV/.ebpfkit-installed"
want_stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
  log="$VENV/pip.log"
  # Quiet unless it fails: pip's own warnings would bury the set-up's few lines.
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e '.[test,lab]' --config-settings editable_mode=compat
       } >"$log" 2>&1; then
    cat "$log"
    say "pip install failed (log above, also in $log)"
    exit 1
  fi
  echo "$want_stamp" >"$stamp"
  say "installed ebpfkit and its dependencies into $VENV"
fi
# 5. The Jupyter kernel the notebooks name, "Python 3 (ebpfkit, root)": eBPF needs root, so
# for a non-root user it runs through sudo -n (`ebpfkit kernel check` says what sudo needs).
if [ ! -e "$VENV/share/jupyter/kernels/ebpfkit/kernel.json" ] ||
   ! grep -q '"ebpfkit"' "$VENV/share/jupyter/kernels/ebpfkit/kernel.json"; then
  if "$VENV/bin/ebpfkit" kernel install --sys-prefix --quiet; then
    say "installed the Jupyter kernel 'ebpfkit' (runs as root)"
  else
    say "no Jupyter kernel 'ebpfkit' (the reason is above); the notebooks need it"
  fi
fi
say "ready"
