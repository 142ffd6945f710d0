"""Which distribution family a host (or --root tree) is: decides update-grub vs grubby and
update-initramfs vs dracut when the tools themselves are not found."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hosttune.host.core import Host

Family = Literal["debian", "rhel", "unknown"]


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, values optionally quoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.strip().partition("=")
        if not sep or k.startswith("#"):
            continue
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def os_family(host: Host) -> Family:
    text = host.read_text("/etc/os-release") or host.read_text("/usr/lib/os-release") or ""
    info = parse_os_release(text)
    ids = {info.get("ID", "").lower(), *info.get("ID_LIKE", "").lower().split()}
    if ids & {"debian", "ubuntu"}:
        return "debian"
    if ids & {"rhel", "fedora", "centos", "rocky", "almalinux", "ol", "amzn"}:
        return "rhel"
    return "unknown"


def kernel_release(host: Host) -> str | None:
    """'6.8.0-45-generic' from /proc/sys/kernel/osrelease (or /proc/version)."""
    v = host.read_value("/proc/sys/kernel/osrelease")
    if v:
        return v
    text = host.read_text("/proc/version") or ""
    parts = text.split()
    return parts[2] if len(parts) > 2 and parts[:2] == ["Linux", "version"] else None
