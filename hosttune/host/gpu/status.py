"""The snapshot behind ``hosttune status gpu``: read-only, works without root, never raises for
NVML errors (an unreadable field is null and says why in ``unavailable``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

from hosttune.host.gpu import markers
from hosttune.host.gpu.nvml import GpuInfo, Nvml, NvmlState, Reading

if TYPE_CHECKING:
    from hosttune.host import Host

# Reasons that mean the hardware is holding the clocks down, not a policy choice.
HW_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown",
              "sw_thermal_slowdown")


class GpuStatus(msgspec.Struct, frozen=True):
    data: dict[str, Any]
    findings: list[str] = field(default_factory=list)


class GpuSnapshot(msgspec.Struct, frozen=True):
    driver_state: str
    driver_message: str
    driver: dict[str, Any]
    gpus: list[GpuStatus]

    @property
    def findings(self) -> list[str]:
        return [f for g in self.gpus for f in g.findings]

    def to_json(self) -> dict[str, Any]:
        return {"driver": {"status": self.driver_state, "message": self.driver_message,
                           **self.driver},
                "gpus": [{**g.data, "findings": g.findings} for g in self.gpus],
                "findings": self.findings}


class _Collector:
    def __init__(self) -> None:
        self.unavailable: dict[str, str] = {}

    def take(self, name: str, r: Reading[Any]) -> Any:
        if r.ok:
            return r.value
        self.unavailable[name] = r.message or str(r.state)
        return None


def _gpu(host: Host, nv: Nvml, g: GpuInfo) -> GpuStatus:
    c = _Collector()
    cons = c.take("power.constraints", nv.power_limit_constraints_w(g))
    power = {
        "usage_w": c.take("power.usage_w", nv.power_usage_w(g)),
        "limit_w": c.take("power.limit_w", nv.power_limit_w(g)),
        "enforced_limit_w": c.take("power.enforced_limit_w", nv.enforced_power_limit_w(g)),
        "default_limit_w": c.take("power.default_limit_w", nv.default_power_limit_w(g)),
        "min_limit_w": cons[0] if cons else None,
        "max_limit_w": cons[1] if cons else None,
    }
    locked: dict[str, Any] = {}
    for what, name in (("graphics-locked-clocks", "graphics"), ("memory-locked-clocks",
                                                                  "memory")):
        m = markers.read_marker(host, g.uuid, what)
        if m and "min_mhz" in m:
            locked[name] = [m["min_mhz"], m["max_mhz"]]
        elif m and "unsupported" in m:
            locked[name] = "unsupported"
        else:
            locked[name] = None
    clocks = {
        "graphics_mhz": c.take("clocks.graphics_mhz", nv.clock_mhz(g, "graphics")),
        "sm_mhz": c.take("clocks.sm_mhz", nv.clock_mhz(g, "sm")),
        "memory_mhz": c.take("clocks.memory_mhz", nv.clock_mhz(g, "memory")),
        "max_graphics_mhz": c.take("clocks.max_graphics_mhz", nv.max_clock_mhz(g, "graphics")),
        "max_memory_mhz": c.take("clocks.max_memory_mhz", nv.max_clock_mhz(g, "memory")),
        # NVML cannot read locks back: these are the ranges hosttune set during this boot
        "locked_graphics_mhz": locked["graphics"],
        "locked_memory_mhz": locked["memory"],
    }
    mode = c.take("compute_mode", nv.compute_mode(g))
    link = c.take("pcie", nv.pcie_link(g))
    reasons = c.take("clock_event_reasons", nv.clock_event_reasons(g))
    mem = c.take("memory", nv.memory(g))
    findings: list[str] = []
    pcie: dict[str, Any] | None = None
    if link is not None:
        idle = reasons is not None and "gpu_idle" in reasons
        width_down = link.width < link.max_width
        gen_down = link.gen < link.max_gen
        pcie = {"gen": link.gen, "max_gen": link.max_gen, "gpu_max_gen": link.gpu_max_gen,
                "width": link.width, "max_width": link.max_width,
                "downtrained": width_down or (gen_down and not idle)}
        if width_down:
            findings.append(f"gpu{g.index}: PCIe link x{link.width} of x{link.max_width}: "
                            "down-trained (reseat the card, check slot, riser and BIOS lane "
                            "settings)")
        if gen_down and not idle:
            findings.append(f"gpu{g.index}: PCIe gen {link.gen} of {link.max_gen} while busy")
        elif gen_down:
            pcie["note"] = "below max gen while idle: normal power saving (check under load)"
        if link.gpu_max_gen and link.max_gen < link.gpu_max_gen:
            findings.append(f"gpu{g.index}: the slot caps PCIe at gen {link.max_gen}; the GPU "
                            f"can do gen {link.gpu_max_gen}")
    for r in reasons or []:
        if r in HW_REASONS:
            findings.append(f"gpu{g.index}: clocks held down by {r}")
    data = {
        "index": g.index, "uuid": g.uuid, "name": g.name, "brand": g.brand,
        "architecture": g.architecture, "pci_bus_id": g.pci_bus_id,
        "persistence_mode": c.take("persistence_mode", nv.persistence_mode(g)),
        "power": power, "clocks": clocks,
        "compute_mode": mode.smi if mode is not None else None,
        "pcie": pcie,
        "memory": None if mem is None else {"used_bytes": mem.used_bytes,
                                            "free_bytes": mem.free_bytes,
                                            "total_bytes": mem.total_bytes},
        "temperature_c": c.take("temperature_c", nv.temperature_c(g)),
        "clock_event_reasons": reasons,
        "unavailable": c.unavailable,
    }
    return GpuStatus(data, findings)


def snapshot(host: Host) -> GpuSnapshot:
    nv = host.nvml()
    state, msg = nv.state
    if state is not NvmlState.OK:
        gpus = [GpuStatus({"index": g.index, "uuid": g.uuid, "name": g.name,
                           "pci_bus_id": g.pci_bus_id, "unavailable": {"*": msg}})
                for g in nv.devices()]
        return GpuSnapshot(str(state), msg, {}, gpus)
    drv = nv.driver()
    info: dict[str, Any] = {}
    if drv.ok:
        d = drv.get()
        info = {"driver_version": d.driver_version, "nvml_version": d.nvml_version,
                "cuda_driver_version": d.cuda_driver_version, "gpu_count": d.gpu_count}
    return GpuSnapshot(str(NvmlState.OK), "", info, [_gpu(host, nv, g) for g in nv.devices()])
