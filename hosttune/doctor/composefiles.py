"""The host's compose files, as the doctor finds and reads them: --compose files plus those in
the usual places, their services, the line of a service's key, the cpusets they pin and the GPU
clients they start. Shared by the container, IRQ, CUDA cache and compute-mode checks; a file
that cannot be read or parsed is left out (the container check reports it)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import yaml

from hosttune.containers.cpusets import cpusets_from_compose
from hosttune.doctor.base import DoctorContext
from hosttune.errors import HosttuneError

COMPOSE_NAMES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")
COMPOSE_DIRS = ("/opt/*", "/srv/*", "/etc/docker/compose/*")


def compose_files(ctx: DoctorContext) -> list[str]:
    """--compose files plus compose files in the usual places (/opt/*, /srv/*)."""
    host = ctx.host
    found = list(ctx.compose_files)
    for pat in COMPOSE_DIRS:
        for d in host.glob(pat):
            for n in COMPOSE_NAMES:
                p = f"{d}/{n}"
                if p not in found and host.is_file(p):
                    found.append(p)
    return found


def compose_doc(ctx: DoctorContext, path: str) -> tuple[str, dict[str, Any]] | None:
    try:
        text = ctx.host.read_text(path)
    except PermissionError:
        return None
    if text is None:
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        return None
    return text, doc["services"]


def service_line(text: str, service: str, key: str) -> int:
    """Line of ``key:`` inside ``service:`` of a compose file (the service's line, or 1)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if re.match(rf"^\s+{re.escape(service)}\s*:", ln)), None)
    if start is None:
        return 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    for j in range(start + 1, len(lines)):
        ln = lines[j]
        if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
            break
        if re.match(rf"^\s+{re.escape(key)}\s*:", ln):
            return j + 1
    return start + 1


def label_to_service(services: dict[str, Any]) -> dict[str, str]:
    return {str(s.get("container_name") or n) if isinstance(s, dict) else n: n
            for n, s in services.items()}


def compose_cpusets(ctx: DoctorContext) -> dict[str, tuple[str, list[int]]]:
    """container -> (compose file, CPUs) of every pinned service in the host's compose files."""
    out: dict[str, tuple[str, list[int]]] = {}
    for path in compose_files(ctx):
        got = compose_doc(ctx, path)
        if got is None:
            continue
        try:
            sets = cpusets_from_compose(got[0], source=path)
        except HosttuneError:
            continue
        for name, cpus in sets.items():
            out[name] = (path, cpus)
    return out



def _gpu_service(svc: dict[str, Any]) -> list[str] | None:
    """GPU ids a compose service reserves ([] = all GPUs), None when it uses none."""
    if svc.get("runtime") == "nvidia" or svc.get("gpus") is not None:
        g = svc.get("gpus")
        return [str(x) for x in g] if isinstance(g, list) else []
    devs = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}) \
        .get("devices") or []
    for d in devs if isinstance(devs, list) else []:
        if not isinstance(d, dict):
            continue
        caps = d.get("capabilities") or []
        if d.get("driver") == "nvidia" or "gpu" in caps:
            ids = d.get("device_ids")
            return [str(x) for x in ids] if isinstance(ids, list) else []
    return None


def compose_gpu_clients(ctx: DoctorContext) -> tuple[int, list[str], str | None]:
    """(most GPU containers on one GPU, their names, the compose file) over the host's
    compose files."""
    best: tuple[int, list[str], str | None] = (0, [], None)
    for path in compose_files(ctx):
        got = compose_doc(ctx, path)
        if got is None:
            continue
        per: Counter[str] = Counter()
        names: dict[str, list[str]] = {}
        every: list[str] = []
        for n, svc in got[1].items():
            ids = _gpu_service(svc) if isinstance(svc, dict) else None
            if ids is None:
                continue
            label = str(svc.get("container_name") or n)
            if not ids:
                every.append(label)
            for i in ids:
                per[i] += 1
                names.setdefault(i, []).append(label)
        gpu, count = per.most_common(1)[0] if per else ("", 0)
        total = count + len(every)
        if total > best[0]:
            best = (total, names.get(gpu, []) + every, path)
    return best
