"""Runtime markers for GPU settings NVML cannot read back.

NVML has setters for locked clocks (nvmlDeviceSetGpuLockedClocks / SetMemoryLockedClocks) but
no getter, and ``nvidia-smi -q`` shows no locked range either (tools such as kernel_tuner keep
their own copy for the same reason). hosttune therefore records what it locked, per GPU UUID,
under /run/hosttune/nvml (tmpfs: gone at reboot, exactly when the locks are). Each marker holds
the boot id so a marker left on a non-tmpfs /run is never trusted after a reboot. A marker
can also say that the GPU refused the setting (NOT_SUPPORTED), so audit reports it as
unsupported rather than drift.
"""

from __future__ import annotations

import base64
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hosttune.host import Host

MARKER_DIR = "/run/hosttune/nvml"


def marker_path(uuid: str, what: str) -> str:
    safe = "".join(c for c in uuid if c.isalnum() or c in "-_.")
    return f"{MARKER_DIR}/{safe}/{what}.json"


def boot_id(host: Host) -> str | None:
    try:
        return host.read_value("/proc/sys/kernel/random/boot_id")
    except OSError:
        return None


def read_marker(host: Host, uuid: str, what: str) -> dict[str, Any] | None:
    try:
        text = host.read_text(marker_path(uuid, what))
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("boot_id") != boot_id(host):
        return None
    return data


def write_marker(host: Host, uuid: str, what: str, data: dict[str, Any]) -> None:
    path = marker_path(uuid, what)
    host.makedirs(os.path.dirname(path), 0o755)
    body = {"boot_id": boot_id(host), **data}
    host.write_file(path, (json.dumps(body, sort_keys=True) + "\n").encode(), mode=0o644)


def capture_marker(host: Host, uuid: str, what: str) -> dict[str, Any]:
    """The marker file as it is (for an exact restore) and the directories apply will create."""
    path = marker_path(uuid, what)
    st = host.file_state(path)
    missing: list[str] = []
    cur = os.path.dirname(path)
    while cur not in ("", "/") and not host.exists(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    valid = read_marker(host, uuid, what) or {}
    lock = [valid["min_mhz"], valid["max_mhz"]] if "min_mhz" in valid else None
    content = st.content if st.exists else None
    return {"content": base64.b64encode(content).decode("ascii") if content is not None else None,
            "created_dirs": list(reversed(missing)), "lock": lock}


def restore_marker(host: Host, uuid: str, what: str, orig: dict[str, Any]) -> None:
    path = marker_path(uuid, what)
    if orig.get("content") is not None:
        host.makedirs(os.path.dirname(path), 0o755)
        host.write_file(path, base64.b64decode(orig["content"]), mode=0o644)
    else:
        host.remove(path)
    for d in reversed(orig.get("created_dirs", [])):
        host.rmdir_if_empty(d)


def original_lock(orig: dict[str, Any]) -> tuple[int, int] | None:
    """The range hosttune had locked (this boot) when ``orig`` was captured; None: unlocked."""
    lock = orig.get("lock")
    return (int(lock[0]), int(lock[1])) if lock else None
