"""hugetlbfs mounts: mounted now (mount(8) through Host.run) and persisted (a marked /etc/fstab
entry, or a systemd .mount unit + its local-fs.target.wants link).

Sizing: ``size=`` is a limit, not a reservation; the pages come from the pool of the same page
size (tunables/hugepages.py). A mount larger than its pool is refused before anything is
written; a mount smaller than the model files meant to live on it is flagged.

Kernel facts: /proc/self/mountinfo shows hugetlbfs options as ``mode=750`` (octal, no leading
0), ``size=<bytes>``, ``pagesize=2M``, and uid=/gid= only when not 0 (fs/hugetlbfs/inode.c
hugetlbfs_show_options). ``mount -o remount,size=...`` returns 0 and changes nothing (checked
on 6.x here), so a mount with other options is reported, never "fixed" by a remount, and we
never unmount a mount we did not make (files on hugetlbfs vanish with it).
"""

from __future__ import annotations

import math
import os
from typing import Any

from hosttune.errors import ApplyError
from hosttune.host import Host
from hosttune.host.parsers import FSTAB_DISABLED, Mount, parse_fstab, parse_mountinfo
from hosttune.profile.sizes import format_size
from hosttune.tunables._systemd import UNIT_DIR, daemon_reload, mount_unit_name, symlink_change
from hosttune.tunables.base import (
    HEADER,
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    file_change,
    unified_diff,
)
from hosttune.tunables.hugepages import MountPlan, current_pool_pages, resolve
from hosttune.tunables.knob import Knob, SharedFileKnob, action, run_checked

FSTAB = "/etc/fstab"
MARK = "# hosttune: hugetlbfs "  # + mount point; the next line is our entry
DISABLED = FSTAB_DISABLED  # + an entry for the same mount point that ours replaces


# An image being built (apply --root on a rootfs that has never booted: no /proc, no /sys) knows
# neither the RAM nor the huge page sizes of the machine it will boot on. A mount that is its
# pool (MountPlan.whole_pool) still gets its fstab line there, without size=: the pool that
# hosttune-boot.service allocates at every boot is its limit.
IMAGE_NOTE = ("an image (no /proc, /sys): its first boot mounts it from fstab, limited by the "
              "pool hosttune-boot.service allocates")


def image_tree(ctx: Context) -> bool:
    """Is this a --root tree of an image that has not booted (no kernel facts at all)?"""
    return ctx.host.offline and not ctx.facts.hugepage_sizes \
        and ctx.facts.mem_total_bytes == 0


# --- pure helpers ---------------------------------------------------------------------------------
def mount_options(plan: MountPlan, gid: int, *, sized: bool = True) -> str:
    """mount -o options; ``sized=False`` leaves size= out (only for a whole-pool mount)."""
    m = plan.mount
    size = f"size={plan.bytes}," if sized else ""
    return f"pagesize={m.pagesize},{size}mode={int(m.mode, 8):04o},uid={m.uid},gid={gid}"


def options_match(mnt: Mount, plan: MountPlan, gid: int) -> list[str]:
    """Differences between a mounted hugetlbfs and the plan (empty: matches)."""
    o = mnt.options
    diffs = []
    want = {"pagesize": plan.mount.pagesize, "size": str(plan.bytes),
            "mode": f"{int(plan.mount.mode, 8):o}", "uid": str(plan.mount.uid), "gid": str(gid)}
    have = {"pagesize": o.get("pagesize", "?"), "size": o.get("size", "unlimited"),
            "mode": o.get("mode", "?").lstrip("0") or "0", "uid": o.get("uid", "0"),
            "gid": o.get("gid", "0")}
    want["mode"] = want["mode"].lstrip("0") or "0"
    if plan.whole_pool and have["size"] == "unlimited":
        want["size"] = "unlimited"  # the pool bounds it just the same (MountPlan.whole_pool)
    for k in want:
        if want[k] != have[k]:
            diffs.append(f"{k}={have[k]} (want {want[k]})")
    return diffs


def fstab_line(path: str, options: str) -> str:
    return f"hugetlbfs {path} hugetlbfs {options} 0 0\n"


def fstab_set(text: str, path: str, line: str | None) -> str:
    """``text`` with our marked entry for ``path`` set to ``line`` (None: removed). Other active
    entries for the same mount point are commented out with a marker (and restored when ours
    is removed), so every line we touch is marked and the edit is reversible."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    skip_next = False
    for ln in lines:
        if skip_next:
            skip_next = False
            continue
        if ln.rstrip("\n") == MARK + path:
            skip_next = True  # drop our old marker + entry; re-added below
            continue
        if ln.startswith(DISABLED) and _entry_path(ln[len(DISABLED):]) == path and line is None:
            out.append(ln[len(DISABLED):])  # give the operator's entry back
            continue
        if line is not None and not ln.lstrip().startswith("#") \
                and _entry_path(ln) == path:
            out.append(DISABLED + ln)
            continue
        out.append(ln)
    if line is not None:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out += [MARK + path + "\n", line]
    return "".join(out)


def _entry_path(line: str) -> str | None:
    e = parse_fstab(line)
    return e[0].file.rstrip("/") or "/" if e else None


def models_bytes(host: Host, plan: MountPlan) -> tuple[int, list[str]]:
    """Bytes the mount's model files take on hugetlbfs (each rounded up to whole pages), and
    the ones that do not exist."""
    total = 0
    missing = []
    for f in plan.mount.models:
        try:
            st = host.stat(f)
            if st is None:
                raise FileNotFoundError(f)
            size = st.st_size
        except OSError:
            missing.append(f)
            continue
        total += math.ceil(size / plan.page_bytes) * plan.page_bytes
    return total, missing


def resolve_gid(host: Host, gid: int | str) -> int | None:
    if isinstance(gid, int):
        return gid
    for line in (host.read_text("/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == gid:
            try:
                return int(parts[2])
            except ValueError:
                return None
    return None


def find_mount(host: Host, path: str) -> Mount | None:
    """The mount on top at ``path`` (the last one listed), if any."""
    found = None
    for m in parse_mountinfo(host.read_text("/proc/self/mountinfo") or ""):
        if m.mount_point == path:
            found = m
    return found


# --- the tunable ----------------------------------------------------------------------------------
class MountKnob(Knob):
    """A hugetlbfs mount made now (its fstab line or mount unit keeps it at boot). Its
    value: whether it is mounted, and the directories the mount point needed."""

    name = "mount"

    def read(self, host: Host) -> dict[str, Any]:
        mnt = find_mount(host, self.path)
        created = []
        cur = self.path
        while cur not in ("", "/") and not host.exists(cur):
            created.append(cur)
            cur = os.path.dirname(cur)
        return {"mounted": mnt is not None and mnt.fstype == "hugetlbfs",
                "created_dirs": list(reversed(created))}

    def desired(self) -> dict[str, Any]:
        return {"mounted": True}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        if not value["mounted"]:
            self.restore(host, value)
            return
        host.makedirs(self.path)
        run_checked(host, self.params["argv"])
        if not host.offline and find_mount(host, self.path) is None:
            raise ApplyError(f"{self.path} is not in /proc/self/mountinfo after mount")

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        mnt = find_mount(host, self.path)
        # unmount only what we mounted
        if not original["mounted"] and mnt is not None and mnt.fstype == "hugetlbfs":
            run_checked(host, ["umount", self.path])
        for d in reversed(original.get("created_dirs", [])):
            host.rmdir_if_empty(d)


class FstabMountKnob(SharedFileKnob):
    """hosttune's marked fstab line for one mount point (or none: ``params["line"]`` None
    removes ours); another mount of that point is commented out with a marker."""

    name = "fstab"

    def with_ours(self, text: str) -> str:
        return fstab_set(text, self.params["mount"], self.params["line"])

    def without_ours(self, text: str, original: str) -> str:
        return fstab_set(text, self.params["mount"], None)


class HugetlbfsTunable(Tunable):
    name = "hugetlbfs"
    section = "hugetlbfs"
    knobs = (MountKnob, FstabMountKnob)

    def validate(self, ctx: Context) -> None:
        res = resolve(ctx)
        paths: set[str] = set()
        used: dict[str, int] = {}
        for plan in res.mounts:
            m = plan.mount
            if m.path in paths:
                raise ctx.error(f"{plan.key}.path", f"{m.path} is mounted twice")
            paths.add(m.path)
            if resolve_gid(ctx.host, m.gid) is None:
                raise ctx.error(f"{plan.key}.gid", f"no group {m.gid!r} in /etc/group")
            if plan.page_bytes not in ctx.facts.hugepage_sizes:
                continue  # reported as unsupported by evaluate
            if m.pagesize in res.pools:
                pool = res.pools[m.pagesize].pages
                pool_desc = f"its {m.pagesize} pool ({res.pools[m.pagesize].key}.size)"
            else:
                pool = current_pool_pages(ctx.host, plan.page_bytes)
                pool_desc = f"the host's {m.pagesize} pool (not in the profile)"
            used[m.pagesize] = used.get(m.pagesize, 0) + plan.pages
            size = f"{plan.key}.size"
            if plan.pages > pool:
                raise ctx.error(size, f"a mount of {format_size(plan.bytes)} is larger than "
                                f"{pool_desc} of {format_size(pool * plan.page_bytes)}")
            if used[m.pagesize] > pool:
                raise ctx.error(size, f"the {m.pagesize} mounts add up to "
                                f"{format_size(used[m.pagesize] * plan.page_bytes)}, more "
                                f"than {pool_desc} of {format_size(pool * plan.page_bytes)}")

    def evaluate(self, ctx: Context) -> Evaluation:
        res = resolve(ctx)
        rows: list[Row] = []
        changes: list[Change] = []
        unit_files = False
        for plan in res.mounts:
            m = plan.mount
            if plan.page_bytes not in ctx.facts.hugepage_sizes and plan.whole_pool \
                    and image_tree(ctx) and m.persist == "fstab":
                self._image_fstab(ctx, plan, rows, changes)
                continue
            if plan.page_bytes not in ctx.facts.hugepage_sizes:
                rows.append(Row(self.name, m.path, "-", f"{m.pagesize} hugetlbfs",
                                Status.UNSUPPORTED, f"no {m.pagesize} huge pages here"))
                continue
            gid = resolve_gid(ctx.host, m.gid)
            assert gid is not None  # validate() checked
            opts = mount_options(plan, gid)
            self._runtime(ctx, plan, opts, rows, changes)
            self._capacity(ctx, plan, rows)
            sizeless = plan.whole_pool and self._persisted_sizeless(ctx, plan, gid)
            unit_files |= self._persist(
                ctx, plan, mount_options(plan, gid, sized=not sizeless), rows, changes)
        if unit_files:
            dr = daemon_reload(ctx, self.name)
            if dr:
                changes.append(dr)
        return Evaluation(rows, changes)

    def _image_fstab(self, ctx: Context, plan: MountPlan, rows: list[Row],
                     changes: list[Change]) -> None:
        """A whole-pool mount in an image that has never booted (IMAGE_NOTE): its fstab line
        without size=; mounting is the first boot's."""
        m = plan.mount
        gid = resolve_gid(ctx.host, m.gid)
        assert gid is not None  # validate() checked
        rows.append(Row(self.name, f"{m.path} mounted", "-", f"hugetlbfs {m.pagesize}",
                        Status.OFFLINE, IMAGE_NOTE))
        line = fstab_line(m.path, mount_options(plan, gid, sized=False))
        self._fstab(ctx, m.path, line, rows, changes)

    def _persisted_sizeless(self, ctx: Context, plan: MountPlan, gid: int) -> bool:
        """Does our persisted entry for this whole-pool mount carry no size= (written in an
        image, where the RAM was unknown)? Then it stays as it is: it says the same."""
        path = plan.mount.path
        opts = mount_options(plan, gid, sized=False)
        try:
            if plan.mount.persist == "fstab":
                text = ctx.host.read_text(FSTAB) or ""
                return MARK + path + "\n" + fstab_line(path, opts) in text
            st = ctx.host.file_state(f"{UNIT_DIR}/{mount_unit_name(path)}")
        except PermissionError:  # reported by the fstab/unit rows themselves
            return False
        return st.content == self._unit_text(plan, opts).encode()

    # -- runtime: is it mounted with these options? -------------------------------------------
    def _runtime(self, ctx: Context, plan: MountPlan, opts: str, rows: list[Row],
                 changes: list[Change]) -> None:
        host = ctx.host
        path = plan.mount.path
        gid = int(opts.rsplit("gid=", 1)[1])
        mnt = find_mount(host, path)
        key = f"{path} mounted"
        want = f"hugetlbfs {plan.mount.pagesize} {format_size(plan.bytes)}"
        if mnt is not None and mnt.fstype == "hugetlbfs":
            diffs = options_match(mnt, plan, gid)
            cur = f"hugetlbfs {mnt.options.get('pagesize', '?')}"
            if not diffs:
                rows.append(Row(self.name, key, f"{cur} {format_size(plan.bytes)}", want,
                                Status.OK))
            else:
                rows.append(Row(self.name, key, cur, want, Status.DRIFT,
                                "mounted with " + ", ".join(diffs) + ": remount does not "
                                "change hugetlbfs sizes and hosttune never unmounts what it "
                                "did not mount - unmount it (its files are lost) and apply"))
            return
        if mnt is not None:
            rows.append(Row(self.name, key, f"{mnt.fstype} mount", want, Status.DRIFT,
                            f"{path} holds a {mnt.fstype} mount: unmount it or choose another "
                            "path"))
            return
        if host.exists(path) and not host.is_dir(path):
            rows.append(Row(self.name, key, "not a directory", want, Status.DRIFT,
                            f"{path} exists and is not a directory"))
            return
        argv = ["mount", "-t", "hugetlbfs", "-o", opts, "hugetlbfs", path]
        if host.offline:
            rows.append(Row(self.name, key, "not mounted", want, Status.OFFLINE,
                            "--root tree: only `" + " ".join(argv) + "` could mount it"))
            return
        rows.append(Row(self.name, key, "not mounted", want, Status.DRIFT))
        changes.append(action(
            self.name, MountKnob.name, id=f"hugetlbfs/mount {path}", path=path,
            summary=" ".join(argv), runtime=True, params={"argv": argv}))

    # -- models meant to live here ------------------------------------------------------------
    def _capacity(self, ctx: Context, plan: MountPlan, rows: list[Row]) -> None:
        if not plan.mount.models:
            return
        need, missing = models_bytes(ctx.host, plan)
        note = f"missing: {', '.join(missing)}" if missing else ""
        key = f"{plan.mount.path} capacity"
        desired = f"{format_size(need)} of models"
        if need > plan.bytes:
            rows.append(Row(self.name, key, format_size(plan.bytes), desired, Status.CONFLICT,
                            "; ".join(x for x in (
                                f"the mount is {format_size(need - plan.bytes)} too small "
                                f"for its {len(plan.mount.models)} model file(s)", note) if x)))
        else:
            rows.append(Row(self.name, key, format_size(plan.bytes), desired, Status.OK, note))

    # -- persistence --------------------------------------------------------------------------
    def _persist(self, ctx: Context, plan: MountPlan, opts: str, rows: list[Row],
                 changes: list[Change]) -> bool:
        """Rows/changes for fstab or the mount unit; True if a unit file changes."""
        path = plan.mount.path
        unit = mount_unit_name(path)
        unit_path = f"{UNIT_DIR}/{unit}"
        link_path = f"{UNIT_DIR}/local-fs.target.wants/{unit}"
        unit_changed = False
        if plan.mount.persist == "fstab":
            self._fstab(ctx, path, fstab_line(path, opts), rows, changes)
            # switching from a unit: remove ours (only ours: it starts with our header)
            st = ctx.host.file_state(unit_path)
            if st.exists and st.content is not None and st.content.startswith(HEADER.encode()):
                for row, ch in (symlink_change(ctx, self.name, link_path, None,
                                               key=f"{path} unit enabled", ours=unit_path),
                                file_change(ctx, self.name, unit_path, None,
                                            key=f"{path} unit")):
                    rows.append(row)
                    if ch:
                        changes.append(ch)
                        unit_changed = True
            return unit_changed
        self._fstab(ctx, path, None, rows, changes)
        row, ch = file_change(ctx, self.name, unit_path, self._unit_text(plan, opts),
                              key=f"{path} unit {unit}")
        rows.append(row)
        if ch:
            changes.append(ch)
            unit_changed = True
        row, ch = symlink_change(ctx, self.name, link_path, unit_path,
                                 key=f"{path} unit enabled (local-fs.target)")
        rows.append(row)
        if ch:
            changes.append(ch)
            unit_changed = True
        return unit_changed

    @staticmethod
    def _unit_text(plan: MountPlan, opts: str) -> str:
        m = plan.mount
        return (
            f"{HEADER}"
            "[Unit]\n"
            f"Description=hugetlbfs {m.pagesize} for model files at {m.path} (hosttune)\n"
            "Documentation=https://docs.kernel.org/admin-guide/mm/hugetlbpage.html\n"
            "\n[Mount]\n"
            "What=hugetlbfs\n"
            f"Where={m.path}\n"
            "Type=hugetlbfs\n"
            f"Options={opts}\n"
            "DirectoryMode=0755\n"
            "\n[Install]\n"
            "WantedBy=local-fs.target\n"
        )

    def _fstab(self, ctx: Context, path: str, line: str | None, rows: list[Row],
               changes: list[Change]) -> None:
        host = ctx.host
        try:
            text = host.read_text(FSTAB)
        except PermissionError:
            rows.append(Row(self.name, f"{path} fstab", "?", "entry", Status.NEEDS_ROOT))
            return
        cur = text or ""
        new = fstab_set(cur, path, line)
        mine = MARK + path + "\n" in cur
        if new == cur:
            if line is not None:
                rows.append(Row(self.name, f"{path} fstab", "entry", "entry", Status.OK))
            return
        if line is None and not mine:
            return
        others = [e for e in parse_fstab(cur) if e.file.rstrip("/") == path]
        note = ""
        if line is not None and any(not _is_ours(cur, e.lineno) for e in others):
            bad = [e for e in others if not _is_ours(cur, e.lineno)]
            note = "; ".join(f"{FSTAB}:{e.lineno} also mounts {path} ({e.vfstype} {e.options}): "
                             "commented out with a marker" for e in bad)
        rows.append(Row(self.name, f"{path} fstab",
                        "entry differs" if mine else "absent",
                        "entry" if line is not None else "absent", Status.DRIFT, note))
        if ctx.runtime_only:
            return
        changes.append(action(
            self.name, FstabMountKnob.name, id=f"hugetlbfs/fstab {path}", path=FSTAB,
            summary=f"{'set' if line else 'remove'} the hosttune entry for {path} in {FSTAB}",
            runtime=False, params={"mount": path, "line": line},
            diff=unified_diff(FSTAB, text, new)))


def _is_ours(text: str, lineno: int) -> bool:
    lines = text.splitlines()
    return lineno >= 2 and lines[lineno - 2].startswith(MARK)
