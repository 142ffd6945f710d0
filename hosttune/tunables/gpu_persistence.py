"""gpu_persistence: keep the NVIDIA driver initialised between CUDA clients.

Preferred: the nvidia-persistenced daemon (NVIDIA: legacy persistence mode is deprecated and
slated for removal). The daemon drops privileges to its ``--user`` account, which must exist:
``getpwnam`` fails otherwise and the daemon exits at start (a unit running
``--user nvidia-persistenced`` on a host without that user). hosttune therefore

- keeps a vendor unit whose account exists as it is;
- fixes a vendor or hand-made unit whose account is missing with a drop-in that re-runs the
  daemon with an account that exists (``nvidia-persistenced`` or ``nvpd``, Debian's), or none
  (it then stays root - reported);
- writes its own unit when the driver ships none, and enables it (the WantedBy symlink).

Legacy NVML persistence mode (``nvidia-smi -pm 1``, a runtime action re-applied at boot) is
used only when the daemon is not installed, or when the profile says ``legacy``.
"""

from __future__ import annotations

import shlex
from typing import Any

from hosttune.host import Host
from hosttune.host.gpu.nvml import GpuInfo, Nvml, NvmlState, Reading
from hosttune.tunables._systemd import daemon_reload, find_unit
from hosttune.tunables.base import (
    HEADER,
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    file_change,
    setting,
)
from hosttune.tunables.gpu_common import gpu_label, reading_row, section, unavailable_rows
from hosttune.tunables.gpu_nvml import NvmlValueKnob
from hosttune.tunables.gpu_units import (
    enable_link,
    exec_argv,
    exec_problems,
    is_active,
    is_ours,
    passwd_users,
    start_change,
    unit_entries,
    wanted_by,
)
from hosttune.tunables.knob import action

UNIT = "nvidia-persistenced.service"
OUR_UNIT = f"/etc/systemd/system/{UNIT}"
DROPIN = f"/etc/systemd/system/{UNIT}.d/90-hosttune.conf"
ACCOUNTS = ("nvidia-persistenced", "nvpd")  # NVIDIA's sample unit / Debian's package
# Ubuntu's packaged unit starts the daemon with persistence mode off: the daemon runs, but the
# GPUs are not kept initialised until someone runs nvidia-smi -pm 1 (nvidia-persistenced(1)).
NO_PM = "--no-persistence-mode"


def render_unit(binary: str, account: str | None) -> str:
    user = f" --user {account}" if account else ""
    return (
        f"{HEADER}"
        "[Unit]\n"
        "Description=NVIDIA Persistence Daemon (hosttune)\n"
        "# No After=multi-user.target: hosttune-boot.service and MPS order themselves after\n"
        "# this unit, which must not wait for the whole boot.\n"
        "\n"
        "[Service]\n"
        "Type=forking\n"
        "PIDFile=/run/nvidia-persistenced/nvidia-persistenced.pid\n"
        f"ExecStart={binary}{user} --verbose\n"
        "ExecStopPost=/bin/rm -rf /run/nvidia-persistenced\n"
        "Restart=on-failure\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def render_dropin(argv: list[str], account: str | None, why: list[str]) -> str:
    fixed: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--user", "-u") and i + 1 < len(argv):
            skip = True
            continue
        if a.startswith("--user=") or a == NO_PM:
            continue
        fixed.append(a)
    if account:
        fixed[1:1] = ["--user", account]
    return (
        f"{HEADER}"
        + "".join(f"# {w}\n" for w in why)
        + "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={shlex.join(fixed)}\n"
    )


def _user_of(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a in ("--user", "-u") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--user="):
            return a.split("=", 1)[1]
    return None


class PersistenceModeKnob(NvmlValueKnob):
    """Legacy NVML persistence mode of one GPU (``nvidia-smi -pm``); a driver that is gone
    took it with it."""

    name = "persistence-mode"
    key = "enabled"

    def _get(self, nv: Nvml, g: GpuInfo) -> Reading[Any]:
        return nv.persistence_mode(g)

    def _set(self, nv: Nvml, g: GpuInfo, value: Any) -> None:
        nv.set_persistence_mode(g, bool(value))

    @staticmethod
    def _same(current: Any, wanted: Any) -> bool:
        return bool(current) == bool(wanted)


class GpuPersistenceTunable(Tunable):
    name = "gpu_persistence"
    section = "gpu"
    knobs = (PersistenceModeKnob,)

    def enabled(self, ctx: Context) -> bool:
        sec = ctx.profile.gpu
        return sec is not None and sec.persistence is not None

    def _driver_present(self, ctx: Context) -> bool:
        return ctx.host.nvml().state[0] not in (NvmlState.NO_DRIVER,)

    def validate(self, ctx: Context) -> None:
        sec = section(ctx)
        if sec.persistenced_user and self._driver_present(ctx) \
                and sec.persistenced_user not in passwd_users(ctx.host):
            raise ctx.error("gpu.persistenced_user", (
                f"no account {sec.persistenced_user!r} in /etc/passwd: nvidia-persistenced "
                "--user would exit at start; create it (useradd --system --no-create-home "
                f"{sec.persistenced_user}) or leave the key out"))

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = section(ctx)
        nv = ctx.host.nvml()
        mode = sec.persistence
        desired = {True: "on", "daemon": "daemon", "legacy": "legacy", False: "off"}[mode]
        off = unavailable_rows(self.name, nv, [("persistence", desired)])
        if off is not None and nv.state[0] is NvmlState.NO_DRIVER:
            return Evaluation(off, [])
        binary = ctx.host.which("nvidia-persistenced")
        if mode in (True, "daemon") and binary is not None:
            return self._daemon(ctx, binary)
        rows: list[Row] = []
        if mode == "daemon":
            return Evaluation([Row(self.name, "nvidia-persistenced", "not installed", "daemon",
                                   Status.UNSUPPORTED, "install the driver's nvidia-persistenced "
                                   "or use persistence: legacy")], [])
        note = ""
        if mode is True:
            note = ("nvidia-persistenced not installed: legacy persistence mode "
                    "(deprecated by NVIDIA)")
        return self._legacy(ctx, mode is not False, note, rows)

    # -- legacy NVML persistence mode ----------------------------------------------------------
    def _legacy(self, ctx: Context, want: bool, note: str, rows: list[Row]) -> Evaluation:
        nv = ctx.host.nvml()
        desired = "enabled" if want else "disabled"
        off = unavailable_rows(self.name, nv, [("persistence mode", desired)])
        if off is not None:
            return Evaluation(rows + off, [])
        changes: list[Change] = []
        for g in nv.devices():
            key = f"{gpu_label(g)} persistence mode"
            cur = nv.persistence_mode(g)
            if not cur.ok:
                rows.append(reading_row(self.name, key, desired, cur))
                continue
            current = "enabled" if cur.get() else "disabled"
            row, change = setting(self.name, key, current, desired, action(
                self.name, PersistenceModeKnob.name, id=f"gpu/{g.uuid}/persistence-mode",
                runtime=True,
                summary=f"{gpu_label(g)} persistence mode {current} -> {desired} "
                        f"(nvidia-smi -i {g.index} -pm {int(want)})",
                params={"op": "persistence-mode", "uuid": g.uuid, "enabled": want}),
                note=note)
            rows.append(row)
            changes.extend([change] if change else [])
        return Evaluation(rows, changes)

    # -- the daemon --------------------------------------------------------------------------
    def _daemon(self, ctx: Context, binary: str) -> Evaluation:
        host = ctx.host
        sec = section(ctx)
        rows: list[Row] = []
        changes: list[Change] = []
        users = passwd_users(host)
        account = sec.persistenced_user or next((a for a in ACCOUNTS if a in users), None)
        unit_path = find_unit(host, UNIT)
        try:
            unit_text = host.read_text(unit_path) if unit_path else None
        except PermissionError:
            unit_text = None
        dropin: str | None = None
        if unit_path is None or (unit_path == OUR_UNIT and is_ours(unit_text)):
            unit_path, unit_text = OUR_UNIT, render_unit(binary, account)
            self._own_unit(ctx, unit_text, account, rows, changes)
        else:
            assert unit_text is not None
            dropin = self._their_unit(host, unit_path, unit_text, binary, account, users, rows)
        # our drop-in: present only when the unit needs the account fix
        if dropin is not None or host.exists(DROPIN):
            row, ch = file_change(ctx, self.name, DROPIN, dropin, key=f"{UNIT} drop-in")
            rows.append(row)
            changes.extend([ch] if ch else [])
        files_changed = bool(changes)
        for target in wanted_by(unit_text or ""):
            row, ch = enable_link(ctx, self.name, UNIT, unit_path, target)
            rows.append(row)
            changes.extend([ch] if ch else [])
        # runtime: persistence mode as NVML reports it (the daemon turns it on for every GPU)
        nv = host.nvml()
        off = unavailable_rows(self.name, nv, [("persistence mode", "enabled (daemon)")])
        if off is not None:
            return Evaluation(rows + off, changes)
        disabled = self._daemon_gpus(host, rows)
        if not host.offline and not ctx.runtime_only and (files_changed or disabled):
            if files_changed and (dr := daemon_reload(ctx, self.name)):
                changes.append(dr)
            changes.append(start_change(self.name, UNIT, bool(is_active(host, UNIT))))
        return Evaluation(rows, changes)

    def _own_unit(self, ctx: Context, content: str, account: str | None, rows: list[Row],
                  changes: list[Change]) -> None:
        """hosttune's own unit, written where the driver ships none."""
        row, ch = file_change(ctx, self.name, OUR_UNIT, content, key=f"{UNIT} (hosttune)")
        if account is None:
            row = Row(row.tunable, row.key, row.current, row.desired, row.status,
                      "no nvidia-persistenced/nvpd account: the daemon stays root; create "
                      "one (useradd --system --no-create-home nvidia-persistenced) and "
                      "re-run apply", row.needs)
        rows.append(row)
        changes.extend([ch] if ch else [])

    def _their_unit(self, host: Host, unit_path: str, unit_text: str, binary: str,
                    account: str | None, users: set[str], rows: list[Row]) -> str | None:
        """Rows for a vendor or hand-made unit; the drop-in that fixes it (None: none
        needed)."""
        starts = [v for s, k, v, _ in unit_entries(unit_text)
                  if s == "Service" and k == "ExecStart" and v]
        argv = exec_argv(starts[-1]) if starts else [binary]
        user = _user_of(argv)
        why: list[str] = []
        if user is not None and user not in users:
            why += [f"{unit_path} runs --user {user}, an account /etc/passwd lacks: the "
                    "daemon exits at start; " + (f"use --user {account}" if account
                                                 else "run it as root (no account)")]
        if NO_PM in argv:
            why += [f"{unit_path} passes {NO_PM}: the daemon runs but keeps no GPU "
                    "initialised; drop the option"]
        fixed = bool(why) and host.exists(DROPIN)
        eff_user = (account if user is not None and user not in users else user) or "root"
        rows.append(Row(self.name, f"{UNIT} ExecStart", shlex.join(argv[1:]) or "-",
                        f"--user {eff_user}" + ("" if NO_PM not in argv else f", no {NO_PM}"),
                        Status.OK if not why or fixed else Status.DRIFT,
                        "; ".join(why) or unit_path))
        problems = exec_problems(unit_text)
        if problems:
            rows.append(Row(self.name, f"{UNIT} exec lines", "; ".join(problems),
                            "runnable", Status.CONFLICT, f"{unit_path} is not hosttune's"))
        if not why:
            return None
        return render_dropin(argv, eff_user if eff_user != "root" else None, why)

    def _daemon_gpus(self, host: Host, rows: list[Row]) -> list[GpuInfo]:
        """A row per GPU for persistence mode under the daemon; the GPUs that have it off."""
        nv = host.nvml()
        disabled = []
        for g in nv.devices():
            key = f"{gpu_label(g)} persistence mode"
            cur = nv.persistence_mode(g)
            if not cur.ok:
                rows.append(reading_row(self.name, key, "enabled (daemon)", cur))
                continue
            if cur.get():
                rows.append(Row(self.name, key, "enabled", "enabled (daemon)", Status.OK))
                continue
            if host.offline:
                rows.append(Row(self.name, key, "disabled", "enabled (daemon)", Status.OFFLINE,
                                "nvidia-persistenced starts at boot (no command runs under "
                                "--root)"))
                continue
            disabled.append(g)
            rows.append(Row(self.name, key, "disabled", "enabled (daemon)", Status.DRIFT,
                            f"systemctl start {UNIT}"))
        return disabled

    # -- legacy actions ------------------------------------------------------------------------
