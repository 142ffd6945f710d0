"""The profile schema (pydantic). One section per setting family; a section left out (null)
is not managed. Unknown keys are errors (``extra="forbid"``): a typo must never be silently
ignored on a production host.

Values that follow the hardware say ``auto``; sizes are '90GiB' / '512MiB' / '50%' (of RAM) or
page counts (plain integers) where the key counts pages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hosttune.profile.sizes import parse_percent, parse_size


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SizeOrPercent = Annotated[str | int, Field(description="bytes ('90GiB') or percent of RAM")]


def _check_size_or_percent(v: str | int, *, allow_auto: bool = False) -> str | int:
    if allow_auto and v == "auto":
        return v
    if isinstance(v, str) and parse_percent(v) is not None:
        return v
    parse_size(v)
    return v


# --- swap --------------------------------------------------------------------------------------
class SwapSection(Section):
    enabled: bool = Field(False, description="false: swapoff every device and file")
    persist: bool = Field(True, description="disable fstab swap entries / systemd swap units")


# --- cpu frequency -----------------------------------------------------------------------------
class CpuSection(Section):
    governor: str | None = Field("performance", description="scaling_governor for every policy")
    epp: str | None = Field(
        "auto",
        description="energy_performance_preference; 'auto' = what the governor implies "
        "(performance under the performance governor), null = leave alone",
    )


# --- sysctl ------------------------------------------------------------------------------------
_FLOOR_RE = re.compile(r"^>=\s*(-?\d+)$")


class SysctlSection(Section):
    file: str = "/etc/sysctl.d/90-hosttune.conf"
    settings: dict[str, str | int] = Field(
        default_factory=dict,
        description="key -> value; '>= N' is a floor: ok when the kernel already has more",
    )

    @field_validator("settings")
    @classmethod
    def _keys(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for key, val in v.items():
            if not re.fullmatch(r"[a-z0-9_][a-z0-9_.\-/]*", key):
                raise ValueError(f"{key!r} is not a sysctl key")
            if key.replace("/", ".") == "vm.nr_hugepages":
                raise ValueError(
                    "vm.nr_hugepages is managed by the 'hugepages' section (per NUMA node, "
                    "retried and verified); remove it from sysctl"
                )
            if isinstance(val, bool):
                raise ValueError(f"{key}: expected a number or string, got a boolean")
            if isinstance(val, str) and val.strip().startswith(">") and not _FLOOR_RE.match(
                val.strip()
            ):
                raise ValueError(f"{key}: a floor is written '>= N', got {val!r}")
        return v


# --- memlock -----------------------------------------------------------------------------------
class MemlockSection(Section):
    limit: str | int = Field("unlimited", description="'unlimited' or a size ('64GiB')")
    scope: Literal["group", "everyone"] = "group"
    group: str = Field("inference", description="limits.d applies to @group (scope: group)")
    limits_file: str = "/etc/security/limits.d/90-hosttune-memlock.conf"
    services: list[str] = Field(
        default_factory=lambda: ["docker.service", "containerd.service"],
        description="systemd services that get LimitMEMLOCK drop-ins (container runtimes do "
        "not read limits.d: that is PAM only)",
    )

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: str | int) -> str | int:
        if v != "unlimited":
            parse_size(v)
        return v


# --- huge pages ----------------------------------------------------------------------------------
class HugePagePool(Section):
    pagesize: Literal["2M", "1G"] = "2M"
    size: str | int = Field(
        "auto",
        description="page count (int), bytes ('90GiB'), percent of RAM ('50%'), or 'auto' = "
        "what this pagesize's hugetlbfs mounts hold",
    )
    nodes: Literal["spread", "any"] | dict[int, str | int] = Field(
        "spread",
        description="'spread': split evenly over NUMA nodes with memory; 'any': the global "
        "counter; or {node: size} per node",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v, allow_auto=True)


class HugePagesSection(Section):
    pools: list[HugePagePool] = Field(default_factory=list)
    min_free_ram: str | int = Field(
        "8GiB", description="refuse a pool that leaves less RAM than this for the OS"
    )
    retries: int = Field(5, ge=1, le=50)
    thp: Literal["always", "madvise", "never"] | None = Field(
        "madvise", description="transparent huge pages mode; null = leave alone"
    )

    @field_validator("min_free_ram")
    @classmethod
    def _floor(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v)


# --- hugetlbfs mounts ----------------------------------------------------------------------------
class HugetlbfsMount(Section):
    path: str
    pagesize: Literal["2M", "1G"] = "2M"
    size: str | int = Field("auto", description="bytes, percent of RAM, or 'auto' = the pool")
    mode: str = Field("0770", pattern=r"^0?[0-7]{3,4}$")
    uid: int = 0
    gid: int | str = Field(0, description="numeric gid or a group name")
    persist: Literal["fstab", "unit"] = "fstab"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.rstrip("/") in ("", "/tmp", "/dev", "/proc", "/sys"):
            raise ValueError(f"expected an absolute mount point of its own, got {v!r}")
        return v.rstrip("/")

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        return _check_size_or_percent(v, allow_auto=True)


class HugetlbfsSection(Section):
    mounts: list[HugetlbfsMount] = Field(default_factory=list)


# --- boot-time re-apply --------------------------------------------------------------------------
class BootSection(Section):
    unit: bool = Field(True, description="install hosttune-boot.service (re-applies runtime "
                       "settings at boot, before docker.service)")
    profile_path: str = "/etc/hosttune/profile.yaml"
    exec: str | None = Field(None, description="hosttune command in ExecStart; default: the "
                             "running Python with -m hosttune")


# --- NVIDIA GPUs (NVML settings, persistence daemon, MPS) ---------------------------------------
ClockSpec = Literal["max-sustained"] | int | tuple[int, int]
PowerSpec = Literal["max", "default"] | int | str
ComputeModeName = Literal["default", "exclusive_process", "prohibited"]
_WATTS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*W\s*$", re.IGNORECASE)


def parse_watts(v: str | int) -> float:
    """450 / '450W' / '450 W' -> 450.0 (watts)."""
    if isinstance(v, bool):
        raise ValueError("expected watts, got a boolean")
    if isinstance(v, int):
        return float(v)
    m = _WATTS_RE.match(v)
    if not m:
        raise ValueError(f"expected 'max', 'default' or watts ('450W'), got {v!r}")
    return float(m.group(1))


def _check_clock(v: ClockSpec | None) -> ClockSpec | None:
    if isinstance(v, bool):
        raise ValueError("expected MHz, [min, max] or 'max-sustained'")
    if isinstance(v, int) and v <= 0:
        raise ValueError(f"a clock is a positive MHz value, got {v}")
    if isinstance(v, tuple) and not 0 < v[0] <= v[1]:
        raise ValueError(f"[min, max] MHz with 0 < min <= max, got {list(v)}")
    return v


class GpuLockedClocks(Section):
    graphics: ClockSpec | None = Field(
        None, description="nvidia-smi -lgc: MHz, [min, max], or 'max-sustained' (the rated boost "
        "clock); checked against nvmlDeviceGetSupportedGraphicsClocks; Volta+")
    memory: ClockSpec | None = Field(
        None, description="nvidia-smi -lmc: MHz, [min, max], or 'max-sustained' (highest "
        "supported memory clock); Ampere+, datacenter/workstation boards (GeForce: unsupported)")

    @field_validator("graphics", "memory")
    @classmethod
    def _clock(cls, v: ClockSpec | None) -> ClockSpec | None:
        return _check_clock(v)


def _check_power(v: PowerSpec | None) -> PowerSpec | None:
    if v is None or v in ("max", "default"):
        return v
    if parse_watts(v) <= 0:
        raise ValueError("a power limit is a positive number of watts")
    return v


class GpuDeviceSettings(Section):
    """Per-GPU overrides (gpu.devices: keyed by index, UUID or PCI bus id)."""

    power_limit: PowerSpec | None = None
    locked_clocks: GpuLockedClocks | None = None
    compute_mode: ComputeModeName | None = None

    @field_validator("power_limit")
    @classmethod
    def _power(cls, v: PowerSpec | None) -> PowerSpec | None:
        return _check_power(v)


class GpuMps(Section):
    enabled: bool = True
    pipe_dir: str = Field("/run/nvidia-mps", description="CUDA_MPS_PIPE_DIRECTORY (under /run)")
    log_dir: str = Field("/var/log/nvidia-mps", description="CUDA_MPS_LOG_DIRECTORY "
                         "(under /var/log)")

    @field_validator("pipe_dir", "log_dir")
    @classmethod
    def _dirs(cls, v: str, info: ValidationInfo) -> str:
        v = v.rstrip("/")
        base = "/run/" if info.field_name == "pipe_dir" else "/var/log/"
        if v.startswith(("/tmp/", "/var/tmp/", "/dev/shm/")) or v in ("/tmp", "/var/tmp"):
            raise ValueError(f"{v} is under a world-writable directory: another user could "
                             "plant the MPS pipes or logs there; use a path under " + base)
        if not v.startswith(base) or "/../" in v + "/" or len(v) <= len(base):
            raise ValueError(f"expected a directory under {base} (systemd creates it with the "
                             f"right owner and mode), got {v!r}")
        return v


class GpuSection(Section):
    persistence: bool | Literal["daemon", "legacy"] | None = Field(
        None, description="true: the nvidia-persistenced daemon, legacy NVML persistence mode "
        "(nvidia-smi -pm 1, deprecated) only when the daemon is not installed")
    persistenced_user: str | None = Field(
        None, description="account nvidia-persistenced drops to (--user); default: an "
        "existing 'nvidia-persistenced' or 'nvpd' account")
    mps: GpuMps | None = Field(None, description="CUDA MPS control daemon; true/false or a "
                               "mapping")
    clients: int | None = Field(None, ge=1, description="how many GPU processes/containers "
                                "share each GPU (the workload section, when present, wins)")
    power_limit: PowerSpec | None = Field(None, description="'max', 'default' or watts")
    locked_clocks: GpuLockedClocks | None = None
    compute_mode: ComputeModeName | None = Field(
        None, description="default | exclusive_process | prohibited; with MPS on, "
        "exclusive_process is implied")
    devices: dict[str, GpuDeviceSettings] = Field(
        default_factory=dict, description="per-GPU overrides keyed by index, UUID or bus id")

    @field_validator("mps", mode="before")
    @classmethod
    def _mps_bool(cls, v: object) -> object:
        if v is True:
            return {}
        if v is False:
            return {"enabled": False}
        return v

    @field_validator("power_limit")
    @classmethod
    def _power(cls, v: PowerSpec | None) -> PowerSpec | None:
        return _check_power(v)

    @field_validator("compute_mode")
    @classmethod
    def _exclusive(cls, v: ComputeModeName | None, info: ValidationInfo
                   ) -> ComputeModeName | None:
        check_exclusive_sharing(v, info.data.get("mps"), info.data.get("clients"))
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: dict[str, GpuDeviceSettings], info: ValidationInfo
                 ) -> dict[str, GpuDeviceSettings]:
        for key, dev in v.items():
            try:
                check_exclusive_sharing(dev.compute_mode, info.data.get("mps"),
                                        info.data.get("clients"))
            except ValueError as err:
                raise ValueError(f"{key}.compute_mode: {err}") from err
        return v

    @property
    def mps_enabled(self) -> bool:
        return self.mps is not None and self.mps.enabled


def check_exclusive_sharing(mode: str | None, mps: GpuMps | None, clients: int | None) -> None:
    """EXCLUSIVE_PROCESS admits one CUDA context per GPU: several GPU containers then fail
    with 'all CUDA-capable devices are busy or unavailable' unless MPS multiplexes them."""
    mps_on = mps is not None and mps.enabled
    if mode == "exclusive_process" and not mps_on and clients is not None and clients > 1:
        raise ValueError(
            f"exclusive_process allows one process per GPU, but {clients} GPU clients share "
            "it: all but the first fail with 'CUDA-capable device(s) is/are busy or "
            "unavailable'. Use compute_mode: default, or turn on mps (which needs "
            "exclusive_process)")
    if mode == "prohibited" and mps_on:
        raise ValueError("prohibited forbids every CUDA context, the MPS server's too")


# --- the profile ---------------------------------------------------------------------------
class Profile(Section):
    name: str
    description: str = ""
    extends: str | None = None
    swap: SwapSection | None = None
    cpu: CpuSection | None = None
    sysctl: SysctlSection | None = None
    memlock: MemlockSection | None = None
    hugepages: HugePagesSection | None = None
    hugetlbfs: HugetlbfsSection | None = None
    boot: BootSection | None = None
    # Sections of other families are added below (gpu, kernel, workload, models ...).
    gpu: GpuSection | None = None
