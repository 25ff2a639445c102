"""The kprobe lane's choice of guest kernel (scripts/vm_kernel.py), without booting anything.

The archive offers the same image signed (linux-image-V) or unsigned (linux-image-V-unsigned),
and drops old versions: the lane must boot the headers' kernel whichever package has it, else
the newest stock kernel, and say which and why.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vm_kernel.py"
_spec = importlib.util.spec_from_file_location("vm_kernel", SCRIPT)
vm_kernel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vm_kernel)

WANT = "6.12.118+deb12-amd64"
# What the archive offers beside the image itself: flavours the lane must never boot.
NOISE = {
    f"linux-image-{WANT}-dbg",
    "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
    "linux-image-6.12.118+deb12-rt-amd64",
    "linux-image-amd64",
    "linux-headers-6.12.118+deb12-cloud-amd64",
}
HEADERS = f"linux-headers-{WANT}"


def choose(offered, installed=(HEADERS,), on_disk=(), wanted=WANT):
    return vm_kernel.choose(wanted, set(offered) | NOISE, set(installed), set(on_disk))


def test_signed_only():
    c = choose({f"linux-image-{WANT}", HEADERS})
    assert (c.version, c.packages) == (WANT, [f"linux-image-{WANT}"])
    assert "signed image" in c.reason and WANT in c.reason


def test_unsigned_only():
    c = choose({f"linux-image-{WANT}-unsigned", HEADERS})
    assert (c.version, c.packages) == (WANT, [f"linux-image-{WANT}-unsigned"])
    assert "unsigned image" in c.reason


def test_both_offered_takes_the_signed_one():
    c = choose({f"linux-image-{WANT}", f"linux-image-{WANT}-unsigned", HEADERS})
    assert c.packages == [f"linux-image-{WANT}"]


def test_the_installed_package_is_kept():
    image = f"linux-image-{WANT}-unsigned"
    c = choose({f"linux-image-{WANT}", image, HEADERS}, installed={image, HEADERS})
    assert c.version == WANT and c.packages == []


def test_an_image_already_in_boot_needs_no_package():
    c = choose(set(), on_disk={WANT})
    assert (c.version, c.packages) == (WANT, [])
    assert "already in /boot" in c.reason


def test_the_headers_version_gone_falls_back_to_the_newest_stock_kernel():
    offered = {
        "linux-image-6.12.9+deb12-amd64",
        "linux-headers-6.12.9+deb12-amd64",
        "linux-image-6.12.117+deb12-amd64-unsigned",
        "linux-headers-6.12.117+deb12-amd64",
        # Newer, but without headers in the archive: BCC in the guest could not compile.
        "linux-image-6.12.119+deb12-amd64",
        "linux-image-6.1.0-47-amd64",
        "linux-headers-6.1.0-47-amd64",
    }
    c = choose(offered)
    assert c.version == "6.12.117+deb12-amd64"  # 117 > 9 as numbers, not as text
    assert c.packages == [
        "linux-image-6.12.117+deb12-amd64-unsigned",
        "linux-headers-6.12.117+deb12-amd64",
    ]
    assert f"no image for {WANT}" in c.reason and "newest" in c.reason


def test_no_wanted_version_takes_the_newest():
    c = choose({"linux-image-6.1.0-47-amd64", "linux-headers-6.1.0-47-amd64"}, wanted=None)
    assert c.version == "6.1.0-47-amd64"
    assert "newest" in c.reason


def test_nothing_to_boot():
    assert choose(set(), installed=()) is None


def test_this_machines_archive():
    """The lane's own question, asked of this machine's apt: an answer it can boot."""
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache: not a Debian-like machine")
    build = Path("/lib/modules") / subprocess.check_output(["uname", "-r"], text=True).strip()
    build = (build / "build").resolve()
    wanted = (
        build.name.removeprefix("linux-headers-") if build.name.startswith("linux-headers-") else ""
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *([wanted] if wanted else [])], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version, packages, reason = done.stdout.splitlines()
    assert version in reason
    available = set(
        subprocess.run(
            ["apt-cache", "search", "--names-only", f"^linux-image-{version}"],
            capture_output=True,
            text=True,
        ).stdout.split()
    )
    assert Path(f"/boot/vmlinuz-{version}").exists() or any(
        p.startswith("linux-image-") and p in available for p in packages.split()
    ), (version, packages)
