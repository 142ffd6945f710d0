"""GPU, driver and boot-layer configuration made by hand: nvidia module options, kernel
parameters, GPU IRQ masks and irqbalance, CUDA cache paths, container cpusets, compute mode vs
GPU clients, and nvidia-smi clock/power settings.

Every rule comes from the module that manages the setting (nvidia_driver, kernel_cmdline,
irq, cuda_env, containers.cpusets, profile.schema, tunables.gpu_nvml): the doctor only finds
the hand-made values and asks those rules."""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from hosttune.containers.cpusets import check_compose, cpusets_from_compose, shared_cores
from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.checks_systemd import unit_files
from hosttune.doctor.shellcmds import ShellLine, commands, shell_lines
from hosttune.errors import HostError, HosttuneError
from hosttune.host import Host
from hosttune.host.distro import kernel_release
from hosttune.host.facts import find_pids
from hosttune.host.gpu.nvml import ComputeMode, GpuInfo, Nvml
from hosttune.host.irq import (
    cpus_to_mask,
    explain_mask,
    gpu_irqs,
    mask_to_cpus,
    nr_cpu_ids,
    parse_interrupts,
)
from hosttune.host.nvidia_driver import (
    KNOWN_MODULE_OPTIONS,
    driver_version,
    lint_modprobe_conf,
    module_key,
    module_options,
    parse_modprobe_conf,
    security_notes,
    split_option,
)
from hosttune.host.parsers import format_cpulist, parse_cmdline, parse_cpulist, parse_mountinfo
from hosttune.host.unitfile import parse_unit
from hosttune.profile.schema import check_exclusive_sharing
from hosttune.tunables._systemd import find_unit
from hosttune.tunables.cuda_env import BOOT_WIPED, cache_path_problem, parse_environment
from hosttune.tunables.gpu_common import gpu_clients
from hosttune.tunables.gpu_nvml import GRAPHICS, MEMORY, resolve_clock
from hosttune.tunables.kernel_cmdline import KNOWN_PARAMS, param_name, param_warning
from hosttune.tunables.nvidia_modprobe import modprobe_files

# --- nvidia module options -----------------------------------------------------------------

# security_notes() covers more than isolation; these are the options whose notes mean another
# local user gains something (device access, counters, VRAM dumps). Others are hints (INFO)
# or, for EnableResizableBar=1, no defect at all.
ISOLATION_OPTIONS = {"NVreg_TemporaryFilePath", "NVreg_RestrictProfilingToAdminUsers",
                     "NVreg_DeviceFileMode", "NVreg_ModifyDeviceFiles"}
HINT_OPTIONS = {"NVreg_EnableGpuFirmware", "NVreg_EnableMSI", "NVreg_RegistryDwords",
                "NVreg_RegistryDwordsPerDevice"}


def check_nvidia_modprobe(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    known_cache: dict[str, tuple[frozenset[str], str] | None] = {}

    def known_for(mod: str) -> tuple[frozenset[str], str] | None:
        """The module's parameter names and where they came from (None: nothing to ask)."""
        if mod not in known_cache:
            info = module_options(host, mod)
            if info.sources and info.names:
                known_cache[mod] = (info.names, ", ".join(info.sources))
            elif mod in KNOWN_MODULE_OPTIONS:
                known_cache[mod] = (KNOWN_MODULE_OPTIONS[mod], "hosttune's table of the "
                                    "570-595 drivers' options (no installed driver to ask)")
            else:
                known_cache[mod] = None
        return known_cache[mod]

    for path in modprobe_files(host):
        try:
            text = host.read_text(path) or ""
        except PermissionError:
            continue
        lines = [ln for ln in parse_modprobe_conf(text)
                 if ln.command == "options" and ln.module.startswith("nvidia")]
        if not lines:
            continue
        nv_lines = {ln.lineno: ln for ln in lines}
        known: dict[str, set[str] | frozenset[str]] = {}
        for ln in lines:
            k = known_for(ln.module)
            if k is not None:
                known[ln.module] = k[0]
        for lf in lint_modprobe_conf(text, known):
            ln_ = nv_lines.get(lf.lineno)
            if ln_ is None or lf.severity != "error":
                continue  # other modules' lines; security notes are graded below
            where = f"{path}:{lf.lineno}"
            if "trailing comment" in lf.message:
                # kmod passes the words on; the kernel's parse_args() warns
                # "<module>: unknown parameter '<word>' ignored" for each and loads the
                # module with the options before them: noise in the log, hence a warning
                yield Finding("nvidia.modprobe-trailing-comment", Severity.WARNING,
                              f"trailing comment in an {ln_.module} options line", where,
                              lf.message + f"; at load the kernel logs \"{ln_.module}: unknown "
                              "parameter '...' ignored\" for each word and loads the module "
                              "with the options before the comment.",
                              "move the comment to its own line; profile key "
                              "nvidia_modules.options (hosttune writes a clean drop-in)")
            else:
                src = known_for(ln_.module)
                yield Finding("nvidia.modprobe-unknown-option", Severity.ERROR,
                              lf.message.split(":", 1)[0] if ":" in lf.message else lf.message,
                              where, lf.message + ". The option has no effect (checked: "
                              f"{src[1] if src else 'hosttune table'}).",
                              "remove it; profile key nvidia_modules.options (validated "
                              "against the installed driver)")
        for ln in lines:
            for word in ln.args:
                if word.startswith("#"):
                    break
                name, value = split_option(word)
                if name == "NVreg_EnableResizableBar":
                    continue  # a hint about firmware support, not a defect
                for note in security_notes(ln.module, name, value):
                    sev = Severity.WARNING if name in ISOLATION_OPTIONS else Severity.INFO
                    if sev is Severity.INFO and name not in HINT_OPTIONS:
                        continue
                    yield Finding(
                        "nvidia.modprobe-weakens-isolation" if sev is Severity.WARNING
                        else "nvidia.modprobe-note", sev, f"{module_key(ln.module)} "
                        f"{name}={value}", f"{path}:{ln.lineno}", note + ".",
                        f"profile key nvidia_modules.options.{module_key(ln.module)}.{name} "
                        "(or drop the option)")


# --- kernel parameters -----------------------------------------------------------------------

_GRUB_VAR = re.compile(r"^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\s*=\s*(.*)$")


def grub_cmdline_words(text: str) -> list[tuple[int, str, str]]:
    """(line, variable, word) of GRUB_CMDLINE_LINUX[_DEFAULT] assignments (sh syntax; words
    that expand variables are left out)."""
    import shlex

    out: list[tuple[int, str, str]] = []
    for i, line in enumerate(text.splitlines(), 1):
        m = _GRUB_VAR.match(line)
        if not m:
            continue
        try:
            words = shlex.split(m.group(2), comments=True, posix=True)
        except ValueError:
            continue
        for v in words:
            out.extend((i, m.group(1), w) for w in v.split() if not w.startswith("$"))
    return out


def _param_problem(word: str, kernel: str | None, nvidia: str | None) -> str | None:
    # Only what hosttune knows for sure: unknown words are common (BOOT_IMAGE, root, ro...)
    name = param_name(word)
    if name in KNOWN_PARAMS or name in ("nvidia-drm.modeset", "nvidia_drm.modeset"):
        return param_warning(word, kernel, nvidia)
    return None


def _module_param_unknown(host: Host, word: str) -> str | None:
    """'module.param' for a loaded module that does not export that parameter. Only a hint:
    parameters declared with permission 0 have no sysfs file
    (Documentation/ABI/testing/sysfs-module), hence severity info."""
    name = param_name(word)
    mod, dot, param = name.partition(".")
    if not dot or not mod or not param or "." in param:
        return None
    mod = mod.replace("-", "_")  # the kernel treats - and _ alike in module names
    if mod.startswith("nvidia"):
        return None  # the nvidia module checks compare against the driver's own list
    # Loadable modules only (they have initstate): built-in names also carry early_param and
    # __setup switches such as random.trust_cpu, which never appear under parameters/.
    if not host.exists(f"/sys/module/{mod}/initstate"):
        return None
    pdir = f"/sys/module/{mod}/parameters"
    if not host.exists(pdir) or host.exists(f"{pdir}/{param.replace('-', '_')}"):
        return None
    return (f"module {mod} of the running kernel exports no parameter {param} ({pdir}); "
            "a misspelt or removed parameter is ignored silently at boot")


def check_kernel_params(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    kernel = kernel_release(host)
    nvidia = driver_version(host)
    sources: list[tuple[str, str]] = []
    cmdline = host.read_text("/proc/cmdline")
    if cmdline:
        sources += [("live: /proc/cmdline", w) for w in parse_cmdline(cmdline)]
    files = ["/etc/default/grub"] + [f"/etc/default/grub.d/{n}" for n in
                                     host.listdir("/etc/default/grub.d") if n.endswith(".cfg")]
    for f in files:
        try:
            text = host.read_text(f)
        except PermissionError:
            continue
        sources += [(f"{f}:{i}", w) for i, _var, w in grub_cmdline_words(text or "")]
    for where, word in sources:
        problem = _param_problem(word, kernel, nvidia)
        if problem is None:
            unknown = _module_param_unknown(host, word)
            if unknown is not None:
                yield Finding(
                    "kernel.param-unknown", Severity.INFO,
                    f"kernel parameter {word}: unknown to {kernel or 'the running kernel'}",
                    where, unknown + ".",
                    "check the spelling against modinfo / /sys/module; remove it from "
                    "GRUB_CMDLINE_LINUX_DEFAULT, or manage it with kernel_cmdline.params")
            continue
        noop = problem.startswith("no-op")
        yield Finding(
            "kernel.param-noop" if noop else "kernel.param-obsolete",
            Severity.INFO if noop else Severity.WARNING,
            f"kernel parameter {word}: {'no-op' if noop else 'obsolete or unknown'} for "
            f"{kernel or 'the running kernel'}", where, problem + ".",
            "remove it from GRUB_CMDLINE_LINUX_DEFAULT and run update-grub; profile key "
            "kernel_cmdline.params (hosttune's grub.d drop-in)")


# --- compose files ------------------------------------------------------------------------

COMPOSE_NAMES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")
COMPOSE_DIRS = ("/opt/*", "/srv/*", "/etc/docker/compose/*")


def compose_files(ctx: DoctorContext) -> list[str]:
    """--compose files plus compose files in the usual places (/opt/*, /srv/*)."""
    host = ctx.host
    found = list(ctx.compose_files)
    for pat in COMPOSE_DIRS:
        for d in host.glob(pat):
            for n in COMPOSE_NAMES:
                p = f"{d}/{n}"
                if p not in found and host.is_file(p):
                    found.append(p)
    return found


def _compose_doc(ctx: DoctorContext, path: str) -> tuple[str, dict[str, Any]] | None:
    try:
        text = ctx.host.read_text(path)
    except PermissionError:
        return None
    if text is None:
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return None
    return text, doc["services"]


def _service_line(text: str, service: str, key: str) -> int:
    """Line of ``key:`` inside ``service:`` of a compose file (the service's line, or 1)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if re.match(rf"^\s+{re.escape(service)}\s*:", ln)), None)
    if start is None:
        return 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    for j in range(start + 1, len(lines)):
        ln = lines[j]
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        if re.match(rf"^\s+{re.escape(key)}\s*:", ln):
            return j + 1
    return start + 1


def _label_to_service(services: dict[str, Any]) -> dict[str, str]:
    return {str(s.get("container_name") or n) if isinstance(s, dict) else n: n
            for n, s in services.items()}


def compose_cpusets(ctx: DoctorContext) -> dict[str, tuple[str, list[int]]]:
    """container -> (compose file, CPUs) of every pinned service in the host's compose files."""
    out: dict[str, tuple[str, list[int]]] = {}
    for path in compose_files(ctx):
        got = _compose_doc(ctx, path)
        if got is None:
            continue
        try:
            sets = cpusets_from_compose(got[0], source=path)
        except HosttuneError:
            continue
        for name, cpus in sets.items():
            out[name] = (path, cpus)
    return out


CPUSET_CHECKS = {"overlap": "containers.cpuset-overlap",
                 "sibling-sharing": "containers.cpuset-smt-sharing",
                 "unknown-cpu": "containers.cpuset-unknown-cpu",
                 "reserved": "containers.cpuset-reserved",
                 "spans-l3": "containers.cpuset-spans-l3",
                 "spans-numa": "containers.cpuset-spans-numa",
                 "unpinned": "containers.unpinned"}


def check_container_cpusets(ctx: DoctorContext) -> Iterator[Finding]:
    facts = ctx.host.facts
    for path in compose_files(ctx):
        got = _compose_doc(ctx, path)
        if got is None:
            continue
        text, services = got
        try:
            found = check_compose(facts, text, source=path)
        except HosttuneError as err:
            yield Finding("containers.compose-unreadable", Severity.WARNING,
                          "compose file cannot be checked", path, str(err),
                          "fix the file; profile key workload (hosttune containers compose)")
            continue
        labels = _label_to_service(services)
        for cf in found:
            svc = labels.get(cf.names[0], cf.names[0])
            line = _service_line(text, svc, "cpuset")
            yield Finding(
                CPUSET_CHECKS[cf.kind],
                Severity.ERROR if cf.severity == "error" else Severity.WARNING,
                f"{' / '.join(cf.names)}: {cf.kind.replace('-', ' ')}", f"{path}:{line}",
                cf.message + ".",
                "profile key workload (hosttune containers plan gives each worker whole "
                "cores inside one L3 domain: `hosttune containers compose`)")


def _gpu_service(svc: dict[str, Any]) -> list[str] | None:
    """GPU ids a compose service reserves ([] = all GPUs), None when it uses none."""
    if svc.get("runtime") == "nvidia" or svc.get("gpus") is not None:
        g = svc.get("gpus")
        return [str(x) for x in g] if isinstance(g, list) else []
    devs = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}) \
        .get("devices") or []
    for d in devs if isinstance(devs, list) else []:
        if not isinstance(d, dict):
            continue
        caps = d.get("capabilities") or []
        if d.get("driver") == "nvidia" or "gpu" in caps:
            ids = d.get("device_ids")
            return [str(x) for x in ids] if isinstance(ids, list) else []
    return None


def compose_gpu_clients(ctx: DoctorContext) -> tuple[int, list[str], str | None]:
    """(most GPU containers on one GPU, their names, the compose file) over the host's
    compose files."""
    best: tuple[int, list[str], str | None] = (0, [], None)
    for path in compose_files(ctx):
        got = _compose_doc(ctx, path)
        if got is None:
            continue
        per: Counter[str] = Counter()
        names: dict[str, list[str]] = {}
        every: list[str] = []
        for n, svc in got[1].items():
            ids = _gpu_service(svc) if isinstance(svc, dict) else None
            if ids is None:
                continue
            label = str(svc.get("container_name") or n)
            if not ids:
                every.append(label)
            for i in ids:
                per[i] += 1
                names.setdefault(i, []).append(label)
        gpu, count = per.most_common(1)[0] if per else ("", 0)
        total = count + len(every)
        if total > best[0]:
            best = (total, names.get(gpu, []) + every, path)
    return best


# --- IRQ affinity ------------------------------------------------------------------------

_MASK_WRITE = re.compile(r"echo\s+(?:-n\s+)?[\"']?([0-9a-fA-F,]+)[\"']?\s*(?:\|\s*(?:sudo\s+)?"
                         r"tee\s+(?:-a\s+)?|>+\s*)[\"']?(/proc/irq/\S*?/smp_affinity)\b(?!_)")
_STATED = re.compile(r"(?:cores?|cpus?)\s+(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)", re.I)


@dataclass(frozen=True)
class MaskUse:
    where: str
    mask: str
    cpus: list[int]
    stated: list[int] | None  # the CPU list the same file names next to it
    irqs: tuple[int, ...] = ()  # live: the IRQs with this mask


def _stated_cpus(ctx: DoctorContext, file: str) -> list[int] | None:
    text = ctx.host.read_text(file) or ""
    for line in text.splitlines():
        if "#" not in line and "Description" not in line:
            continue
        m = _STATED.search(line.split("#", 1)[-1])
        if m:
            try:
                return parse_cpulist(m.group(1))
            except ValueError:
                return None
    return None


def irq_masks(ctx: DoctorContext, lines: list[ShellLine]) -> tuple[list[MaskUse], list[MaskUse]]:
    """(masks written by scripts/units, live masks of the GPU IRQs)."""
    scripts: list[MaskUse] = []
    for sl in lines:
        for m in _MASK_WRITE.finditer(sl.text):
            try:
                cpus = mask_to_cpus(m.group(1))
            except ValueError:
                continue
            scripts.append(MaskUse(sl.where, m.group(1), cpus, _stated_cpus(ctx, sl.file)))
    live: dict[str, list[int]] = {}
    width = nr_cpu_ids(ctx.host)
    for gi in gpu_irqs(ctx.host):
        # the CPU list file: what hosttune writes, and unambiguous; the mask only without it
        try:
            cl = ctx.host.read_value(f"/proc/irq/{gi.irq}/smp_affinity_list")
            mask = ctx.host.read_value(f"/proc/irq/{gi.irq}/smp_affinity")
            if cl:
                mask = cpus_to_mask(parse_cpulist(cl), max(width, max(parse_cpulist(cl)) + 1))
        except (PermissionError, ValueError):
            continue
        if mask:
            live.setdefault(mask, []).append(gi.irq)
    lives = []
    for mask, irqs in live.items():
        try:
            cpus = mask_to_cpus(mask)
        except ValueError:
            continue
        where = f"live: /proc/irq/{{{','.join(map(str, irqs))}}}/smp_affinity" if \
            len(irqs) > 1 else f"live: /proc/irq/{irqs[0]}/smp_affinity"
        lives.append(MaskUse(where, mask, cpus, None, tuple(irqs)))
    return scripts, lives


def _profile_irq_cpus(ctx: DoctorContext) -> list[int] | None:
    if ctx.loaded is None:
        return None
    sec = getattr(ctx.loaded.profile, "gpu_irq", None)
    cpus = getattr(sec, "cpus", None)
    if not cpus or cpus == "node-local":
        return None
    return parse_cpulist(cpus)


def _irqbalance_protects(ctx: DoctorContext, pid: int, irqs: set[int]) -> bool:
    """Does the running irqbalance leave these IRQs alone (--policyscript, --banmod=nvidia,
    --banirq for each)? Its command line decides; the config files only if it is unreadable."""
    host = ctx.host
    try:
        raw = host.read_text(f"/proc/{pid}/cmdline")
    except PermissionError:
        raw = None
    args: list[str] = [a for a in (raw or "").split("\0") if a]
    if not args:
        env = host.read_text("/etc/default/irqbalance") or ""
        for k, v in parse_environment(env):
            if k == "IRQBALANCE_ARGS":
                args += v.split()
        for n in host.listdir("/etc/systemd/system/irqbalance.service.d"):
            for e in parse_unit(host.read_text(
                    f"/etc/systemd/system/irqbalance.service.d/{n}") or ""):
                if e.key == "ExecStart":
                    args += e.value.split()
    banned: set[int] = set()
    for i, a in enumerate(args):
        # -l is --policyscript's short form (irqbalance(1))
        if a.startswith("--policyscript") or a == "-l" or a.startswith("--banmod=nvidia") \
                or (a == "--banmod" and i + 1 < len(args) and args[i + 1] == "nvidia"):
            return True
        if a.startswith("--banirq=") and a.split("=", 1)[1].isdigit():
            banned.add(int(a.split("=", 1)[1]))
        elif a in ("--banirq", "-i") and i + 1 < len(args) and args[i + 1].isdigit():
            banned.add(int(args[i + 1]))
    return irqs <= banned


def _absent_cpus_finding(use: MaskUse, absent: list[int], width: int) -> Finding:
    # kernel/irq/proc.c write_irq_affinity: cpumask_parse_user() refuses bits at or above
    # nr_cpumask_bits (EOVERFLOW, "Value too large for defined data type": probed on 6.18 with
    # mask 6 on a 2-CPU host), and a mask with no online CPU is EINVAL. Either way the whole
    # write fails and the IRQ keeps its affinity.
    present = format_cpulist(list(range(width)))
    none_left = len(absent) == len(use.cpus)
    return Finding(
        "irq.mask-names-absent-cpus", Severity.ERROR,
        f"IRQ mask {use.mask} names CPUs {format_cpulist(absent)}, which this host does not "
        f"have (CPUs {present})", use.where,
        f"mask {use.mask} = CPUs {format_cpulist(use.cpus)}"
        + ("" if none_left else f", of which {format_cpulist(absent)} do not exist")
        + ": the kernel refuses the whole write to smp_affinity (Value too large for defined "
        "data type) and the IRQs keep their affinity; a `2>/dev/null` or `> /dev/null 2>&1` "
        "after it hides the error. A hex mask written for another machine (the seed's "
        "f0000000 = CPUs 28-31 of a 32-CPU box) does not carry over.",
        "profile key gpu_irq.cpus (a CPU list checked against this host's CPUs; hosttune "
        "writes smp_affinity_list)")


def check_irq_affinity(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    scripts, lives = irq_masks(ctx, shell_lines(ctx))
    profile_cpus = _profile_irq_cpus(ctx)
    containers = compose_cpusets(ctx)
    fix = ("profile key gpu_irq.cpus (hosttune writes smp_affinity_list, a CPU list, at every "
           "boot and keeps irqbalance off those IRQs)")
    width = nr_cpu_ids(host)
    for use in scripts:
        absent = [c for c in use.cpus if c >= width]
        if absent:
            yield _absent_cpus_finding(use, absent, width)
    for use in scripts + lives:
        if any(c >= width for c in use.cpus):
            continue  # reported above: nothing to compare until the mask can be written
        want: list[int] | None = None
        basis = ""
        if profile_cpus is not None:
            want, basis = profile_cpus, "the profile's gpu_irq.cpus"
        elif use.stated is not None:
            want, basis = use.stated, "the CPU list stated in the same file"
        else:
            # the container cpuset the mask covers only part of (the seed: 28-31 of 24-31)
            part = [(n, c) for n, (_p, c) in containers.items()
                    if set(use.cpus) < set(c)]
            if part:
                want = part[0][1]
                basis = "the cpuset of " + ", ".join(
                    n for n, c in part if c == want)
        if want is not None and set(want) != set(use.cpus):
            yield Finding(
                "irq.mask-mismatch", Severity.WARNING,
                f"GPU IRQ mask {use.mask} is not the intended CPU set", use.where,
                f"{explain_mask(use.mask, want)}; intended: {format_cpulist(want)} "
                f"({basis}). Hex masks count bits from CPU 0 on the right, 4 CPUs a digit.",
                fix)
    # where GPU interrupts land inside containers' CPUs (or their SMT siblings)
    facts = host.facts
    for use in (lives or scripts):
        if set(use.cpus) >= set(facts.cpu_ids) or any(c >= width for c in use.cpus):
            continue  # never pinned (the kernel's default): not a hand-made setting
        hits = []
        for name, (_p, cset) in sorted(containers.items()):
            both = sorted(set(cset) & set(use.cpus))
            sib = shared_cores(facts, use.cpus, cset)
            if both:
                hits.append(f"{name} ({format_cpulist(cset)}): CPUs {format_cpulist(both)}")
            elif sib:
                hits.append(f"{name} ({format_cpulist(cset)}): SMT siblings of "
                            f"{format_cpulist([c for core in sib for c in core])}")
        if hits:
            yield Finding(
                "irq.in-container-cpuset", Severity.WARNING,
                f"GPU interrupts (CPUs {format_cpulist(use.cpus)}) land on containers' cores",
                use.where, "each interrupt preempts the container thread on that core (or "
                "shares the physical core with it): " + "; ".join(hits) + ".",
                "profile key gpu_irq.cpus: whole system cores outside every container cpuset "
                "(workload.system_cores)")
    # irqbalance rewrites smp_affinity every 10 s unless the IRQs are banned
    pinned = {i for u in lives for i in u.irqs
              if set(u.cpus) != set(facts.cpu_ids)} if lives else set()
    if not (pinned or scripts or profile_cpus):
        return
    irqs = pinned or {gi.irq for gi in gpu_irqs(host)}
    for pid in find_pids(host, "irqbalance"):
        if irqs and not _irqbalance_protects(ctx, pid, irqs):
            yield Finding(
                "irq.irqbalance-overwrites", Severity.WARNING,
                f"irqbalance (pid {pid}) will move the pinned GPU IRQs "
                f"{format_cpulist(sorted(irqs))}", f"live: /proc/{pid}/cmdline",
                "irqbalance rebalances every IRQ it is not told to leave alone (no "
                "--policyscript, --banmod=nvidia or --banirq for them): the affinity written "
                "by the script lasts until its next pass.",
                "profile key gpu_irq.irqbalance: true (an irqbalance policy script that bans "
                "NVIDIA IRQs)")


def _grep_pattern(argv: list[str]) -> re.Pattern[str] | None:
    """The regex a ``grep`` argv selects lines with, as Python sees it (None: not understood).
    ERE (-E) is taken as is; BRE gets GNU's \\| \\( \\) alternation and groups."""
    ere = fixed = icase = False
    pattern: str | None = None
    args = iter(argv[1:])
    for a in args:
        if a in ("-e", "--regexp"):
            pattern = next(args, None)
        elif a.startswith("--"):
            ere |= a == "--extended-regexp"
            fixed |= a == "--fixed-strings"
            icase |= a == "--ignore-case"
            if a == "--perl-regexp":
                return None
        elif a.startswith("-") and len(a) > 1:
            if "P" in a:
                return None
            ere |= "E" in a
            fixed |= "F" in a
            icase |= "i" in a
        elif pattern is None:
            pattern = a
    if pattern is None:
        return None
    if fixed:
        rx = re.escape(pattern)
    elif ere:
        rx = pattern
    else:
        rx = re.sub(r"\\([|()])|([|()+?{}])", lambda m: m.group(1) or "\\" + m.group(2),
                    pattern)
    try:
        return re.compile(rx, re.IGNORECASE if icase else 0)
    except re.error:
        return None


def check_irq_selection(ctx: DoctorContext) -> Iterator[Finding]:
    """A script that finds "the GPU's IRQs" by grepping /proc/interrupts selects whatever
    else matches: the seed's ``grep -E "nvidia|gpu"`` also takes the Ryzen iGPU's amdgpu IRQ
    (and any handler with "gpu" in its name), and then pins it to the GPU feeder cores."""
    text = ctx.host.read_text("/proc/interrupts") or ""
    raw = {}
    for line in text.splitlines()[1:]:
        head = line.split(":", 1)[0].strip()
        if head.isdigit():
            raw[int(head)] = line
    if not raw:
        return
    nvidia = {gi.irq for gi in gpu_irqs(ctx.host)}
    names = {ln.irq: ",".join(ln.actions) for ln in parse_interrupts(text)}
    for sl in shell_lines(ctx):
        if "/proc/interrupts" not in sl.text:
            continue
        for argv in commands(sl.text):
            if argv[0].rsplit("/", 1)[-1] not in ("grep", "egrep"):
                continue
            rx = _grep_pattern([argv[0], "-E", *argv[1:]] if argv[0].endswith("egrep") else argv)
            if rx is None:
                continue
            picked = {irq for irq, line in raw.items() if rx.search(line)}
            extra = sorted(picked - nvidia)
            if extra:
                what = ", ".join(f"{i} ({names.get(i) or '?'})" for i in extra)
                yield Finding(
                    "irq.selection-too-broad", Severity.WARNING,
                    f"the /proc/interrupts grep also selects IRQ {what}", sl.where,
                    f"The pattern {rx.pattern!r} is meant to find the NVIDIA GPUs' interrupts, "
                    "but /proc/interrupts lines of other devices match it too, so their "
                    "interrupts are pinned to the GPU's CPUs as well (an integrated GPU's "
                    "amdgpu/i915 handler matches 'gpu'). Handler names are not a stable way "
                    "to find a device's IRQs.",
                    "profile key gpu_irq (hosttune takes the IRQs from the NVIDIA PCI "
                    "functions' msi_irqs in sysfs, never from handler names)")
            elif nvidia and not picked & nvidia:
                yield Finding(
                    "irq.selection-misses-gpu", Severity.WARNING,
                    "the /proc/interrupts grep selects none of the NVIDIA GPUs' IRQs",
                    sl.where,
                    f"The pattern {rx.pattern!r} matches no line of IRQs "
                    f"{format_cpulist(sorted(nvidia))} (the NVIDIA functions' interrupts), so "
                    "the script pins nothing it means to.",
                    "profile key gpu_irq (hosttune takes the IRQs from the NVIDIA PCI "
                    "functions' msi_irqs in sysfs)")


# --- CUDA cache path ------------------------------------------------------------------------


def _cuda_cache_settings(ctx: DoctorContext) -> list[tuple[str, str]]:
    """(where, path) of every CUDA_CACHE_PATH the host sets."""
    host = ctx.host
    out: list[tuple[str, str]] = []

    def env_file(path: str) -> None:  # KEY=VALUE lines: /etc/environment, EnvironmentFile=
        try:
            text = host.read_text(path) or ""
        except (PermissionError, UnicodeDecodeError, IsADirectoryError):
            return
        for i, line in enumerate(text.splitlines(), 1):
            out.extend((f"{path}:{i}", v) for k, v in parse_environment(line)
                       if k == "CUDA_CACHE_PATH")

    env_file("/etc/environment")
    for n in host.listdir("/etc/profile.d"):
        p = f"/etc/profile.d/{n}"
        try:
            body = host.read_text(p) or ""
        except (PermissionError, UnicodeDecodeError, IsADirectoryError):
            continue
        for i, line in enumerate(body.splitlines(), 1):
            m = re.match(r"^\s*(?:export\s+)?CUDA_CACHE_PATH=([\"']?)([^\"'\s;]+)\1", line)
            if m:
                out.append((f"{p}:{i}", m.group(2)))
    import shlex

    env_files = {"/etc/environment"}  # read above
    for p in unit_files(ctx):
        try:
            utext = host.read_text(p) or ""
        except PermissionError:
            continue
        for e in parse_unit(utext):
            if e.key == "EnvironmentFile":
                # systemd.exec(5): a leading '-' means "ignore if missing"; KEY=VALUE lines
                ef = e.value.strip().removeprefix("-")
                if ef.startswith("/") and ef not in env_files:
                    env_files.add(ef)
                    env_file(ef)
                continue
            if e.key != "Environment":
                continue
            try:
                words = shlex.split(e.value)
            except ValueError:
                words = e.value.split()
            out += [(f"{p}:{e.lineno}", w.split("=", 1)[1]) for w in words
                    if w.startswith("CUDA_CACHE_PATH=")]
    for path in compose_files(ctx):
        cdoc = _compose_doc(ctx, path)
        if cdoc is None:
            continue
        for name, svc in cdoc[1].items():
            env = svc.get("environment") if isinstance(svc, dict) else None
            items: list[tuple[str, str]] = []
            if isinstance(env, dict):
                items = [(str(k), str(v)) for k, v in env.items() if v is not None]
            elif isinstance(env, list):
                items = [tuple(str(x).split("=", 1)) for x in env if "=" in str(x)]  # type: ignore[misc]
            for k, v in items:
                if k == "CUDA_CACHE_PATH":
                    lno = _service_line(cdoc[0], name, "environment")
                    out.append((f"{path}:{lno}", v))
    return out


def _tmpfs_mount(ctx: DoctorContext, path: str) -> str | None:
    try:
        mounts = parse_mountinfo(ctx.host.read_text("/proc/self/mountinfo") or "")
    except PermissionError:
        return None
    best: tuple[int, str] | None = None
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and \
                (best is None or len(mp) > best[0]):
            best = (len(mp), m.fstype if m.fstype in ("tmpfs", "ramfs") else "")
    return None if best is None or not best[1] else best[1]


def _world_writable_in_chain(ctx: DoctorContext, path: str) -> bool:
    cur = os.path.normpath(path)
    while True:
        try:
            st = ctx.host.lstat(cur)
            if st is not None and stat.S_IMODE(st.st_mode) & 0o002 \
                    and not stat.S_ISLNK(st.st_mode):
                return True
        except (OSError, HostError):
            pass
        if cur == "/":
            return False
        cur = os.path.dirname(cur)


def check_cuda_cache(ctx: DoctorContext) -> Iterator[Finding]:
    fix = ("profile key cuda_env.variables.CUDA_CACHE_PATH (e.g. /var/cache/cuda; hosttune "
           "creates it with cuda_env.cache_dir_mode 0770 and cache_dir_group)")
    for where, path in _cuda_cache_settings(ctx):
        problem = cache_path_problem(ctx.host, path)
        norm = os.path.normpath(path) if path.startswith("/") else path
        wiped = any(norm == d or norm.startswith(d + "/") for d in BOOT_WIPED)
        tmpfs = None if wiped else _tmpfs_mount(ctx, norm)
        if problem is None and tmpfs is None:
            continue
        writable = norm.startswith(("/tmp", "/var/tmp", "/dev/shm")) or \
            _world_writable_in_chain(ctx, norm)
        if problem is None:
            problem = (f"{norm} is on a {tmpfs}: the cache is lost at every boot and CUDA "
                       "programs JIT-compile their kernels again")
        states = (["world-writable"] if writable else []) + \
            (["wiped at boot"] if wiped or tmpfs else [])
        yield Finding(
            "cuda.cache-path-unsafe", Severity.ERROR if writable else Severity.WARNING,
            f"CUDA_CACHE_PATH={path} is {' and '.join(states) or 'unsafe'}", where,
            problem + ".", fix)


# --- compute mode vs GPU clients -----------------------------------------------------------

_COMPUTE_NAMES = {"0": ComputeMode.DEFAULT, "default": ComputeMode.DEFAULT,
                  "2": ComputeMode.PROHIBITED, "prohibited": ComputeMode.PROHIBITED,
                  "3": ComputeMode.EXCLUSIVE_PROCESS,
                  "exclusive_process": ComputeMode.EXCLUSIVE_PROCESS}


@dataclass(frozen=True)
class SmiSetting:
    where: str
    what: str  # power | graphics | memory | compute
    value: str
    gpu: str | None  # -i value (index, UUID or bus id), None = every GPU


_SMI_OPTS = {"-pl": "power", "--power-limit": "power", "-lgc": "graphics",
             "--lock-gpu-clocks": "graphics", "-lmc": "memory",
             "--lock-memory-clocks": "memory", "-c": "compute", "--compute-mode": "compute",
             "-i": "id", "--id": "id"}


def smi_settings(lines: list[ShellLine]) -> list[SmiSetting]:
    """Settings made by `nvidia-smi` invocations in scripts and units."""
    out: list[SmiSetting] = []
    for sl in lines:
        for argv in commands(sl.text):
            if argv[0].rsplit("/", 1)[-1] != "nvidia-smi":
                continue
            found: list[tuple[str, str]] = []
            gpu: str | None = None
            i = 1
            while i < len(argv):
                opt, eq, val = argv[i].partition("=")
                kind = _SMI_OPTS.get(opt)
                if kind is not None and not eq and i + 1 < len(argv):
                    val = argv[i + 1]
                    i += 1
                i += 1
                if kind == "id":
                    gpu = val
                elif kind is not None:
                    found.append((kind, val))
            out += [SmiSetting(sl.where, k, v, gpu) for k, v in found]
    return out


def _mps_running(ctx: DoctorContext) -> bool:
    host = ctx.host
    if find_pids(host, "nvidia-cuda-mps-control") or find_pids(host, "nvidia-cuda-mps-server"):
        return True
    # an enabled unit that starts the control daemon
    for wants in host.glob("/etc/systemd/system/*.wants/*"):
        name = wants.rsplit("/", 1)[-1]
        unit = find_unit(host, name)
        text = (host.read_text(unit) or "") if unit else ""
        if "nvidia-cuda-mps-control" in text:
            return True
    return False


def _targets(nv: Nvml, gpus: list[GpuInfo], sel: str | None) -> list[GpuInfo]:
    if sel is None:
        return gpus
    out = []
    for s in sel.split(","):
        out += [g for g in gpus if s.strip() in (str(g.index), g.uuid)
                or g.pci_bus_id.lower().endswith(s.strip().lower())]
    return out


def check_compute_mode(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    exclusive: list[str] = []  # where EXCLUSIVE_PROCESS is set
    nv = host.nvml()
    if nv.available:
        for g in nv.devices():
            r = nv.compute_mode(g)
            if r.ok and r.get() is ComputeMode.EXCLUSIVE_PROCESS:
                exclusive.append(f"live: NVML gpu{g.index} compute mode")
    # and every script/unit that sets it (they set it again whenever they run)
    exclusive += [s.where for s in smi_settings(shell_lines(ctx)) if s.what == "compute"
                  and _COMPUTE_NAMES.get(s.value.lower()) is ComputeMode.EXCLUSIVE_PROCESS]
    if not exclusive:
        return
    clients, names, compose = compose_gpu_clients(ctx)
    source = f"{', '.join(names)} in {compose}"
    if ctx.loaded is not None:
        pc = gpu_clients(ctx.loaded.profile)
        if pc is not None and pc > clients:
            clients, source = pc, "the profile's GPU workers"
    if clients < 2 or _mps_running(ctx):
        return
    try:
        check_exclusive_sharing("exclusive_process", None, clients)
        return
    except ValueError as err:
        why = str(err)
    for where in exclusive:
        yield Finding(
            "gpu.exclusive-without-mps", Severity.ERROR,
            f"EXCLUSIVE_PROCESS with {clients} GPU clients and no MPS", where,
            f"{why} (clients: {source}).",
            "profile key gpu.compute_mode: default (or gpu.mps, which shares the GPU under "
            "EXCLUSIVE_PROCESS)")


# --- clocks and power ----------------------------------------------------------------------


def _clock_spec(value: str) -> int | tuple[int, int] | None:
    parts = [p.strip() for p in value.split(",")]
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        return None
    if len(nums) == 1:
        return nums[0]
    if len(nums) == 2:
        return (nums[0], nums[1])
    return None


def check_gpu_clocks(ctx: DoctorContext) -> Iterator[Finding]:
    settings = [s for s in smi_settings(shell_lines(ctx))
                if s.what in ("power", "graphics", "memory")]
    if not settings:
        return
    nv = ctx.host.nvml()
    if not nv.available:
        ctx.skipped_checks.append(
            f"GPU clock/power values ({len(settings)} nvidia-smi settings, e.g. "
            f"{settings[0].where}) not checked against the device: {nv.state[1]}")
        return
    gpus = nv.devices()
    for s in settings:
        for g in _targets(nv, gpus, s.gpu):
            label = f"gpu{g.index} ({g.name})"
            if s.what == "power":
                try:
                    w = float(s.value)
                except ValueError:
                    continue
                cons = nv.power_limit_constraints_w(g)
                if not cons.ok:
                    ctx.skipped_checks.append(f"{s.where}: power limit of {label}: "
                                              f"{cons.message}")
                    continue
                lo, hi = cons.get()
                if not lo <= w <= hi:
                    yield Finding(
                        "gpu.power-out-of-range", Severity.ERROR,
                        f"power limit {w:g} W is outside {label}'s {lo:g}-{hi:g} W", s.where,
                        "nvidia-smi refuses it (Invalid argument), the limit stays at its "
                        "previous value, and an && chain or set -e script stops there.",
                        "profile key gpu.power_limit (max/default are read from the board)")
                continue
            spec = _clock_spec(s.value)
            if spec is None:
                continue
            what = GRAPHICS if s.what == "graphics" else MEMORY
            plan = resolve_clock(nv, g, what, spec)
            detail = ""
            if what == MEMORY:
                mem = nv.supported_memory_clocks_mhz(g)
                vals = [spec] if isinstance(spec, int) else list(spec)
                if mem.ok and any(v not in mem.get() for v in vals):
                    detail = (f"; {s.value} MHz is not one of its memory clocks "
                              f"({', '.join(map(str, mem.get()))} MHz)")
            flag = "-lgc" if what == GRAPHICS else "-lmc"
            if plan.error or plan.unsupported:
                yield Finding(
                    "gpu.clock-unsupported" if plan.unsupported else "gpu.clock-out-of-range",
                    Severity.ERROR, f"nvidia-smi {flag} {s.value}: not a setting {label} "
                    "supports", s.where,
                    (plan.unsupported or plan.error) + detail + ". nvidia-smi fails, the "
                    "clocks stay unlocked, and an && chain or set -e script stops there.",
                    f"profile key gpu.locked_clocks.{s.what} (checked against "
                    "nvmlDeviceGetSupported*Clocks; unsupported locks are reported, not "
                    "applied)")
