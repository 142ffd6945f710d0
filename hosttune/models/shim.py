"""Building the LD_PRELOAD shim (shim/hosttune_shim.c) with the system C compiler."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from hosttune.errors import HostError

if TYPE_CHECKING:
    from hosttune.host import Host

DEFAULT_OUTPUT = "/usr/local/lib/hosttune/libhosttune-shim.so"
CFLAGS = ("-O2", "-g0", "-Wall", "-Wextra", "-shared", "-fPIC", "-fvisibility=hidden")


def shim_source() -> Path:
    return Path(str(resources.files("hosttune.models") / "shim" / "hosttune_shim.c"))


class ShimBuild(msgspec.Struct, frozen=True):
    output: str  # host path
    argv: tuple[str, ...]
    skipped: bool  # --root: the compiler was not run (listed as skipped)


def build_shim(host: Host, output: str = DEFAULT_OUTPUT, *, cc: str | None = None) -> ShimBuild:
    """Compile the shim to ``output`` (atomically: a temp file next to it, then rename)."""
    if not output.startswith("/"):
        output = os.path.abspath(output)
    src = shim_source()
    if not src.is_file():
        raise HostError(f"shim source missing from the package: {src}")
    compiler = cc or host.which("cc") or host.which("gcc") or ("cc" if host.offline else None)
    if compiler is None:
        raise HostError("no C compiler (cc/gcc) found: install one (Debian: apt-get install "
                        "gcc) or pass --cc")
    created = host.makedirs(os.path.dirname(output)) if not host.offline else []
    del created
    real = host.path(output)
    tmp_hp = f"{os.path.dirname(output)}/.{real.name}.hosttune-tmp-{os.getpid()}"
    tmp = host.path(tmp_hp)  # the compiler's argument (run only on the live system)
    argv = (compiler, *CFLAGS, "-o", str(tmp), str(src), "-ldl")
    res = host.run(list(argv), timeout_s=120)
    if res.skipped:
        return ShimBuild(output, argv, True)
    if res.returncode != 0:
        host.remove(tmp_hp)  # absent: nothing to do
        raise HostError(f"compiling the shim failed (exit {res.returncode}):\n"
                        f"{res.stderr.strip()}")
    host.chmod(tmp_hp, 0o755)  # a shared library every loader must map
    host.rename(tmp_hp, output)
    return ShimBuild(output, argv, False)
