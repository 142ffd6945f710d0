"""Shared configuration files: memlock, duplicated keys, sysctl syntax, fstab edits,
huge-page pools and hugetlbfs mounts."""

from __future__ import annotations

import re
from collections.abc import Iterator

import msgspec

from hosttune.doctor import boot
from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.shellcmds import SedDelete, history_lines, sed_deletions, shell_lines
from hosttune.host.facts import find_pids
from hosttune.host.parsers import (
    FSTAB_DISABLED,
    memparse,
    parse_cmdline,
    parse_fstab,
    parse_limits,
    parse_meminfo,
    parse_mountinfo,
    parse_sysctl_conf,
    sysctl_key_to_path,
)
from hosttune.profile.sizes import format_size, parse_size
from hosttune.tunables._systemd import UNIT_DIRS, mount_unit_name
from hosttune.tunables.hugetlbfs import MARK as HUGETLBFS_MARK
from hosttune.tunables.memlock import (
    LimitsEntry,
    limits_conf_bytes,
    limits_files,
    parse_limits_conf,
)
from hosttune.tunables.sysctl import effective_value, kernel_reading, sysctl_files

# --- limits.conf -----------------------------------------------------------------


def all_limit_lines(ctx: DoctorContext) -> list[LimitsEntry]:
    out: list[LimitsEntry] = []
    for f in limits_files(ctx.host):
        out.extend(parse_limits_conf(ctx.host.read_text(f) or "", f))
    return out


def _has_service_memlock(ctx: DoctorContext, svc: str) -> bool:
    for d in (f"/etc/systemd/system/{svc}.d", f"/run/systemd/system/{svc}.d"):
        for n in ctx.host.listdir(d):
            if "LimitMEMLOCK" in (ctx.host.read_text(f"{d}/{n}") or ""):
                return True
    return "LimitMEMLOCK" in (ctx.host.read_text(f"/etc/systemd/system/{svc}") or "")


def _memlock_dropins(ctx: DoctorContext, svc: str) -> list[str]:
    out = []
    for d in (f"/etc/systemd/system/{svc}.d", f"/run/systemd/system/{svc}.d"):
        out += [f"{d}/{n}" for n in ctx.host.listdir(d)
                if "LimitMEMLOCK" in (ctx.host.read_text(f"{d}/{n}") or "")]
    return out


def _started_before(ctx: DoctorContext, pid: int, files: list[str]) -> bool | None:
    """Did process ``pid`` start before the newest of ``files`` was written? None when it
    cannot be told (no /proc/PID/stat or /proc/stat btime: a tree)."""
    import os

    try:
        stat = ctx.host.read_text(f"/proc/{pid}/stat") or ""
        btime = next((int(ln.split()[1]) for ln in
                      (ctx.host.read_text("/proc/stat") or "").splitlines()
                      if ln.startswith("btime ")), None)
        sts = [ctx.host.stat(f) for f in files]
        mtimes = [st.st_mtime for st in sts if st is not None]
        if len(mtimes) < len(sts):
            return None
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()
    if btime is None or len(fields) < 20 or not mtimes:
        return None
    started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # proc(5): field 22
    return started < max(mtimes)


def check_memlock(ctx: DoctorContext) -> Iterator[Finding]:
    lines = [x for x in all_limit_lines(ctx) if x.item == "memlock"]
    for x in lines:
        if x.domain == "*" and limits_conf_bytes(x.value) is None:
            yield Finding(
                "memlock.unlimited-for-everyone", Severity.WARNING,
                f"memlock {x.type} limit unlimited for every user", f"{x.file}:{x.lineno}",
                "any local account can lock all RAM and starve the host (and the model "
                "containers) of memory.",
                "profile key memlock.scope: group (limits for @inference only)")
    if not lines:
        return
    wanted = [limits_conf_bytes(x.value) for x in lines]
    want_unlimited = any(w is None for w in wanted)
    want = None if want_unlimited else max(w for w in wanted if w is not None)
    for comm, svc in (("dockerd", "docker.service"), ("containerd", "containerd.service")):
        for pid in find_pids(ctx.host, comm):
            try:
                lim = parse_limits(ctx.host.read_text(f"/proc/{pid}/limits") or "")
            except PermissionError:
                continue
            soft_hard = lim.get("Max locked memory")
            if soft_hard is None:
                continue
            hard = soft_hard[1]
            if hard is None or (want is not None and hard >= want):
                continue
            if _has_service_memlock(ctx, svc):
                before = _started_before(ctx, pid, _memlock_dropins(ctx, svc))
                if before is None:
                    continue  # no start time to compare (a tree): nothing seen, nothing said
                if not before:
                    yield Finding(
                        "memlock.dropin-not-effective", Severity.ERROR,
                        f"{comm} started after its LimitMEMLOCK drop-in and still has "
                        f"{format_size(hard)}", f"live: /proc/{pid}/limits",
                        f"{', '.join(_memlock_dropins(ctx, svc))} is older than the running "
                        f"{comm}, yet its limit did not reach it: the drop-in is not loaded "
                        "(no daemon-reload, a [Service] section missing, or a later drop-in "
                        "lowers it again).", f"systemctl cat {svc}; systemctl show -p "
                        f"LimitMEMLOCK {svc}; profile key memlock.services")
                    continue
                yield Finding(
                    "memlock.daemon-not-restarted", Severity.WARNING,
                    f"{comm} still runs with memlock {format_size(hard)}",
                    f"live: /proc/{pid}/limits", f"a LimitMEMLOCK drop-in for {svc} exists, "
                    f"but the running {comm} started before it (systemd applies limits when "
                    "it starts the service): containers asking for more fail until then.",
                    f"systemctl daemon-reload && systemctl restart {svc}")
            else:
                first = lines[0]
                yield Finding(
                    "memlock.login-sessions-only", Severity.ERROR,
                    f"memlock is raised for login sessions only; {comm} runs with "
                    f"{format_size(hard)}", f"{first.file}:{first.lineno} · live: "
                    f"/proc/{pid}/limits",
                    "limits.conf/limits.d are applied by PAM at login; daemons started by "
                    f"systemd inherit its limit, and containers cannot get more than {comm}'s "
                    "hard limit (runc: 'error setting rlimit type 8: operation not permitted').",
                    f"profile key memlock.services (LimitMEMLOCK drop-in for {svc}), then "
                    f"restart {svc}")


# --- duplicated keys -----------------------------------------------------------------


class Keyed(msgspec.Struct, frozen=True):
    """One assignment of a shared file, in the order its consumer reads them."""

    file: str
    lineno: int
    key: str
    value: str  # effective value (what the consumer ends up with)


def _loc(run: list[Keyed]) -> str:
    a, b = run[0].lineno, run[-1].lineno
    return f"{run[0].file}:{a}" if a == b else f"{run[0].file}:{a}-{b}"


def repeated_blocks(entries: list[Keyed]) -> list[tuple[list[Keyed], list[Keyed]]]:
    """Keys of one file set again to the same value, grouped into blocks: (earlier lines,
    later lines) where a run of entries repeats an earlier run (a `tee -a` run twice, or a
    whole session: lines 69-84 again at 85-100). The longest repeats are taken first; a copy
    belongs to one block. The same key in two files is not a repeat: that is one file
    overriding another (dup.sysctl when the values differ)."""
    n = len(entries)

    def same(a: int, b: int) -> bool:
        x, y = entries[a], entries[b]
        return x.file == y.file and x.key == y.key and x.value == y.value

    length = [[0] * (n + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(n - 1, i, -1):
            if same(i, j):
                length[i][j] = 1 + length[i + 1][j + 1]
    cands = sorted(((min(length[i][j], j - i), i, j) for i in range(n) for j in range(i + 1, n)
                    if length[i][j]), key=lambda c: (-c[0], c[2]))
    covered: set[int] = set()
    runs: list[tuple[list[Keyed], list[Keyed]]] = []
    for size, i, j in cands:
        span = range(j, j + size)
        if covered & set(span):
            continue
        covered.update(span)
        runs.append(([entries[i + k] for k in range(size)], [entries[k] for k in span]))
    runs.sort(key=lambda r: (r[1][0].file, r[1][0].lineno))
    return runs


def _plural(word: str) -> str:
    return word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" \
        else word + "s"


def _dup_findings(check: str, sev: Severity, entries: list[Keyed], what: str,
                  consequence: str, fix: str) -> Iterator[Finding]:
    for first, again in repeated_blocks(entries):
        keys = ", ".join(dict.fromkeys(e.key for e in again))
        n = len(again)
        yield Finding(
            check, sev, f"{n} {what if n == 1 else _plural(what)} set twice to the same value "
            f"({keys})" if n <= 3 else f"a block of {n} {_plural(what)} is there twice",
            _loc(again), f"{_loc(again)} repeats {_loc(first)} ({keys}): an appended block "
            f"(`tee -a`, `echo >>`) was run again. {consequence}", fix, also=(_loc(first),))


def _sysctl_entries(ctx: DoctorContext) -> list[Keyed]:
    out: list[Keyed] = []
    for f in sysctl_files(ctx.host):
        for a in parse_sysctl_conf(ctx.host.read_text(f) or ""):
            out.append(Keyed(f, a.lineno, a.key,
                             effective_value(a.key, a.value, _live_sysctl(ctx, a.key))))
    return out


def check_duplicates(ctx: DoctorContext) -> Iterator[Finding]:
    # sysctl, in boot order; values compared as the kernel reads them ("0  # off" is 0)
    entries = _sysctl_entries(ctx)
    seen: dict[str, Keyed] = {}
    for e in entries:
        prev = seen.get(e.key)
        if prev and prev.value != e.value:
            yield Finding(
                "dup.sysctl", Severity.WARNING,
                f"{e.key} set twice with different values", f"{e.file}:{e.lineno}",
                f"{prev.file}:{prev.lineno} sets {prev.value!r}, {e.file}:{e.lineno} sets "
                f"{e.value!r}; the last one read at boot wins: {e.value!r} ({e.file}).",
                f"keep one; profile key sysctl.settings.{e.key}",
                also=(f"{prev.file}:{prev.lineno}",))
        seen[e.key] = e
    yield from _dup_findings(
        "dup.sysctl-repeated", Severity.INFO, entries, "sysctl key",
        "Harmless (the same value is written twice at boot), but each rerun adds a copy.",
        "keep one copy; profile key sysctl.settings (hosttune's drop-in is rewritten, "
        "never appended)")
    # limits: same domain/type/item
    lseen: dict[tuple[str, str, str], LimitsEntry] = {}
    lentries: list[Keyed] = []
    for x in all_limit_lines(ctx):
        types = ("soft", "hard") if x.type == "-" else (x.type,)
        for t in types:
            lk = (x.domain, t, x.item)
            lentries.append(Keyed(x.file, x.lineno, " ".join(lk), x.value))
            prev_l = lseen.get(lk)
            if prev_l and prev_l.value != x.value:
                yield Finding(
                    "dup.limits", Severity.WARNING,
                    f"{x.domain} {t} {x.item} set twice with different values",
                    f"{x.file}:{x.lineno}",
                    f"{prev_l.file}:{prev_l.lineno} says {prev_l.value}, {x.file}:{x.lineno} "
                    f"says {x.value}; pam_limits applies them in order, the last one wins "
                    f"({x.value}).",
                    "keep one; profile key memlock.limit for memlock",
                    also=(f"{prev_l.file}:{prev_l.lineno}",))
            lseen[lk] = x
    yield from _dup_findings(
        "dup.limits-repeated", Severity.INFO, lentries, "limit",
        "Harmless (pam_limits applies the same value twice), but each rerun adds a copy.",
        "keep one copy; profile key memlock (hosttune writes limits.d/, never appends)")
    # /etc/environment (pam_env: later lines override earlier ones)
    env: dict[str, tuple[int, str]] = {}
    eentries: list[Keyed] = []
    text = ctx.host.read_text("/etc/environment") or ""
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#") or "=" not in s:
            continue
        name, _, v = s.partition("=")
        k = name.removeprefix("export ").strip()
        eentries.append(Keyed("/etc/environment", i, k, v))
        prev_e = env.get(k)
        if prev_e and prev_e[1] != v:
            yield Finding(
                "dup.environment", Severity.WARNING, f"{k} set twice with different values",
                f"/etc/environment:{i}",
                f"line {prev_e[0]} says {prev_e[1]!r}, line {i} says {v!r}; the last one wins.",
                "keep one; profile key cuda_env for CUDA variables",
                also=(f"/etc/environment:{prev_e[0]}",))
        env[k] = (i, v)
    yield from _dup_findings(
        "dup.environment-repeated", Severity.INFO, eentries, "variable",
        "Harmless (pam_env sets the same value twice), but each rerun adds a copy.",
        "keep one copy; profile key cuda_env (hosttune's marked lines are replaced, never "
        "appended)")
    yield from _fstab_duplicates(ctx)
    yield from _grub_duplicates(ctx)


def _fstab_duplicates(ctx: DoctorContext) -> Iterator[Finding]:
    text = ctx.host.read_text("/etc/fstab") or ""
    entries = [Keyed("/etc/fstab", e.lineno, _norm(e.file) if e.vfstype != "swap" else e.spec,
                     " ".join((e.spec, e.vfstype, e.options)))
               for e in parse_fstab(text) if e.file != "none" or e.vfstype == "swap"]
    # systemd-fstab-generator (252) makes one unit per mount point: the second line fails with
    # "Failed to create unit file '...mount', as it already exists. Duplicate entry in
    # '/etc/fstab'?" and the generator exits 1 (checked here with SYSTEMD_FSTAB=); the first
    # line is mounted.
    yield from _dup_findings(
        "dup.fstab-repeated", Severity.WARNING, entries, "fstab entry",
        "At every boot systemd-fstab-generator logs \"Failed to create unit file ..., as it "
        "already exists. Duplicate entry in '/etc/fstab'?\" and exits with status 1; the "
        "first line is mounted.",
        "delete the copy; profile key hugetlbfs.mounts (hosttune's fstab lines are marked "
        "and replaced, never appended)")
    seen: dict[str, Keyed] = {}
    for e in entries:
        prev = seen.get(e.key)
        if prev is not None and prev.value != e.value:
            yield Finding(
                "dup.fstab", Severity.WARNING, f"{e.key} has two different fstab lines",
                f"/etc/fstab:{e.lineno}", f"line {prev.lineno} ({prev.value}) and line "
                f"{e.lineno} ({e.value}) both mount {e.key}: systemd-fstab-generator uses the "
                "first and logs 'Duplicate entry' for the second at every boot.",
                "keep one; profile key hugetlbfs.mounts", also=(f"/etc/fstab:{prev.lineno}",))
        seen.setdefault(e.key, e)


def _grub_duplicates(ctx: DoctorContext) -> Iterator[Finding]:
    from hosttune.doctor.checks_kernel_params import grub_cmdline_words

    try:
        text = ctx.host.read_text("/etc/default/grub") or ""
    except PermissionError:
        return
    by_line: dict[tuple[int, str], list[str]] = {}
    for i, var, word in grub_cmdline_words(text):
        by_line.setdefault((i, var), []).append(word)
    cmdline = parse_cmdline(ctx.host.read_text("/proc/cmdline") or "")
    for (i, var), words in by_line.items():
        counts: dict[str, int] = {}
        for w in words:
            counts[w] = counts.get(w, 0) + 1
        again = [w for w, n in counts.items() if n > 1]
        if not again:
            continue
        live = [w for w in again if cmdline.count(w) > 1]
        yield Finding(
            "dup.kernel-param-repeated", Severity.INFO,
            f"{var} repeats {' '.join(again)}", f"/etc/default/grub:{i}",
            f"{var} holds {' '.join(again)} {max(counts[w] for w in again)} times: a sed "
            "that appends to the variable (the notes' s/...=\"\\(.*\\)\"/...=\"\\1 "
            "nvidia-drm.modeset=1 ...\"/) adds its words again each time it runs. "
            "The kernel parses every copy (harmless for these flags), and each rerun makes "
            "the command line longer"
            + ("; the running kernel got them twice (live: /proc/cmdline)" if live else "")
            + ".", "keep one copy and run update-grub; profile key kernel_cmdline.params "
            "(hosttune's grub.d drop-in is rewritten, never appended to)",
            also=("live: /proc/cmdline",) if live else ())


# --- sysctl syntax -----------------------------------------------------------------


def _live_sysctl(ctx: DoctorContext, key: str) -> str | None:
    try:
        return ctx.host.read_value(sysctl_key_to_path(key))
    except (PermissionError, OSError):
        return None


def check_sysctl_syntax(ctx: DoctorContext) -> Iterator[Finding]:
    """Trailing comments in sysctl files: what the kernel really keeps (kernel_reading)."""
    fix = "move the comment to its own line; profile key sysctl.settings.{key}"
    for f in sysctl_files(ctx.host):
        for a in parse_sysctl_conf(ctx.host.read_text(f) or ""):
            if "#" not in a.value and ";" not in a.value:
                continue
            live = _live_sysctl(ctx, a.key)
            r = kernel_reading(a.key, a.value, live)
            where = f"{f}:{a.lineno}"
            seen = f" (live: {live})" if live is not None else ""
            if r.applied is None:
                yield Finding(
                    "sysctl.value-rejected", Severity.ERROR,
                    f"{a.key}: the kernel rejects {a.value!r}", where,
                    "sysctl.d(5) only knows comment LINES, so the whole text is written; "
                    + ("the kernel's integer parser needs whitespace after each number "
                       "(Invalid argument)" if r.kind == "integer" else
                       "the kernel looks the word up and refuses the text with the comment "
                       "(No such file or directory)")
                    + f": {a.key} keeps its previous value at every boot{seen}.",
                    fix.format(key=a.key))
            elif r.kind == "string" and r.ignored:
                yield Finding(
                    "sysctl.comment-in-value", Severity.ERROR,
                    f"{a.key}: the trailing comment becomes part of the value", where,
                    f"sysctl.d(5) only knows comment LINES and {a.key} is a string: the "
                    f"kernel stores {a.value!r} verbatim{seen}.", fix.format(key=a.key))
            elif r.kind == "integer" and r.ignored:
                yield Finding(
                    "sysctl.inline-comment", Severity.INFO,
                    f"{a.key}: trailing comment ignored by the kernel", where,
                    f"the whole text {a.value!r} is written, and the kernel's integer parser "
                    f"(__do_proc_dointvec) takes {r.applied} and ignores {r.ignored!r}: the "
                    f"value takes{seen}. Harmless for integer keys only: on a string key "
                    "(kernel.core_pattern) the comment would become part of the value.",
                    fix.format(key=a.key))
            elif r.kind == "unknown" and _COMMENTISH.search(a.value):
                yield Finding(
                    "sysctl.inline-comment", Severity.WARNING,
                    f"{a.key}: trailing comment in the value", where,
                    f"the whole text {a.value!r} is written; {a.key} cannot be read here to "
                    "tell whether the kernel parses a number (the comment is ignored) or keeps "
                    "a string (the comment becomes part of the value).", fix.format(key=a.key))


_COMMENTISH = re.compile(r"\s[#;]|^[#;]")


# --- fstab -----------------------------------------------------------------

# Mounts systemd, the kernel or container runtimes make by themselves: never fstab's business.
API_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
          "tracefs", "bpf", "pstore", "efivarfs", "mqueue", "configfs", "fusectl",
          "binfmt_misc", "autofs", "nsfs", "rpc_pipefs", "overlay", "squashfs", "selinuxfs",
          "nfsd", "ramfs"}
API_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/lib/docker", "/var/lib/containerd",
            "/var/lib/kubelet", "/snap")
MOUNT_UNIT_DIRS = (*UNIT_DIRS, "/run/systemd/transient")  # + systemd-mount's transient units
GENERATOR_DIR = "/run/systemd/generator"  # systemd-fstab-generator's output for this boot
FSTAB_BACKUPS = ("/etc/fstab.bak", "/etc/fstab.orig", "/etc/fstab~", "/etc/fstab.backup",
                 "/etc/fstab.old", "/etc/fstab.save")


def _norm(mp: str) -> str:
    return mp.rstrip("/") or "/"


def _is_api(mp: str, fstype: str) -> bool:
    return fstype in API_FS or fstype.startswith("fuse.") or mp == "/" or any(
        mp == d or mp.startswith(d + "/") for d in API_DIRS)


class LostEntry(msgspec.Struct):
    """A filesystem that had a line in /etc/fstab (or looks like it) and has none now."""

    mount_point: str
    fields: str  # "spec mount-point type options": the line, or as much of it as is known
    where: str
    evidence: list[str]
    in_fstab_once: bool  # known to have been in fstab (generator unit, backup, journal)
    mounted_now: bool


def _generated_from_fstab(ctx: DoctorContext, mp: str) -> str | None:
    p = f"{GENERATOR_DIR}/{mount_unit_name(mp)}"
    try:
        text = ctx.host.read_text(p)
    except PermissionError:
        return None
    if text and "SourcePath=/etc/fstab" in text:
        return p
    return None


def _has_mount_unit(ctx: DoctorContext, mp: str) -> bool:
    name = mount_unit_name(mp)
    return any(ctx.host.exists(f"{d}/{name}") for d in MOUNT_UNIT_DIRS)


def _fstab_seds(ctx: DoctorContext) -> list[SedDelete]:
    return [d for d in sed_deletions(shell_lines(ctx) + history_lines(ctx))
            if "/etc/fstab" in d.files]


def lost_fstab_entries(ctx: DoctorContext, text: str) -> list[LostEntry]:
    host = ctx.host
    entries = parse_fstab(text)
    in_fstab = {_norm(e.file) for e in entries}
    lost: dict[str, LostEntry] = {}
    # 1. mounted now, no fstab line and no mount unit
    try:
        mounts = parse_mountinfo(host.read_text("/proc/self/mountinfo") or "")
    except PermissionError:
        mounts = []
    for m in mounts:
        mp = _norm(m.mount_point)
        if mp in in_fstab or mp in lost or _is_api(mp, m.fstype) or _has_mount_unit(ctx, mp):
            continue
        gen = _generated_from_fstab(ctx, mp)
        if not gen and not entries:
            continue  # fstab manages no mounts here (a container, a VM mounted from outside)
        ev = [f"{mp} is mounted now ({m.fstype} from {m.source}, /proc/self/mountinfo)"]
        if gen:
            ev.append(f"{gen} was generated from /etc/fstab at this boot, so the line was "
                      "there when the host booted")
        lost[mp] = LostEntry(mp, f"{m.source} {mp} {m.fstype}",
                             f"live: /proc/self/mountinfo ({mp})", ev, bool(gen), True)
    # 2. the previous boot mounted it (persistent journal); no line, no unit now
    for mp, msg in boot.previous_boot_mounts(ctx).items():
        mp = _norm(mp)
        if mp in in_fstab or _is_api(mp, "") or _has_mount_unit(ctx, mp):
            continue
        ev_line = f"the previous boot's journal says {msg!r}"
        if mp in lost:
            lost[mp].evidence.append(ev_line)
            lost[mp].in_fstab_once = True
        else:
            lost[mp] = LostEntry(mp, mp, "live: journalctl -b -1", [ev_line], True, False)
    # 3. lines a backup copy still has
    backups = list(FSTAB_BACKUPS) + [f"/etc/fstab{d.backup_suffix}" for d in _fstab_seds(ctx)
                                     if d.backup_suffix and not d.backup_suffix.startswith("/")]
    for bak in dict.fromkeys(backups):
        try:
            old = host.read_text(bak)
        except PermissionError:
            continue
        for e in parse_fstab(old or ""):
            mp = _norm(e.file)
            if mp in in_fstab or e.vfstype == "swap" or mp in ("none", "/"):
                continue
            line = old.splitlines()[e.lineno - 1].strip() if old else ""
            ev_line = f"{bak}:{e.lineno} has the line {line!r}"
            if mp in lost:
                lost[mp].evidence.append(ev_line)
                lost[mp].fields, lost[mp].in_fstab_once = line, True
            else:
                lost[mp] = LostEntry(mp, line, f"{bak}:{e.lineno}", [ev_line], True, False)
    return list(lost.values())


def check_fstab(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    text = host.read_text("/etc/fstab")
    if text is None:
        return
    seds = _fstab_seds(ctx)
    # 1. commented-out entries that are not swap but mention swap: a swap edit caught them
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s.startswith("#") or s.startswith(FSTAB_DISABLED):
            continue
        body = s.lstrip("#").strip()
        parts = body.split()
        if len(parts) >= 3 and parts[2] != "swap" and parts[1].startswith("/") \
                and "swap" in body.lower():
            yield Finding(
                "fstab.overbroad-swap-edit", Severity.WARNING,
                f"{parts[1]} ({parts[2]}) is commented out", f"/etc/fstab:{i}",
                "an edit meant for swap lines (e.g. sed '/swap/s/^/#/') also disabled this "
                "mount because its line mentions 'swap'.",
                "restore the line; profile key swap.persist disables exactly the swap entries")
    # 2. filesystems that lost their line: mounted now, mounted last boot, or in a backup
    for lo in lost_fstab_entries(ctx, text):
        culprit = next((d for d in seds if d.regex.search(lo.fields)), None)
        why = "; ".join(lo.evidence) + ". "
        if culprit is not None:
            hit = culprit.regex.search(lo.fields)
            why += (f"`{culprit.command}` ({culprit.where}) deleted it: it deletes every line "
                    f"matching /{culprit.regex.pattern}/, and this one contains "
                    f"{hit.group(0) if hit else culprit.regex.pattern!r} without being a swap "
                    "entry. ")
        why += ("It will not be mounted after the next reboot." if lo.mounted_now else
                "It was not mounted at this boot.")
        certain = lo.in_fstab_once or culprit is not None
        if certain:
            yield Finding(
                "fstab.entry-lost", Severity.ERROR,
                f"{lo.mount_point} has no /etc/fstab line any more", lo.where, why,
                "restore the line (the backup or the mount's options above); profile key "
                "swap.persist disables exactly the swap entries, never a line that merely "
                "mentions 'swap'")
        else:
            yield Finding(
                "fstab.mounted-not-persisted", Severity.WARNING,
                f"{lo.mount_point} is mounted but not in /etc/fstab", lo.where,
                why + " Mounted by hand, or its line was deleted since boot (an over-broad "
                "edit such as sed -i '/swap/d' deletes unrelated lines with the swap entry).",
                "add the line back; profile key swap.persist edits only swap entries")
    # 3. comments a line deletion took along (harmless, but a sign of the edit)
    current = set(text.splitlines())
    for bak in FSTAB_BACKUPS:
        old = host.read_text(bak)
        for i, line in enumerate((old or "").splitlines(), 1):
            s = line.strip()
            if s.startswith("#") and line not in current and len(s) > 1:
                yield Finding(
                    "fstab.overbroad-swap-edit", Severity.INFO,
                    "fstab lost a comment", f"{bak}:{i}",
                    f"{s!r} is in {bak} but no longer in /etc/fstab: a line deletion removed "
                    "more than the swap entries.",
                    "restore it from the backup; profile key swap.persist")


# --- huge pages and hugetlbfs -----------------------------------------------------------------


def _mount_size(opts: dict[str, str], pool: int) -> int | None:
    """Bytes a hugetlbfs mount may hold (size=), None when it sets none or the kernel reads
    no number there. The kernel parses it with memparse, and ``size=N%`` is a percentage of
    the huge-page pool of the mount's page size, not of RAM (fs/hugetlbfs/inode.c,
    hugetlbfs_size_to_hpages; Documentation/admin-guide/mm/hugetlbpage.rst)."""
    v = opts.get("size")
    parsed = memparse(v) if v else None
    if parsed is None:
        return None
    value, rest = parsed
    return pool * value // 100 if rest.startswith("%") else value


def _limit(opts: dict[str, str], pools: _Pools) -> int | None:
    """Bytes a mount with these options holds (the live mount shows size= in bytes)."""
    return _mount_size(opts, pools.for_page(_mount_page(opts, pools) or pools.page))


def _mount_page(opts: dict[str, str], pools: _Pools) -> int | None:
    """The page size of a hugetlbfs mount: pagesize= as the kernel reads it (memparse), else
    the default huge page size; None when the kernel has no pool of that size."""
    v = opts.get("pagesize")
    if not v:
        return pools.page
    parsed = memparse(v)
    page = parsed[0] if parsed else 0
    return page if page in pools.live or page == pools.page else None


class _Pools(msgspec.Struct, frozen=True):
    """The huge-page pools the hugetlbfs mounts are compared with."""

    ram: int  # MemTotal
    page: int  # the default huge page size (Hugepagesize; 2M when meminfo does not say)
    meminfo_page: int | None  # Hugepagesize as meminfo says it (None: it does not)
    live: dict[int, int]  # page size -> bytes reserved now
    boot: int  # bytes of the default-size pool vm.nr_hugepages gets at boot
    asked: tuple[str, int] | None  # (file:line, pages) of the last boot assignment

    def for_page(self, page: int) -> int:
        """Bytes of the pool that backs a mount of this page size."""
        return max(self.live.get(page, 0), self.boot if page == self.meminfo_page else 0)


# (where, mount point, options) of a hugetlbfs mount, in fstab or live
_HugeMount = tuple[str, str, dict[str, str]]


def _live_pools(ctx: DoctorContext) -> dict[int, int]:
    """Page size -> bytes of every huge-page pool the kernel holds now."""
    host = ctx.host
    pools: dict[int, int] = {}
    for d in host.listdir("/sys/kernel/mm/hugepages"):
        try:
            kb = int(d.split("-")[1][:-2])
        except (IndexError, ValueError):
            continue
        n = int(host.read_value(f"/sys/kernel/mm/hugepages/{d}/nr_hugepages") or 0)
        pools[kb * 1024] = n * kb * 1024
    return pools


def _boot_nr_hugepages(ctx: DoctorContext) -> tuple[str, int] | None:
    """(file:line, pages) of the last vm.nr_hugepages assignment in the sysctl files: pools
    configured for boot count too (vm.nr_hugepages = default size)."""
    host = ctx.host
    asked: tuple[str, int] | None = None
    for f in sysctl_files(host):
        for a in parse_sysctl_conf(host.read_text(f) or ""):
            if a.key == "vm.nr_hugepages":
                try:
                    pages = int(a.value.split()[0])
                except (ValueError, IndexError):
                    continue
                asked = (f"{f}:{a.lineno}", pages)
    return asked


def _pool_short(asked: tuple[str, int], live_pages: int, hp_size: int, total: int) -> Finding:
    # the kernel allocates what it can find and keeps the shortfall silently
    # (Documentation/admin-guide/mm/hugetlbpage.rst: "may not be able to allocate")
    return Finding(
        "hugepages.pool-short", Severity.ERROR,
        f"vm.nr_hugepages asks for {asked[1]} pages; the kernel has {live_pages}",
        asked[0], f"at boot systemd-sysctl wrote {asked[1]} "
        f"({format_size(asked[1] * hp_size)}) and the kernel allocated {live_pages} "
        f"({format_size(live_pages * hp_size)}, live: "
        "/sys/kernel/mm/hugepages): a pool larger than free memory takes what it can, "
        f"leaving {format_size(max(total - live_pages * hp_size, 0))} of "
        f"{format_size(total)} to everything else.",
        "profile key hugepages.pools (sized from this host's RAM; hosttune retries, "
        "verifies and reports a short pool)")


def _read_pools(ctx: DoctorContext) -> tuple[_Pools, Finding | None]:
    """The pools, live and asked for at boot, and the finding of a boot pool the kernel could
    not fill (then the boot pool is what the kernel really reserved)."""
    mem = parse_meminfo(ctx.host.read_text("/proc/meminfo") or "")
    total = mem.get("MemTotal", 0)
    live = _live_pools(ctx)
    hp_size = mem.get("Hugepagesize", 2 << 20)
    asked = _boot_nr_hugepages(ctx)
    boot_pool = asked[1] * hp_size if asked else 0
    live_pages = live.get(hp_size, 0) // hp_size
    short = None
    if asked and 0 < live_pages < asked[1]:
        short = _pool_short(asked, live_pages, hp_size, total)
        boot_pool = live_pages * hp_size  # what is really reserved
    return _Pools(total, hp_size, mem.get("Hugepagesize"), live, boot_pool, asked), short


def _fstab_hugetlbfs(ctx: DoctorContext) -> tuple[list[_HugeMount], set[str]]:
    """hugetlbfs lines of /etc/fstab, and those of them hosttune wrote (its marker comment
    above them)."""
    mounts: list[_HugeMount] = []
    text = ctx.host.read_text("/etc/fstab") or ""
    lines = text.splitlines()
    owned: set[str] = set()
    for e in parse_fstab(text):
        if e.vfstype == "hugetlbfs":
            opts = dict(o.partition("=")[::2] for o in e.options.split(","))
            mounts.append((f"/etc/fstab:{e.lineno}", e.file, opts))
            if e.lineno > 1 and lines[e.lineno - 2].startswith(HUGETLBFS_MARK):
                owned.add(f"/etc/fstab:{e.lineno}")
    return mounts, owned


def _with_live_mounts(ctx: DoctorContext, fstab: list[_HugeMount],
                      pools: _Pools) -> tuple[list[_HugeMount], dict[str, str]]:
    """What is mounted now (size= in bytes): evidence for the fstab line (mount point ->
    where), or a mount of its own, added after the fstab ones."""
    try:
        live = [m for m in parse_mountinfo(ctx.host.read_text("/proc/self/mountinfo") or "")
                if m.fstype == "hugetlbfs"]
    except PermissionError:
        live = []
    mounts = list(fstab)
    evidence: dict[str, str] = {}
    for m in live:
        mp = _norm(m.mount_point)
        same = [x for x in mounts if _norm(x[1]) == mp]
        if same and _limit(same[0][2], pools) == _limit(m.options, pools):
            evidence[mp] = f"live: /proc/self/mountinfo ({mp})"
        elif m.options.get("size"):
            mounts.append((f"live: /proc/self/mountinfo ({mp})", mp, m.options))
    return mounts, evidence


def _pool_leaves_little_ram(pools: _Pools) -> Finding | None:
    total = pools.ram
    pool_total = max(sum(pools.live.values()), pools.boot)
    if not (total and pool_total and total - pool_total < max(4 << 30, total // 10)):
        return None
    return Finding(
        "hugepages.pool-leaves-little-ram", Severity.ERROR if pool_total >= total
        else Severity.WARNING,
        f"huge pages reserve {format_size(pool_total)} of {format_size(total)} RAM",
        "live: /sys/kernel/mm/hugepages", "huge pages are not available to the OS, page "
        "cache or containers' anonymous memory: what is left invites OOM kills.",
        "profile key hugepages.min_free_ram (hosttune refuses such a pool)")


def _mount_findings(pools: _Pools, mount: _HugeMount, owned: bool, ev: tuple[str, ...],
                    models: int | None) -> Iterator[Finding]:
    """One hugetlbfs mount against the pool of its page size and the models meant for it
    (``owned``: hosttune wrote its fstab line; ``ev``: the live mount that confirms it)."""
    where, mp, opts = mount
    ps = _mount_page(opts, pools)
    if ps is None:
        yield Finding(
            "hugetlbfs.bad-pagesize", Severity.ERROR,
            f"{mp}: pagesize={opts['pagesize']} is not a huge page size of this kernel", where,
            "the mount fails with EINVAL (the kernel logs 'Unsupported page size'): nothing "
            f"is mounted on {mp} and models meant for it land on the disk below. Sizes here: "
            + (", ".join(format_size(p) for p in sorted(pools.live)) or format_size(pools.page))
            + ".", "profile key hugetlbfs.mounts[].pagesize (checked against the kernel)",
            also=ev)
        return
    pool = pools.for_page(ps)
    size = _mount_size(opts, pool)
    if size is None:
        return
    if pool and size < pool:
        yield Finding(
            "hugetlbfs.mount-smaller-than-pool", Severity.WARNING,
            f"{mp} holds at most {format_size(size)}; the pool has {format_size(pool)}",
            where, f"files on {mp} can use only {format_size(size)}: the other "
            f"{format_size(pool - size)} of huge pages stay reserved and unused "
            "(e.g. three 30 GB models do not fit a 30G mount).",
            "profile key hugetlbfs.mounts[].size: auto (sized to the pool)", also=ev)
    if models and models > size:
        yield Finding(
            "hugetlbfs.mount-smaller-than-models", Severity.ERROR,
            f"{mp} ({format_size(size)}) is smaller than the models meant for it "
            f"({format_size(models)})", where, "loading the last models fails with ENOSPC.",
            "profile key hugetlbfs.mounts[].size", also=ev)
    asked = pools.asked
    if pool and size > pool and owned and asked \
            and "hosttune" not in asked[0].rsplit("/", 1)[-1]:
        # hosttune sized this mount to its pool; a hand-made vm.nr_hugepages read at boot
        # set another pool (sysctl.conf is applied last), and that is the defect
        yield Finding(
            "hugepages.pool-overridden", Severity.ERROR,
            f"vm.nr_hugepages = {asked[1]} ({asked[0]}) sets the pool hosttune's {mp} is "
            "sized for", asked[0],
            f"at boot {asked[0]} sets {asked[1]} pages ({format_size(pool)} now), below "
            f"the {format_size(size)} hosttune's {mp} ({where}) holds: models stored "
            "there up to its size fail with ENOMEM/SIGBUS once the pool runs out.",
            "delete the vm.nr_hugepages line; profile key hugepages.pools (hosttune "
            "sets the per-node pools at boot)", also=(where, *ev))
    elif pool and size > pool:
        yield Finding(
            "hugetlbfs.mount-larger-than-pool", Severity.WARNING,
            f"{mp} allows {format_size(size)} but the pool has {format_size(pool)}",
            where, "writes past the pool fail with ENOMEM/SIGBUS at fault time, not at "
            "mount time.", "profile key hugepages.pools[].size: auto", also=ev)


def check_hugepages(ctx: DoctorContext) -> Iterator[Finding]:
    pools, short = _read_pools(ctx)
    if short is not None:
        yield short
    little = _pool_leaves_little_ram(pools)
    if little is not None:
        yield little
    # hugetlbfs mounts (fstab and live) vs the pool of their page size
    fstab, owned = _fstab_hugetlbfs(ctx)
    mounts, evidence = _with_live_mounts(ctx, fstab, pools)
    declared_models = _declared_model_bytes(ctx)
    for mount in mounts:
        where, mp = mount[0], _norm(mount[1])
        ev = (evidence[mp],) if mp in evidence and not where.startswith("live") else ()
        yield from _mount_findings(pools, mount, where in owned, ev,
                                   declared_models.get(mount[1]))


def _declared_model_bytes(ctx: DoctorContext) -> dict[str, int]:
    """Model bytes the profile means to keep on each hugetlbfs mount (its declared size)."""
    out: dict[str, int] = {}
    if ctx.loaded is None:
        return out
    prof = ctx.loaded.profile
    models = getattr(prof, "models", None)
    for m in getattr(models, "models", None) or []:
        mount = getattr(m, "mount", None)
        size = getattr(m, "size", None)
        if mount and size:
            try:
                out[mount] = out.get(mount, 0) + parse_size(size)
            except ValueError:
                continue
    return out
