"""The profile schema (pydantic). One section per setting family; a section left out (null)
is not managed. Unknown keys are errors (``extra="forbid"``): a typo must never be silently
ignored on a production host.

Values that follow the hardware say ``auto``; sizes are '90GiB' / '512MiB' / '50%' (of RAM) or
page counts (plain integers) where the key counts pages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


# --- GPU / driver / boot layer ---------------------------------------------------------------
_MODPROBE_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:;,=+@%-]*$")


class NvidiaModulesSection(Section):
    file: str = "/etc/modprobe.d/90-hosttune-nvidia.conf"
    options: dict[str, dict[str, str | int]] = Field(
        default_factory=dict,
        description="module -> {parameter: value}, e.g. nvidia: {NVreg_EnableGpuFirmware: 1}; "
        "validated against the installed driver's parameters",
    )
    initramfs: bool = Field(True, description="regenerate the initramfs after a change "
                            "(update-initramfs -u / dracut -f)")

    @field_validator("options")
    @classmethod
    def _opts(cls, v: dict[str, dict[str, str | int]]) -> dict[str, dict[str, str | int]]:
        for mod, params in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", mod):
                raise ValueError(f"{mod!r} is not a module name")
            for name, val in params.items():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise ValueError(f"{mod}: {name!r} is not a module parameter name")
                if isinstance(val, bool):
                    raise ValueError(f"{mod}.{name}: write 1/0 (or Y/N), not a YAML boolean")
                if not _MODPROBE_VALUE_RE.match(str(val)):
                    raise ValueError(f"{mod}.{name}: value {val!r} has spaces, quotes or '#'; "
                                     "modprobe.d has no trailing comments and splits on spaces")
        return v


class GpuIrqSection(Section):
    cpus: str = Field(
        ..., description="CPU list ('15,31') for the IRQs of every NVIDIA GPU, or "
        "'node-local' = the CPUs of each GPU's NUMA node (local_cpulist)",
    )
    irqbalance: bool = Field(True, description="keep irqbalance off the GPU IRQs (policy script "
                             "+ irqbalance.service drop-in; no edit of /etc/default/irqbalance)")

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: str) -> str:
        if v == "node-local":
            return v
        from hosttune.host.parsers import parse_cpulist

        try:
            if not parse_cpulist(str(v)):
                raise ValueError("empty")
        except ValueError as err:
            raise ValueError(f"expected a CPU list like '15,31' or 'node-local', got {v!r}") \
                from err
        return str(v)


class CudaEnvSection(Section):
    file: str = "/etc/environment"
    variables: dict[str, str | int] = Field(
        default_factory=dict, description="NAME -> value, written in a marked block")
    cache_dir_mode: str = Field("0770", pattern=r"^0?[0-7]{3,4}$",
                                description="mode of the CUDA_CACHE_PATH directory")
    cache_dir_group: str | None = Field(
        "inference", description="group owning CUDA_CACHE_PATH (members share the JIT cache)")

    @field_validator("variables")
    @classmethod
    def _vars(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        for name, val in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if isinstance(val, bool):
                raise ValueError(f"{name}: write 0/1, not a YAML boolean")
            if not re.fullmatch(r"[A-Za-z0-9_./:,=+@%-]*", str(val)):
                raise ValueError(f"{name}: value {val!r} needs quoting; /etc/environment "
                                 "(pam_env) has no shell quoting rules")
        return v


class KernelCmdlineSection(Section):
    params: list[str] = Field(default_factory=list,
                              description="parameters appended to GRUB_CMDLINE_LINUX_DEFAULT")
    hugepages_1g: int | None = Field(
        None, ge=1, description="reserve N 1 GiB pages at boot (hugepagesz=1G hugepages=N): "
        "1 GiB pages rarely allocate at runtime once memory is fragmented")
    file: str = "/etc/default/grub.d/90-hosttune.cfg"

    @field_validator("params")
    @classmethod
    def _params(cls, v: list[str]) -> list[str]:
        for p in v:
            if not re.fullmatch(r"[A-Za-z0-9_.,:=/+@-]+", p):
                raise ValueError(f"{p!r}: a kernel parameter is one word without quotes, "
                                 "spaces or shell characters")
            if p.split("=", 1)[0] in ("hugepagesz", "hugepages"):
                raise ValueError("use hugepages_1g: N for 1 GiB boot-time pages")
        return v


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
    nvidia_modules: NvidiaModulesSection | None = None
    gpu_irq: GpuIrqSection | None = None
    cuda_env: CudaEnvSection | None = None
    kernel_cmdline: KernelCmdlineSection | None = None

