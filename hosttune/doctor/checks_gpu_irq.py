"""GPU interrupts: smp_affinity masks written by scripts and units (CPUs the host lacks, masks
that are not the intended set, interrupts on containers' cores), irqbalance moving pinned IRQs,
and /proc/interrupts greps that select the wrong IRQs.

The rules come from host.irq (the NVIDIA functions' IRQs from sysfs, mask arithmetic) and
containers.cpusets (SMT siblings): the doctor only finds the hand-made masks and asks those
rules."""

from __future__ import annotations

import re
from collections.abc import Iterator

import msgspec

from hosttune.containers.cpusets import shared_cores
from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.composefiles import compose_cpusets
from hosttune.doctor.shellcmds import ShellLine, commands, shell_lines
from hosttune.host.facts import find_pids
from hosttune.host.irq import (
    cpus_to_mask,
    explain_mask,
    gpu_irqs,
    mask_to_cpus,
    nr_cpu_ids,
    parse_interrupts,
)
from hosttune.host.parsers import format_cpulist, parse_cpulist
from hosttune.host.unitfile import parse_unit
from hosttune.tunables.cuda_env import parse_environment

_MASK_WRITE = re.compile(r"echo\s+(?:-n\s+)?[\"']?([0-9a-fA-F,]+)[\"']?\s*(?:\|\s*(?:sudo\s+)?"
                         r"tee\s+(?:-a\s+)?|>+\s*)[\"']?(/proc/irq/\S*?/smp_affinity)\b(?!_)")
_STATED = re.compile(r"(?:cores?|cpus?)\s+(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*)", re.I)


class MaskUse(msgspec.Struct, frozen=True):
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
        "after it hides the error. A hex mask written for another machine (f0000000 = CPUs "
        "28-31 of a 32-CPU box) does not carry over.",
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
            # the container cpuset the mask covers only part of (e.g. 28-31 of 24-31)
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
    else matches: ``grep -E "nvidia|gpu"`` also takes an integrated GPU's amdgpu IRQ
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
