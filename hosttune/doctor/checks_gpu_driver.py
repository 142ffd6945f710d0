"""NVIDIA driver module options made by hand in modprobe.d: unknown options, trailing comments,
and options that weaken isolation between local users.

The rules come from host.nvidia_driver (the installed driver's own parameter list, else
hosttune's table) and tunables.nvidia_modprobe (which files modprobe reads): the doctor only
finds the hand-made lines and asks those rules."""

from __future__ import annotations

from collections.abc import Iterator

from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.host.nvidia_driver import (
    KNOWN_MODULE_OPTIONS,
    lint_modprobe_conf,
    module_key,
    module_options,
    parse_modprobe_conf,
    security_notes,
    split_option,
)
from hosttune.tunables.nvidia_modprobe import modprobe_files

# security_notes() covers more than isolation; these are the options whose notes mean another
# local user gains something (device access, counters, VRAM dumps). Others are hints (INFO)
# or, for EnableResizableBar=1, no defect at all.
ISOLATION_OPTIONS = {"NVreg_TemporaryFilePath", "NVreg_RestrictProfilingToAdminUsers",
                     "NVreg_DeviceFileMode", "NVreg_ModifyDeviceFiles"}
HINT_OPTIONS = {"NVreg_EnableGpuFirmware", "NVreg_EnableMSI", "NVreg_RegistryDwords",
                "NVreg_RegistryDwordsPerDevice"}


def check_nvidia_modprobe(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    known_cache: dict[str, tuple[frozenset[str], str] | None] = {}

    def known_for(mod: str) -> tuple[frozenset[str], str] | None:
        """The module's parameter names and where they came from (None: nothing to ask)."""
        if mod not in known_cache:
            info = module_options(host, mod)
            if info.sources and info.names:
                known_cache[mod] = (info.names, ", ".join(info.sources))
            elif mod in KNOWN_MODULE_OPTIONS:
                known_cache[mod] = (KNOWN_MODULE_OPTIONS[mod], "hosttune's table of the "
                                    "570-595 drivers' options (no installed driver to ask)")
            else:
                known_cache[mod] = None
        return known_cache[mod]

    for path in modprobe_files(host):
        try:
            text = host.read_text(path) or ""
        except PermissionError:
            continue
        lines = [ln for ln in parse_modprobe_conf(text)
                 if ln.command == "options" and ln.module.startswith("nvidia")]
        if not lines:
            continue
        nv_lines = {ln.lineno: ln for ln in lines}
        known: dict[str, set[str] | frozenset[str]] = {}
        for ln in lines:
            k = known_for(ln.module)
            if k is not None:
                known[ln.module] = k[0]
        for lf in lint_modprobe_conf(text, known):
            ln_ = nv_lines.get(lf.lineno)
            if ln_ is None or lf.severity != "error":
                continue  # other modules' lines; security notes are graded below
            where = f"{path}:{lf.lineno}"
            if "trailing comment" in lf.message:
                # kmod passes the words on; the kernel's parse_args() warns
                # "<module>: unknown parameter '<word>' ignored" for each and loads the
                # module with the options before them: noise in the log, hence a warning
                yield Finding("nvidia.modprobe-trailing-comment", Severity.WARNING,
                              f"trailing comment in an {ln_.module} options line", where,
                              lf.message + f"; at load the kernel logs \"{ln_.module}: unknown "
                              "parameter '...' ignored\" for each word and loads the module "
                              "with the options before the comment.",
                              "move the comment to its own line; profile key "
                              "nvidia_modules.options (hosttune writes a clean drop-in)")
            else:
                src = known_for(ln_.module)
                yield Finding("nvidia.modprobe-unknown-option", Severity.ERROR,
                              lf.message.split(":", 1)[0] if ":" in lf.message else lf.message,
                              where, lf.message + ". The option has no effect (checked: "
                              f"{src[1] if src else 'hosttune table'}).",
                              "remove it; profile key nvidia_modules.options (validated "
                              "against the installed driver)")
        for ln in lines:
            for word in ln.args:
                if word.startswith("#"):
                    break
                name, value = split_option(word)
                if name == "NVreg_EnableResizableBar":
                    continue  # a hint about firmware support, not a defect
                for note in security_notes(ln.module, name, value):
                    sev = Severity.WARNING if name in ISOLATION_OPTIONS else Severity.INFO
                    if sev is Severity.INFO and name not in HINT_OPTIONS:
                        continue
                    yield Finding(
                        "nvidia.modprobe-weakens-isolation" if sev is Severity.WARNING
                        else "nvidia.modprobe-note", sev, f"{module_key(ln.module)} "
                        f"{name}={value}", f"{path}:{ln.lineno}", note + ".",
                        f"profile key nvidia_modules.options.{module_key(ln.module)}.{name} "
                        "(or drop the option)")
