"""sysctl: runtime values under /proc/sys and a drop-in in /etc/sysctl.d.

Boot-time precedence (sysctl.d(5), procps sysctl --system): files from /etc/sysctl.d,
/run/sysctl.d, /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, /lib/sysctl.d are read in lexical
order of their *file names* (a name in /etc masks the same name elsewhere); /etc/sysctl.conf
comes last (Debian links it in as 99-sysctl.conf). The last assignment wins, so a key our
drop-in sets can be silently overridden - reported as a conflict naming file and line.

Floors (">= N") exist because some keys have distro defaults that must not be lowered:
systemd >= 255 ships vm.max_map_count = 1048576 (50-default.conf); writing a smaller
"recommended" value would reduce it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import msgspec

from hosttune.host import Host
from hosttune.host.parsers import (
    SysctlAssignment,
    normalise_sysctl_key,
    normalise_sysctl_value,
    parse_sysctl_conf,
    sysctl_key_to_path,
)
from hosttune.tunables.base import (
    HEADER,
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    file_change,
    setting,
)

if TYPE_CHECKING:
    from hosttune.profile.schema import SysctlSection

SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
               "/lib/sysctl.d")


class SourcedAssignment(msgspec.Struct, frozen=True):
    file: str
    a: SysctlAssignment


def sysctl_files(host: Host) -> list[str]:
    """Host paths of every sysctl configuration file, in the order they are applied."""
    by_name: dict[str, str] = {}
    for d in SYSCTL_DIRS:
        for name in host.listdir(d):
            if name.endswith(".conf") and name not in by_name:
                by_name[name] = f"{d}/{name}"
    ordered = []
    for n in sorted(by_name):
        p = by_name[n]
        target = host.readlink(p)
        if target is not None:  # report the file a link points to (Debian's 99-sysctl.conf)
            p = os.path.normpath(os.path.join(os.path.dirname(p), target))
        ordered.append(p)
    # /etc/sysctl.conf last, unless already linked in (Debian: 99-sysctl.conf -> ../sysctl.conf)
    linked = "/etc/sysctl.conf" in ordered
    if not linked and host.exists("/etc/sysctl.conf"):
        ordered.append("/etc/sysctl.conf")
    return ordered


def boot_assignments(host: Host) -> list[SourcedAssignment]:
    """Every assignment in boot order (symlinked files are read through the link)."""
    out: list[SourcedAssignment] = []
    for p in sysctl_files(host):
        try:
            text = host.read_text(p) or ""
        except OSError:
            continue
        out.extend(SourcedAssignment(p, a) for a in parse_sysctl_conf(text))
    return out


# How the kernel reads what systemd-sysctl / `sysctl -p` write. sysctl.d(5) knows comment LINES
# only: `vm.swappiness = 0   # off` writes "0   # off" to /proc/sys/vm/swappiness. Integer
# handlers (__do_proc_dointvec, __do_proc_doulongvec_minmax in kernel/sysctl.c) read as many
# numbers as the key holds, each followed by whitespace, and ignore the rest of the write: the
# value takes (checked on a Debian 12 boot, kernel 6.1, and live on 6.18). A number glued to
# the comment ("0#off") or fewer numbers than the key holds is EINVAL. proc_dostring keeps the
# whole text, so a string key stores the comment; keys whose handler looks the word up reject it
# (tcp_congestion_control, default_qdisc: ENOENT on 6.18).
STRING_KEYS = frozenset({"kernel.core_pattern", "kernel.modprobe", "kernel.hostname",
                         "kernel.domainname", "kernel.poweroff_cmd", "kernel.hotplug"})
LOOKUP_KEYS = frozenset({"net.ipv4.tcp_congestion_control", "net.core.default_qdisc",
                         "net.ipv4.tcp_allowed_congestion_control",
                         "kernel.seccomp.actions_logged"})
_INT = re.compile(r"-?\d+")
_COMMENT = re.compile(r"\s[#;]")


class KernelReading(msgspec.Struct, frozen=True):
    """What the kernel keeps of a value a sysctl file writes."""

    kind: str  # "integer" | "string" | "unknown" (no live value to tell)
    applied: str | None  # the value the kernel holds afterwards; None: the write is rejected
    ignored: str  # text the kernel ignores (integer keys) or keeps by mistake (string keys)


def kernel_reading(key: str, value: str, live: str | None) -> KernelReading:
    """``live``: the key's current text in /proc/sys (how many numbers it holds), if readable."""
    key = normalise_sysctl_key(key)
    if key in STRING_KEYS or key in LOOKUP_KEYS:
        m = _COMMENT.search(value)
        extra = value[m.start():].strip() if m else ""
        if key in LOOKUP_KEYS and extra:
            return KernelReading("string", None, extra)
        return KernelReading("string", value, extra)
    words = live.split() if live else []
    if not words or not all(_INT.fullmatch(w) for w in words):
        return KernelReading("unknown", value, "")
    toks = value.split()
    nums = toks[:len(words)]
    if len(nums) < len(words) and len(toks) == len(nums):
        nums = toks  # fewer numbers and nothing else: the kernel sets the first ones
    if not nums or not all(_INT.fullmatch(t) for t in nums):
        return KernelReading("integer", None, value)
    rest = value.split(None, len(nums))[len(nums):]
    return KernelReading("integer", " ".join(nums), rest[0].strip() if rest else "")


def effective_value(key: str, value: str, live: str | None) -> str:
    """The value the kernel ends up with after writing ``value`` (itself when unknown)."""
    r = kernel_reading(key, value, live)
    return normalise_sysctl_value(r.applied if r.applied is not None else value)


def parse_floor(value: str | int) -> int | None:
    s = str(value).strip()
    if s.startswith(">="):
        return int(s[2:].strip())
    return None


def _int_or_none(s: str | None) -> int | None:
    try:
        return int(str(s).strip())
    except (TypeError, ValueError):
        return None


class SysctlTunable(Tunable):
    name = "sysctl"
    section = "sysctl"

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = ctx.profile.sysctl
        assert sec is not None  # the family runs only when its section is set
        host = ctx.host
        out = Evaluation()
        assigns = boot_assignments(host)
        others = [s for s in assigns if s.file != sec.file]
        lines = [HEADER, f"# profile: {ctx.profile.name}\n"]
        for raw_key, raw_val in sorted(sec.settings.items()):
            key = normalise_sysctl_key(raw_key)
            path = sysctl_key_to_path(key)
            floor = parse_floor(raw_val)
            want = None if floor is not None else normalise_sysctl_value(str(raw_val))
            desired_desc = f">= {floor}" if floor is not None else str(want)
            try:
                current = host.read_value(path)
            except PermissionError:
                out.add(Row(self.name, key, "?", desired_desc, Status.NEEDS_ROOT))
                continue
            # persistent value for the drop-in
            later = [s for s in others if s.a.key == key]
            if floor is not None:
                eff = _int_or_none(effective_value(key, later[-1].a.value, current)) \
                    if later else None
                if eff is not None and eff >= floor:
                    lines.append(f"# {key} >= {floor}: already {eff} from {later[-1].file}\n")
                else:
                    lines.append(f"{key} = {floor}\n")
            else:
                lines.append(f"{key} = {want}\n")
            if current is None:
                out.add(Row(self.name, key, "absent", desired_desc, Status.UNSUPPORTED,
                            "this kernel has no such sysctl"))
                continue
            out.add(*self._live(host, sec, assigns, key, current, want, floor))
        # The drop-in goes last: once it is on disk, the next boot applies it
        # (systemd-sysctl), so after a power cut there the journal must already hold the
        # original of every live value - seen on a real power cut, where the recovered
        # host kept the tuned values the boot had read from a file rollback removed.
        out.add(*file_change(ctx, self.name, sec.file, "".join(lines)))
        return out

    def _live(self, host: Host, sec: SysctlSection, assigns: list[SourcedAssignment], key: str,
              current: str, want: str | None, floor: int | None) -> tuple[Row, Change | None]:
        """The live value of ``key`` against the profile's, and a file loaded after ours at
        boot that would set it back."""
        cur_n = normalise_sysctl_value(current)
        if floor is not None:
            cur_i = _int_or_none(cur_n)
            ok = cur_i is not None and cur_i >= floor
            new_val = str(floor)
        else:
            ok = cur_n == want
            new_val = str(want)
        after_ours = [s for s in assigns if s.a.key == key and _loads_after(
            sysctl_files(host), s.file, sec.file)]
        bad = [s for s in after_ours
               if not _satisfies(effective_value(key, s.a.value, current), want, floor)]
        note = (f"{bad[-1].file}:{bad[-1].a.lineno} sets {key} = {bad[-1].a.value} after "
                f"{os.path.basename(sec.file)}; at boot the last one wins") if bad else ""
        return setting(
            self.name, key, cur_n, f">= {floor}" if floor is not None else str(want),
            Change(id=f"sysctl/{key}", tunable=self.name, kind="kernel",
                   summary=f"sysctl {key}: {cur_n} -> {new_val}", path=sysctl_key_to_path(key),
                   value=new_val, runtime=True),
            ok=ok, note=note, overridden=bool(bad))


def _loads_after(order: list[str], a: str, b: str) -> bool:
    """Does file ``a`` load after file ``b``? (``b`` may not exist yet: place it by name.)"""
    if b not in order:
        # our drop-in does not exist yet: place it by name; /etc/sysctl.conf stays last
        order = sorted([*order, b], key=lambda p: (p == "/etc/sysctl.conf",
                                                     os.path.basename(p)))
    try:
        return order.index(a) > order.index(b)
    except ValueError:
        return False


def _satisfies(value: str, want: str | None, floor: int | None) -> bool:
    if floor is not None:
        v = _int_or_none(value)
        return v is not None and v >= floor
    return normalise_sysctl_value(value) == want
