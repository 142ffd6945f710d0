"""What the container tests share: fake-tree helpers (additive to tests/fakehost.py), the
seed's hand-pinned compose file and the Compose Specification schema validator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import REPO, need
from tests.fakehost import cpulist, w

SEED_COMPOSE = """\
services:
  llama-cpu-0: {image: llama, cpuset: "0-7", mem_limit: 32g}
  llama-cpu-1: {image: llama, cpuset: "8-15", mem_limit: 32g}
  llama-cpu-2: {image: llama, cpuset: "16-23", mem_limit: 32g}
  gpu-feeder: {image: feeder, cpuset: "24-31"}
  unpinned: {image: other}
"""


def add_nvidia_gpu(root: Path, address: str = "0000:01:00.0", *, numa_node: int = -1,
                   local_cpus: list[int] | None = None, device: str = "0x2b85",
                   pci_class: str = "0x030000") -> Path:
    """An NVIDIA GPU as /sys/bus/pci/devices/<addr>/ shows it (0x2b85: RTX 5090; a datacenter
    part reports class 0x030200, '3D controller'). numa_node -1 is what single-node desktops
    report."""
    base = f"/sys/bus/pci/devices/{address}"
    w(root, f"{base}/vendor", "0x10de\n")
    w(root, f"{base}/device", device + "\n")
    w(root, f"{base}/class", pci_class + "\n")
    w(root, f"{base}/numa_node", f"{numa_node}\n")
    w(root, f"{base}/local_cpulist", cpulist(local_cpus or []) + "\n")
    return root


def add_pci_device(root: Path, address: str, vendor: str, pci_class: str) -> Path:
    base = f"/sys/bus/pci/devices/{address}"
    w(root, f"{base}/vendor", vendor + "\n")
    w(root, f"{base}/class", pci_class + "\n")
    w(root, f"{base}/numa_node", "-1\n")
    w(root, f"{base}/local_cpulist", "\n")
    return root


# --- the Compose Specification schema --------------------------------------------------------
SCHEMA_REL = "shared/data/compose-spec/compose-spec.json"


def _schema_path() -> Path | None:
    cands = [os.environ.get("HOSTTUNE_COMPOSE_SCHEMA"), REPO.parent / SCHEMA_REL,
             REPO / SCHEMA_REL, Path("/work") / SCHEMA_REL]
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    return None


def compose_schema_validator() -> Any:
    import jsonschema

    path = _schema_path()
    need(path is not None, f"Compose Specification schema not found (../{SCHEMA_REL})")
    assert path is not None
    schema = json.loads(path.read_text())
    # the file says "$schema": ".../draft-07/schema" (without '#'): name the draft explicitly
    cls = jsonschema.Draft7Validator
    cls.check_schema(schema)
    return cls(schema)
