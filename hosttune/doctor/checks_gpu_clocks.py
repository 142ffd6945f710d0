"""GPU clocks and power set by nvidia-smi in scripts and units (-pl, -lgc, -lmc): values the
board refuses, checked against the device through NVML.

The rules come from tunables.gpu_nvml (resolve_clock, the supported clocks) and the board's
power-limit constraints: the doctor only finds the hand-made settings and asks those rules."""

from __future__ import annotations

from collections.abc import Iterator

from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.shellcmds import shell_lines
from hosttune.doctor.smicmds import smi_settings
from hosttune.host.gpu.nvml import GpuInfo, Nvml
from hosttune.tunables.gpu_nvml import GRAPHICS, MEMORY, resolve_clock


def _targets(nv: Nvml, gpus: list[GpuInfo], sel: str | None) -> list[GpuInfo]:
    if sel is None:
        return gpus
    out = []
    for s in sel.split(","):
        out += [g for g in gpus if s.strip() in (str(g.index), g.uuid)
                or g.pci_bus_id.lower().endswith(s.strip().lower())]
    return out



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
