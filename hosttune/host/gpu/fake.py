"""A faithful fake of the pynvml functions hosttune uses, for machines without an NVIDIA GPU.

It raises the real pynvml exception classes where the real library does: every call before
``nvmlInit`` -> NVMLError_Uninitialized; a host without the driver -> NVMLError_LibraryNotFound
(no libnvidia-ml.so.1) or NVMLError_DriverNotLoaded (library present, module not loaded) from
``nvmlInit``; every setter called by a non-root process -> NVMLError_NoPermission; GeForce
boards -> NVMLError_NotSupported for locked memory clocks and N/A (NotSupported) for the rated
("customer boost") and default applications clocks, as ``nvidia-smi -q`` shows on them.

Models: ``rtx5090`` (GeForce, Blackwell: power 400-600 W, default 575 W), ``h100`` (H100 SXM,
Hopper: power 350-700 W, locked memory clocks supported), ``h200``; ``no-driver`` (library
missing) and ``driver-not-loaded``. Values are what nvidia-smi reports for these boards, rounded
where boards differ (clock tables are 15 MHz steps like the real lists).

Test hooks (environment): HOSTTUNE_FAKE_NVML="rtx5090" / "h100,h100" / "no-driver";
HOSTTUNE_FAKE_NVML_STATE=FILE keeps the mutable state (limits, locks, modes) across processes so
CLI subprocess tests can apply then audit; HOSTTUNE_FAKE_NVML_ROOT=0|1 overrides "are we root".
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from typing import Any

import msgspec
import pynvml
from msgspec import field

from hosttune.errors import HostError

MiB = 1024 * 1024


class GpuModel(msgspec.Struct):
    """Static facts of a board (what never changes at runtime)."""

    name: str
    brand: int
    arch: int
    power_min_mw: int
    power_max_mw: int
    power_default_mw: int
    memory_clocks: list[int]  # supported memory clocks, MHz, highest first
    graphics_max: int
    graphics_min: int
    memory_total: int
    pcie_max_gen: int = 5
    pcie_max_width: int = 16
    customer_boost: int | None = None  # None: N/A (GeForce)
    app_clock_default: int | None = None
    memory_lock_supported: bool = True
    idle_power_mw: int = 30000
    power_sensor: bool = True  # False: boards without one answer NOT_SUPPORTED (power.draw [N/A])
    temperature_c: int = 34

    def graphics_clocks(self, memory_mhz: int) -> list[int]:
        if memory_mhz not in self.memory_clocks:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        top = self.graphics_max if memory_mhz == self.memory_clocks[0] else min(
            self.graphics_max, 1500)
        return list(range(top, self.graphics_min - 1, -15))


MODELS: dict[str, GpuModel] = {
    "rtx5090": GpuModel(
        name="NVIDIA GeForce RTX 5090", brand=pynvml.NVML_BRAND_GEFORCE,
        arch=pynvml.NVML_DEVICE_ARCH_BLACKWELL, power_min_mw=400_000, power_max_mw=600_000,
        power_default_mw=575_000, memory_clocks=[14001, 810, 405], graphics_max=3090,
        graphics_min=180, memory_total=32607 * MiB, customer_boost=None,
        app_clock_default=None, memory_lock_supported=False),
    "h100": GpuModel(
        name="NVIDIA H100 80GB HBM3", brand=pynvml.NVML_BRAND_NVIDIA,
        arch=pynvml.NVML_DEVICE_ARCH_HOPPER, power_min_mw=350_000, power_max_mw=700_000,
        power_default_mw=700_000, memory_clocks=[2619], graphics_max=1980, graphics_min=345,
        memory_total=81559 * MiB, customer_boost=1980, app_clock_default=1755,
        idle_power_mw=70000),
    "h200": GpuModel(
        name="NVIDIA H200", brand=pynvml.NVML_BRAND_NVIDIA,
        arch=pynvml.NVML_DEVICE_ARCH_HOPPER, power_min_mw=350_000, power_max_mw=700_000,
        power_default_mw=700_000, memory_clocks=[3201], graphics_max=1980, graphics_min=345,
        memory_total=143771 * MiB, customer_boost=1980, app_clock_default=1755,
        idle_power_mw=75000),
}


class FakeGpu(msgspec.Struct):
    model: GpuModel
    index: int
    uuid: str
    bus_id: str
    # mutable state (what NVML setters change; all lost at reboot / driver reload)
    persistence: int = pynvml.NVML_FEATURE_DISABLED
    power_limit_mw: int = 0
    locked_graphics: tuple[int, int] | None = None
    locked_memory: tuple[int, int] | None = None
    compute_mode: int = pynvml.NVML_COMPUTEMODE_DEFAULT
    pcie_gen: int = 1  # idle GPUs train down the link generation to save power
    pcie_width: int = 16
    memory_used: int = 512 * MiB
    extra_reasons: int = 0
    lost: bool = False  # fell off the bus: every call on it answers GPU_IS_LOST until a reboot
    calls: list[str] = field(default_factory=list)

    STATE_KEYS = ("persistence", "power_limit_mw", "locked_graphics", "locked_memory",
                  "compute_mode", "pcie_gen", "pcie_width", "memory_used", "extra_reasons")


class _Handle(msgspec.Struct, frozen=True):
    index: int


class _Pci:
    def __init__(self, bus_id: str) -> None:
        self.busId = bus_id.encode()  # the real struct field is a char array -> bytes


class _Memory:
    def __init__(self, total: int, used: int) -> None:
        self.total = total
        self.used = used
        self.free = total - used


class FakeNvml:
    """Implements the pynvml functions by name (``nvmlDeviceGetPowerUsage(handle)``...)."""

    def __init__(self, models: list[str] | None = None, *, driver: str = "ok",
                 root: bool | None = None, state_file: str | None = None) -> None:
        self.driver = driver  # ok | no-driver | driver-not-loaded
        self.root = (os.geteuid() == 0) if root is None else root
        self.state_file = state_file
        self.initialised = False
        self.setter_calls: list[tuple[str, tuple[Any, ...]]] = []
        self.gpus: list[FakeGpu] = []
        for i, m in enumerate(models or []):
            model = copy.deepcopy(MODELS[m])
            g = FakeGpu(model, i, f"GPU-{zlib.crc32(m.encode()):08x}-0000-4000-8000-{i:012d}",
                        f"00000000:{i + 1:02X}:00.0")
            g.power_limit_mw = model.power_default_mw
            self.gpus.append(g)
        self._load()

    # -- state persistence for multi-process tests -------------------------------------------
    def _load(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        for g, st in zip(self.gpus, data.get("gpus", []), strict=False):
            for k in FakeGpu.STATE_KEYS:
                if k in st:
                    v = st[k]
                    setattr(g, k, tuple(v) if isinstance(v, list) else v)

    def _save(self) -> None:
        if not self.state_file:
            return
        data = {"gpus": [{k: getattr(g, k) for k in FakeGpu.STATE_KEYS} for g in self.gpus]}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.state_file)

    # -- plumbing ------------------------------------------------------------------------------
    def _check(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle: Any) -> FakeGpu:
        self._check()
        if not isinstance(handle, _Handle) or handle.index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g = self.gpus[handle.index]
        if g.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return g

    def _setter(self, name: str, handle: Any, *args: Any) -> FakeGpu:
        g = self._gpu(handle)
        if not self.root:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        self.setter_calls.append((name, (handle.index, *args)))
        return g

    # -- init ----------------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.driver == "no-driver":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        if self.driver == "driver-not-loaded":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._check()
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return "580.95.05"

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check()
        return "13.580.95.05"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check()
        return 13000

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:  # still counted by nvmlDeviceGetCount, like the real driver
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return _Handle(index)

    # -- identity ------------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, h: Any) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h: Any) -> str:
        return self._gpu(h).model.name

    def nvmlDeviceGetBrand(self, h: Any) -> int:
        return self._gpu(h).model.brand

    def nvmlDeviceGetArchitecture(self, h: Any) -> int:
        return self._gpu(h).model.arch

    def nvmlDeviceGetPciInfo(self, h: Any) -> _Pci:
        return _Pci(self._gpu(h).bus_id)

    # -- readings ------------------------------------------------------------------------------
    def nvmlDeviceGetPersistenceMode(self, h: Any) -> int:
        return self._gpu(h).persistence

    def nvmlDeviceGetPowerUsage(self, h: Any) -> int:
        m = self._gpu(h).model
        if not m.power_sensor:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return m.idle_power_mw

    def nvmlDeviceGetPowerManagementLimit(self, h: Any) -> int:
        return self._gpu(h).power_limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: Any) -> int:
        return self._gpu(h).power_limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: Any) -> int:
        return self._gpu(h).model.power_default_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: Any) -> list[int]:
        m = self._gpu(h).model
        return [m.power_min_mw, m.power_max_mw]

    def nvmlDeviceGetClockInfo(self, h: Any, kind: int) -> int:
        g = self._gpu(h)
        if kind == pynvml.NVML_CLOCK_MEM:
            return g.model.memory_clocks[-1] if g.locked_memory is None else g.locked_memory[0]
        if kind == pynvml.NVML_CLOCK_VIDEO:
            return 600
        if g.locked_graphics is not None:
            return g.locked_graphics[0]
        return g.model.graphics_min  # idle

    def nvmlDeviceGetMaxClockInfo(self, h: Any, kind: int) -> int:
        m = self._gpu(h).model
        if kind == pynvml.NVML_CLOCK_MEM:
            return m.memory_clocks[0]
        if kind == pynvml.NVML_CLOCK_VIDEO:
            return 2415
        return m.graphics_max

    def nvmlDeviceGetMaxCustomerBoostClock(self, h: Any, kind: int) -> int:
        m = self._gpu(h).model
        if m.customer_boost is None or kind != pynvml.NVML_CLOCK_GRAPHICS:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return m.customer_boost

    def nvmlDeviceGetClock(self, h: Any, kind: int, clock_id: int) -> int:
        g = self._gpu(h)
        if clock_id == pynvml.NVML_CLOCK_ID_CURRENT:
            return self.nvmlDeviceGetClockInfo(h, kind)
        if clock_id in (pynvml.NVML_CLOCK_ID_APP_CLOCK_DEFAULT,
                        pynvml.NVML_CLOCK_ID_APP_CLOCK_TARGET):
            if g.model.app_clock_default is None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if kind == pynvml.NVML_CLOCK_MEM:
                return g.model.memory_clocks[0]
            return g.model.app_clock_default
        return self.nvmlDeviceGetMaxCustomerBoostClock(h, kind)

    def nvmlDeviceGetSupportedMemoryClocks(self, h: Any) -> list[int]:
        return list(self._gpu(h).model.memory_clocks)

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: Any, memory_mhz: int) -> list[int]:
        return self._gpu(h).model.graphics_clocks(memory_mhz)

    def nvmlDeviceGetComputeMode(self, h: Any) -> int:
        return self._gpu(h).compute_mode

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h).pcie_gen

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h).model.pcie_max_gen

    def nvmlDeviceGetGpuMaxPcieLinkGeneration(self, h: Any) -> int:
        return self._gpu(h).model.pcie_max_gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: Any) -> int:
        return self._gpu(h).pcie_width

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: Any) -> int:
        return self._gpu(h).model.pcie_max_width

    def nvmlDeviceGetMemoryInfo(self, h: Any, version: Any = None) -> _Memory:
        g = self._gpu(h)
        return _Memory(g.model.memory_total, g.memory_used)

    def nvmlDeviceGetTemperature(self, h: Any, sensor: int) -> int:
        g = self._gpu(h)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g.model.temperature_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: Any) -> int:
        g = self._gpu(h)
        mask = pynvml.nvmlClocksEventReasonGpuIdle | g.extra_reasons
        if g.locked_graphics is not None or g.locked_memory is not None:
            mask |= pynvml.nvmlClocksEventReasonApplicationsClocksSetting
        return int(mask)

    nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons

    # -- setters -------------------------------------------------------------------------------
    def nvmlDeviceSetPersistenceMode(self, h: Any, mode: int) -> None:
        g = self._setter("persistence", h, mode)
        g.persistence = int(mode)
        self._save()

    def nvmlDeviceSetPowerManagementLimit(self, h: Any, limit_mw: int) -> None:
        g = self._setter("power", h, limit_mw)
        if not g.model.power_min_mw <= limit_mw <= g.model.power_max_mw:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g.power_limit_mw = int(limit_mw)
        self._save()

    def nvmlDeviceSetGpuLockedClocks(self, h: Any, min_mhz: int, max_mhz: int) -> None:
        g = self._setter("lgc", h, min_mhz, max_mhz)
        if g.model.arch < pynvml.NVML_DEVICE_ARCH_VOLTA:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if min_mhz > max_mhz:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g.locked_graphics = (int(min_mhz), int(max_mhz))
        self._save()

    def nvmlDeviceResetGpuLockedClocks(self, h: Any) -> None:
        g = self._setter("rgc", h)
        g.locked_graphics = None
        self._save()

    def nvmlDeviceSetMemoryLockedClocks(self, h: Any, min_mhz: int, max_mhz: int) -> None:
        g = self._setter("lmc", h, min_mhz, max_mhz)
        if not g.model.memory_lock_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if min_mhz > max_mhz:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g.locked_memory = (int(min_mhz), int(max_mhz))
        self._save()

    def nvmlDeviceResetMemoryLockedClocks(self, h: Any) -> None:
        g = self._setter("rmc", h)
        if not g.model.memory_lock_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        g.locked_memory = None
        self._save()

    def nvmlDeviceSetComputeMode(self, h: Any, mode: int) -> None:
        g = self._setter("compute", h, mode)
        if mode == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_THREAD:  # support removed by NVIDIA
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if mode not in (pynvml.NVML_COMPUTEMODE_DEFAULT, pynvml.NVML_COMPUTEMODE_PROHIBITED,
                        pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g.compute_mode = int(mode)
        self._save()


def from_env(spec: str) -> FakeNvml:
    """Build the fake named by $HOSTTUNE_FAKE_NVML."""
    spec = spec.strip()
    root_env = os.environ.get("HOSTTUNE_FAKE_NVML_ROOT")
    root = None if root_env is None else root_env == "1"
    state = os.environ.get("HOSTTUNE_FAKE_NVML_STATE")
    if spec in ("no-driver", "driver-not-loaded"):
        return FakeNvml([], driver=spec, root=root)
    models = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise HostError(f"HOSTTUNE_FAKE_NVML: unknown model(s) {unknown}; known: "
                         f"{sorted(MODELS)}, no-driver, driver-not-loaded")
    return FakeNvml(models, root=root, state_file=state)
