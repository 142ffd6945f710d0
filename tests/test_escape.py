"""The escape harness: --root is a confinement promise.

A decoy directory sits next to the fixture tree. Each case moves one directory (or file) of
the tree into the decoy and plants a symlink to it in its place - absolute, or relative and
climbing out with '..'. Then audit, plan, apply and rollback run under --root. Whatever each
of them answers, no byte of the decoy may change and no line of it may be printed (its files
hold a marker); the live /etc, which `TREE/etc -> /etc` points at, is checksummed too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers import checksums

MARKER = "DECOY-7f3a-LINE"
PROFILE = "ryzen9950x-rtx5090"
# what hosttune writes on a live host: the live-/etc case checks these did not change
LIVE = ["/etc/sysctl.d", "/etc/security/limits.d", "/etc/modprobe.d", "/etc/default/grub.d",
        "/etc/systemd/system", "/etc/hosttune", "/etc/fstab", "/etc/environment",
        "/var/lib/hosttune"]



def _mark(d: Path) -> None:
    """Put the marker into every file of the decoy (and one file in each directory), so a
    read through a link shows up as the marker in an output."""
    d.mkdir(parents=True, exist_ok=True)
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.write_text(f"{MARKER}\n1\n")
        Path(dirpath, "decoy.conf").write_text(f"{MARKER} = 1\n")


# (name, path in the tree, how the link points: "abs" to the decoy, "rel" climbing to it,
#  "live" at the same path of the live system)
CASES = [
    ("proc-sys-vm", "proc/sys/vm", "abs"),
    ("proc-sys-vm-rel", "proc/sys/vm", "rel"),
    ("proc-sys", "proc/sys", "abs"),
    ("cpufreq-policy0", "sys/devices/system/cpu/cpufreq/policy0", "abs"),
    ("cpufreq-policy0-rel", "sys/devices/system/cpu/cpufreq/policy0", "rel"),
    ("hugepages", "sys/kernel/mm/hugepages", "abs"),
    ("etc", "etc", "abs"),
    ("etc-rel", "etc", "rel"),
    ("etc-live", "etc", "live"),
    ("sysctl.d", "etc/sysctl.d", "abs"),
    ("limits.d", "etc/security/limits.d", "abs"),
    ("systemd-system", "etc/systemd/system", "abs"),
    ("grub.d", "etc/default/grub.d", "abs"),
    ("modprobe.d", "etc/modprobe.d", "abs"),
    ("etc-hosttune", "etc/hosttune", "abs"),
    ("fstab", "etc/fstab", "abs"),
    ("environment", "etc/environment", "rel"),
    ("state-dir", "var/lib/hosttune", "abs"),
    ("state-dir-rel", "var/lib/hosttune", "rel"),
    ("history", "var/lib/hosttune/history", "abs"),
    ("model-mount", "srv/hosttune", "abs"),
]


def _plant(tree: Path, decoy: Path, rel: str, how: str) -> None:
    link = tree / rel
    if how == "live":
        shutil.rmtree(link) if link.is_dir() else link.unlink(missing_ok=True)
        link.symlink_to("/" + rel)
        return
    target = decoy / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if link.exists():
        shutil.move(str(link), str(target))  # the decoy holds what the tree had there
    elif rel.endswith(("fstab", "environment")):
        target.write_text(f"# {MARKER}\n")
    else:
        target.mkdir(parents=True)
    if target.is_dir():
        _mark(target)
    else:
        target.write_text(target.read_text() + f"# {MARKER}\n")
    link.parent.mkdir(parents=True, exist_ok=True)
    if how == "abs":
        link.symlink_to(target)
    else:  # climb out of the tree: enough '..' for any depth, then the decoy's absolute path
        link.symlink_to("../" * 40 + str(target).lstrip("/"))


@pytest.mark.parametrize(("name", "rel", "how"), CASES, ids=[c[0] for c in CASES])
def test_no_command_reaches_outside_the_tree(tmp_path, name, rel, how):
    from tests import fakehost

    tree = fakehost.ryzen_9950x(tmp_path / "tree")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "canary").write_text(f"{MARKER}\n")
    _plant(tree, decoy, rel, how)
    watched = [decoy] + ([Path(p) for p in LIVE] if how == "live" else [])
    before = checksums(watched)
    outputs = []
    for args in (["audit"], ["plan"], ["apply", "--yes"], ["rollback", "--yes"],
                 ["apply", "--yes"], ["rollback", "--yes"]):
        prof = [] if args[0] == "rollback" else ["--profile", PROFILE]
        p = run_cli(*args, "--root", str(tree), *prof, "--json")
        assert p.returncode in (0, 1, 2), (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr, \
            (args, p.stderr)
        outputs.append(p.stdout + p.stderr)
    assert checksums(watched) == before, f"{name}: something outside the tree changed"
    for out in outputs:
        assert MARKER not in out, f"{name}: a line of a file outside the tree was printed"
    assert not Path("/tmp/hosttune-escape").exists()
