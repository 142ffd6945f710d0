"""GPU IRQ affinity: pin the interrupts of every NVIDIA GPU to chosen CPUs, and keep irqbalance
off them.

Runtime only: /proc/irq/N/smp_affinity_list (a cpulist, so no mask arithmetic can go wrong)
does not survive a reboot or a driver reload, and MSI-X IRQ numbers are allocated at probe
time, so hosttune-boot.service re-evaluates and re-applies at boot. irqbalance would move the
IRQs back within seconds; instead of editing the shared /etc/default/irqbalance with IRQ
numbers that change across boots, hosttune installs an irqbalance policy script (irqbalance(1)
--policyscript: run per IRQ with the device's sysfs path; 'ban=true' makes irqbalance leave
that IRQ alone) that bans NVIDIA display devices, enabled by a drop-in for irqbalance.service
that re-states the unit's own ExecStart (Debian 12: /usr/sbin/irqbalance --foreground
$IRQBALANCE_ARGS) plus the option, so $IRQBALANCE_ARGS from /etc/default/irqbalance still
applies. --banmod=nvidia would be shorter but did not hold in all cases before the fixes of
Irqbalance/irqbalance#202 / PR #232 (2022), and Ubuntu 22.04 ships 1.8.0.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hosttune.host.irq import GpuDevice, cpus_to_mask, gpu_irqs, nr_cpu_ids, nvidia_gpus
from hosttune.host.parsers import format_cpulist, parse_cpulist
from hosttune.tunables._systemd import daemon_reload, find_unit
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
    from hosttune.profile.schema import GpuIrqSection

POLICY_SCRIPT = "/etc/hosttune/irqbalance-gpu-policy.sh"
DROPIN = "/etc/systemd/system/irqbalance.service.d/90-hosttune-gpu.conf"


def policy_script() -> str:
    return (
        "#!/bin/sh\n"
        + HEADER
        + "# irqbalance --policyscript: run as '<script> <sysfs device path> <irq>' for every\n"
        "# IRQ; 'ban=true' makes irqbalance leave that IRQ's affinity alone (irqbalance(1)).\n"
        "# Bans NVIDIA display devices (vendor 0x10de, class 0x03xxxx): hosttune pins those.\n"
        'vendor=$(cat "$1/vendor" 2>/dev/null)\n'
        'class=$(cat "$1/class" 2>/dev/null)\n'
        'case "$vendor:$class" in\n'
        "  0x10de:0x03*) echo ban=true ;;\n"
        "esac\n"
        "exit 0\n"
    )


def unit_exec_start(text: str) -> str | None:
    """The effective ExecStart= of a unit file's [Service] section (last assignment wins;
    an empty one resets the list)."""
    section = ""
    exec_start: str | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s
            continue
        if section != "[Service]":
            continue
        m = re.match(r"ExecStart\s*=\s*(.*)$", s)
        if m:
            exec_start = m.group(1).strip() or None
    return exec_start


def dropin_text(exec_start: str) -> str:
    return (HEADER
            + "# Keep irqbalance off the NVIDIA GPU IRQs that hosttune pins (gpu_irq).\n"
            + "[Service]\nExecStart=\n"
            + f"ExecStart={exec_start} --policyscript={POLICY_SCRIPT}\n")


class IrqAffinityTunable(Tunable):
    name = "gpu_irq"
    section = "gpu_irq"

    def _sec(self, ctx: Context) -> GpuIrqSection:
        sec = ctx.profile.gpu_irq
        assert sec is not None  # the family runs only when its section is set
        return sec

    def validate(self, ctx: Context) -> None:
        sec = self._sec(ctx)
        if sec.cpus == "node-local":
            return
        online = set(ctx.facts.cpu_ids)
        bad = [c for c in parse_cpulist(sec.cpus) if c not in online]
        # only an error where there are GPU IRQs to pin: a profile written for a GPU box stays
        # usable (audit, image builds) on hosts without one
        if bad and online and gpu_irqs(ctx.host):
            raise ctx.error("gpu_irq.cpus", f"CPU(s) {format_cpulist(bad)} are not online on "
                            f"this host (online: {format_cpulist(sorted(online))})")

    def desired_cpus(self, ctx: Context, dev: GpuDevice | None) -> list[int]:
        sec = self._sec(ctx)
        if sec.cpus != "node-local":
            return parse_cpulist(sec.cpus)
        if dev is not None and dev.local_cpus:
            return list(dev.local_cpus)
        if dev is not None and dev.numa_node >= 0:
            for n in ctx.facts.nodes:
                if n.id == dev.numa_node and n.cpus:
                    return list(n.cpus)
        return ctx.facts.cpu_ids

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = self._sec(ctx)
        host = ctx.host
        out = Evaluation()
        irqs = gpu_irqs(host)
        if not irqs:
            gpus = nvidia_gpus(host)
            why = ("NVIDIA GPU(s) " + ", ".join(g.bdf for g in gpus)
                   + " have no MSI/MSI-X IRQs yet (driver not loaded?)") if gpus else \
                "no NVIDIA GPU on this host"
            out.add(Row(self.name, "irqs", "none", sec.cpus, Status.UNSUPPORTED, why))
            return out
        devs = {d.bdf: d for d in nvidia_gpus(host)}
        width = nr_cpu_ids(host)
        for gi in irqs:
            want = sorted(set(self.desired_cpus(ctx, devs.get(gi.device))))
            key = f"irq {gi.irq}" + (f" ({gi.device}" if gi.device else " (") + \
                (f" {gi.name})" if gi.name else ")")
            path = f"/proc/irq/{gi.irq}/smp_affinity_list"
            try:
                cur_text = host.read_value(path)
            except PermissionError:
                out.add(Row(self.name, key, "?", format_cpulist(want), Status.NEEDS_ROOT))
                continue
            if cur_text is None:
                out.add(Row(self.name, key, "absent", format_cpulist(want),
                            Status.UNSUPPORTED, f"{path} missing"))
                continue
            try:
                cur = parse_cpulist(cur_text)
            except ValueError:
                cur = []
            mask = cpus_to_mask(want, max(width, max(want) + 1))
            shown = format_cpulist(cur) or cur_text
            out.add(*setting(self.name, key, shown, format_cpulist(want), Change(
                id=f"{self.name}/irq{gi.irq}", tunable=self.name, kind="kernel",
                summary=f"IRQ {gi.irq} affinity: {shown} -> {format_cpulist(want)}",
                path=path, value=format_cpulist(want), runtime=True),
                ok=set(cur) == set(want), note=f"mask {mask}"))
        if sec.irqbalance:
            r, c = self._irqbalance(ctx)
            out.rows.extend(r)
            out.changes.extend(c)
        return out

    def _irqbalance(self, ctx: Context) -> tuple[list[Row], list[Change]]:
        host = ctx.host
        unit = find_unit(host, "irqbalance.service")
        if unit is None:
            return [Row(self.name, "irqbalance", "not installed", "GPU IRQs banned", Status.OK,
                        "nothing moves the IRQs back")], []
        try:
            exec_start = unit_exec_start(host.read_text(unit) or "")
        except PermissionError:
            return [Row(self.name, "irqbalance", "?", "GPU IRQs banned", Status.NEEDS_ROOT)], []
        if exec_start is None:
            return [Row(self.name, "irqbalance", f"{unit}: no ExecStart", "GPU IRQs banned",
                        Status.UNSUPPORTED)], []
        if "--policyscript" in exec_start or re.search(r"(^|\s)-l(\s|$)", exec_start):
            return [Row(self.name, "irqbalance", "own policy script", "GPU IRQs banned",
                        Status.CONFLICT, f"{unit} already passes a --policyscript; irqbalance "
                        f"takes one: make it print ban=true for vendor 0x10de")], []
        rows: list[Row] = []
        changes: list[Change] = []
        needs = ("restart irqbalance.service",)
        r1, c1 = file_change(ctx, self.name, POLICY_SCRIPT, policy_script(), mode=0o755,
                             key="irqbalance policy script", needs=needs)
        r2, c2 = file_change(ctx, self.name, DROPIN, dropin_text(exec_start),
                             key="irqbalance drop-in", needs=needs)
        rows += [r1, r2]
        changes += [c for c in (c1, c2) if c]
        if changes:
            # the restart reads the new drop-in only after a reload: both, wherever the
            # restart is planned
            reload = daemon_reload(ctx, self.name, booted_only=False)
            if reload is not None:
                changes.append(reload)
            argv = ["systemctl", "try-restart", "irqbalance.service"]
            changes.append(Change(
                id=f"{self.name}/irqbalance-restart", tunable=self.name, kind="command",
                summary=" ".join(argv), params={"argv": argv, "revert_argv": argv,
                                                "post": True}))
        return rows, changes
