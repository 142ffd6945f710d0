"""memlock: RLIMIT_MEMLOCK for inference users and for the container runtimes.

Two different mechanisms, and hand-made setups often use only the first:
- /etc/security/limits.d is read by pam_limits, i.e. for PAM sessions (ssh, login, su) only
  (limits.conf(5)). A drop-in scoped to ``@group`` by default; ``*`` only with scope:
  everyone (and ``*`` never covers root: pam_limits skips the wildcard for uid 0).
- dockerd and containerd are started by systemd and inherit *its* limits, never PAM's. They
  get ``LimitMEMLOCK=`` in a unit drop-in (systemd.exec(5)); the running daemon keeps its
  old limit until it is restarted. A container asking for more memlock than the daemon's hard
  limit fails at start in runc: "error setting rlimit type 8: operation not permitted" (seen
  with dockerd started from a shell at 8 MiB). Raising a hard limit needs CAP_SYS_RESOURCE;
  without it in the bounding set (some containers and sandboxed VMs) nothing can raise it, and
  a unit with a higher LimitMEMLOCK fails to start - so such hosts are reported unsupported.

Audit therefore reads the daemons' real limits from /proc/<pid>/limits.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from hosttune.host import Host
from hosttune.host.parsers import parse_limits, parse_mountinfo
from hosttune.profile.sizes import format_size, parse_size
from hosttune.tunables._systemd import SD_BOOTED, UNIT_DIRS, daemon_reload
from hosttune.tunables.base import (
    HEADER,
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    file_change,
)
from hosttune.tunables.knob import Knob, action, run_checked

if TYPE_CHECKING:
    from hosttune.profile.schema import MemlockSection

DROPIN_NAME = "90-hosttune-memlock.conf"
SYSUSERS_FILE = "/etc/sysusers.d/90-hosttune-memlock.conf"
LIMITS_CONF = "/etc/security/limits.conf"
LIMITS_D = "/etc/security/limits.d"
CAP_SYS_RESOURCE = 24  # linux/capability.h
# The process a service runs (comm, at most 15 chars); default: the unit name.
SERVICE_COMM = {"docker.service": "dockerd", "containerd.service": "containerd"}


def limit_bytes(limit: str | int) -> int | None:
    """Profile limit -> bytes; None = unlimited."""
    return None if limit == "unlimited" else parse_size(limit)


def limits_conf_value(limit: int | None) -> str:
    # limits.conf memlock is in KiB
    return "unlimited" if limit is None else str(-(-limit // 1024))


def systemd_value(limit: int | None) -> str:
    return "infinity" if limit is None else str(limit)


def fmt(v: int | None) -> str:
    return "unlimited" if v is None else format_size(v)


def satisfies(have: int | None, want: int | None) -> bool:
    if have is None:
        return True
    return want is not None and have >= want


def limits_dropin(sec: MemlockSection, limit: int | None, profile: str) -> str:
    who = "*" if sec.scope == "everyone" else f"@{sec.group}"
    v = limits_conf_value(limit)
    return (f"{HEADER}# profile: {profile}\n"
            "# pam_limits: applies to PAM sessions (ssh, login, su) only; services get\n"
            "# LimitMEMLOCK from systemd unit drop-ins instead.\n"
            + ("# '*' does not cover root (pam_limits skips the wildcard for uid 0).\n"
               if sec.scope == "everyone" else "")
            + f"{who}\tsoft\tmemlock\t{v}\n{who}\thard\tmemlock\t{v}\n")


def unit_dropin(limit: int | None, profile: str) -> str:
    return (f"{HEADER}# profile: {profile}\n"
            "# Container runtimes inherit systemd's limits, not limits.d (PAM only).\n"
            f"[Service]\nLimitMEMLOCK={systemd_value(limit)}\n")


def dropin_path(service: str) -> str:
    return f"/etc/systemd/system/{service}.d/{DROPIN_NAME}"


class LimitsEntry(msgspec.Struct, frozen=True):
    lineno: int
    domain: str
    type: str  # soft | hard | -
    item: str
    value: str
    file: str = ""  # the host path it was read from, where the caller names it


def parse_limits_conf(text: str, file: str = "") -> list[LimitsEntry]:
    """limits.conf(5): '<domain> <type> <item> <value>'; pam_limits strips '#' comments
    anywhere on a line and skips lines without four fields."""
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if len(parts) == 4:
            domain, kind, item, value = parts
            out.append(LimitsEntry(i, domain, kind, item, value, file))
    return out


def limits_files(host: Host) -> list[str]:
    """The files pam_limits reads, in its order: limits.conf, then limits.d/*.conf in
    lexical order (pam_limits(8))."""
    return [LIMITS_CONF] + [f"{LIMITS_D}/{n}" for n in host.listdir(LIMITS_D)
                            if n.endswith(".conf")]


def limits_conf_bytes(value: str) -> int | None:
    """A limits.conf memlock value (KiB) in bytes; -1/unlimited/infinity mean no limit
    (None). The inverse of limits_conf_value."""
    if value in ("-1", "unlimited", "infinity"):
        return None
    return int(value) * 1024


def parse_group_names(text: str) -> set[str]:
    return {ln.split(":", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}


_LIMIT_RE = re.compile(r"^\s*LimitMEMLOCK\s*=\s*(\S*)\s*$")


class UnitSetting(msgspec.Struct, frozen=True):
    file: str
    value: str


def memlock_settings(host: Host, service: str) -> list[UnitSetting]:
    """LimitMEMLOCK= assignments for a service in the order systemd applies them: the unit
    file, then drop-ins sorted by file name across all unit dirs (a name in an earlier dir
    masks the same name later); the last one wins (systemd.unit(5))."""
    out: list[UnitSetting] = []
    for d in UNIT_DIRS:
        text = host.read_text(f"{d}/{service}")
        if text is not None:
            out.extend(UnitSetting(f"{d}/{service}", m.group(1)) for ln in text.splitlines()
                       if (m := _LIMIT_RE.match(ln)))
            break
    by_name: dict[str, str] = {}
    for d in UNIT_DIRS:
        for n in host.listdir(f"{d}/{service}.d"):
            if n.endswith(".conf"):
                by_name.setdefault(n, f"{d}/{service}.d/{n}")
    for n in sorted(by_name):
        text = host.read_text(by_name[n]) or ""
        out.extend(UnitSetting(by_name[n], m.group(1)) for ln in text.splitlines()
                   if (m := _LIMIT_RE.match(ln)))
    return out


def docker_default_memlock(host: Host) -> int | Literal[False] | None:
    """Hard memlock from /etc/docker/daemon.json ``default-ulimits`` (bytes, None =
    unlimited), False when not set or unreadable."""
    try:
        data = json.loads(host.read_text("/etc/docker/daemon.json") or "{}")
        hard = data["default-ulimits"]["memlock"]["Hard"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not isinstance(hard, int):
        return False
    return None if hard < 0 else hard


def service_comm(svc: str) -> str:
    return SERVICE_COMM.get(svc, svc.removesuffix(".service")[:15])


def _proc_hidepid(host: Host) -> bool:
    try:
        mounts = parse_mountinfo(host.read_text("/proc/self/mountinfo") or "")
    except PermissionError:
        return False
    return any(m.mount_point == "/proc" and m.fstype == "proc"
               and m.options.get("hidepid", "0") not in ("0", "off") for m in mounts)


def has_cap(status_text: str, cap: int, field: str = "CapBnd") -> bool | None:
    for ln in status_text.splitlines():
        k, _, v = ln.partition(":")
        if k == field:
            try:
                return bool(int(v.strip(), 16) >> cap & 1)
            except ValueError:
                return None
    return None


class GroupKnob(Knob):
    """The memlock group: created by a command (groupadd, or systemd-sysusers in a tree),
    removed only while it is there. Its value: whether the group exists."""

    name = "group"

    def _exists(self, host: Host) -> bool:
        return self.params["group"] in parse_group_names(host.read_text("/etc/group") or "")

    def read(self, host: Host) -> dict[str, Any]:
        return {"existed": self._exists(host)}

    def desired(self) -> dict[str, Any]:
        return {"existed": True}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        # A rollback repeated after a power cut (or a groupadd the cut undid) finds the group
        # gone already: groupdel would fail ("does not exist") and the rollback with it.
        # groupadd/groupdel do not fsync /etc/group: run_checked syncs, or a cut could undo them.
        if self._exists(host) == bool(value["existed"]):
            return
        argv = self.params["argv"] if value["existed"] else self.params["revert_argv"]
        run_checked(host, argv, confined=self.params.get("confined", False))


class MemlockTunable(Tunable):
    name = "memlock"
    section = "memlock"
    knobs = (GroupKnob,)

    def validate(self, ctx: Context) -> None:
        sec = ctx.profile.memlock
        assert sec is not None  # the family runs only when its section is set
        if sec.scope == "group" and not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", sec.group):
            raise ctx.error("memlock.group", f"{sec.group!r} is not a valid group name")
        for i, s in enumerate(sec.services):
            if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+\.service", s):
                raise ctx.error(f"memlock.services[{i}]",
                                f"{s!r} is not a service unit name (e.g. docker.service)")

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = ctx.profile.memlock
        assert sec is not None  # the family runs only when its section is set
        host = ctx.host
        want = limit_bytes(sec.limit)
        rows: list[Row] = []
        changes: list[Change] = []
        profile = ctx.profile.name

        blocked, no_systemd = self._init_limits(host, want)

        # 1. PAM sessions: limits.d drop-in + the group it names
        if sec.scope == "group":
            try:
                groups = parse_group_names(host.read_text("/etc/group") or "")
            except PermissionError:
                groups = None
            key = f"group {sec.group}"
            if groups is None:
                rows.append(Row(self.name, key, "?", "exists", Status.NEEDS_ROOT))
            elif sec.group in groups:
                rows.append(Row(self.name, key, "exists", "exists", Status.OK))
            else:
                rows.append(Row(self.name, key, "absent", "exists", Status.DRIFT,
                                "the limits.d line names this group"))
                if not ctx.runtime_only:
                    changes.extend(self._group_changes(ctx, sec.group, sec.limits_file))
        row, ch = file_change(ctx, self.name, sec.limits_file,
                              limits_dropin(sec, want, profile),
                              key=f"limits.d {sec.limits_file}")
        rows.append(Row(row.tunable, row.key, row.current, row.desired, row.status,
                        "PAM sessions only"))
        if ch:
            changes.append(ch)

        if sec.scope == "group":
            rows.extend(self._wildcard_rows(host, sec))

        # 2. services: LimitMEMLOCK drop-in, then the running daemon's real limit
        dropin_changed = False
        pids_by_comm = host.pids_by_comm({service_comm(s) for s in sec.services})
        for svc in sec.services:
            path = dropin_path(svc)
            restart = f"restart {svc}"
            if blocked:
                rows.append(Row(self.name, f"{svc} LimitMEMLOCK", "-", fmt(want),
                                Status.UNSUPPORTED, blocked))
                continue
            row, ch = file_change(ctx, self.name, path, unit_dropin(want, profile),
                                  needs=(restart,), key=f"{svc} drop-in")
            configured = row.status == Status.OK
            settings = memlock_settings(host, svc)
            later = [u for u in settings if u.file != path and "/" + svc + ".d/" in u.file
                     and u.file.rsplit("/", 1)[-1] > DROPIN_NAME
                     and u.value != systemd_value(want)]
            if later:
                row = Row(row.tunable, row.key, row.current, row.desired, Status.CONFLICT,
                          f"{later[-1].file} sets LimitMEMLOCK={later[-1].value} after "
                          f"{DROPIN_NAME}; the last drop-in wins")
                configured = False
            if no_systemd and not row.note:
                row = Row(row.tunable, row.key, row.current, row.desired, row.status, no_systemd,
                          row.needs)
            rows.append(row)
            if ch:
                changes.append(ch)
                dropin_changed = True
            rows.append(self._daemon_row(host, svc, want, configured, pids_by_comm))

        if dropin_changed and (reload := daemon_reload(ctx, self.name,
                                                       "LimitMEMLOCK drop-ins changed")):
            changes.append(reload)
        return Evaluation(rows, changes)

    @staticmethod
    def _init_limits(host: Host, want: int | None) -> tuple[str, str]:
        """Why no service can get ``want`` here (PID 1's hard limit without CAP_SYS_RESOURCE
        to raise it), and a note when PID 1 is not systemd (unit drop-ins then reach nothing);
        empty strings when neither holds."""
        if host.offline:
            return "", ""
        blocked = ""
        try:
            pid1_status = host.read_text("/proc/1/status") or ""
            pid1_limits = parse_limits(host.read_text("/proc/1/limits") or "")
        except PermissionError:
            pid1_status, pid1_limits = "", {}
        pid1_hard = pid1_limits.get("Max locked memory", (None, None))[1]
        if has_cap(pid1_status, CAP_SYS_RESOURCE) is False and not satisfies(pid1_hard, want):
            blocked = (f"CAP_SYS_RESOURCE is not in the bounding set and PID 1's hard "
                       f"memlock is {fmt(pid1_hard)}: no service can get {fmt(want)} here "
                       "(a unit asking for more fails to start)")
        no_systemd = ""
        if not host.exists(SD_BOOTED):
            comm1 = host.read_value("/proc/1/comm") or "?"
            no_systemd = (f"systemd is not the init here (PID 1 is {comm1}): unit drop-ins "
                          "take effect only where systemd starts the daemons")
        return blocked, no_systemd

    def _group_changes(self, ctx: Context, group: str, limits_file: str) -> list[Change]:
        """Live: groupadd --system. In a tree (--root, an image before its first boot) a
        skipped groupadd would leave the limits.d rule naming a group the image lacks: write
        the sysusers.d(5) line that declares it, and let systemd-sysusers create it inside the
        tree now (--root: it reads and writes only there); groupdel --prefix undoes it."""
        host = ctx.host
        if not host.offline:
            return [action(
                self.name, GroupKnob.name, id=f"memlock/group:{group}",
                summary=f"groupadd --system {group}", runtime=False,
                params={"argv": ["groupadd", "--system", group],
                        "revert_argv": ["groupdel", group], "group": group})]
        root = str(host.root)
        text = (f"{HEADER}# profile: {ctx.profile.name}\n# the group {limits_file} names\n"
                f"g {group} -\n")
        _, file_ch = file_change(ctx, self.name, SYSUSERS_FILE, text,
                                 key=f"sysusers.d {SYSUSERS_FILE}")
        cmd = action(
            self.name, GroupKnob.name, id=f"memlock/group:{group}",
            summary=f"systemd-sysusers --root {root} {SYSUSERS_FILE}", runtime=False,
            params={"argv": ["systemd-sysusers", f"--root={root}",
                             str(host.path(SYSUSERS_FILE))],
                    "revert_argv": ["groupdel", "--prefix", root, group], "confined": True,
                    "group": group})
        return [c for c in (file_ch, cmd) if c]


    def still_running(self, host: Host, reverted: list[Change]) -> list[str]:
        """Daemons whose LimitMEMLOCK drop-in rollback removed and that still run with the
        tuned limit: systemd sets rlimits at exec, a running process keeps its own until it is
        restarted."""
        if host.offline:
            return []
        tuned: dict[str, int | None] = {}
        for c in reverted:
            m = re.search(r"^LimitMEMLOCK=(\S+)$", c.value or "", re.M)
            if c.path and c.path.endswith("/" + DROPIN_NAME) and m:
                v = m.group(1)
                tuned[c.path.split("/")[-2].removesuffix(".d")] = (
                    None if v == "infinity" else int(v))
        pids = host.pids_by_comm({service_comm(s) for s in tuned})
        out = []
        for svc, want in tuned.items():
            for pid in pids.get(service_comm(svc), []):
                try:
                    lim = parse_limits(host.read_text(f"/proc/{pid}/limits") or "")
                except OSError:
                    continue
                soft, hard = lim.get("Max locked memory", (0, 0))
                if soft == want and hard == want:
                    out.append(f"{service_comm(svc)} (pid {pid}) still runs with the tuned "
                               f"memlock limit {fmt(want)} until {svc} restarts")
        return out

    def _wildcard_rows(self, host: Host, sec: MemlockSection) -> list[Row]:
        """'*' memlock lines elsewhere (often appended to limits.conf by hand) give
        every PAM session the limit the profile meant for one group."""
        rows = []
        for f in limits_files(host):
            if f == sec.limits_file:
                continue
            try:
                text = host.read_text(f) or ""
            except PermissionError:
                continue
            for e in parse_limits_conf(text):
                if e.domain == "*" and e.item == "memlock":
                    rows.append(Row(self.name, f"limits {f}:{e.lineno}",
                                    f"* {e.type} memlock {e.value}", f"@{sec.group} only",
                                    Status.CONFLICT,
                                    "grants every PAM session (except root) this memlock "
                                    f"limit; the profile scopes it to @{sec.group}: remove "
                                    "the line, or set memlock.scope: everyone"))
        return rows

    def _daemon_row(self, host: Host, svc: str, want: int | None, configured: bool,
                    pids_by_comm: dict[str, list[int]]) -> Row:
        comm = service_comm(svc)
        key = f"{comm} running limit"
        restart = f"restart {svc}"
        pids = pids_by_comm.get(comm, [])
        if not pids and not host.is_root and _proc_hidepid(host):
            return Row(self.name, key, "?", fmt(want), Status.NEEDS_ROOT,
                       "/proc is mounted with hidepid: other users' daemons are invisible")
        if not pids:
            return Row(self.name, key, "not running", fmt(want), Status.OK,
                       "the drop-in applies when it starts")
        pid = pids[0]
        try:
            lim = parse_limits(host.read_text(f"/proc/{pid}/limits") or "")
        except PermissionError:
            return Row(self.name, key, "?", fmt(want), Status.NEEDS_ROOT)
        if "Max locked memory" not in lim:
            return Row(self.name, key, "?", fmt(want), Status.ERROR,
                       f"/proc/{pid}/limits has no 'Max locked memory'")
        soft, hard = lim["Max locked memory"]
        cur = f"{fmt(soft)} / hard {fmt(hard)} (pid {pid})"
        dflt = docker_default_memlock(host) if comm == "dockerd" else False
        daemon_note = ""
        if dflt is not False:
            daemon_note = f"daemon.json default-ulimits memlock hard {fmt(dflt)}"
            if not satisfies(hard, dflt):
                daemon_note += " is above the daemon's hard limit: every container fails to start"
        if satisfies(hard, want) and satisfies(soft, want):
            return Row(self.name, key, cur, fmt(want), Status.OK, daemon_note)
        note = (f"containers asking for memlock {fmt(want)} fail at start (runc: 'error "
                f"setting rlimit type 8: operation not permitted'): the daemon's hard limit is "
                f"{fmt(hard)}")
        if satisfies(hard, want):
            note = f"soft limit {fmt(soft)}; containers inherit it unless they set ulimits"
        cg = ""
        try:
            cg = host.read_text(f"/proc/{pid}/cgroup") or ""
        except PermissionError:
            pass
        try:
            st = host.read_text(f"/proc/{pid}/status") or ""
        except PermissionError:
            st = ""
        if has_cap(st, CAP_SYS_RESOURCE) is False:
            note += (f"; pid {pid} lacks CAP_SYS_RESOURCE in its bounding set: its hard limit "
                     "can only come from whoever starts it")
        if cg and f"/{svc}" not in cg:
            note += (f"; pid {pid} does not run in {svc}'s cgroup (started by hand?): the "
                     "drop-in will not reach it, it inherits its parent's limit")
        if daemon_note:
            note += f"; {daemon_note}"
        if configured:
            return Row(self.name, key, cur, fmt(want), Status.NEEDS_RESTART, note,
                       needs=(restart,))
        return Row(self.name, key, cur, fmt(want), Status.DRIFT, note, needs=(restart,))
