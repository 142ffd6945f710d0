"""Kernel command-line parameters, live (/proc/cmdline) and configured for boot
(GRUB_CMDLINE_LINUX[_DEFAULT] in /etc/default/grub and grub.d): obsolete, no-op and unknown
module parameters.

The rules come from tunables.kernel_cmdline (the parameters hosttune knows, per kernel and
driver version): the doctor only finds the hand-made words and asks those rules."""

from __future__ import annotations

import re
from collections.abc import Iterator

from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.host import Host
from hosttune.host.distro import kernel_release
from hosttune.host.nvidia_driver import driver_version
from hosttune.host.parsers import parse_cmdline
from hosttune.tunables.kernel_cmdline import KNOWN_PARAMS, param_name, param_warning

_GRUB_VAR = re.compile(r"^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\s*=\s*(.*)$")


def grub_cmdline_words(text: str) -> list[tuple[int, str, str]]:
    """(line, variable, word) of GRUB_CMDLINE_LINUX[_DEFAULT] assignments (sh syntax; words
    that expand variables are left out)."""
    import shlex

    out: list[tuple[int, str, str]] = []
    for i, line in enumerate(text.splitlines(), 1):
        m = _GRUB_VAR.match(line)
        if not m:
            continue
        try:
            words = shlex.split(m.group(2), comments=True, posix=True)
        except ValueError:
            continue
        for v in words:
            out.extend((i, m.group(1), w) for w in v.split() if not w.startswith("$"))
    return out


def _param_problem(word: str, kernel: str | None, nvidia: str | None) -> str | None:
    # Only what hosttune knows for sure: unknown words are common (BOOT_IMAGE, root, ro...)
    name = param_name(word)
    if name in KNOWN_PARAMS or name in ("nvidia-drm.modeset", "nvidia_drm.modeset"):
        return param_warning(word, kernel, nvidia)
    return None


def _module_param_unknown(host: Host, word: str) -> str | None:
    """'module.param' for a loaded module that does not export that parameter. Only a hint:
    parameters declared with permission 0 have no sysfs file
    (Documentation/ABI/testing/sysfs-module), hence severity info."""
    name = param_name(word)
    mod, dot, param = name.partition(".")
    if not dot or not mod or not param or "." in param:
        return None
    mod = mod.replace("-", "_")  # the kernel treats - and _ alike in module names
    if mod.startswith("nvidia"):
        return None  # the nvidia module checks compare against the driver's own list
    # Loadable modules only (they have initstate): built-in names also carry early_param and
    # __setup switches such as random.trust_cpu, which never appear under parameters/.
    if not host.exists(f"/sys/module/{mod}/initstate"):
        return None
    pdir = f"/sys/module/{mod}/parameters"
    if not host.exists(pdir) or host.exists(f"{pdir}/{param.replace('-', '_')}"):
        return None
    return (f"module {mod} of the running kernel exports no parameter {param} ({pdir}); "
            "a misspelt or removed parameter is ignored silently at boot")


def check_kernel_params(ctx: DoctorContext) -> Iterator[Finding]:
    host = ctx.host
    kernel = kernel_release(host)
    nvidia = driver_version(host)
    sources: list[tuple[str, str]] = []
    cmdline = host.read_text("/proc/cmdline")
    if cmdline:
        sources += [("live: /proc/cmdline", w) for w in parse_cmdline(cmdline)]
    files = ["/etc/default/grub"] + [f"/etc/default/grub.d/{n}" for n in
                                     host.listdir("/etc/default/grub.d") if n.endswith(".cfg")]
    for f in files:
        try:
            text = host.read_text(f)
        except PermissionError:
            continue
        sources += [(f"{f}:{i}", w) for i, _var, w in grub_cmdline_words(text or "")]
    for where, word in sources:
        problem = _param_problem(word, kernel, nvidia)
        if problem is None:
            unknown = _module_param_unknown(host, word)
            if unknown is not None:
                yield Finding(
                    "kernel.param-unknown", Severity.INFO,
                    f"kernel parameter {word}: unknown to {kernel or 'the running kernel'}",
                    where, unknown + ".",
                    "check the spelling against modinfo / /sys/module; remove it from "
                    "GRUB_CMDLINE_LINUX_DEFAULT, or manage it with kernel_cmdline.params")
            continue
        noop = problem.startswith("no-op")
        yield Finding(
            "kernel.param-noop" if noop else "kernel.param-obsolete",
            Severity.INFO if noop else Severity.WARNING,
            f"kernel parameter {word}: {'no-op' if noop else 'obsolete or unknown'} for "
            f"{kernel or 'the running kernel'}", where, problem + ".",
            "remove it from GRUB_CMDLINE_LINUX_DEFAULT and run update-grub; profile key "
            "kernel_cmdline.params (hosttune's grub.d drop-in)")
