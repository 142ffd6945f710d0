"""CUDA_CACHE_PATH set by hand (/etc/environment, profile.d, units and their EnvironmentFile=,
compose services): a cache directory that is world-writable, or wiped at boot.

The rules come from tunables.cuda_env (cache_path_problem, the directories wiped at boot): the
doctor only finds the hand-made settings and asks those rules."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator

from hosttune.doctor.base import DoctorContext, Finding, Severity
from hosttune.doctor.checks_systemd import unit_files
from hosttune.doctor.composefiles import compose_doc, compose_files, service_line
from hosttune.errors import HostError
from hosttune.host.parsers import parse_mountinfo
from hosttune.host.unitfile import parse_unit
from hosttune.tunables.cuda_env import BOOT_WIPED, cache_path_problem, parse_environment


def _cuda_cache_settings(ctx: DoctorContext) -> list[tuple[str, str]]:
    """(where, path) of every CUDA_CACHE_PATH the host sets."""
    host = ctx.host
    out: list[tuple[str, str]] = []

    def env_file(path: str) -> None:  # KEY=VALUE lines: /etc/environment, EnvironmentFile=
        try:
            text = host.read_text(path) or ""
        except (PermissionError, UnicodeDecodeError, IsADirectoryError):
            return
        for i, line in enumerate(text.splitlines(), 1):
            out.extend((f"{path}:{i}", v) for k, v in parse_environment(line)
                       if k == "CUDA_CACHE_PATH")

    env_file("/etc/environment")
    for n in host.listdir("/etc/profile.d"):
        p = f"/etc/profile.d/{n}"
        try:
            body = host.read_text(p) or ""
        except (PermissionError, UnicodeDecodeError, IsADirectoryError):
            continue
        for i, line in enumerate(body.splitlines(), 1):
            m = re.match(r"^\s*(?:export\s+)?CUDA_CACHE_PATH=([\"']?)([^\"'\s;]+)\1", line)
            if m:
                out.append((f"{p}:{i}", m.group(2)))
    import shlex

    env_files = {"/etc/environment"}  # read above
    for p in unit_files(ctx):
        try:
            utext = host.read_text(p) or ""
        except PermissionError:
            continue
        for e in parse_unit(utext):
            if e.key == "EnvironmentFile":
                # systemd.exec(5): a leading '-' means "ignore if missing"; KEY=VALUE lines
                ef = e.value.strip().removeprefix("-")
                if ef.startswith("/") and ef not in env_files:
                    env_files.add(ef)
                    env_file(ef)
                continue
            if e.key != "Environment":
                continue
            try:
                words = shlex.split(e.value)
            except ValueError:
                words = e.value.split()
            out += [(f"{p}:{e.lineno}", w.split("=", 1)[1]) for w in words
                    if w.startswith("CUDA_CACHE_PATH=")]
    for path in compose_files(ctx):
        cdoc = compose_doc(ctx, path)
        if cdoc is None:
            continue
        for name, svc in cdoc[1].items():
            env = svc.get("environment") if isinstance(svc, dict) else None
            items: list[tuple[str, str]] = []
            if isinstance(env, dict):
                items = [(str(k), str(v)) for k, v in env.items() if v is not None]
            elif isinstance(env, list):
                items = [tuple(str(x).split("=", 1)) for x in env if "=" in str(x)]  # type: ignore[misc]
            for k, v in items:
                if k == "CUDA_CACHE_PATH":
                    lno = service_line(cdoc[0], name, "environment")
                    out.append((f"{path}:{lno}", v))
    return out


def _tmpfs_mount(ctx: DoctorContext, path: str) -> str | None:
    try:
        mounts = parse_mountinfo(ctx.host.read_text("/proc/self/mountinfo") or "")
    except PermissionError:
        return None
    best: tuple[int, str] | None = None
    for m in mounts:
        mp = m.mount_point.rstrip("/") or "/"
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and \
                (best is None or len(mp) > best[0]):
            best = (len(mp), m.fstype if m.fstype in ("tmpfs", "ramfs") else "")
    return None if best is None or not best[1] else best[1]


def _world_writable_in_chain(ctx: DoctorContext, path: str) -> bool:
    cur = os.path.normpath(path)
    while True:
        try:
            st = ctx.host.lstat(cur)
            if st is not None and stat.S_IMODE(st.st_mode) & 0o002 \
                    and not stat.S_ISLNK(st.st_mode):
                return True
        except (OSError, HostError):
            pass
        if cur == "/":
            return False
        cur = os.path.dirname(cur)


def check_cuda_cache(ctx: DoctorContext) -> Iterator[Finding]:
    fix = ("profile key cuda_env.variables.CUDA_CACHE_PATH (e.g. /var/cache/cuda; hosttune "
           "creates it with cuda_env.cache_dir_mode 0770 and cache_dir_group)")
    for where, path in _cuda_cache_settings(ctx):
        problem = cache_path_problem(ctx.host, path)
        norm = os.path.normpath(path) if path.startswith("/") else path
        wiped = any(norm == d or norm.startswith(d + "/") for d in BOOT_WIPED)
        tmpfs = None if wiped else _tmpfs_mount(ctx, norm)
        if problem is None and tmpfs is None:
            continue
        writable = norm.startswith(("/tmp", "/var/tmp", "/dev/shm")) or \
            _world_writable_in_chain(ctx, norm)
        if problem is None:
            problem = (f"{norm} is on a {tmpfs}: the cache is lost at every boot and CUDA "
                       "programs JIT-compile their kernels again")
        states = (["world-writable"] if writable else []) + \
            (["wiped at boot"] if wiped or tmpfs else [])
        yield Finding(
            "cuda.cache-path-unsafe", Severity.ERROR if writable else Severity.WARNING,
            f"CUDA_CACHE_PATH={path} is {' and '.join(states) or 'unsafe'}", where,
            problem + ".", fix)
