"""Helpers for the systemd files hosttune writes and reads: where units live, unit-name
escaping, enablement symlinks and the daemon-reload post step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hosttune.tunables.base import Change, Context, Row, setting

if TYPE_CHECKING:
    from hosttune.host import Host

UNIT_DIR = "/etc/systemd/system"  # where hosttune writes units and drop-ins
# Where system units live, in systemd's search order (systemd.unit(5) "Unit File Load Path");
# the first match wins. /lib/systemd/system: Debian without merged /usr.
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
SD_BOOTED = "/run/systemd/system"  # sd_booted(3): exists while systemd runs as PID 1


def find_unit(host: Host, name: str) -> str | None:
    """The unit file systemd loads for ``name`` (host path), None when there is none."""
    for d in UNIT_DIRS:
        p = f"{d}/{name}"
        if host.exists(p) and not host.is_dir(p):
            return p
    return None


def escape_path(path: str) -> str:
    """systemd-escape --path: '/mnt/models-hugepages' -> 'mnt-models\\x2dhugepages'
    (systemd.unit(5) "String Escaping for Inclusion in Unit Names")."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return "-"
    out = []
    for i, ch in enumerate("/".join(parts)):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def mount_unit_name(path: str) -> str:
    return escape_path(path) + ".mount"


def symlink_change(ctx: Context, tunable: str, path: str, target: str | None, *,
                   key: str, ours: str | None = None) -> tuple[Row, Change | None]:
    """Row + change making ``path`` a symlink to ``target``; with target None, removing it if
    it is our link (pointing to ``ours``) - never anything else."""
    st = ctx.host.file_state(path)
    cur = (f"-> {st.link_target}" if st.link_target is not None
           else ("a regular file" if st.exists else "absent"))
    want = f"-> {target}" if target is not None else "absent"
    ok = st.link_target == target if target is not None else st.link_target != ours
    if target is None:
        ch = Change(id=f"{tunable}/{path}", tunable=tunable, kind="file", path=path,
                    value=None, summary=f"remove {path}")
    else:
        ch = Change(id=f"{tunable}/{path}", tunable=tunable, kind="symlink", path=path,
                    value=target, summary=f"ln -s {target} {path}")
    return setting(tunable, key, cur, want, None if ctx.runtime_only else ch, ok=ok)


def daemon_reload(ctx: Context, tunable: str, why: str = "", *,
                  booted_only: bool = True) -> Change | None:
    """systemctl daemon-reload after unit files change, as a post step (after the files, and
    again after their revert) - only where systemd runs under the root (sd_booted(3)); an image
    or a container without systemd reads the units at its next boot. ``booted_only=False``:
    a family that also restarts a daemon with systemctl plans both wherever it plans the
    restart."""
    if ctx.runtime_only or (booted_only and not ctx.host.exists(SD_BOOTED)):
        return None
    argv = ["systemctl", "daemon-reload"]
    return Change(id=f"{tunable}/daemon-reload", tunable=tunable, kind="command",
                  summary="systemctl daemon-reload" + (f" ({why})" if why else ""),
                  runtime=False, params={"argv": argv, "revert_argv": argv, "post": True})
