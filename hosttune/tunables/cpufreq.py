"""CPU frequency: scaling governor per cpufreq policy, and the energy-performance preference
(EPP) of amd-pstate-epp / intel_pstate.

Everything here is runtime-only (sysfs forgets it at boot); hosttune-boot.service re-applies
it with ``apply --runtime-only``. Rows are grouped by value so 128 policies stay one line.

EPP and the performance governor: in active mode (``amd-pstate-epp``, ``intel_pstate`` with
HWP) the driver owns EPP under the performance governor: it reads back "performance" and a
write returns EBUSY (amd-pstate: any write; intel_pstate: anything but "performance";
drivers/cpufreq/amd-pstate.c ``amd_pstate_set_energy_pref_index``, intel_pstate.c
``store_energy_performance_preference``). So ``epp: auto`` means "what the governor implies"
and is never written; an explicit EPP other than performance under that governor is refused
before anything is written.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from hosttune.errors import ApplyError, HostError
from hosttune.host import Host
from hosttune.host.fsops import is_ebusy
from hosttune.host.parsers import format_cpulist
from hosttune.tunables.base import Change, Context, Evaluation, Row, Status, Tunable, setting
from hosttune.tunables.knob import KernelKnob, action

if TYPE_CHECKING:
    from hosttune.profile.schema import CpuSection

CPUFREQ = "/sys/devices/system/cpu/cpufreq"
# Drivers in "active" mode: they pick frequencies themselves and own EPP under performance.
ACTIVE_EPP_DRIVERS = frozenset({"amd-pstate-epp", "intel_pstate"})


class Policy(msgspec.Struct, frozen=True):
    num: int
    driver: str
    governor: str | None
    governors: tuple[str, ...]
    epp: str | None  # None: this policy has no EPP file
    epps: tuple[str, ...]

    @property
    def dir(self) -> str:
        return f"{CPUFREQ}/policy{self.num}"


def read_policies(host: Host, *, with_epps: bool = True) -> list[Policy]:
    """Every cpufreq policy, in numeric order. PermissionError propagates. ``with_epps``:
    also read the available EPP values (skipped for epp: auto, to keep audit fast on 128
    policies)."""
    nums = sorted(int(m.group(1)) for d in host.listdir(CPUFREQ)
                  if (m := re.fullmatch(r"policy(\d+)", d)))
    out = []
    for n in nums:
        base = f"{CPUFREQ}/policy{n}"
        out.append(Policy(
            num=n,
            driver=host.read_value(f"{base}/scaling_driver") or "?",
            governor=host.read_value(f"{base}/scaling_governor"),
            governors=tuple((host.read_value(f"{base}/scaling_available_governors")
                             or "").split()),
            epp=host.read_value(f"{base}/energy_performance_preference"),
            epps=tuple((host.read_value(f"{base}/energy_performance_available_preferences")
                        or "").split()) if with_epps else (),
        ))
    return out


def implied_epp(driver: str, governor: str | None) -> str | None:
    """EPP the driver forces under this governor, or None when EPP is free to set."""
    if driver in ACTIVE_EPP_DRIVERS and governor == "performance":
        return "performance"
    return None


# Services that set the governor/EPP themselves at boot, after hosttune-boot.service re-applied
# the profile (Ubuntu's ondemand.service sleeps a minute first): the last writer wins.
OVERRIDING_SERVICES = {
    "ondemand.service": "sets the ondemand/schedutil governor a minute after boot",
    "cpufrequtils.service": "sets GOVERNOR from /etc/default/cpufrequtils at boot",
    "power-profiles-daemon.service": "sets EPP / platform profile",
    "tuned.service": "applies its profile's governor and EPP",
    "tlp.service": "sets CPU_SCALING_GOVERNOR_ON_AC/BAT and EPP",
}


def boot_overrides(host: Host, sec: CpuSection) -> list[Row]:
    """Rows for enabled services that will overwrite the governor or EPP at boot."""
    enabled: set[str] = set()
    for d in host.listdir("/etc/systemd/system"):
        if d.endswith(".wants"):
            enabled.update(n for n in host.listdir(f"/etc/systemd/system/{d}")
                           if n in OVERRIDING_SERVICES)
    masked = {n for n in enabled if host.readlink(f"/etc/systemd/system/{n}") == "/dev/null"}
    rows = []
    for n in sorted(enabled - masked):
        what = OVERRIDING_SERVICES[n]
        if n == "cpufrequtils.service":
            conf = host.read_text("/etc/default/cpufrequtils") or ""
            m = re.search(r'^\s*GOVERNOR\s*=\s*"?([\w-]+)"?', conf, re.M)
            if m is None or m.group(1) == sec.governor:
                continue
            what = f"sets GOVERNOR={m.group(1)} from /etc/default/cpufrequtils at boot"
        rows.append(Row("cpufreq", f"boot override {n}", "enabled", "not overriding",
                        Status.CONFLICT, f"{what}: it runs after hosttune-boot.service and "
                        "the last writer wins; disable it or make it agree"))
    return rows


def _group_key(label: str, nums: list[int]) -> str:
    if len(nums) == 1:
        return f"{label} policy{nums[0]}"
    return f"{label} ({len(nums)} policies)"


class _Grouper:
    """Collects per-policy results and emits one row per distinct (current, desired, status,
    note)."""

    def __init__(self, tunable: str, label: str) -> None:
        self.tunable = tunable
        self.label = label
        self.groups: dict[tuple[str, str, Status, str], list[int]] = {}

    def add(self, num: int, current: str, desired: str, status: Status, note: str = "") -> None:
        self.groups.setdefault((current, desired, status, note), []).append(num)

    def take(self, num: int, found: tuple[Row, Change | None], changes: list[Change]) -> None:
        """A policy's row and change, from :func:`setting`."""
        row, change = found
        self.add(num, row.current, row.desired, row.status, row.note)
        if change is not None:
            changes.append(change)

    def rows(self) -> list[Row]:
        out = []
        keys = [_group_key(self.label, nums) for nums in self.groups.values()]
        for (cur, des, st, note), nums in self.groups.items():
            where = f"policy{format_cpulist(nums)}" if len(nums) > 1 else ""
            full = "; ".join(x for x in (where, note) if x)
            key = _group_key(self.label, nums)
            if keys.count(key) > 1:  # two groups of equal size: a row key must stay unique
                key = f"{self.label} policy{format_cpulist(nums)}"
            out.append(Row(self.tunable, key, cur, des, st, full))
        return out


class EppKnob(KernelKnob):
    """A policy's energy_performance_preference: a kernel value whose EBUSY gets explained."""

    name = "epp"

    def write(self, host: Host, value: dict[str, Any]) -> None:
        v = value.get("value")
        if v is None or host.read_value(self.path) == v:
            return  # idempotent: nothing to put back, or a step that never changed it
        _write_epp(host, self.path, v, self.params.get("driver", "?"))


class CpuFreqTunable(Tunable):
    name = "cpufreq"
    section = "cpu"
    knobs = (EppKnob,)

    def _target_governor(self, sec: CpuSection, p: Policy) -> str | None:
        if sec.governor is not None and sec.governor in p.governors:
            return sec.governor
        return p.governor

    def validate(self, ctx: Context) -> None:
        sec = ctx.profile.cpu
        assert sec is not None  # the family runs only when its section is set
        if sec.epp in (None, "auto"):
            return
        try:
            policies = read_policies(ctx.host)
        except PermissionError:
            return
        for p in policies:
            forced = implied_epp(p.driver, self._target_governor(sec, p))
            if p.epp is not None and forced is not None and sec.epp != forced:
                raise ctx.error("cpu.epp", (
                    f"{sec.epp!r} cannot be set on policy{p.num}: under the "
                    f"{self._target_governor(sec, p)} governor {p.driver} forces EPP to "
                    f"{forced!r} and rejects writes with EBUSY; use epp: auto, or another "
                    "governor (e.g. powersave) to choose an EPP"))

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = ctx.profile.cpu
        assert sec is not None  # the family runs only when its section is set
        host = ctx.host
        try:
            policies = read_policies(host, with_epps=sec.epp not in (None, "auto"))
        except PermissionError:
            return Evaluation([Row(self.name, "cpufreq", "?", "readable", Status.NEEDS_ROOT)])
        if not policies:
            note = (f"no cpufreq policies in {CPUFREQ}: this host has no frequency control "
                    "(a VM, or no cpufreq driver loaded)")
            rows = []
            if sec.governor is not None:
                rows.append(Row(self.name, "governor", "-", sec.governor, Status.UNSUPPORTED,
                                note))
            if sec.epp is not None:
                rows.append(Row(self.name, "epp", "-", sec.epp, Status.UNSUPPORTED, note))
            return Evaluation(rows)

        changes: list[Change] = []
        gov = _Grouper(self.name, "governor")
        if sec.governor is not None:
            for p in policies:
                self._governor(p, sec.governor, gov, changes)
        epp = _Grouper(self.name, "epp")
        if sec.epp is not None:
            for p in policies:
                self._epp(host, sec, p, epp, changes)
        return Evaluation(gov.rows() + epp.rows() + boot_overrides(host, sec), changes)

    def _governor(self, p: Policy, want: str, gov: _Grouper, changes: list[Change]) -> None:
        cur = p.governor or "?"
        if want not in p.governors:
            gov.add(p.num, cur, want, Status.UNSUPPORTED,
                    f"{p.driver} offers: {' '.join(p.governors) or 'none'}")
            return
        gov.take(p.num, setting(self.name, "governor", cur, want, Change(
            id=f"cpufreq/governor/policy{p.num}", tunable=self.name, kind="kernel",
            summary=f"policy{p.num} governor: {cur} -> {want}",
            path=f"{p.dir}/scaling_governor", value=want, runtime=True)), changes)

    def _epp(self, host: Host, sec: CpuSection, p: Policy, epp: _Grouper,
             changes: list[Change]) -> None:
        assert sec.epp is not None
        tgov = self._target_governor(sec, p)
        forced = implied_epp(p.driver, tgov)
        if p.epp is None:
            epp.add(p.num, "-", sec.epp, Status.UNSUPPORTED, f"{p.driver} has no EPP")
            return
        # The driver owns EPP under this governor (validate() refused any other value):
        # never write it, even the value it forces - amd-pstate-epp answers EBUSY to
        # every write there.
        if forced is not None:
            self._forced_epp(host, p, tgov, forced, epp)
            return
        if sec.epp == "auto":
            epp.add(p.num, p.epp, f"auto (free under {tgov})", Status.OK, "left as it is")
            return
        want = sec.epp
        if want not in p.epps:
            epp.add(p.num, p.epp, want, Status.UNSUPPORTED,
                    f"{p.driver} offers: {' '.join(p.epps) or 'none'}")
            return
        epp.take(p.num, setting(self.name, "epp", p.epp, want, action(
            self.name, EppKnob.name, id=f"cpufreq/epp/policy{p.num}",
            summary=f"policy{p.num} EPP: {p.epp} -> {want}",
            path=f"{p.dir}/energy_performance_preference", value=want,
            runtime=True, params={"driver": p.driver})), changes)

    @staticmethod
    def _forced_epp(host: Host, p: Policy, tgov: str | None, forced: str,
                    epp: _Grouper) -> None:
        """An EPP the driver sets itself under the target governor: only reported."""
        assert p.epp is not None
        desired = f"{forced} (set by the {tgov} governor)"
        if p.epp == forced:
            epp.add(p.num, p.epp, desired, Status.OK)
        elif p.governor != tgov:
            epp.add(p.num, p.epp, desired, Status.DRIFT,
                    f"{p.driver} sets it with the governor; never written (EBUSY)")
        elif host.offline:
            epp.add(p.num, p.epp, desired, Status.OFFLINE, "the kernel derives it from the "
                    "governor; a --root tree cannot show that")
        else:
            epp.add(p.num, p.epp, desired, Status.DRIFT,
                    f"{p.driver} did not force it: not in active mode?")

def _write_epp(host: Host, path: str, value: str, driver: str) -> None:
    try:
        host.write_kernel(path, value)
    except HostError as err:
        if is_ebusy(err):
            gov_path = path.rsplit("/", 1)[0] + "/scaling_governor"
            gov = host.read_value(gov_path)
            raise ApplyError(
                f"{path}: EBUSY writing {value!r}: {driver} owns EPP while the governor is "
                f"{gov} (active mode forces 'performance'); use cpu.epp: auto or change the "
                "governor first") from err
        raise
