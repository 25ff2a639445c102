"""Which stock Debian kernel the kprobe lane boots, and why (scripts/vm-lane.sh asks).

The lane wants the kernel whose headers BCC already uses (setup.sh picked them), so that BCC
in the guest compiles against that kernel's own headers. The archive renames and drops
packages every few weeks: the same image comes as linux-image-VERSION (signed) or
linux-image-VERSION-unsigned, and an old VERSION disappears. So:

1. the wanted version's image already on disk (/boot/vmlinuz-VERSION, either package): boot it;
2. else its image package from the archive, signed or unsigned, whichever is offered;
3. else the newest stock image the archive offers whose headers it offers too.

    python3 scripts/vm_kernel.py [WANTED_VERSION] [--arch amd64]

prints three lines: the version to boot, the packages to install (space-separated, maybe
none), and the reason in words. Exit 1, with the reason, when there is nothing to boot.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import NamedTuple


class Choice(NamedTuple):
    version: str  # e.g. 6.12.118+deb12-amd64, as in /boot/vmlinuz-VERSION
    packages: list[str]  # what apt must install first
    reason: str


def stock_images(offered: set[str], arch: str) -> dict[str, list[str]]:
    """Stock image packages by kernel version: {'6.12.118+deb12-amd64': [signed, unsigned]}."""
    # 6.12.118+deb12-amd64 (Debian 12 backports style) or 6.1.0-47-amd64 (ABI style); not
    # -cloud-, -rt-, -dbg or the meta packages (linux-image-amd64).
    stock = re.compile(
        rf"linux-image-(\d+\.\d+\.\d+(?:\+deb\d+|-\d+)-{re.escape(arch)})(-unsigned)?"
    )
    found: dict[str, list[str]] = {}
    for name in sorted(offered):
        m = stock.fullmatch(name)
        if m:
            # Signed first: it is the one Debian installs by default.
            found.setdefault(m.group(1), []).append(name)
    for names in found.values():
        names.sort(key=lambda n: n.endswith("-unsigned"))
    return found


def _version_key(version: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.+-]", version)]


def choose(
    wanted: str | None,
    offered: set[str],
    installed: set[str],
    on_disk: set[str],
    arch: str = "amd64",
) -> Choice | None:
    """The kernel to boot. ``offered``/``installed`` are package names, ``on_disk`` the
    versions that have a /boot/vmlinuz-VERSION."""
    images = stock_images(offered | installed, arch)
    headers = {
        n[len("linux-headers-") :] for n in offered | installed if n.startswith("linux-headers-")
    }

    def packages(version: str, image: str | None) -> list[str]:
        need = [] if image is None or image in installed else [image]
        return need + (
            [] if f"linux-headers-{version}" in installed else [f"linux-headers-{version}"]
        )

    if wanted:
        if wanted in on_disk:
            return Choice(
                wanted, packages(wanted, None), f"{wanted}: the headers' kernel, already in /boot"
            )
        # The package already installed, else the signed one, else the unsigned one.
        for image in sorted(images.get(wanted, []), key=lambda n: n not in installed):
            if image in offered or image in installed:
                kind = "unsigned image" if image.endswith("-unsigned") else "signed image"
                return Choice(
                    wanted,
                    packages(wanted, image),
                    f"{wanted}: the headers' kernel ({kind} {image})",
                )
    bootable = sorted((v for v in images if v in headers), key=_version_key)
    if not bootable:
        return None
    newest = bootable[-1]
    image = images[newest][0]
    why = f"the archive has no image for {wanted}; " if wanted else "no borrowed headers; "
    return Choice(
        newest,
        packages(newest, image),
        f"{newest}: {why}the newest stock kernel it offers ({image})",
    )


def _apt_names(pattern: str) -> set[str]:
    out = subprocess.run(
        ["apt-cache", "search", "--names-only", pattern], capture_output=True, text=True
    ).stdout
    return {line.split(" ", 1)[0] for line in out.splitlines() if line.strip()}


def _installed() -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", "linux-image-*", "linux-headers-*"],
        capture_output=True,
        text=True,
    ).stdout
    return {
        line.split(" ", 1)[0] for line in out.splitlines() if line.endswith("install ok installed")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wanted", nargs="?", default="", help="the headers' kernel version")
    parser.add_argument("--arch", default="amd64")
    args = parser.parse_args(argv)
    offered = _apt_names(f"^linux-(image|headers)-[0-9].*-{args.arch}")
    on_disk = {n[len("vmlinuz-") :] for n in os.listdir("/boot") if n.startswith("vmlinuz-")}
    choice = choose(args.wanted or None, offered, _installed(), on_disk, args.arch)
    if choice is None:
        print(f"no stock Debian kernel image with headers in the archive for {args.arch}")
        return 1
    print(choice.version)
    print(" ".join(choice.packages))
    print(choice.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
