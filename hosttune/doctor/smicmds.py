"""Settings made by `nvidia-smi` invocations in scripts and units (power limit, locked
clocks, compute mode, and the -i GPU they address), for the compute-mode and clock checks."""

from __future__ import annotations

import msgspec

from hosttune.doctor.shellcmds import ShellLine, commands


class SmiSetting(msgspec.Struct, frozen=True):
    where: str
    what: str  # power | graphics | memory | compute
    value: str
    gpu: str | None  # -i value (index, UUID or bus id), None = every GPU


_SMI_OPTS = {"-pl": "power", "--power-limit": "power", "-lgc": "graphics",
             "--lock-gpu-clocks": "graphics", "-lmc": "memory",
             "--lock-memory-clocks": "memory", "-c": "compute", "--compute-mode": "compute",
             "-i": "id", "--id": "id"}


def smi_settings(lines: list[ShellLine]) -> list[SmiSetting]:
    """Settings made by `nvidia-smi` invocations in scripts and units."""
    out: list[SmiSetting] = []
    for sl in lines:
        for argv in commands(sl.text):
            if argv[0].rsplit("/", 1)[-1] != "nvidia-smi":
                continue
            found: list[tuple[str, str]] = []
            gpu: str | None = None
            i = 1
            while i < len(argv):
                opt, eq, val = argv[i].partition("=")
                kind = _SMI_OPTS.get(opt)
                if kind is not None and not eq and i + 1 < len(argv):
                    val = argv[i + 1]
                    i += 1
                i += 1
                if kind == "id":
                    gpu = val
                elif kind is not None:
                    found.append((kind, val))
            out += [SmiSetting(sl.where, k, v, gpu) for k, v in found]
    return out
