"""Kernel command line through GRUB: a drop-in in /etc/default/grub.d that appends to
GRUB_CMDLINE_LINUX_DEFAULT, then update-grub (Debian/Ubuntu) or grubby (RHEL family).

grub-mkconfig sources /etc/default/grub and then /etc/default/grub.d/*.cfg as sh, so the
drop-in is shell that extends the variable instead of rewriting /etc/default/grub (as a sed
over that file does). On the RHEL family, BLS entries carry their own options: grubby
--update-kernel=ALL --args adds them, and rollback removes exactly the ones hosttune added.
A parameter is active only after a reboot: reboot-required is computed against /proc/cmdline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from hosttune.host import Host
from hosttune.host.distro import kernel_release, os_family
from hosttune.host.nvidia_driver import driver_version, version_tuple
from hosttune.host.parsers import parse_cmdline
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
    from hosttune.profile.schema import KernelCmdlineSection


class KnownParam(msgspec.Struct, frozen=True):
    since: tuple[int, ...] | None  # first kernel with it (None: always there)
    removed: tuple[int, ...] | None  # first kernel without it
    note: str  # shown when it applies; source in brackets


# A small table of parameters inference hosts use, with the kernel versions they exist in.
# Sources: Documentation/admin-guide/kernel-parameters.txt of the versions named; commit
# "rcu: Remove CONFIG_RCU_FAST_NO_HZ" (v5.17) for the rcutree idle delays.
KNOWN_PARAMS: dict[str, KnownParam] = {
    "rcutree.rcu_idle_gp_delay": KnownParam(None, (5, 17), (
        "obsolete: RCU_FAST_NO_HZ was removed in Linux 5.17, the parameter no longer exists "
        "(the kernel passes unknown words on to init)")),
    "rcutree.rcu_idle_lazy_gp_delay": KnownParam(None, (5, 17), (
        "obsolete: removed with RCU_FAST_NO_HZ in Linux 5.17")),
    "pcie_aspm": KnownParam(None, None, "valid: 'off' disables PCIe ASPM link power saving"),
    "pcie_aspm.policy": KnownParam(None, None, ""),
    "hugepagesz": KnownParam(None, None, ""),
    "hugepages": KnownParam(None, None, ""),
    "default_hugepagesz": KnownParam(None, None, ""),
    "hugetlb_free_vmemmap": KnownParam((5, 14), None, ""),
    "transparent_hugepage": KnownParam(None, None, ""),
    "isolcpus": KnownParam(None, None, ""),
    "nohz_full": KnownParam(None, None, ""),
    "rcu_nocbs": KnownParam(None, None, ""),
    "irqaffinity": KnownParam(None, None, ""),
    "iommu": KnownParam(None, None, ""),
    "amd_iommu": KnownParam(None, None, ""),
    "intel_iommu": KnownParam(None, None, ""),
    "iommu.passthrough": KnownParam(None, None, ""),
    "amd_pstate": KnownParam((5, 17), None, "amd_pstate=active (EPP) needs 6.3+"),
    "intel_pstate": KnownParam(None, None, ""),
    "processor.max_cstate": KnownParam(None, None, ""),
    "idle": KnownParam(None, None, ""),
    "mitigations": KnownParam((5, 2), None, ""),
    "numa_balancing": KnownParam(None, None, ""),
    "pci": KnownParam(None, None, ""),
    "nvidia-drm.modeset": KnownParam(None, None, ""),
    "nvidia_drm.modeset": KnownParam(None, None, ""),
    "nvidia-drm.fbdev": KnownParam(None, None, ""),
    "nvidia_drm.fbdev": KnownParam(None, None, ""),
    "quiet": KnownParam(None, None, ""),
    "splash": KnownParam(None, None, ""),
}


def param_name(word: str) -> str:
    return word.split("=", 1)[0]


def param_warning(word: str, kernel: str | None, nvidia: str | None = None) -> str | None:
    """A warning about one command-line word for the running kernel/driver (None: fine).
    Pure: the doctor uses it on hand-made command lines."""
    name = param_name(word)
    kv = version_tuple(kernel) if kernel else ()
    if name in ("nvidia-drm.modeset", "nvidia_drm.modeset"):
        if nvidia and version_tuple(nvidia) >= (595,) and word.endswith("=1"):
            return f"no-op: modeset=1 is the default from NVIDIA driver 595 (running {nvidia})"
        return None
    known = KNOWN_PARAMS.get(name)
    if known is None:
        if "." in name:  # module.param: checked by the module at load time, not here
            return None
        return (f"{name} is not in hosttune's table of known parameters; an unknown word is "
                "passed to init - check kernel-parameters.txt for this kernel")
    if known.removed is not None:
        if not kv:
            return f"{known.note} (running kernel unknown)"
        if kv >= known.removed:
            return f"{known.note}; running {kernel}"
    if known.since is not None and kv and kv < known.since:
        return f"{name} needs Linux {'.'.join(map(str, known.since))}+; running {kernel}"
    return None


def active_value(tokens: list[str], word: str) -> bool:
    """Is ``word`` in effect on a command line? For name=value the last occurrence wins."""
    name = param_name(word)
    if "=" not in word:
        return word in tokens
    vals = [t for t in tokens if param_name(t) == name]
    return bool(vals) and vals[-1] == word


def wanted_words(sec: KernelCmdlineSection,
                 boot_pools: list[tuple[str, int]] | None = None) -> list[str]:
    """The words of the drop-in: params, default_hugepagesz, then one hugepagesz= hugepages=
    pair per huge-page pool reserved at boot (hugepages_1g, and the hugepages pools with
    ``reserve: boot``, see hugepages.boot_pools)."""
    from hosttune.tunables.hugepages import boot_words

    words = list(sec.params)
    if sec.default_hugepagesz:
        words.append(f"default_hugepagesz={sec.default_hugepagesz}")
    pools = list(boot_pools or [])
    if sec.hugepages_1g:
        pools.insert(0, ("1G", sec.hugepages_1g))
    for label, pages in pools:
        words += boot_words(label, pages)
    return words


def _words(ctx: Context, sec: KernelCmdlineSection) -> list[str]:
    from hosttune.tunables.hugepages import HVO_BOOT_WORD, boot_pools, hvo_state

    words = wanted_words(sec, boot_pools(ctx))
    hp = ctx.profile.hugepages
    # HVO on a kernel that has only the boot parameter (no vm.hugetlb_optimize_vmemmap)
    if hp is not None and hp.optimize_vmemmap and HVO_BOOT_WORD not in words \
            and hvo_state(ctx.host).mode == "boot":
        words.append(HVO_BOOT_WORD)
    return words


def render(words: list[str], profile: str) -> str:
    return (HEADER + f"# profile: {profile}\n"
            "# Sourced as sh by grub-mkconfig after /etc/default/grub: extends, never replaces.\n"
            f'GRUB_CMDLINE_LINUX_DEFAULT="${{GRUB_CMDLINE_LINUX_DEFAULT}} {" ".join(words)}"\n')


def bootloader_argv(host: Host, add: list[str]) -> tuple[list[str], list[str]] | None:
    """(apply argv, revert argv) for the family's boot-config tool, or None if unknown. On the
    live system the tool must exist; under --root (an image) the family decides."""
    fam = os_family(host)
    grubby = host.which("grubby")
    if grubby and (fam == "rhel" or not host.which("update-grub")):
        if not add:
            return None
        return (["grubby", "--update-kernel=ALL", "--args=" + " ".join(add)],
                ["grubby", "--update-kernel=ALL", "--remove-args=" + " ".join(add)])
    if host.which("update-grub") or (fam == "debian" and host.offline):
        return ["update-grub"], ["update-grub"]
    if fam == "rhel" and host.offline and add:
        return (["grubby", "--update-kernel=ALL", "--args=" + " ".join(add)],
                ["grubby", "--update-kernel=ALL", "--remove-args=" + " ".join(add)])
    for tool, cfg in (("grub-mkconfig", "/boot/grub/grub.cfg"),
                      ("grub2-mkconfig", "/boot/grub2/grub.cfg")):
        if host.which(tool):
            return [tool, "-o", cfg], [tool, "-o", cfg]
    return None


class KernelCmdlineTunable(Tunable):
    name = "kernel_cmdline"
    section = "kernel_cmdline"

    def _sec(self, ctx: Context) -> KernelCmdlineSection:
        sec = ctx.profile.kernel_cmdline
        assert sec is not None  # the family runs only when its section is set
        return sec

    def validate(self, ctx: Context) -> None:
        sec = self._sec(ctx)
        if sec.hugepages_1g and ctx.facts.hugepage_sizes and \
                1024**3 not in ctx.facts.hugepage_sizes:
            raise ctx.error("kernel_cmdline.hugepages_1g", "this CPU/kernel offers no 1 GiB "
                            "huge pages (/sys/kernel/mm/hugepages has no hugepages-1048576kB)")
        from hosttune.tunables.hugepages import boot_pools

        pools = [label for label, _ in boot_pools(ctx)]
        if sec.hugepages_1g and "1G" in pools:
            raise ctx.error("kernel_cmdline.hugepages_1g", "the hugepages section reserves "
                            "its 1G pool at boot (reserve: boot) too: keep one of them")
        ram = ctx.facts.mem_total_bytes
        if sec.hugepages_1g and ram and sec.hugepages_1g * 1024**3 >= ram:
            # the boot-time pool is taken before anything else runs: a pool of all the RAM
            # (or more) leaves the kernel nothing and the host does not come up
            raise ctx.error("kernel_cmdline.hugepages_1g", f"{sec.hugepages_1g} GiB of 1 GiB "
                            f"pages is not less than this host's RAM ({ram / 1024**3:.1f} GiB)")
        seen: dict[str, str] = {}
        for w in _words(ctx, sec):
            n = param_name(w)
            if n in seen and n not in ("hugepagesz", "hugepages") and seen[n] != w:
                raise ctx.error("kernel_cmdline.params", f"{seen[n]} and {w} contradict each "
                                "other")
            seen[n] = w

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = self._sec(ctx)
        host = ctx.host
        words = _words(ctx, sec)
        rows: list[Row] = []
        changes: list[Change] = []
        tokens = parse_cmdline(host.read_text("/proc/cmdline") or "")
        kernel = kernel_release(host)
        nvidia = driver_version(host)
        content = render(words, ctx.profile.name) if words else None
        try:
            configured = host.read_text(sec.file) == content
        except PermissionError:
            configured = False
        for w in words:
            active = active_value(tokens, w)
            note = param_warning(w, kernel, nvidia) or ""
            cur = "active" if active else "absent"
            needs: tuple[str, ...]
            if not configured:
                st, needs = Status.DRIFT, ("reboot",)
            elif not active:
                st, needs = Status.NEEDS_REBOOT, ("reboot",)
            else:
                st, needs = Status.OK, ()
            rows.append(Row(self.name, w, cur, "active", st, note, needs=needs))
        row, ch = file_change(ctx, self.name, sec.file, content, needs=("reboot",))
        rows.insert(0, row)
        add = [w for w in words if not active_value(tokens, w)]
        argvs = bootloader_argv(host, add)
        if argvs is None and add:
            rows.append(Row(self.name, "boot loader", "not found", "GRUB", Status.UNSUPPORTED,
                            "no update-grub, grubby or grub-mkconfig here: the drop-in only "
                            "takes effect where GRUB regenerates its configuration"))
        if ch:
            changes.append(ch)
            if argvs is not None:
                changes.append(Change(
                    id=f"{self.name}/bootloader", tunable=self.name, kind="command",
                    summary=" ".join(argvs[0]), needs=("reboot",),
                    params={"argv": argvs[0], "revert_argv": argvs[1], "post": True,
                            "timeout_s": 300}))
        return Evaluation(rows, changes)
