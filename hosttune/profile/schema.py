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


# --- model store (hosttune models) ----------------------------------------------------------
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_model_name(v: str) -> str:
    if not _MODEL_NAME_RE.match(v):
        raise ValueError(f"model name {v!r}: use letters, digits and ._+- (not starting with "
                         "a dot or a dash, at most 200 characters)")
    return v


class DeclaredModel(Section):
    name: str = Field(description="file name in the store")
    file: str | None = Field(None, description="source file to load from")
    size: str | int | None = Field(None, description="model size when the file is not here "
                                   "yet (for `hosttune models pool`)")
    mount: str | None = Field(None, description="hugetlbfs mount (default: models.mount)")
    node: int | None = Field(None, ge=0, description="NUMA node for its pages")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_model_name(v)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int | None) -> str | int | None:
        if v is not None:
            parse_size(v)
        return v


class ModelsSection(Section):
    mount: str | None = Field(None, description="default store mount (one of the hugetlbfs "
                              "mounts); default: the only hugetlbfs mount")
    declared: list[DeclaredModel] = Field(default_factory=list)


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
    models: ModelsSection | None = None
