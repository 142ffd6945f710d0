"""The door lint: outside hosttune/host/, no module touches a path of the machine itself.

Every read, listing, stat and write of a host path goes through ``Host`` (hosttune/host/), where
--root confinement and the FIFO/device/size checks live. This walks the AST of every module of
hosttune/ outside hosttune/host/ and fails on a call that reaches the filesystem by path:
builtin ``open``, the path functions of ``os``/``os.path``/``shutil``/``gzip``..., and the
filesystem methods of ``pathlib.Path``. The calls that are not on host paths (the profile file
named on the command line, the CLI's --output, the user's cache) are listed in ALLOWED, each
with its reason; an entry that no longer matches a call fails too, so the list stays true.
.ci/run runs this file in its lint step."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "hosttune"
DOOR = "hosttune/host/"

# os functions that take a path (fd-only calls such as os.fstat, os.pread, os.close are fine)
OS_PATH_FUNCS = {
    "open", "listdir", "scandir", "walk", "fwalk", "stat", "lstat", "readlink", "access",
    "statvfs", "chmod", "chown", "lchown", "mkdir", "makedirs", "rmdir", "removedirs",
    "remove", "unlink", "rename", "renames", "replace", "link", "symlink", "truncate", "utime",
    "mkfifo", "mknod", "chdir", "chroot", "getxattr", "setxattr", "listxattr", "removexattr",
}
OS_PATH_PREDICATES = {
    "exists", "lexists", "isfile", "isdir", "islink", "ismount", "getsize", "getmtime",
    "getatime", "getctime", "realpath", "samefile",
}
# modules whose every call named here opens or changes files by path
MODULE_FUNCS = {
    "shutil": {"copy", "copy2", "copyfile", "copytree", "copymode", "copystat", "move",
               "rmtree", "chown", "which", "disk_usage"},
    "gzip": {"open"}, "bz2": {"open"}, "lzma": {"open"}, "io": {"open"}, "tarfile": {"open"},
    "zipfile": {"ZipFile"}, "tempfile": {"mkstemp", "mkdtemp", "NamedTemporaryFile",
                                         "TemporaryDirectory"},
    "glob": {"glob", "iglob"}, "mmap": set(),
}
# pathlib.Path methods that touch the filesystem; Host has methods of some of these names,
# so a call on a receiver that is the host (host, ctx.host, self.host) is the door itself.
# (Path.replace, .owner and .group are left out: str.replace and re.Match.group share them.)
PATH_METHODS = {
    "read_text", "read_bytes", "write_text", "write_bytes", "open", "iterdir", "glob", "rglob",
    "exists", "is_file", "is_dir", "is_symlink", "is_mount", "is_fifo", "is_block_device",
    "is_char_device", "is_socket", "stat", "lstat", "readlink", "resolve", "mkdir", "unlink",
    "rmdir", "touch", "chmod", "lchmod", "rename", "symlink_to", "hardlink_to", "samefile",
}

# (module, enclosing function, call) -> why it is not a host path
ALLOWED: dict[tuple[str, str, str], str] = {
    # the command line's own files: given by the operator, relative to the cwd, not the tree
    ("hosttune/cli/audit_cmd.py", "write_stdout", "os.open"):
        "os.devnull for a closed stdout (SIGPIPE recipe), not a host path",
    ("hosttune/cli/audit_cmd.py", "run_audit", "root.is_dir"): "the --root argument itself",
    ("hosttune/cli/common.py", "make_host", "root.is_dir"): "the --root argument itself",
    ("hosttune/cli/export.py", "tuned", "root.is_dir"): "the --root argument itself",
    ("hosttune/cli/models_fast.py", "_host", "root.is_dir"): "the --root argument itself",
    ("hosttune/cli/export.py", "tuned", "output.parent.mkdir"): "the CLI's --output file",
    ("hosttune/cli/export.py", "tuned", "output.write_text"): "the CLI's --output file",
    ("hosttune/cli/containers.py", "compose_cmd", "tempfile.mkstemp"):
        "the CLI's --output file (atomic write next to it)",
    ("hosttune/cli/containers.py", "compose_cmd", "os.chmod"): "the CLI's --output file",
    ("hosttune/cli/containers.py", "compose_cmd", "os.replace"): "the CLI's --output file",
    ("hosttune/cli/containers.py", "plan_cmd", "check.read_text"):
        "a compose file named on the command line",
    ("hosttune/cli/bench.py", "_which", "shutil.which"):
        "live-only bench: the compiler on the operator's PATH",
    # profiles are the operator's input on the machine running hosttune (loader.py bounds and
    # checks them: regular file, size, UTF-8), and the cache is the user's ~/.cache
    ("hosttune/profile/loader.py", "builtin_names", "BUILTIN_DIR.iterdir"):
        "the package's built-in profiles",
    ("hosttune/profile/loader.py", "_read_source", "path.is_file"):
        "a profile file named on the command line (or by extends:)",
    ("hosttune/profile/loader.py", "_read_text", "os.open"):
        "a profile file named on the command line (regular, size-capped read)",
    ("hosttune/profile/cache.py", "cache_dir", "os.stat"): "the user's cache directory",
    ("hosttune/profile/cache.py", "stamp", "os.stat"): "a profile file's stamp for the cache",
    ("hosttune/profile/cache.py", "cache_key", "os.stat"): "the package's schema module",
    ("hosttune/profile/cache.py", "load", "os.stat"): "an entry of the user's cache",
    ("hosttune/profile/cache.py", "load", "open"): "an entry of the user's cache",
    ("hosttune/profile/cache.py", "store", "d.mkdir"): "the user's cache directory",
    ("hosttune/profile/cache.py", "store", "os.open"): "an entry of the user's cache",
    ("hosttune/profile/cache.py", "store", "os.replace"): "an entry of the user's cache",
    ("hosttune/profile/cache.py", "store", "tmp.unlink"): "an entry of the user's cache",
    # the model store's source is a file named on the command line (live only: load refuses
    # --root); its descriptor is kept for the preadv copy
    ("hosttune/models/store.py", "load_model", "os.open"):
        "models load's source file, named on the command line (live only)",
    ("hosttune/models/store.py", "_check_source_unchanged", "os.stat"):
        "models load's source, checked unchanged after the copy (live only)",
    ("hosttune/models/store.py", "_pages_per_node", "mmap.mmap"):
        "a mapping of a descriptor the door opened",
    ("hosttune/models/store.py", "_checksum_file", "mmap.mmap"):
        "a mapping of a descriptor the door opened",
    ("hosttune/models/store.py", "_map_store_file", "mmap.mmap"):
        "a mapping of a descriptor the door opened",
    ("hosttune/models/store.py", "__init__", "mmap.mmap"):
        "anonymous memory (fd -1, no file): a copy thread's page-sized buffer",
    ("hosttune/models/shim.py", "build_shim", "src.is_file"): "the package's shim source",
    ("hosttune/bench/report.py", "run_bench", "os.path.exists"):
        "live-only bench: model and program paths named on the command line",
    ("hosttune/bench/roofline.py", "build_membw", "SOURCE.read_bytes"):
        "the package's membw.c source",
    ("hosttune/bench/roofline.py", "build_membw", "out.exists"): "the user's build cache",
    ("hosttune/bench/roofline.py", "build_membw", "out.parent.mkdir"): "the user's build cache",
    ("hosttune/bench/roofline.py", "build_membw", "tmp.rename"): "the user's build cache",
    ("hosttune/doctor/checks_systemd.py", "check_units_verify", "shutil.which"):
        "live only (not under --root): the systemd-analyze the runner would run",
    ("hosttune/engine/core.py", "_maybe_crash", "open"):
        "the power-cut tests' mark file (HOSTTUNE_TEST_MARK, the guest console)",
}


@dataclass(frozen=True)
class Hit:
    module: str
    func: str
    call: str
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.call}() in {self.func or '<module>'}"


def _is_host(receiver: ast.expr) -> bool:
    name = receiver.attr if isinstance(receiver, ast.Attribute) else \
        receiver.id if isinstance(receiver, ast.Name) else ""
    return name in ("host", "_host")


def _banned(call: ast.Call) -> str | None:
    fn = call.func
    text = ast.unparse(fn)
    if isinstance(fn, ast.Name):
        return text if fn.id == "open" else None
    if not isinstance(fn, ast.Attribute):
        return None
    mod = ast.unparse(fn.value)
    if mod == "os" and fn.attr in OS_PATH_FUNCS:
        return text
    if mod == "os.path" and fn.attr in OS_PATH_PREDICATES:
        return text
    if mod in MODULE_FUNCS:
        return text if (fn.attr in MODULE_FUNCS[mod] or mod == "mmap" and fn.attr == "mmap") \
            else None
    if fn.attr in PATH_METHODS and not _is_host(fn.value) and mod not in ("os", "os.path"):
        return text
    return None


def scan_source(source: str, module: str) -> list[Hit]:
    """Path calls in one module's source, each with the function it is in."""
    hits: list[Hit] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) \
                else func
            if isinstance(child, ast.Call) and (call := _banned(child)) is not None:
                hits.append(Hit(module, func, call, child.lineno))
            visit(child, inner)

    visit(ast.parse(source), "")
    return hits


def scan_package(pkg: Path = PKG) -> list[Hit]:
    hits: list[Hit] = []
    for f in sorted(pkg.rglob("*.py")):
        module = f"hosttune/{f.relative_to(pkg).as_posix()}"
        if not module.startswith(DOOR):
            hits.extend(scan_source(f.read_text(encoding="utf-8"), module))
    return hits


def violations(hits: list[Hit]) -> list[Hit]:
    return [h for h in hits if (h.module, h.func, h.call) not in ALLOWED]


def test_no_path_calls_outside_the_door() -> None:
    bad = violations(scan_package())
    assert not bad, ("host paths go through Host (hosttune/host/); these calls reach the "
                     "filesystem by themselves (or list them in ALLOWED with a reason):\n"
                     + "\n".join(map(str, bad)))


def test_every_allowed_exception_is_still_used() -> None:
    used = {(h.module, h.func, h.call) for h in scan_package()}
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"ALLOWED entries that match no call any more: {stale}"


PLANTED = '''
import gzip, os, shutil
from pathlib import Path

def audit(host, ctx):
    host.read_text("/etc/fstab")          # the door: fine
    ctx.host.is_file("/etc/fstab")        # the door: fine
    os.fstat(3)                           # a descriptor, not a path: fine
    with open("/etc/fstab") as fh:        # 1
        fh.read()
    os.listdir("/sys/class/net")          # 2
    Path("/etc/os-release").read_text()   # 3
    os.path.isfile(host.path("/x"))       # 4
    host.path("/x").is_symlink()          # 5
    gzip.open("/proc/config.gz")          # 6
    for _ in os.walk("/srv"):             # 7
        pass
    shutil.rmtree("/tmp/x")               # 8
    os.readlink("/etc/localtime")         # 9
'''


def test_a_planted_violation_is_found() -> None:
    hits = scan_source(PLANTED, "hosttune/tunables/planted.py")
    assert [h.call for h in hits] == [
        "open", "os.listdir", "Path('/etc/os-release').read_text", "os.path.isfile",
        "host.path('/x').is_symlink", "gzip.open", "os.walk", "shutil.rmtree", "os.readlink"]
    assert all(h.func == "audit" for h in hits)
    assert violations(hits) == hits  # no exception covers another module's calls


@pytest.mark.parametrize("line", ["open('/etc/fstab').read()", "os.stat('/etc')",
                                  "Path('/etc/x').exists()"])
def test_a_violation_planted_in_a_copy_of_the_package_fails_the_lint(
        tmp_path: Path, line: str) -> None:
    """The whole check, run on a copy of hosttune/ with one call planted in a real module."""
    import shutil

    copy = tmp_path / "hosttune"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "tunables" / "sysctl.py"
    target.write_text(target.read_text(encoding="utf-8")
                      + f"\n\ndef planted():\n    {line}\n", encoding="utf-8")
    assert not violations(scan_package(PKG))
    bad = violations(scan_package(copy))
    assert [(h.module, h.func) for h in bad] == [("hosttune/tunables/sysctl.py", "planted")]
