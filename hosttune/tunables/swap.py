"""swap: every active swap area off now, and disabled at boot.

Runtime: one ``action`` change per area in /proc/swaps: ``swapoff PATH``; revert ``swapon``
with the original priority (``-p N`` only for a priority the admin chose: the kernel hands out
negative "auto" priorities itself and swapon(8) cannot set one, so an auto priority is
restored by a plain ``swapon``; mm/swapfile.c ``least_priority``).

Persistence, never ``sed '/swap/d' /etc/fstab`` (a common recipe that also deletes a
backup mount whose path or comment says "swap"): exactly the active fstab entries whose type is
``swap`` are commented out with a marker, one journaled change per line, so a later edit of
another line survives rollback. Swap units in /etc/systemd/system (own files or enabled in
``*.wants/``), swap services (zram-tools' zramswap.service, dphys-swapfile.service) and
zram-generator's dev-zramN.swap are masked with a link to /dev/null (systemd.unit(5));
fstab-generated swap units vanish with their fstab line at the next daemon-reload.
"""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING, Any

import msgspec

from hosttune.errors import ApplyError, HostError
from hosttune.host import Host
from hosttune.host.parsers import FSTAB_DISABLED, SwapDevice, parse_fstab, parse_swaps
from hosttune.profile.sizes import format_size
from hosttune.tunables._systemd import UNIT_DIR, daemon_reload
from hosttune.tunables.base import (
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    setting,
    unified_diff,
)
from hosttune.tunables.knob import Knob, action

if TYPE_CHECKING:
    pass

MARKER = FSTAB_DISABLED
FSTAB = "/etc/fstab"


def disable_fstab_line(text: str, line: str) -> str:
    """Comment out the first active line equal to ``line``; every other byte stays."""
    out = text.splitlines(keepends=True)
    for i, raw in enumerate(out):
        if raw.rstrip("\r\n") == line:
            out[i] = MARKER + raw
            return "".join(out)
    raise ValueError(f"no active line {line!r}")


def enable_fstab_line(text: str, line: str) -> str:
    """Inverse of :func:`disable_fstab_line` for one marked line (no-op if none is left)."""
    out = text.splitlines(keepends=True)
    for i, raw in enumerate(out):
        if raw.rstrip("\r\n") == MARKER + line:
            out[i] = raw[len(MARKER):]
            return "".join(out)
    return text


def disable_swap_lines(text: str) -> str:
    """fstab with every active swap entry commented out (what apply produces)."""
    lines = text.splitlines(keepends=True)
    for e in parse_fstab(text):
        if e.vfstype == "swap":
            lines[e.lineno - 1] = MARKER + lines[e.lineno - 1]
    return "".join(lines)


def fstab_swap_lines(text: str) -> list[tuple[int, str, str]]:
    """(lineno, spec, raw line without newline) of every active swap entry."""
    raw = text.splitlines()
    return [(e.lineno, e.spec, raw[e.lineno - 1]) for e in parse_fstab(text)
            if e.vfstype == "swap"]


class SwapUnit(msgspec.Struct, frozen=True):
    name: str  # e.g. swapfile.swap
    source: str  # the file or wants/ link that makes it active
    masked: bool


# Services whose only job is turning swap on at boot (zram-tools, Raspberry Pi OS).
SWAP_SERVICES = ("zramswap.service", "dphys-swapfile.service")
# zram-generator(8) turns these into dev-zramN.swap units at every boot.
ZRAM_GENERATOR_CONF = ("/etc/systemd/zram-generator.conf", "/run/systemd/zram-generator.conf",
                       "/usr/local/lib/systemd/zram-generator.conf",
                       "/usr/lib/systemd/zram-generator.conf")


def swap_units(host: Host, active: list[SwapDevice] | None = None) -> list[SwapUnit]:
    """Units that turn swap on at boot and that an fstab edit does not reach: .swap units an
    admin installed or enabled, swap services enabled in a .wants/ dir, and zram-generator's
    dev-zramN.swap for active zram devices (fstab-generated units are not listed: commenting
    the fstab line removes them)."""
    names: dict[str, str] = {}
    for n in host.listdir(UNIT_DIR):
        p = f"{UNIT_DIR}/{n}"
        if n.endswith(".swap"):
            names.setdefault(n, p)
        elif n.endswith((".wants", ".requires")) and host.is_dir(p):
            for m in host.listdir(p):
                if m.endswith(".swap") or m in SWAP_SERVICES:
                    names.setdefault(m, f"{p}/{m}")
    conf = next((c for c in ZRAM_GENERATOR_CONF if host.exists(c)), None)
    for d in active or []:
        if d.path.startswith("/dev/zram") and conf:
            names.setdefault(unit_name(d.path), f"{conf} (zram-generator)")
    out = []
    for n, src in sorted(names.items()):
        masked = host.readlink(f"{UNIT_DIR}/{n}") == "/dev/null"
        out.append(SwapUnit(n, src, masked))
    return out


def _fstab_source(host: Host, dev: SwapDevice, fstab_lines: list[tuple[int, str, str]]) -> str:
    for lineno, spec, _ in fstab_lines:
        if spec == dev.path:
            return f"{FSTAB}:{lineno}"
        tag, sep, val = spec.partition("=")
        if sep and tag in ("UUID", "LABEL", "PARTUUID", "PARTLABEL"):
            try:
                if host.realpath(f"/dev/disk/by-{tag.lower()}/{val}") == host.realpath(dev.path):
                    return f"{FSTAB}:{lineno}"
            except OSError:
                continue
    return ""


def unit_name(path: str) -> str:
    """systemd-escape --path --suffix=swap: '/swap.img' -> 'swap.img.swap',
    '/dev/zram0' -> 'dev-zram0.swap' (systemd.unit(5) "String Escaping")."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif ch.isalnum() or ch in ":_" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out) + ".swap"


def _prio_note(d: SwapDevice) -> str:
    return f"prio {d.priority}"


class SwapoffKnob(Knob):
    """One active swap device. Its value: whether it is on, and with which priority and at
    which line of /proc/swaps (a --root tree's /proc/swaps is rewritten as the kernel would)."""

    name = "swapoff"

    def read(self, host: Host) -> dict[str, Any]:
        path = self.params["path"]
        text = host.read_text("/proc/swaps") or ""
        lines = text.splitlines(keepends=True)
        for i, d in enumerate(parse_swaps(text), 1):
            if d.path == path:
                return {"active": True, "priority": d.priority, "index": i, "line": lines[i]}
        return {"active": False}

    def desired(self) -> dict[str, Any]:
        return {"active": False}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        path = self.params["path"]
        if _is_active(host, path) == bool(value.get("active")):
            return
        if value.get("active"):
            self._swapon(host, path, value)
            return
        # swapoff pulls every swapped page back into RAM: it can take minutes
        res = host.run(["swapoff", path], timeout_s=900)
        if not res.ok:
            raise ApplyError(f"swapoff {path} failed (exit {res.returncode}): "
                             f"{res.stderr.strip()} (not enough free RAM to take its "
                             "pages back?)")
        if res.skipped:
            _simulate_proc_swaps(host, lambda t: _drop_swap_line(t, path))

    @staticmethod
    def _swapon(host: Host, path: str, value: dict[str, Any]) -> None:
        prio = int(value["priority"])
        argv = ["swapon", "-p", str(prio), path] if prio >= 0 else ["swapon", path]
        res = host.run(argv, timeout_s=120)
        if not res.ok:
            raise ApplyError(f"{' '.join(argv)} failed (exit {res.returncode}): "
                             f"{res.stderr.strip()}")
        if res.skipped:
            idx, line = int(value["index"]), str(value["line"])
            _simulate_proc_swaps(host, lambda t: _insert_line(t, idx, line))


class FstabSwapKnob(Knob):
    """One swap line of /etc/fstab (a shared file): disabled by a marked comment, enabled
    again by removing the mark. Its value: whether the line is active."""

    name = "fstab-swap"

    def read(self, host: Host) -> dict[str, Any]:
        text = host.read_text(FSTAB) or ""
        return {"active": self.params["line"] in text.splitlines()}

    def desired(self) -> dict[str, Any]:
        return {"active": False}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        line = self.params["line"]
        edit = enable_fstab_line if value.get("active") else disable_fstab_line
        _edit_fstab(host, lambda t: edit(t, line))

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        if original.get("active"):  # a line that was off before stays as it is now
            self.write(host, original)


class SwapTunable(Tunable):
    name = "swap"
    section = "swap"
    knobs = (SwapoffKnob, FstabSwapKnob)

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = ctx.profile.swap
        assert sec is not None  # the family runs only when its section is set
        host = ctx.host
        out = Evaluation()
        try:
            swaps_text = host.read_text("/proc/swaps")
        except PermissionError:
            swaps_text = None
            out.add(Row(self.name, "active", "?", "off", Status.NEEDS_ROOT))
        active = parse_swaps(swaps_text or "")
        if sec.enabled:
            cur = ", ".join(d.path for d in active) or "off"
            return Evaluation([Row(self.name, "active", cur, "not managed (enabled: true)",
                                   Status.OK)], [])
        try:
            fstab = host.read_text(FSTAB)
        except PermissionError:
            fstab = None
            out.add(Row(self.name, f"fstab {FSTAB}", "?", "no active swap entry",
                        Status.NEEDS_ROOT))
        flines = fstab_swap_lines(fstab or "")
        units = swap_units(host, active)
        # runtime: one row and one swapoff per active area
        if swaps_text is not None and not active:
            out.add(Row(self.name, "active", "off", "off", Status.OK))
        for d in active:
            self._active(host, d, _boot_source(host, d, flines, units), out)
        if not sec.persist or ctx.runtime_only:
            return out
        # persistence: fstab swap lines (one change each), swap units (masked)
        if fstab is not None:
            self._fstab(fstab, flines, out)
        self._units(units, out)
        persistent = [c for c in out.changes if not c.runtime]
        # systemd caches fstab-generated units: reload so it forgets the disabled entries.
        if persistent and (reload := daemon_reload(
                ctx, self.name, "fstab swap entries / swap units changed")):
            out.changes.append(reload)
        return out

    def _active(self, host: Host, d: SwapDevice, src: str, out: Evaluation) -> None:
        """The row and the swapoff of one active swap area."""
        cur = f"on ({d.type}, {format_size(d.size_bytes)}, {_prio_note(d)})"
        if d.path.endswith(" (deleted)"):
            out.add(Row(self.name, f"active {d.path}", cur, "off", Status.DRIFT,
                        "its file was deleted while in use: swapoff by path is "
                        "impossible; reboot to release it"))
            return
        if host.offline:
            status, note = Status.OFFLINE, "swapoff is recorded, not run, under --root"
        else:
            status, note = Status.DRIFT, ""
        note = "; ".join(x for x in (note, src) if x)
        out.add(Row(self.name, f"active {d.path}", cur, "off", status, note))
        out.changes.append(action(
            self.name, SwapoffKnob.name, id=f"swap/swapoff:{d.path}",
            summary=f"swapoff {d.path} ({format_size(d.size_bytes)}, {_prio_note(d)})",
            path=d.path, runtime=True,
            params={"path": d.path, "priority": d.priority, "type": d.type}))

    def _fstab(self, fstab: str, flines: list[tuple[int, str, str]], out: Evaluation) -> None:
        """One row and one change per active swap line of /etc/fstab."""
        marked = sum(1 for ln in fstab.splitlines() if ln.startswith(MARKER))
        if not flines:
            out.add(Row(self.name, f"fstab {FSTAB}", "no active swap entry"
                        + (f" ({marked} disabled by hosttune)" if marked else ""),
                        "no active swap entry", Status.OK))
        seen: dict[str, int] = {}
        full_diff = unified_diff(FSTAB, fstab, disable_swap_lines(fstab))
        for i, (lineno, spec, raw) in enumerate(flines):
            n = seen[raw] = seen.get(raw, 0) + 1
            out.add(Row(self.name, f"fstab {spec}", f"active ({FSTAB}:{lineno})",
                        "disabled", Status.DRIFT, "swap at boot"))
            out.changes.append(action(
                self.name, FstabSwapKnob.name,
                id=f"swap/fstab:{raw}" + (f"#{n}" if n > 1 else ""),
                summary=f"disable swap entry {spec} in {FSTAB}:{lineno}",
                path=FSTAB, runtime=False, params={"line": raw},
                diff=full_diff if i == 0 else ""))

    def _units(self, units: list[SwapUnit], out: Evaluation) -> None:
        """Swap units and the services that enable swap at boot: masked."""
        for u in units:
            out.add(*setting(
                self.name, f"unit {u.name}", "masked" if u.masked else f"enabled ({u.source})",
                "masked", Change(
                    id=f"swap/mask:{u.name}", tunable=self.name, kind="symlink",
                    summary=f"mask {u.name} ({UNIT_DIR}/{u.name} -> /dev/null)",
                    path=f"{UNIT_DIR}/{u.name}", value="/dev/null", runtime=False),
                ok=u.masked, drift_note="turns swap on at boot"))


def _boot_source(host: Host, d: SwapDevice, flines: list[tuple[int, str, str]],
                 units: list[SwapUnit]) -> str:
    """What turns ``d`` on at boot, in words (the note of its row)."""
    src = _fstab_source(host, d, flines)
    if src:
        return f"enabled at boot by {src}"
    unit = next((u for u in units if u.name == unit_name(d.path)), None)
    if unit:
        return f"enabled at boot by unit {unit.name}"
    if d.path.startswith("/dev/zram"):
        svc = [u.name for u in units if u.name in SWAP_SERVICES]
        return (f"zram swap, enabled at boot by {svc[0]}" if svc else
                "zram swap (zram-generator or zram-tools: neither is configured in /etc)")
    tagged = [spec for _, spec, _ in flines if "=" in spec]
    if tagged:
        return f"probably fstab {', '.join(tagged)} (device links not resolvable)"
    return ("no fstab entry or swap unit found: something else enables it "
            "(dphys-swapfile, a script) and it comes back at boot")


def _is_active(host: Host, path: str) -> bool:
    return any(d.path == path for d in parse_swaps(host.read_text("/proc/swaps") or ""))


def _edit_fstab(host: Host, edit: Any) -> None:
    st = host.file_state(FSTAB)
    if not st.exists or st.content is None:
        raise HostError(f"{FSTAB} is missing or a symlink: not editing it")
    text = st.content.decode("utf-8", errors="surrogateescape")
    try:
        new = edit(text)
    except ValueError as err:
        raise ApplyError(f"{FSTAB} changed since the plan: {err}") from err
    if new != text:
        host.write_file(FSTAB, new.encode("utf-8", errors="surrogateescape"),
                        mode=st.mode or 0o644, uid=st.uid, gid=st.gid)


def _drop_swap_line(text: str, path: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, d in enumerate(parse_swaps(text), 1):
        if d.path == path:
            del lines[i]
            break
    return "".join(lines)


def _insert_line(text: str, idx: int, line: str) -> str:
    lines = text.splitlines(keepends=True)
    lines.insert(min(idx, len(lines)), line)
    return "".join(lines)


def _simulate_proc_swaps(host: Host, edit: Any) -> None:
    """Under --root the command only was recorded; keep a fixture's /proc/swaps in step with
    what the kernel would show (like Host.write_kernel writes a fixture's /proc/sys). A real
    procfs mounted in the tree reports size 0 and is left alone."""
    try:
        lst = host.lstat("/proc/swaps")
        if lst is None or not stat.S_ISREG(lst.st_mode) or lst.st_size == 0:
            return
        st = host.file_state("/proc/swaps")
    except OSError:
        return
    assert st.content is not None
    new = edit(st.content.decode())
    host.write_file("/proc/swaps", new.encode(), mode=st.mode or 0o444)
