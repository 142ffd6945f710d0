"""Helpers the test modules share (fixtures live in conftest.py): tree snapshots for
byte-exact comparisons and a Host that meets what a non-root audit meets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hosttune.host import Host


def snapshot(root: Path) -> dict[str, str]:
    """Every file and symlink under root (except hosttune's own state) with its content hash
    and mode."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.startswith("var/lib/hosttune"):
            continue
        for d in dirnames:
            p = Path(dirpath, d)
            if os.path.relpath(p, root) == "var/lib/hosttune":
                continue
            if p.is_symlink():
                out[os.path.relpath(p, root)] = "link:" + os.readlink(p)
            else:
                out[os.path.relpath(p, root) + "/"] = oct(p.stat().st_mode)
        for f in filenames:
            p = Path(dirpath, f)
            if p.is_symlink():
                out[os.path.relpath(p, root)] = "link:" + os.readlink(p)
            else:
                out[os.path.relpath(p, root)] = (
                    hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode))
    return out


def checksums(paths: list[Path]) -> dict[str, str]:
    """Every entry under ``paths`` (not following links): type, mode, content hash."""
    out: dict[str, str] = {}

    def one(p: Path) -> None:
        try:
            st = p.lstat()
        except FileNotFoundError:
            out[str(p)] = "absent"
            return
        if p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[str(p)] = f"dir {st.st_mode:o} {st.st_uid}:{st.st_gid}"
            for c in sorted(p.iterdir()):
                one(c)
        else:
            out[str(p)] = f"{st.st_mode:o} " + hashlib.sha256(p.read_bytes()).hexdigest()

    for p in paths:
        one(p)
    return out


class NonRootHost(Host):
    """What a non-root audit meets: /proc/<pid> of root daemons hidden (hidepid=2) or
    unreadable files."""

    deny: tuple[str, ...] = ()

    @property
    def is_root(self) -> bool:
        return False

    def read_text(self, p: str) -> str | None:
        if p.startswith(self.deny):
            raise PermissionError(13, "Permission denied", p)
        return super().read_text(p)
