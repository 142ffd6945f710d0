"""gpu_mps: the CUDA Multi-Process Service control daemon, as a unit systemd accepts.

NVIDIA's procedure: set the GPUs to EXCLUSIVE_PROCESS (the ``gpu`` tunable does, before this
one in apply order, and at boot hosttune-boot.service does, which this unit is ordered after),
start ``nvidia-cuda-mps-control -d``, stop it by writing ``quit`` to the control program's
stdin. systemd Exec lines have no shell, so an ``ExecStop=/usr/bin/echo quit |
/usr/bin/nvidia-cuda-mps-control`` ran echo with the literal arguments "quit | /usr/bin/..."
and never stopped anything: the pipe lives in a small helper script instead. The pipe and log
directories are systemd-managed (RuntimeDirectory=, LogsDirectory=), never under a
world-writable /tmp where another user could plant the pipes.

Clients (containers) need the pipe directory bind-mounted and CUDA_MPS_PIPE_DIRECTORY set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec.structs import replace

from hosttune.host.gpu.nvml import NvmlState
from hosttune.tunables._ordering import safe_after
from hosttune.tunables._systemd import UNIT_DIRS, daemon_reload
from hosttune.tunables.base import (
    HEADER,
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    file_change,
)
from hosttune.tunables.gpu_common import section, unavailable_rows
from hosttune.tunables.gpu_units import (
    enable_link,
    exec_problems,
    is_active,
    is_ours,
    start_change,
)

if TYPE_CHECKING:
    from hosttune.profile.schema import GpuMps

UNIT = "hosttune-nvidia-mps.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
HELPER = "/usr/local/libexec/hosttune/nvidia-mps-quit"
FOREIGN_UNITS = ("nvidia-mps.service", "nvidia-cuda-mps.service", "mps.service")


def render_helper(control: str) -> str:
    return (
        "#!/bin/sh\n"
        f"{HEADER}"
        "# Stops the CUDA MPS control daemon the documented way: \"quit\" on the control\n"
        "# program's stdin. systemd Exec lines have no shell (no pipes), hence this helper.\n"
        "set -eu\n"
        ': "${CUDA_MPS_PIPE_DIRECTORY:?set by the unit}"\n'
        "export CUDA_MPS_PIPE_DIRECTORY\n"
        f"echo quit | {control}\n"
    )


MPS_AFTER = ("nvidia-persistenced.service", "hosttune-boot.service")


def render_unit(control: str, mps: GpuMps, after: tuple[str, ...] | list[str] = MPS_AFTER
                ) -> str:
    run_dir = mps.pipe_dir.removeprefix("/run/")
    log_dir = mps.log_dir.removeprefix("/var/log/")
    return (
        f"{HEADER}"
        "[Unit]\n"
        "Description=NVIDIA CUDA MPS control daemon (hosttune)\n"
        "Wants=nvidia-persistenced.service\n"
        "# hosttune-boot.service re-applies EXCLUSIVE_PROCESS, which MPS wants set first.\n"
        f"After={' '.join(after)}\n"
        "# GPU containers connect to the pipes at start\n"
        "Before=docker.service containerd.service\n"
        "\n"
        "[Service]\n"
        "Type=forking\n"
        f"Environment=CUDA_MPS_PIPE_DIRECTORY={mps.pipe_dir}\n"
        f"Environment=CUDA_MPS_LOG_DIRECTORY={mps.log_dir}\n"
        f"RuntimeDirectory={run_dir}\n"
        "RuntimeDirectoryMode=0755\n"
        f"LogsDirectory={log_dir}\n"
        "LogsDirectoryMode=0750\n"
        f"ExecStart={control} -d\n"
        f"ExecStop={HELPER}\n"
        "Restart=on-failure\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


class GpuMpsTunable(Tunable):
    name = "gpu_mps"
    section = "gpu"

    def enabled(self, ctx: Context) -> bool:
        # With mps unmanaged (null) only hand-made MPS units are checked.
        return ctx.profile.gpu is not None

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = section(ctx)
        host = ctx.host
        mps = sec.mps
        nv = host.nvml()
        if mps is not None:
            off = unavailable_rows(self.name, nv, [("mps", "on" if mps.enabled else "off")])
            if off is not None and nv.state[0] is NvmlState.NO_DRIVER:
                return Evaluation(off, [])
        rows: list[Row] = []
        changes: list[Change] = []
        # hand-made MPS units: report what systemd will really run
        for name in FOREIGN_UNITS:
            for d in UNIT_DIRS:
                p = f"{d}/{name}"
                try:
                    text = host.read_text(p)
                except PermissionError:
                    continue
                if text is None or is_ours(text):
                    continue
                problems = exec_problems(text)
                if problems:
                    rows.append(Row(self.name, f"{name} (not hosttune's)", "; ".join(problems),
                                    "absent or fixed", Status.CONFLICT,
                                    f"{p}: remove it; hosttune manages {UNIT}"))
        if mps is None:
            return Evaluation(rows, changes)
        control = host.which("nvidia-cuda-mps-control")
        if mps.enabled and control is None:
            rows.append(Row(self.name, "nvidia-cuda-mps-control", "not installed", "installed",
                            Status.UNSUPPORTED, "install the driver's CUDA MPS tools"))
            return Evaluation(rows, changes)
        files_changed = False
        # hosttune-boot.service is ours; a hand-made persistence unit may wait for the boot
        after, left_out = safe_after(host, MPS_AFTER, frozenset(
            {"hosttune-boot.service", "docker.service", "containerd.service", UNIT}))
        for path, content, mode, key in (
                (HELPER, render_helper(control) if mps.enabled and control else None, 0o755,
                 "mps stop helper"),
                (UNIT_PATH, render_unit(control, mps, after) if mps.enabled and control
                 else None, 0o644, UNIT)):
            row, ch = file_change(ctx, self.name, path, content, mode=mode, key=key)
            if path == UNIT_PATH and left_out:
                row = replace(row, note="warning: " + "; ".join(left_out))
            rows.append(row)
            if ch:
                changes.append(ch)
                files_changed = True
        row, ch = enable_link(ctx, self.name, UNIT, UNIT_PATH, "multi-user.target",
                              enable=mps.enabled)
        rows.append(row)
        if ch:
            changes.append(ch)
        if host.offline or ctx.runtime_only:
            return Evaluation(rows, changes)
        active = is_active(host, UNIT)
        if mps.enabled:
            rows.append(Row(self.name, f"{UNIT} running", "yes" if active else "no", "yes",
                            Status.OK if active and not files_changed else Status.DRIFT))
            if files_changed or not active:
                if files_changed and (dr := daemon_reload(ctx, self.name)):
                    changes.append(dr)
                changes.append(start_change(self.name, UNIT, bool(active)))
        elif active:
            rows.append(Row(self.name, f"{UNIT} running", "yes", "no", Status.DRIFT))
            changes.insert(0, Change(
                id=f"{self.name}/stop {UNIT}", tunable=self.name, kind="command",
                summary=f"systemctl stop {UNIT}",
                params={"argv": ["systemctl", "stop", UNIT],
                        "revert_argv": ["systemctl", "start", UNIT], "post": True}))
        return Evaluation(rows, changes)
