"""Export a hosttune profile as a tuned profile (``tuned.conf``).

tuned reads profiles with ``configparser`` (``delimiters=('=',)``,
``inline_comment_prefixes=('#',)``, ``optionxform=str``; tuned/profiles/loader.py) and expands
``${name}`` from its ``[variables]`` section and ``${f:function:args}`` built-ins
(tuned/profiles/variables.py). Two consequences shape what is written here:

- a value may not contain a newline, ``#`` after whitespace (an inline comment) or ``${``
  (a variable reference); such values are listed as not expressible instead of being mangled;
- a value starting with ``>`` or ``<`` is an *assignment modifier*: ``>N`` sets N only when
  it is greater than the current value (tuned/plugins/base.py
  ``_process_assignment_modifiers``). That is exactly a hosttune floor (``>= N``), so floors
  become ``>N``; an exact value that starts with ``<`` or ``>`` cannot be written.

Everything tuned has no plugin for (memlock limits, swap, hugetlbfs mounts, NVML settings, the
CUDA environment, the model store, container placement ...) is listed in a comment at the top
and in :attr:`TunedExport.unexpressed`. Sections other families add to the profile schema are
discovered generically (``msgspec.structs.fields(Profile)``), so a new section is never
silently dropped.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from hosttune import __version__
from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.host.parsers import normalise_sysctl_key, normalise_sysctl_value
from hosttune.profile.loader import LoadedProfile
from hosttune.profile.sizes import parse_percent, parse_size

# Profile fields that are metadata, not settings.
_META = frozenset({"name", "description", "extends"})

# Why tuned cannot carry a section (sections of other families included, by likely name).
_REASONS: dict[str, str] = {
    "swap": "swapoff and disabling fstab/systemd swap entries: tuned has no swap plugin",
    "memlock": "RLIMIT_MEMLOCK (limits.d for PAM sessions, LimitMEMLOCK drop-ins for dockerd/"
               "containerd): tuned has no limits plugin",
    "hugetlbfs": "hugetlbfs mounts (fstab entries / mount units): tuned has no mount plugin",
    "gpu": "NVIDIA settings through NVML (persistence, power limit, locked clocks, compute "
           "mode): tuned has no NVML plugin, and none of them survives a driver reload",
    "nvidia": "NVIDIA driver daemons",
    "driver": "driver module options (modprobe.d)",
    "mps": "the CUDA MPS control daemon",
    "cuda": "CUDA environment variables (marked lines in /etc/environment)",
    "cuda_env": "CUDA environment variables (marked lines in /etc/environment)",
    "env": "environment variables (marked lines in /etc/environment)",
    "environment": "environment variables (marked lines in /etc/environment)",
    "models": "the huge-page model store (files on hugetlbfs)",
    "model_store": "the huge-page model store (files on hugetlbfs)",
    "workload": "container placement (cpusets, memory limits, compose files)",
    "workloads": "container placement (cpusets, memory limits, compose files)",
    "containers": "container placement (cpusets, memory limits, compose files)",
    "irq": "IRQ affinity of specific devices (GPU interrupts): tuned's irqbalance plugin can "
           "only ban CPUs from irqbalance, not pin an IRQ",
    "monitor": "monitoring (status, exporter)",
    "gpu_irq": "pinning the GPUs' interrupts to CPUs (smp_affinity_list): tuned's irqbalance "
               "plugin can only ban CPUs from irqbalance, not pin an IRQ",
}
_DEFAULT_REASON = "no tuned plugin for this section"

_SAFE_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")  # tuned's Loader.safe_name


class Unexpressed(msgspec.Struct, frozen=True):
    """A profile setting the tuned profile does not carry, and why."""

    setting: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"setting": self.setting, "reason": self.reason}


class TunedOption(msgspec.Struct, frozen=True):
    key: str
    value: str
    comment: str = ""


class TunedExport(msgspec.Struct, frozen=True):
    """A tuned profile: ordered sections of options, plus what could not be expressed."""

    name: str  # tuned profile name (directory under /etc/tuned)
    source: str  # hosttune profile name
    sections: tuple[tuple[str, tuple[TunedOption, ...]], ...]
    unexpressed: tuple[Unexpressed, ...]
    notes: tuple[str, ...] = ()

    def section(self, name: str) -> dict[str, str]:
        for sec, opts in self.sections:
            if sec == name:
                return {o.key: o.value for o in opts}
        return {}

    def render(self) -> str:
        out = [
            f"# tuned profile exported by hosttune {__version__} from profile "
            f"'{_one_line(self.source)}'.\n",
            f"# Install as /etc/tuned/{self.name}/tuned.conf, then: tuned-adm profile "
            f"{self.name}\n",
        ]
        if self.unexpressed:
            out.append("#\n# Not expressible in tuned - keep these with hosttune (CLI, Ansible "
                       "role or DaemonSet):\n")
            for u in self.unexpressed:
                out.append(f"#   - {_one_line(u.setting)}: {_one_line(u.reason)}\n")
        if self.notes:
            out.append("#\n# Notes:\n")
            for n in self.notes:
                out.append(f"#   - {_one_line(n)}\n")
        for sec, opts in self.sections:
            out.append(f"\n[{sec}]\n")
            for o in opts:
                if o.comment:
                    out.append(f"# {_one_line(o.comment)}\n")
                out.append(f"{o.key}={o.value}\n")
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source,
            "sections": {s: {o.key: o.value for o in opts} for s, opts in self.sections},
            "unexpressed": [u.to_json() for u in self.unexpressed],
            "notes": list(self.notes), "tuned_conf": self.render(),
        }


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def _value_problem(value: str, *, modifier_ok: bool = False, variables_ok: bool = False
                   ) -> str | None:
    """Why ``value`` cannot be written as a tuned option value (None: it can)."""
    if "\n" in value or "\r" in value:
        return "multi-line value"
    if re.search(r"\s#", value) or value.startswith("#"):
        return "contains ' #', which tuned's parser reads as an inline comment"
    if "${" in value and not variables_ok:
        return "contains '${', which tuned expands as a variable"
    if not modifier_ok and value[:1] in ("<", ">"):
        return "starts with '<' or '>', which tuned reads as an assignment modifier"
    if value != value.strip() or not value:
        return "empty or padded value"
    return None


class _Builder:
    def __init__(self) -> None:
        self.sections: dict[str, list[TunedOption]] = {}
        self.unexpressed: list[Unexpressed] = []
        self.notes: list[str] = []

    def add(self, section: str, key: str, value: str, comment: str = "", *,
            setting: str | None = None, modifier_ok: bool = False,
            variables_ok: bool = False) -> bool:
        problem = _value_problem(value, modifier_ok=modifier_ok, variables_ok=variables_ok)
        if problem is None and ("=" in key or "#" in key or not key.strip()):
            problem = f"key {key!r} cannot be written in an INI option name"
        if problem is not None:
            self.skip(setting or f"{section} {key}", problem)
            return False
        self.sections.setdefault(section, []).append(TunedOption(key, value, comment))
        return True

    def skip(self, setting: str, reason: str) -> None:
        self.unexpressed.append(Unexpressed(setting, reason))


def _tuned_name(name: str) -> str:
    safe = _SAFE_NAME.sub("-", name).strip("-.") or "profile"
    return safe if safe.startswith("hosttune") else f"hosttune-{safe}"


def export_tuned(loaded: LoadedProfile, host: Host | None = None) -> TunedExport:
    """The tuned profile for ``loaded``. ``host`` (a tree or the live system; only read)
    resolves sizes that depend on it (percentages of RAM, pools spread over NUMA nodes) with
    the hugepages family's own resolver; without it such settings are listed as not
    expressed rather than guessed."""
    p = loaded.profile
    b = _Builder()
    summary = _one_line(p.description or f"hosttune profile {p.name}").replace("#", "")
    summary = summary.replace("${", "$ {")
    b.add("main", "summary", summary or p.name)

    handled = {"swap", "cpu", "sysctl", "memlock", "hugepages", "hugetlbfs", "boot",
               "kernel", "cmdline", "kernel_cmdline", "irq", "nvidia_modules"}
    for fname in _field_names(p):
        if fname in _META or fname in handled:
            continue
        if getattr(p, fname, None) is not None:
            b.skip(fname, _REASONS.get(fname, _DEFAULT_REASON))

    _cpu(p, b)
    _thp(p, b)
    _sysctl(p, b)
    _hugepages(p, b, loaded, host)
    _kernel(p, b)
    _irq(p, b)
    _modules(p, b)
    for fname in ("swap", "memlock", "hugetlbfs"):
        if getattr(p, fname, None) is not None:
            b.skip(fname, _REASONS[fname])
    if getattr(p, "boot", None) is not None:
        b.notes.append("boot: tuned.service re-applies this profile at every boot, so "
                       "hosttune-boot.service is not needed for the settings above")
    order = ["main", "variables", "cpu", "vm", "sysctl", "sysfs", "bootloader", "irqbalance",
             "modules"]
    sections = tuple((s, tuple(b.sections[s])) for s in order if s in b.sections)
    return TunedExport(_tuned_name(p.name), p.name, sections, tuple(b.unexpressed),
                       tuple(b.notes))


# --- families -------------------------------------------------------------------------------
def _cpu(p: Any, b: _Builder) -> None:
    cpu = getattr(p, "cpu", None)
    if cpu is None:
        return
    governor = getattr(cpu, "governor", None)
    if governor:
        b.add("cpu", "governor", str(governor), setting="cpu.governor")
    epp = getattr(cpu, "epp", None)
    if epp and epp != "auto":
        if governor == "performance" and epp != "performance":
            # amd-pstate-epp / intel_pstate HWP pin EPP under the performance governor: any
            # other value is refused with EBUSY (kernel Documentation/admin-guide/pm/
            # amd-pstate.rst, intel_pstate.rst).
            b.skip("cpu.epp", f"{epp!r} under the performance governor: the kernel refuses it "
                   "(EBUSY)")
        else:
            b.add("cpu", "energy_performance_preference", str(epp), setting="cpu.epp")
    elif epp == "auto" and governor:
        b.notes.append("cpu.epp auto: energy_performance_preference is left to what the "
                       f"{governor} governor implies")


def _thp(p: Any, b: _Builder) -> None:
    hp = getattr(p, "hugepages", None)
    thp = getattr(hp, "thp", None) if hp is not None else None
    if thp:
        b.add("vm", "transparent_hugepages", str(thp),
              "tuned ignores this when transparent_hugepage= is on the kernel command line",
              setting="hugepages.thp")


def _sysctl(p: Any, b: _Builder) -> None:
    sec = getattr(p, "sysctl", None)
    if sec is None:
        return
    settings: dict[str, Any] = getattr(sec, "settings", {}) or {}
    for raw_key, raw_val in sorted(settings.items()):
        key = normalise_sysctl_key(str(raw_key))
        val = str(raw_val).strip()
        m = re.fullmatch(r">=\s*(-?\d+)", val)
        if m:
            # tuned's '>' modifier: set only if greater than the current value = a floor.
            b.add("sysctl", key, f">{m.group(1)}", f"floor: at least {m.group(1)}",
                  setting=f"sysctl {key}", modifier_ok=True)
        else:
            b.add("sysctl", key, normalise_sysctl_value(val), setting=f"sysctl {key}")
    if settings:
        b.notes.append("sysctl: tuned re-applies /etc/sysctl.d/*.conf and /etc/sysctl.conf "
                       "after its [sysctl] section (reapply_sysctl=1 in tuned-main.conf), so "
                       "a key also set there wins over this profile")


def _modules(p: Any, b: _Builder) -> None:
    """nvidia_modules -> tuned's [modules] plugin (tuned/plugins/plugin_modules.py): one
    ``module=opt=value opt=value`` option per module, which tuned writes as ``options module
    ...`` lines to /etc/modprobe.d/tuned.conf. Without the ``+r`` prefix tuned does not reload
    the module: like hosttune, the options take effect when the module next loads (reboot)."""
    sec = getattr(p, "nvidia_modules", None)
    if sec is None:
        return
    from hosttune.host.nvidia_driver import module_key

    for mod in sorted(sec.options, key=module_key):
        params = sec.options[mod]
        if not params:
            continue
        words = " ".join(f"{k}={params[k]}" for k in sorted(params))
        b.add("modules", module_key(mod), words,
              "written by tuned to /etc/modprobe.d/tuned.conf; effective at the next module "
              "load (reboot)", setting=f"nvidia_modules.options.{mod}")
    if sec.options:
        b.notes.append("nvidia_modules: tuned.conf sorts after hosttune's "
                       f"{sec.file.rsplit('/', 1)[-1]}, so for an option set in both, tuned's "
                       "value wins (modprobe.d: the last assignment wins)")
        if sec.initramfs:
            b.skip("nvidia_modules.initramfs", "regenerating the initramfs (update-initramfs "
                   "-u / dracut -f) so a driver loaded from it sees the options: tuned's "
                   "modules plugin only writes modprobe.d")


def _page_bytes(label: str) -> int:
    return parse_size(label.replace("M", "MiB").replace("G", "GiB"))


def _resolve_pools(p: Any, loaded: LoadedProfile, host: Host | None
                   ) -> dict[int, tuple[str, int, dict[int, int] | None]] | None:
    """pool index -> (pagesize label, pages, {node: pages} or None for the global counter),
    from the hugepages family's own resolver when it is there (the numbers apply would use);
    None when it is not installed."""
    if host is None:
        return None
    try:
        hp_mod = importlib.import_module("hosttune.tunables.hugepages")
    except ModuleNotFoundError as err:
        if err.name == "hosttune.tunables.hugepages":  # that family is not installed
            return None
        raise
    resolve = getattr(hp_mod, "resolve", None)
    if resolve is None:
        return None
    from hosttune.tunables.base import Context

    res = resolve(Context(host, loaded))
    out: dict[int, tuple[str, int, dict[int, int] | None]] = {}
    for label, plan in res.pools.items():
        out[plan.index] = (label, plan.pages,
                           dict(plan.targets) if plan.mode == "nodes" else None)
    return out


def _hostless_pool(i: int, pool: Any, loaded: LoadedProfile
                   ) -> tuple[str, int, dict[int, int] | None] | None:
    """Without a host, the hugepages family's own sizer (size_pools) still resolves a pool
    whose sizes need neither RAM (no percentage in the pool, its nodes or, for 'auto', its
    mounts) nor a node list (nodes: any, or named nodes); None for the others. A pool apply
    would refuse raises the same ProfileError."""
    try:
        from hosttune.tunables.hugepages import size_pools
    except ModuleNotFoundError:  # that family is not installed
        return None
    p = loaded.profile
    sizes: list[Any] = [pool.size]
    if isinstance(pool.nodes, dict):
        sizes += list(pool.nodes.values())
    elif pool.size == "auto":
        mounts = getattr(getattr(p, "hugetlbfs", None), "mounts", None) or []
        sizes += [m.size for m in mounts if m.pagesize == pool.pagesize]
    if pool.nodes == "spread" or any(isinstance(x, str) and parse_percent(x) is not None
                                     for x in sizes):
        return None
    # this pool alone (the others may need the RAM); the nodes it names are taken as they are
    hp = p.hugepages
    assert hp is not None  # the pool came from it
    alone = msgspec.structs.replace(p, hugepages=msgspec.structs.replace(hp, pools=[pool]))
    named = sorted(pool.nodes) if isinstance(pool.nodes, dict) else []

    def error(key: str, msg: str) -> ProfileError:
        return loaded.error(key.replace("hugepages.pools.0", f"hugepages.pools.{i}", 1), msg)

    got = size_pools(alone, 0, lambda: named, error)[pool.pagesize]
    return pool.pagesize, got.pages, got.explicit


def _hugepages(p: Any, b: _Builder, loaded: LoadedProfile, host: Host | None) -> None:
    hp = getattr(p, "hugepages", None)
    pools = list(getattr(hp, "pools", None) or []) if hp is not None else []
    if not pools:
        return
    resolved = _resolve_pools(p, loaded, host)
    for i, pool in enumerate(pools):
        setting = f"hugepages.pools.{i} ({pool.pagesize})"
        got = resolved.get(i) if resolved is not None else _hostless_pool(i, pool, loaded)
        if got is None:
            b.skip(setting, "its size depends on this host's RAM / NUMA nodes: export with "
                   "--root DIR (or --root / on the target) to resolve it")
            continue
        label, pages, per_node = got
        kb = _page_bytes(label) // 1024
        if per_node is not None:
            for node, count in sorted(per_node.items()):
                b.add("sysfs",
                      f"/sys/devices/system/node/node{node}/hugepages/hugepages-{kb}kB/"
                      "nr_hugepages", str(count),
                      f"{label} huge pages on NUMA node {node} (pool {i})", setting=setting)
        else:
            b.add("sysfs", f"/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages",
                  str(pages), f"{label} huge pages, any node (pool {i})", setting=setting)
        if label == "1G":
            b.notes.append("1G pages allocated at runtime can fail on fragmented memory; "
                           "hugepagesz=1G hugepages=N on the kernel command line is reliable")
    b.skip("hugepages (verify)", "tuned writes each pool once; the kernel may allocate fewer "
           "pages than asked (retry and verify: hosttune audit), and the min_free_ram guard "
           "is not applied")


def _field_names(section: msgspec.Struct) -> list[str]:
    return [f.name for f in msgspec.structs.fields(section)]


def _as_cmdline(value: Any) -> list[str] | None:
    """kernel command line parameters from a dict / list / string / model field."""
    if value is None:
        return None
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, str):
        return value.split()
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if v is None or v is True:
                out.append(str(k))
            elif v is False:
                continue
            else:
                out.append(f"{k}={v}")
        return out
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return None


def _kernel(p: Any, b: _Builder) -> None:
    # The kernel-cmdline family (another issue) may name its section 'kernel' or 'cmdline'
    # and its field 'cmdline' / 'params' / 'parameters' / 'args' / 'add': take what is there;
    # anything else it holds (removals, bootloader choice ...) is listed as not expressed.
    params: list[str] = []
    for sec_name in ("kernel", "cmdline", "kernel_cmdline"):
        sec = getattr(p, sec_name, None)
        if sec is None:
            continue
        found: list[str] = []
        if isinstance(sec, msgspec.Struct):
            used: set[str] = set()
            for fld in ("cmdline", "params", "parameters", "args", "add"):
                got = _as_cmdline(getattr(sec, fld, None))
                if got is not None:
                    found.extend(got)
                    used.add(fld)
            for fld in _field_names(sec):
                val = getattr(sec, fld, None)
                if fld not in used and val not in (None, False, "", [], {}, ()):
                    b.skip(f"{sec_name}.{fld}", "tuned's bootloader plugin only adds "
                           "kernel command-line parameters")
        else:
            found = _as_cmdline(sec) or []
        for x in found:
            if any(c.isspace() for c in x) or '"' in x or not x:
                b.skip(f"{sec_name} {x!r}", "parameter contains spaces or quotes")
            elif x not in params:
                params.append(x)
    if params:
        b.add("bootloader", "cmdline_hosttune", " ".join(params),
              "added to the kernel command line by tuned's bootloader plugin (needs a reboot)",
              setting="kernel cmdline")


def _cpulist(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Iterable):
        ids = sorted({int(v) for v in value})
        if not ids:
            return None
        parts, start, prev = [], ids[0], ids[0]
        for c in [*ids[1:], None]:
            if c is not None and c == prev + 1:
                prev = c
                continue
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            if c is not None:
                start = prev = c
        return ",".join(parts)
    return None


def _irq(p: Any, b: _Builder) -> None:
    irq = getattr(p, "irq", None)
    if irq is None:
        return
    banned = None
    for fld in ("banned_cpus", "irqbalance_banned_cpus"):
        banned = _cpulist(getattr(irq, fld, None))
        if banned:
            break
    if banned:
        # tuned's own profiles (cpu-partitioning) pass CPU lists through a variable
        b.add("variables", "hosttune_irqbalance_banned_cpus", banned, setting="irq cpus")
        b.add("irqbalance", "banned_cpus", "${hosttune_irqbalance_banned_cpus}",
              "irqbalance keeps IRQs off these CPUs", setting="irq cpus", variables_ok=True)
    others = [f for f in (_field_names(irq) if isinstance(irq, msgspec.Struct) else [])
              if f not in ("banned_cpus", "irqbalance_banned_cpus")
              and getattr(irq, f, None) not in (None, False, "", [], {}, ())]
    if others or not banned:
        b.skip("irq" + (f" ({', '.join(others)})" if others else ""), _REASONS["irq"])


__all__ = ["TunedExport", "TunedOption", "Unexpressed", "export_tuned"]
