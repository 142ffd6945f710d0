"""NVIDIA kernel-module options: one clean modprobe.d drop-in, validated against the installed
driver, plus the initramfs regeneration that makes early-loaded modules see it.

Module options only take effect when the module loads: a reboot (or unloading every nvidia
module, which hosttune never does on its own). modprobe.d(5) files are read in lexical order
of their names across /etc, /run, /usr/local/lib, /lib and /usr/lib (a name in /etc masks the
same name elsewhere); for a parameter given twice the last one wins, so a file sorting after
ours that sets the same option is a conflict.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hosttune.host import Host
from hosttune.host.distro import os_family
from hosttune.host.nvidia_driver import (
    REMOVED_OPTIONS,
    ModuleOptions,
    lint_modprobe_conf,
    module_key,
    module_options,
    parse_modprobe_conf,
    same_value,
    security_notes,
    split_option,
)
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

if TYPE_CHECKING:
    from hosttune.profile.schema import NvidiaModulesSection

MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d",
                 "/lib/modprobe.d", "/usr/lib/modprobe.d")


def modprobe_files(host: Host) -> list[str]:
    """Every modprobe.d file in the order modprobe reads them."""
    by_name: dict[str, str] = {}
    for d in MODPROBE_DIRS:
        for name in host.listdir(d):
            if name.endswith(".conf") and name not in by_name:
                by_name[name] = f"{d}/{name}"
    return [by_name[n] for n in sorted(by_name)]


def initramfs_argv(host: Host) -> list[str] | None:
    """update-initramfs -u (Debian/Ubuntu) or dracut -f (RHEL family): the initramfs carries
    modprobe.d, and drivers loaded from it would otherwise keep the old options."""
    if host.which("update-initramfs"):
        return ["update-initramfs", "-u"]
    if host.which("dracut"):
        return ["dracut", "-f"]
    fam = os_family(host)
    if not host.offline:  # live: only a tool that exists (a GPU-less VM may have none)
        return None
    if fam == "debian":
        return ["update-initramfs", "-u"]
    if fam == "rhel":
        return ["dracut", "-f"]
    return None


def render(sec: NvidiaModulesSection, profile_name: str) -> str:
    lines = [HEADER, f"# profile: {profile_name}\n",
             "# modprobe.d has no trailing comments: a '#' after an option becomes a parameter.\n"]
    for mod in sorted(sec.options, key=module_key):
        params = sec.options[mod]
        if not params:
            continue
        words = " ".join(f"{k}={params[k]}" for k in sorted(params))
        lines.append(f"options {module_key(mod)} {words}\n")
    return "".join(lines)


class NvidiaModprobeTunable(Tunable):
    name = "nvidia_modules"
    section = "nvidia_modules"

    def _sec(self, ctx: Context) -> NvidiaModulesSection:
        sec = ctx.profile.nvidia_modules
        assert sec is not None  # the family runs only when its section is set
        return sec

    def validate(self, ctx: Context) -> None:
        sec = self._sec(ctx)
        for mod, params in sec.options.items():
            info = module_options(ctx.host, mod)
            if not info.names:
                continue  # nothing to check against: reported as unvalidated in the rows
            for name in params:
                key = f"nvidia_modules.options.{mod}.{name}"
                if name in REMOVED_OPTIONS:
                    raise ctx.error(key, f"{name}: {REMOVED_OPTIONS[name]}")
                if name not in info.names:
                    where = (", ".join(info.sources) if info.sources
                             else "hosttune's table of driver options (no driver installed)")
                    raise ctx.error(key, f"{module_key(mod)} has no parameter {name} "
                                    f"(checked: {where})")

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = self._sec(ctx)
        host = ctx.host
        rows: list[Row] = []
        changes: list[Change] = []
        content = render(sec, ctx.profile.name)
        try:
            current = host.read_text(sec.file)
        except PermissionError:
            current = None
        configured = current == content
        later = self._later_assignments(host, sec.file)
        for mod in sorted(sec.options, key=module_key):
            info = module_options(host, mod)
            for name in sorted(sec.options[mod]):
                rows.append(self._row(mod, name, str(sec.options[mod][name]), info,
                                      configured, later))
        rows.extend(self._foreign_findings(host, sec))
        row, ch = file_change(ctx, self.name, sec.file, content, needs=("reboot",))
        rows.insert(0, row)
        if ch:
            changes.append(ch)
            argv = initramfs_argv(host) if sec.initramfs else None
            if argv:
                changes.append(Change(
                    id=f"{self.name}/initramfs", tunable=self.name, kind="command",
                    summary=" ".join(argv) + " (the initramfs carries modprobe.d)",
                    needs=("reboot",),
                    params={"argv": argv, "revert_argv": argv, "post": True,
                            "timeout_s": 600}))
        return Evaluation(rows, changes)

    def _row(self, mod: str, name: str, want: str, info: ModuleOptions, configured: bool,
             later: dict[tuple[str, str], tuple[str, str]]) -> Row:
        key = f"{module_key(mod)} {name}"
        notes = security_notes(mod, name, want)
        active = info.active.get(name)
        if not info.loaded:
            current = "module not loaded"
        elif active is None:
            current = "?"  # parameter not exported by sysfs and not in params
        else:
            current = active or '""'
        override = later.get((module_key(mod), name))
        if override is not None and not same_value(want, override[1]):
            notes.insert(0, f"{override[0]} sets {name}={override[1]} after our file; "
                         "the last one wins")
            return Row(self.name, key, current, want, Status.CONFLICT, "; ".join(notes))
        if not configured:
            return Row(self.name, key, current, want, Status.DRIFT, "; ".join(notes))
        if info.loaded and active is not None and not same_value(want, active):
            notes.insert(0, "configured; active after a reboot or a reload of the nvidia "
                         "modules (hosttune never unloads them)")
            return Row(self.name, key, current, want, Status.NEEDS_REBOOT, "; ".join(notes),
                       needs=("reboot",))
        if not info.names:
            notes.insert(0, f"not validated: no installed {module_key(mod)} module to ask")
        if not info.loaded:
            notes.insert(0, "configured; takes effect when the module loads")
        return Row(self.name, key, current, want, Status.OK, "; ".join(notes))

    def _later_assignments(self, host: Host, ours: str) -> dict[tuple[str, str],
                                                                  tuple[str, str]]:
        """(module, param) -> (file:line, value) set by files modprobe reads after ours."""
        files = modprobe_files(host)
        name = os.path.basename(ours)
        out: dict[tuple[str, str], tuple[str, str]] = {}
        for f in files:
            if f == ours or os.path.basename(f) <= name:
                continue
            try:
                text = host.read_text(f) or ""
            except PermissionError:
                continue
            for ln in parse_modprobe_conf(text):
                if ln.command != "options":
                    continue
                for w in ln.args:
                    k, v = split_option(w)
                    out[(ln.module, k)] = (f"{f}:{ln.lineno}", v)
        return out

    def _foreign_findings(self, host: Host, sec: NvidiaModulesSection) -> list[Row]:
        """Broken options for our modules in other files (e.g. trailing comments on an
        options line, or NVreg_TCEBypass): they break or silently change the module load."""
        mods = {module_key(m) for m in sec.options}
        rows: list[Row] = []
        known = {m: module_options(host, m).names for m in mods}
        for f in modprobe_files(host):
            if f == sec.file:
                continue
            try:
                text = host.read_text(f) or ""
            except PermissionError:
                continue
            lines = {ln.lineno: ln for ln in parse_modprobe_conf(text)}
            for finding in lint_modprobe_conf(text, known):
                ln = lines.get(finding.lineno)
                if ln is None or ln.module not in mods or finding.severity != "error":
                    continue
                rows.append(Row(self.name, f"{f}:{finding.lineno}", "invalid", "absent",
                                Status.CONFLICT, finding.message))
        return rows
