"""`hosttune doctor`: diagnose configuration made by hand (read-only).

Each check is a function ``(DoctorContext) -> Iterable[Finding]``; CHECKS lists them in report
order. A check that cannot read something it needs (permission) yields nothing for it rather
than guessing."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import field
from msgspec.structs import replace

from hosttune.doctor.base import Check, DoctorContext, Finding, Severity
from hosttune.doctor.checks_config import (
    check_duplicates,
    check_fstab,
    check_hugepages,
    check_memlock,
    check_sysctl_syntax,
)
from hosttune.doctor.checks_containers import check_container_cpusets
from hosttune.doctor.checks_cuda_env import check_cuda_cache
from hosttune.doctor.checks_gpu_clocks import check_gpu_clocks
from hosttune.doctor.checks_gpu_driver import check_nvidia_modprobe
from hosttune.doctor.checks_gpu_irq import check_irq_affinity, check_irq_selection
from hosttune.doctor.checks_gpu_mps import check_compute_mode
from hosttune.doctor.checks_kernel_params import check_kernel_params
from hosttune.doctor.checks_systemd import (
    check_failed_units,
    check_ordering_cycles,
    check_units,
    check_units_verify,
)
from hosttune.host import Host
from hosttune.profile import LoadedProfile

CHECKS: list[Check] = [
    check_failed_units,
    check_ordering_cycles,
    check_units,
    check_units_verify,
    check_memlock,
    check_duplicates,
    check_sysctl_syntax,
    check_fstab,
    check_hugepages,
    check_nvidia_modprobe,
    check_kernel_params,
    check_irq_affinity,
    check_irq_selection,
    check_cuda_cache,
    check_container_cpusets,
    check_compute_mode,
    check_gpu_clocks,
]


class DoctorReport(msgspec.Struct, frozen=True):
    findings: list[Finding]
    skipped_commands: list[tuple[str, ...]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # checks that crashed (reported, not hidden)
    skipped_checks: list[str] = field(default_factory=list)  # not checked, and why

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[str(f.severity)] = counts.get(str(f.severity), 0) + 1
        return {"findings": [f.to_json() for f in self.findings], "counts": counts,
                "skipped_commands": [list(c) for c in self.skipped_commands],
                "errors": self.errors, "skipped_checks": self.skipped_checks}


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per defect: the same check, title and explanation at several lines of one
    file (a block appended twice) is reported once, with every location (``where`` first,
    then ``also``). The same mistake in two files stays two findings: each needs its fix."""
    merged: dict[tuple[str, str, str, str], Finding] = {}
    for f in findings:
        k = (f.check, f.title, f.why, f.where.split(":", 1)[0])
        prev = merged.get(k)
        if prev is None:
            merged[k] = f
            continue
        more = [w for w in (f.where, *f.also) if w != prev.where and w not in prev.also]
        if more:
            merged[k] = replace(prev, also=prev.also + tuple(more))
    return list(merged.values())


def run(host: Host, loaded: LoadedProfile | None = None,
        compose_files: list[str] | None = None) -> DoctorReport:
    ctx = DoctorContext(host, loaded, list(compose_files or []))
    findings: list[Finding] = []
    errors: list[str] = []
    for check in CHECKS:
        try:
            findings.extend(check(ctx))
        except PermissionError as err:
            errors.append(f"{check.__name__}: needs root ({err})")
        except OSError as err:
            errors.append(f"{check.__name__}: {err}")
    unique = _merge(findings)
    unique.sort(key=lambda f: -int(f.severity))
    return DoctorReport(unique, list(ctx.skipped_commands) + list(host.runner.skipped), errors,
                        list(ctx.skipped_checks))


__all__ = ["CHECKS", "DoctorContext", "DoctorReport", "Finding", "Severity", "run"]
