"""gpu: NVML runtime settings - power limit, locked graphics/memory clocks, compute mode.

All are ``action`` changes with ``runtime=True``: NVML settings do not survive a reboot or a
driver reload, so ``hosttune apply --runtime-only`` (the boot unit, ordered after
nvidia-persistenced.service) re-applies exactly these. The original captured for rollback is
the value read through NVML just before the change.

Field facts (design.md): setters need root (NVML_ERROR_NO_PERMISSION otherwise); locked GPU
clocks need Volta+, locked memory clocks Ampere+, and GeForce boards may answer NOT_SUPPORTED -
reported as unsupported, never as a failed apply. Clock values come from
nvmlDeviceGetSupported*Clocks, power values from nvmlDeviceGetPowerManagementLimitConstraints.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from msgspec.structs import replace

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.host.gpu import markers
from hosttune.host.gpu.nvml import ComputeMode, GpuInfo, Nvml, NvmlUnsupportedError, Reading
from hosttune.profile.sizes import parse_watts
from hosttune.tunables.base import Change, Context, Evaluation, Row, Status, Tunable, setting
from hosttune.tunables.gpu_common import (
    DeviceSettings,
    device_matches,
    device_settings,
    gpu_clients,
    gpu_label,
    reading_row,
    section,
    unavailable_rows,
)
from hosttune.tunables.knob import Knob, action

if TYPE_CHECKING:
    from hosttune.profile.schema import ClockSpec, PowerSpec

GRAPHICS = "graphics-locked-clocks"
MEMORY = "memory-locked-clocks"


def _fmt_range(r: tuple[int, int] | list[int] | None) -> str:
    if r is None:
        return "not locked"
    return f"{r[0]} MHz" if r[0] == r[1] else f"{r[0]}-{r[1]} MHz"


def _desc_clock(spec: ClockSpec) -> str:
    if isinstance(spec, tuple):
        return f"{spec[0]}-{spec[1]} MHz"
    return spec if isinstance(spec, str) else f"{spec} MHz"


def _desc_power(spec: PowerSpec) -> str:
    return spec if spec in ("max", "default") else f"{parse_watts(spec):g} W"


def _nearest(value: int, supported: list[int]) -> int:
    return min(supported, key=lambda c: (abs(c - value), -c))


def resolve_power(spec: PowerSpec, cons: tuple[float, float], default_w: float | None
                  ) -> float:
    if spec == "max":
        return cons[1]
    if spec == "default":
        if default_w is None:
            raise HostError("the GPU reports no default power limit")
        return default_w
    return parse_watts(spec)


def gone_gpu_or(nv: Nvml, uuid: str) -> GpuInfo | None:
    """The GPU with ``uuid``, or None when NVML cannot reach it any more."""
    if not nv.available:
        return None
    return next((g for g in nv.devices() if g.uuid == uuid), None)


class ClockPlan:
    """A resolved lock: the (min, max) to set, or why not."""

    def __init__(self, rng: tuple[int, int] | None = None, *, unsupported: str = "",
                 error: str = "", note: str = "") -> None:
        self.rng = rng
        self.unsupported = unsupported
        self.error = error
        self.note = note


def resolve_clock(nv: Nvml, gpu: GpuInfo, what: str, spec: ClockSpec) -> ClockPlan:
    """Turn 'max-sustained' / MHz / [min, max] into a range the GPU supports."""
    if what == GRAPHICS and not gpu.arch_at_least("volta"):
        return ClockPlan(unsupported="locked graphics clocks need a Volta or newer GPU")
    if what == MEMORY and not gpu.arch_at_least("ampere"):
        return ClockPlan(unsupported="locked memory clocks need an Ampere or newer GPU")
    if what == MEMORY and gpu.geforce:
        return ClockPlan(unsupported="GeForce boards refuse locked memory clocks "
                         "(NVML_ERROR_NOT_SUPPORTED)")
    mem = nv.supported_memory_clocks_mhz(gpu)
    if not mem.ok or not mem.get():
        return ClockPlan(unsupported=mem.message or "no supported memory clocks reported")
    if what == MEMORY:
        supported = mem.get()
    else:
        gr = nv.supported_graphics_clocks_mhz(gpu, mem.get()[0])
        if not gr.ok or not gr.get():
            return ClockPlan(unsupported=gr.message or "no supported graphics clocks reported")
        supported = gr.get()
    lo, hi = min(supported), max(supported)
    if spec == "max-sustained":
        if what == MEMORY:
            return ClockPlan((hi, hi), note="highest supported memory clock")
        rated = nv.rated_boost_clock_mhz(gpu)
        if not rated.ok:
            return ClockPlan(unsupported="this GPU reports no rated boost clock (GeForce: N/A); "
                             "give MHz or [min, max] instead of max-sustained")
        best = max((c for c in supported if c <= rated.get()), default=lo)
        return ClockPlan((best, best), note=f"rated boost clock {rated.get()} MHz")
    want = (spec, spec) if isinstance(spec, int) else (int(spec[0]), int(spec[1]))
    bad = [v for v in want if not lo <= v <= hi]
    if bad:
        return ClockPlan(error=f"{bad[0]} MHz is outside the supported {what.split('-')[0]} "
                         f"clocks of GPU {gpu.index} ({gpu.name}): {lo}-{hi} MHz")
    snapped = (_nearest(want[0], supported), _nearest(want[1], supported))
    note = "" if snapped == want else (f"snapped to supported clocks ({_fmt_range(want)} -> "
                                       f"{_fmt_range(snapped)})")
    return ClockPlan(snapped, note=note)


class NvmlValueKnob(Knob):
    """One NVML value of one GPU that NVML reads back (``params["uuid"]``); its journal value
    is ``{key: value}`` and the change's ``params[key]`` holds the wanted one. Restore is
    idempotent: a step that failed to apply (e.g. NO_PERMISSION) is reverted too by the
    engine, and when the value already is the original NVML is not called again. A GPU that
    is gone took its NVML state with it (settings do not survive a driver unload)."""

    key: ClassVar[str]

    @abstractmethod
    def _get(self, nv: Nvml, g: GpuInfo) -> Reading[Any]:
        """The reading, as NVML answers it."""

    @abstractmethod
    def _set(self, nv: Nvml, g: GpuInfo, value: Any) -> None: ...

    @staticmethod
    def _plain(value: Any) -> Any:
        """A reading's value as JSON."""
        return value

    @staticmethod
    def _same(current: Any, wanted: Any) -> bool:
        return bool(current == wanted)

    def read(self, host: Host) -> dict[str, Any]:
        nv = host.nvml()
        return {self.key: self._plain(self._get(nv, nv.find(self.params["uuid"])).get())}

    def desired(self) -> dict[str, Any]:
        return {self.key: self.params[self.key]}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        nv = host.nvml()
        self._set(nv, nv.find(self.params["uuid"]), value[self.key])

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        nv = host.nvml()
        g = gone_gpu_or(nv, self.params["uuid"])
        if g is None:
            return
        cur = self._get(nv, g)
        if not (cur.ok and self._same(self._plain(cur.get()), original[self.key])):
            self._set(nv, g, original[self.key])


class PowerLimitKnob(NvmlValueKnob):
    """A GPU's power limit in watts (``nvidia-smi -pl``)."""

    name = "power-limit"
    key = "watts"

    def _get(self, nv: Nvml, g: GpuInfo) -> Reading[Any]:
        return nv.power_limit_w(g)

    def _set(self, nv: Nvml, g: GpuInfo, value: Any) -> None:
        nv.set_power_limit_w(g, float(value))

    @staticmethod
    def _same(current: Any, wanted: Any) -> bool:
        return abs(float(current) - float(wanted)) < 0.5


class GraphicsClockKnob(Knob):
    """A locked clock range. NVML cannot read a lock back, so the value is hosttune's marker
    file of the lock it made (host/gpu/markers.py)."""

    name = GRAPHICS

    def read(self, host: Host) -> dict[str, Any]:
        g = host.nvml().find(self.params["uuid"])
        return markers.capture_marker(host, g.uuid, self.name)

    def desired(self) -> dict[str, Any]:
        return {"min_mhz": int(self.params["min_mhz"]), "max_mhz": int(self.params["max_mhz"])}

    def _set(self, nv: Nvml, g: GpuInfo, lo: int, hi: int) -> None:
        (nv.set_locked_graphics_clocks_mhz if self.name == GRAPHICS
         else nv.set_locked_memory_clocks_mhz)(g, lo, hi)

    def write(self, host: Host, value: dict[str, Any]) -> None:
        nv = host.nvml()
        g = nv.find(self.params["uuid"])
        try:
            self._set(nv, g, int(value["min_mhz"]), int(value["max_mhz"]))
        except NvmlUnsupportedError as err:
            # The GPU refused: record it so audit says 'unsupported', and do not fail.
            markers.write_marker(host, g.uuid, self.name, {"unsupported": str(err)})
            return
        markers.write_marker(host, g.uuid, self.name, value)

    def restore(self, host: Host, original: dict[str, Any]) -> None:
        nv = host.nvml()
        uuid = self.params["uuid"]
        g = gone_gpu_or(nv, uuid)
        if g is None:
            markers.restore_marker(host, uuid, self.name, original)  # all that is left
            return
        if markers.capture_marker(host, g.uuid, self.name)["content"] == original.get("content"):
            return  # the lock was never made (or already undone)
        before = markers.original_lock(original)
        try:
            if before is None:
                (nv.reset_locked_graphics_clocks if self.name == GRAPHICS
                 else nv.reset_locked_memory_clocks)(g)
            else:
                self._set(nv, g, *before)
        except NvmlUnsupportedError:
            pass  # nothing was locked: the GPU refused the lock in the first place
        markers.restore_marker(host, g.uuid, self.name, original)


class MemoryClockKnob(GraphicsClockKnob):
    name = MEMORY


class ComputeModeKnob(NvmlValueKnob):
    """A GPU's compute mode (``nvidia-smi -c``)."""

    name = "compute-mode"
    key = "mode"

    def _get(self, nv: Nvml, g: GpuInfo) -> Reading[Any]:
        return nv.compute_mode(g)

    def _set(self, nv: Nvml, g: GpuInfo, value: Any) -> None:
        nv.set_compute_mode(g, ComputeMode(value))

    @staticmethod
    def _plain(value: Any) -> Any:
        return value.value


class GpuTunable(Tunable):
    name = "gpu"
    section = "gpu"
    knobs = (PowerLimitKnob, GraphicsClockKnob, MemoryClockKnob, ComputeModeKnob)

    def enabled(self, ctx: Context) -> bool:
        sec = ctx.profile.gpu
        return sec is not None and bool(
            sec.power_limit is not None or sec.locked_clocks is not None
            or sec.compute_mode is not None or sec.mps_enabled or sec.devices)

    # -- validation --------------------------------------------------------------------------
    def validate(self, ctx: Context) -> None:
        sec = section(ctx)
        clients = gpu_clients(ctx.profile)
        for key, mode in [("gpu.compute_mode", sec.compute_mode)] + [
                (f"gpu.devices.{k}.compute_mode", d.compute_mode) for k, d in sec.devices.items()]:
            if mode == "exclusive_process" and not sec.mps_enabled and clients and clients > 1:
                raise ctx.error(key, (
                    f"exclusive_process allows one process per GPU, but the workload runs "
                    f"{clients} GPU containers: all but the first would fail with 'CUDA-capable "
                    "device(s) is/are busy or unavailable'. Use compute_mode: default, or turn "
                    "on gpu.mps"))
        nv = ctx.host.nvml()
        if not nv.available:
            return  # nothing to check against (no driver, or a tree)
        gpus = nv.devices()
        for key in sec.devices:
            if not any(device_matches(key, g) for g in gpus):
                known = ", ".join(f"{g.index} {g.uuid} {g.pci_bus_id}" for g in gpus)
                raise ctx.error(f"gpu.devices.{key}", f"no such GPU on this host ({known})")
        for g in gpus:
            ds = device_settings(sec, g)
            if ds.power_limit not in (None, "max", "default"):
                assert ds.power_limit is not None
                cons = nv.power_limit_constraints_w(g)
                w = parse_watts(ds.power_limit)
                if cons.ok and not cons.get()[0] <= w <= cons.get()[1]:
                    lo, hi = cons.get()
                    raise ctx.error(ds.origin["power_limit"], (
                        f"{w:g} W is outside GPU {g.index} ({g.name}) power limits "
                        f"{lo:g}-{hi:g} W (nvmlDeviceGetPowerManagementLimitConstraints)"))
            if ds.locked_clocks is not None:
                for what, spec in ((GRAPHICS, ds.locked_clocks.graphics),
                                   (MEMORY, ds.locked_clocks.memory)):
                    if spec is None:
                        continue
                    plan = resolve_clock(nv, g, what, spec)
                    if plan.error:
                        sub = "graphics" if what == GRAPHICS else "memory"
                        raise ctx.error(f"{ds.origin['locked_clocks']}.{sub}", plan.error)

    # -- evaluation ----------------------------------------------------------------------------
    def _wanted(self, ctx: Context) -> list[tuple[str, str]]:
        sec = section(ctx)
        out: list[tuple[str, str]] = []
        if sec.power_limit is not None:
            out.append(("power limit", _desc_power(sec.power_limit)))
        if sec.locked_clocks is not None:
            if sec.locked_clocks.graphics is not None:
                out.append(("locked graphics clocks", _desc_clock(sec.locked_clocks.graphics)))
            if sec.locked_clocks.memory is not None:
                out.append(("locked memory clocks", _desc_clock(sec.locked_clocks.memory)))
        mode = sec.compute_mode or ("exclusive_process" if sec.mps_enabled else None)
        if mode is not None:
            out.append(("compute mode", mode.upper()))
        for key in sec.devices:
            out.append((f"device {key}", "per-GPU settings"))
        return out

    def evaluate(self, ctx: Context) -> Evaluation:
        nv = ctx.host.nvml()
        rows_off = unavailable_rows(self.name, nv, self._wanted(ctx))
        if rows_off is not None:
            return Evaluation(rows_off, [])
        sec = section(ctx)
        rows: list[Row] = []
        changes: list[Change] = []
        gpus = nv.devices()
        if not gpus:
            return Evaluation([Row(self.name, k, "—", d, Status.UNSUPPORTED,
                                   "the driver reports no GPU") for k, d in self._wanted(ctx)])
        live_non_root = not ctx.host.offline and not ctx.host.is_root
        for g in gpus:
            ds = device_settings(sec, g)
            for fn in (self._power, self._clocks, self._compute):
                found = fn(ctx, nv, g, ds)
                if live_non_root:
                    found.rows[:] = [replace(x, needs=(*x.needs, "root"))
                                     if x.status is Status.DRIFT else x for x in found.rows]
                rows.extend(found.rows)
                changes.extend(found.changes)
        return Evaluation(rows, changes)

    def _power(self, ctx: Context, nv: Nvml, g: GpuInfo, ds: DeviceSettings) -> Evaluation:
        out = Evaluation()
        if ds.power_limit is None:
            return out
        key = f"{gpu_label(g)} power limit"
        desired = _desc_power(ds.power_limit)
        cons = nv.power_limit_constraints_w(g)
        cur = nv.power_limit_w(g)
        for r in (cons, cur):
            if not r.ok:
                out.add(reading_row(self.name, key, desired, r))
                return out
        dflt = nv.default_power_limit_w(g)
        target = resolve_power(ds.power_limit, cons.get(), dflt.value if dflt.ok else None)
        desired = f"{target:g} W ({desired})" if ds.power_limit in ("max", "default") else desired
        current = f"{cur.get():g} W"
        lo, hi = cons.get()
        if not lo <= target <= hi:  # validate() refuses this; keep evaluate total anyway
            out.add(Row(self.name, key, current, desired, Status.ERROR,
                        f"outside the GPU's limits {lo:g}-{hi:g} W"))
            return out
        out.add(*setting(self.name, key, current, desired, action(
            self.name, PowerLimitKnob.name, id=f"gpu/{g.uuid}/power-limit", runtime=True,
            summary=f"{gpu_label(g)} power limit {current} -> {target:g} W "
                    f"(nvidia-smi -i {g.index} -pl {target:g})",
            params={"op": "power-limit", "uuid": g.uuid, "watts": target}),
            ok=abs(cur.get() - target) < 0.5, drift_note=f"limits {lo:g}-{hi:g} W"))
        return out

    def _clocks(self, ctx: Context, nv: Nvml, g: GpuInfo, ds: DeviceSettings) -> Evaluation:
        out = Evaluation()
        if ds.locked_clocks is None:
            return out
        for what, spec, label, flag in (
                (GRAPHICS, ds.locked_clocks.graphics, "graphics", "-lgc"),
                (MEMORY, ds.locked_clocks.memory, "memory", "-lmc")):
            if spec is None:
                continue
            key = f"{gpu_label(g)} locked {label} clocks"
            desired = _desc_clock(spec)
            mark = markers.read_marker(ctx.host, g.uuid, what)
            if mark and "unsupported" in mark:
                out.add(Row(self.name, key, "—", desired, Status.UNSUPPORTED,
                            f"the GPU refused it: {mark['unsupported']}"))
                continue
            plan = resolve_clock(nv, g, what, spec)
            if plan.unsupported:
                out.add(Row(self.name, key, "—", desired, Status.UNSUPPORTED,
                            plan.unsupported))
                continue
            if plan.error or plan.rng is None:
                out.add(Row(self.name, key, "—", desired, Status.ERROR, plan.error))
                continue
            locked = (mark["min_mhz"], mark["max_mhz"]) if mark and "min_mhz" in mark else None
            current = _fmt_range(locked)
            if locked is None:
                reasons = nv.clock_event_reasons(g)
                if reasons.ok and "applications_clocks_setting" in reasons.get():
                    current = "locked elsewhere?"
            desired_full = f"{_fmt_range(plan.rng)}"
            if desired_full != desired:
                desired_full += f" ({desired})"
            lo, hi = plan.rng
            out.add(*setting(self.name, key, current, desired_full, action(
                self.name, what, id=f"gpu/{g.uuid}/{what}", runtime=True,
                summary=f"{gpu_label(g)} lock {label} clocks {_fmt_range(plan.rng)} "
                        f"(nvidia-smi -i {g.index} {flag} {lo},{hi})",
                params={"op": what, "uuid": g.uuid, "min_mhz": lo, "max_mhz": hi}),
                ok=locked == plan.rng, note=plan.note))
        return out

    def _compute(self, ctx: Context, nv: Nvml, g: GpuInfo, ds: DeviceSettings) -> Evaluation:
        out = Evaluation()
        if ds.compute_mode is None:
            return out
        want = ComputeMode(ds.compute_mode)
        key = f"{gpu_label(g)} compute mode"
        cur = nv.compute_mode(g)
        if not cur.ok:
            out.add(reading_row(self.name, key, want.smi, cur))
            return out
        note = "set before the MPS control daemon starts" if ds.origin["compute_mode"] == \
            "gpu.mps" else ""
        out.add(*setting(self.name, key, cur.get().smi, want.smi, action(
            self.name, ComputeModeKnob.name, id=f"gpu/{g.uuid}/compute-mode", runtime=True,
            summary=f"{gpu_label(g)} compute mode {cur.get().smi} -> {want.smi} "
                    f"(nvidia-smi -i {g.index} -c {want.smi})",
            params={"op": "compute-mode", "uuid": g.uuid, "mode": want.value}),
            ok=cur.get() is want, note=note))
        return out
