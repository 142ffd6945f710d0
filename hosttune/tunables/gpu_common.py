"""Helpers shared by the GPU tunables (gpu, gpu_persistence, gpu_mps)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec

from hosttune.host.gpu.nvml import GpuInfo, Nvml, NvmlState, Reading
from hosttune.tunables.base import Context, Row, Status

if TYPE_CHECKING:
    from hosttune.profile.schema import GpuLockedClocks, GpuSection, PowerSpec

STATE_STATUS = {
    NvmlState.OK: Status.OK,
    NvmlState.UNSUPPORTED: Status.UNSUPPORTED,
    NvmlState.NEEDS_ROOT: Status.NEEDS_ROOT,
    NvmlState.NO_DRIVER: Status.UNSUPPORTED,  # a host without a GPU cannot drift
    NvmlState.OFFLINE: Status.OFFLINE,
    NvmlState.GPU_LOST: Status.ERROR,
    NvmlState.ERROR: Status.ERROR,
}


def section(ctx: Context) -> GpuSection:
    sec = ctx.profile.gpu
    assert sec is not None  # the family runs only when its section is set
    return sec


def reading_row(tunable: str, key: str, desired: str, r: Reading[Any]) -> Row:
    """The row for a setting whose reading failed (unsupported, needs root, no driver ...)."""
    return Row(tunable, key, "—", desired, STATE_STATUS[r.state], r.message)


def unavailable_rows(tunable: str, nv: Nvml, wanted: list[tuple[str, str]]) -> list[Row] | None:
    """When NVML is unavailable (no driver, --root tree): one row per wanted (key, desired),
    status 'unsupported' (no NVIDIA driver) or 'offline'. None when NVML answers."""
    state, msg = nv.state
    if state is NvmlState.OK:
        return None
    return [Row(tunable, k, "—", d, STATE_STATUS[state], msg) for k, d in wanted]


class DeviceSettings(msgspec.Struct, frozen=True):
    power_limit: PowerSpec | None
    locked_clocks: GpuLockedClocks | None
    compute_mode: str | None
    origin: dict[str, str]  # setting -> profile key path that set it (for ProfileError)


def device_settings(sec: GpuSection, gpu: GpuInfo) -> DeviceSettings:
    """Top-level gpu settings with the matching gpu.devices entry laid over them."""
    power, clocks, mode = sec.power_limit, sec.locked_clocks, sec.compute_mode
    origin = {"power_limit": "gpu.power_limit", "locked_clocks": "gpu.locked_clocks",
              "compute_mode": "gpu.compute_mode"}
    for key, dev in sec.devices.items():
        if device_matches(key, gpu):
            if dev.power_limit is not None:
                power, origin["power_limit"] = dev.power_limit, f"gpu.devices.{key}.power_limit"
            if dev.locked_clocks is not None:
                clocks = dev.locked_clocks
                origin["locked_clocks"] = f"gpu.devices.{key}.locked_clocks"
            if dev.compute_mode is not None:
                mode = dev.compute_mode
                origin["compute_mode"] = f"gpu.devices.{key}.compute_mode"
    if mode is None and sec.mps_enabled:
        mode = "exclusive_process"  # MPS: the control daemon wants EXCLUSIVE_PROCESS set first
        origin["compute_mode"] = "gpu.mps"
    return DeviceSettings(power, clocks, mode, origin)


def device_matches(key: str, gpu: GpuInfo) -> bool:
    k = key.strip().lower()
    return (k == str(gpu.index) or k == gpu.uuid.lower()
            or (bool(gpu.pci_bus_id) and k in (gpu.pci_bus_id.lower(),
                                                gpu.pci_bus_id.lower()[4:])))


def gpu_clients(profile: Any) -> int | None:
    """How many GPU processes/containers share one GPU (the most on any GPU): from the
    workload section when it has GPU workers (``gpu_workers.count`` workers, ``gpus``: the GPU
    index of each, 'auto' = one GPU each), else gpu.clients."""
    workers = getattr(getattr(profile, "workload", None), "gpu_workers", None)
    count = int(getattr(workers, "count", 0) or 0)
    if count > 0:
        gpus = getattr(workers, "gpus", "auto")
        if isinstance(gpus, list) and gpus:
            per_gpu = Counter(gpus[:count])
            return max(per_gpu.values())
        return 1
    sec = getattr(profile, "gpu", None)
    return getattr(sec, "clients", None)


def gpu_label(gpu: GpuInfo) -> str:
    return f"gpu{gpu.index}"
