"""System-wide CUDA environment: a marked block in /etc/environment and a safe JIT cache dir.

/etc/environment is a shared file: hosttune owns only the lines between its BEGIN/END marker
lines, leaves every other line alone, and on rollback removes exactly its block (or restores
the original bytes when nothing else changed since). It is read by pam_env at login: PAM
sessions get it, systemd services (dockerd, containers) do not - they need Environment= or
EnvironmentFile=.

CUDA_CACHE_PATH holds JIT-compiled kernels that CUDA loads and runs. A world-writable cache
lets any local user plant code into other users' processes (cf. NVIDIA/cuda-python PR 2857),
and /tmp is wiped at boot (tmpfs or systemd-tmpfiles), which throws the cache away: the path
must survive reboot and be writable only by its owner and group.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.profile.paths import system_dir_problem
from hosttune.profile.sizes import format_size, parse_size
from hosttune.tunables.base import (
    Change,
    Context,
    Evaluation,
    Row,
    Status,
    Tunable,
    setting,
    unified_diff,
)
from hosttune.tunables.knob import Knob, SharedFileKnob, action

if TYPE_CHECKING:
    from hosttune.profile.schema import CudaEnvSection

BEGIN = ("# BEGIN hosttune cuda_env - managed by hosttune, edits inside this block are "
         "overwritten")
END = "# END hosttune cuda_env"
CACHE_MAXSIZE_LIMIT = 4 * 1024**3  # CUDA caps the JIT cache at 4 GiB (CUDA programming guide)
BOOT_WIPED = ("/tmp", "/run", "/dev/shm", "/var/run", "/var/lock")

# Variables whose value is CUDA's default: accepted, reported as no-ops.
NOOP_DEFAULTS = {
    ("CUDA_MODULE_LOADING", "LAZY"): "LAZY is the default since CUDA 12.2: no-op",
    ("CUDA_LAUNCH_BLOCKING", "0"): "0 is the default: no-op",
    ("CUDA_CACHE_DISABLE", "0"): "0 is the default: no-op",
}
NOTES = {
    ("CUDA_LAUNCH_BLOCKING", "1"): "serialises every kernel launch - a debugging setting",
}


# --- marked blocks (pure) -------------------------------------------------------------------------
def find_block(lines: list[str]) -> tuple[int, int] | None:
    """Indices (begin, end) of the marker lines, or None."""
    begin = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == BEGIN), None)
    if begin is None:
        return None
    end = next((i for i in range(begin + 1, len(lines)) if lines[i].rstrip("\n") == END), None)
    if end is None:
        raise HostError(f"found '{BEGIN}' without '{END}': fix the file by hand")
    return begin, end


def set_block(text: str, body: list[str] | None) -> str:
    """``text`` with hosttune's block replaced by ``body`` lines (None: removed). A new block
    goes at the end, so it is the last assignment pam_env sees."""
    lines = text.splitlines(keepends=True)
    span = find_block(lines)
    block = [BEGIN + "\n", *(b + "\n" for b in body), END + "\n"] if body is not None else []
    if span is not None:
        return "".join(lines[: span[0]] + block + lines[span[1] + 1:])
    if not block:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(block)


def block_body(text: str) -> list[str] | None:
    lines = text.splitlines()
    span = find_block(lines)
    return None if span is None else lines[span[0] + 1: span[1]]


def parse_environment(text: str) -> list[tuple[str, str]]:
    """pam_env's /etc/environment: NAME=value lines (optional 'export '), '#' comments."""
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[7:].lstrip()
        k, sep, v = s.partition("=")
        if sep:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            out.append((k.strip(), v))
    return out


# --- validation (pure, reusable by the doctor) -------------------------------------------------
def cache_path_problem(host: Host, path: str) -> str | None:
    """Why ``path`` is not a safe CUDA_CACHE_PATH (None when it is)."""
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    norm = os.path.normpath(path)
    if norm != path.rstrip("/") or path.startswith("//"):
        # '/var/cache/../..' is '/': hosttune would chmod/chgrp the root directory
        return f"{path!r} is not a normalised path (no '..', '.' or '//')"
    problem = system_dir_problem(norm)
    if problem:
        return (f"{problem}: hosttune would chmod and chgrp it for the JIT cache; use a "
                "directory of its own such as /var/cache/cuda")
    for d in BOOT_WIPED:
        if norm == d or norm.startswith(d + "/"):
            return (f"{norm} is under {d}, which is wiped at boot (tmpfs or systemd-tmpfiles), "
                    "and /tmp is world-writable: another user can create or replace the cache "
                    "and plant JIT code that CUDA programs then run (cf. NVIDIA/cuda-python PR "
                    "2857). Use a persistent directory such as /var/cache/cuda")
    cur = norm
    while True:
        try:
            st = host.lstat(cur)
        except PermissionError:
            st = None
        if st is not None:
            if stat.S_ISLNK(st.st_mode):
                return f"{cur} is a symlink: refusing a cache path that can be redirected"
            if stat.S_IMODE(st.st_mode) & 0o002:
                if cur != norm:
                    return (f"{norm} is under a world-writable directory ({cur}, mode "
                            f"{stat.S_IMODE(st.st_mode):o}): any local user could create or "
                            "replace the cache and plant JIT code (cf. NVIDIA/cuda-python PR "
                            "2857)")
                return (f"{norm} exists with mode {stat.S_IMODE(st.st_mode):o} (world-"
                        "writable): it may already hold planted JIT code; remove it (or empty "
                        "it and drop the o+w bit) and run hosttune again")
        if cur == "/":
            return None
        cur = os.path.dirname(cur)


def group_gid(host: Host, group: str) -> int | None:
    if group.isdigit():
        return int(group)
    for line in (host.read_text("/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == group and parts[2].isdigit():
            return int(parts[2])
    return None


class EnvBlockKnob(SharedFileKnob):
    """hosttune's marked block of NAME=value lines in /etc/environment. Rollback restores the
    file byte for byte when nothing outside the block changed, and otherwise only the block
    (as it was before apply, or none)."""

    name = "block"

    def with_ours(self, text: str) -> str:
        return set_block(text, list(self.params["body"]))

    def without_ours(self, text: str, original: str) -> str:
        return set_block(set_block(text, None), block_body(original))

    def untouched(self, current: str, original: str) -> bool:
        return set_block(current, None).rstrip("\n") == set_block(original, None).rstrip("\n")


class CacheDirKnob(Knob):
    """CUDA's JIT cache directory: its mode and group, or its absence (with the parent
    directories apply created)."""

    name = "dir"

    def read(self, host: Host) -> dict[str, Any]:
        s = host.lstat(self.path)
        if s is None:
            missing = []
            cur = self.path
            while cur != "/" and not host.exists(cur):
                missing.append(cur)
                cur = os.path.dirname(cur)
            return {"exists": False, "created": list(reversed(missing))}
        return {"exists": True, "mode": stat.S_IMODE(s.st_mode), "uid": s.st_uid,
                "gid": s.st_gid}

    def desired(self) -> dict[str, Any]:
        return {"exists": True, "mode": self.change.mode, "gid": int(self.params["gid"])}

    def write(self, host: Host, value: dict[str, Any]) -> None:
        if value["exists"]:
            host.makedirs(os.path.dirname(self.path))
            host.set_dir(self.path, value["mode"], uid=value.get("uid", -1), gid=value["gid"],
                         create=True)
            return
        # the directory hosttune created holds only CUDA's JIT cache: drop it with it
        host.rmtree(self.path)
        for d in reversed(value.get("created", [])[:-1]):
            host.rmdir_if_empty(d)


class CudaEnvTunable(Tunable):
    name = "cuda_env"
    section = "cuda_env"
    knobs = (EnvBlockKnob, CacheDirKnob)

    def _sec(self, ctx: Context) -> CudaEnvSection:
        sec = ctx.profile.cuda_env
        assert sec is not None  # the family runs only when its section is set
        return sec

    def _values(self, ctx: Context) -> dict[str, str]:
        sec = self._sec(ctx)
        out: dict[str, str] = {}
        for k, v in sec.variables.items():
            if k == "CUDA_CACHE_MAXSIZE":
                try:
                    n = parse_size(v)
                except ValueError as err:
                    raise ctx.error(f"cuda_env.variables.{k}", str(err)) from err
                if n > CACHE_MAXSIZE_LIMIT:
                    raise ctx.error(f"cuda_env.variables.{k}", (
                        f"{format_size(n)} is above CUDA's 4 GiB cap for the JIT cache "
                        f"({CACHE_MAXSIZE_LIMIT} bytes)"))
                out[k] = str(n)
            else:
                out[k] = str(v)
        return out

    def validate(self, ctx: Context) -> None:
        sec = self._sec(ctx)
        values = self._values(ctx)
        path = values.get("CUDA_CACHE_PATH")
        if path is not None:
            problem = cache_path_problem(ctx.host, path)
            if problem:
                raise ctx.error("cuda_env.variables.CUDA_CACHE_PATH", problem)
        if int(sec.cache_dir_mode, 8) & 0o002:
            raise ctx.error("cuda_env.cache_dir_mode", "a world-writable JIT cache lets other "
                            "users plant code (cf. NVIDIA/cuda-python PR 2857)")

    def evaluate(self, ctx: Context) -> Evaluation:
        sec = self._sec(ctx)
        host = ctx.host
        values = self._values(ctx)
        rows: list[Row] = []
        changes: list[Change] = []
        try:
            state = host.file_state(sec.file)
        except PermissionError:
            return Evaluation([Row(self.name, sec.file, "?", "block", Status.NEEDS_ROOT)], [])
        text = (state.content or b"").decode("utf-8", errors="replace") if state.exists else ""
        body = [f"{k}={values[k]}" for k in sorted(values)]
        new_text = set_block(text, body)
        effective = dict(parse_environment(new_text))
        current_env = dict(parse_environment(text))
        block_ok = block_body(text) == body
        for k in sorted(values):
            note = NOOP_DEFAULTS.get((k, values[k])) or NOTES.get((k, values[k]), "")
            cur = current_env.get(k, "unset")
            if not block_ok:
                st = Status.DRIFT
            elif effective.get(k) != values[k]:
                st = Status.CONFLICT
                note = f"a line after hosttune's block sets {k}; pam_env keeps the last one"
            else:
                st = Status.OK
            rows.append(Row(self.name, k, cur, values[k], st, note))
        svc_note = "read by pam_env at login; systemd services need Environment=/EnvironmentFile="
        now = "present" if block_ok else "differs" if block_body(text) is not None else "absent"
        row, change = setting(
            self.name, f"block in {sec.file}", now, "present", action(
                self.name, EnvBlockKnob.name, id=f"{self.name}/{sec.file}",
                summary=f"write hosttune's block in {sec.file} (other lines untouched)",
                path=sec.file, value="\n".join(body), runtime=False, needs=("re-login",),
                diff=unified_diff(sec.file, text if state.exists else None, new_text),
                params={"op": "block", "body": body}), note=svc_note)
        rows.insert(0, row if block_ok else replace(row, needs=("re-login",)))
        if change is not None and not ctx.runtime_only:
            changes.append(change)
        path = values.get("CUDA_CACHE_PATH")
        if path is not None:
            r, c = self._cache_dir(ctx, os.path.normpath(path))
            rows.append(r)
            if c and not ctx.runtime_only:
                changes.insert(0, c)
        return Evaluation(rows, changes)

    def _cache_dir(self, ctx: Context, path: str) -> tuple[Row, Change | None]:
        sec = self._sec(ctx)
        host = ctx.host
        mode = int(sec.cache_dir_mode, 8)
        gid = group_gid(host, sec.cache_dir_group) if sec.cache_dir_group else 0
        want = f"dir mode {mode:o} group {sec.cache_dir_group or 'root'}"
        if gid is None:
            # a finding, not a profile error: the group may be created by the admin later
            return Row(self.name, f"cache dir {path}", "?", want, Status.ERROR,
                       f"no group {sec.cache_dir_group!r} in /etc/group: create it "
                       "(groupadd) or set cuda_env.cache_dir_group"), None
        st = host.lstat(path)
        key = f"cache dir {path}"
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ctx.error("cuda_env.variables.CUDA_CACHE_PATH", f"{path} exists and is not "
                            "a directory")
        ok = st is not None and stat.S_IMODE(st.st_mode) == mode and st.st_gid == gid
        cur = want if ok else "absent" if st is None else \
            f"dir mode {stat.S_IMODE(st.st_mode):o} gid {st.st_gid}"
        return setting(self.name, key, cur, want, action(
            self.name, CacheDirKnob.name, id=f"{self.name}/cache-dir",
            summary=f"{'create' if st is None else 'fix'} {path} ({want})", path=path,
            mode=mode, runtime=False, params={"op": "dir", "gid": gid}), ok=ok)


