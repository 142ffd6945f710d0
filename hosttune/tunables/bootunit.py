"""hosttune-boot.service: re-applies the runtime-only settings at boot.

Huge-page pools, THP, NVML settings and other /sys values do not survive a reboot. One oneshot
unit runs ``hosttune apply --runtime-only --yes --profile <copy>`` against a copy of the merged
profile, ordered after local file systems, systemd-sysctl and nvidia-persistenced (ordering
only: After= on a unit that does not exist is a no-op, so GPU-less hosts need nothing; a unit
that itself waits for the end of the boot is left out, see tunables/_ordering.py), and
before the container runtimes so containers start on a tuned host.

systemd Exec lines have no shell (systemd.service(5) "Command lines"): the command is a plain
argv, quoted the systemd way, and ``systemd-analyze verify`` passes on what we write (tested).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from msgspec.structs import replace

from hosttune.errors import HostError
from hosttune.host import Host
from hosttune.tunables._ordering import safe_after
from hosttune.tunables._systemd import UNIT_DIR, daemon_reload, symlink_change
from hosttune.tunables.base import HEADER, Change, Context, Evaluation, Row, Tunable, file_change

UNIT_NAME = "hosttune-boot.service"
UNIT_PATH = f"{UNIT_DIR}/{UNIT_NAME}"
WANTS_PATH = f"{UNIT_DIR}/multi-user.target.wants/{UNIT_NAME}"
AFTER = ("local-fs.target", "systemd-sysctl.service", "nvidia-persistenced.service")
BEFORE = ("docker.service", "containerd.service")


def _plain(v: Any) -> Any:
    """JSON-ready and YAML-stable: mapping keys as strings (the schema reads "0" as node 0),
    whole floats as ints (the schema's numbers are ints; PyYAML would read 1e+20 as a string)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def profile_copy_text(raw: dict[str, Any], name: str) -> str:
    """The merged profile, ``extends`` resolved (dropped), as sorted, indented JSON. JSON is
    YAML (a flow mapping), so the loader reads the copy like any profile; writing it needs no
    PyYAML, which keeps ~20 ms of import out of every audit. Loading the copy and writing it
    again gives the same bytes."""
    data = _plain({k: v for k, v in raw.items() if k != "extends"})
    body = json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False)
    return (f"{HEADER}# Profile {name!r}, merged (extends resolved). hosttune-boot.service "
            "re-applies its runtime settings at boot.\n" + body + "\n")


def _systemd_quote(arg: str) -> str:
    # systemd.syntax(7): double quotes group words, backslash escapes inside them; '%' is a
    # specifier and '$' an expansion, both doubled to stay literal.
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and all(c.isalnum() or c in "/._-=+:@," for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Where an image carries hosttune: a console script on PATH, or a venv at /opt/hosttune.
TREE_CANDIDATES = ("/usr/local/bin/hosttune", "/usr/bin/hosttune", "/opt/hosttune/bin/hosttune")
# Interpreters that may be gone (or not yet mounted) at boot: tmp is wiped, homes can be on
# their own (encrypted, automounted) file system.
FRAGILE_PREFIXES = ("/tmp/", "/var/tmp/", "/home/", "/root/", "/run/user/")


def tree_executable(host: Host, path: str) -> bool:
    """Is ``path`` an executable file inside the root? Symlinks (a venv's python, a console
    script linked into /usr/local/bin) are followed inside the root, never on the machine
    running hosttune."""
    try:  # Host resolves every link inside the root (a loop is a HostError)
        return host.is_file(path) and host.access(path, os.X_OK)
    except HostError:
        return False


def tree_hosttune(host: Host) -> str | None:
    return next((c for c in TREE_CANDIDATES if tree_executable(host, c)), None)


def installed_base(host: Host) -> list[str] | None:
    """The hosttune command of the unit already installed, when it is ours and its program
    exists on that system: an image built with ``apply --root`` runs its own hosttune, and the
    live audit after its first boot must not call that unit 'differs' only because the
    interpreter running the audit is named otherwise."""
    text = host.read_text(UNIT_PATH)
    if not text or not text.startswith(HEADER):
        return None
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            try:
                argv = shlex.split(line.split("=", 1)[1].replace("%%", "%").replace("$$", "$"))
            except ValueError:
                return None
            if "apply" not in argv:
                return None
            base = argv[:argv.index("apply")]
            script = len(base) == 1 and base[0].endswith("/hosttune")
            module = len(base) == 3 and base[1:] == ["-m", "hosttune"]
            ok = script or module
            return base if ok and tree_executable(host, base[0]) else None
    return None


def exec_argv(ctx: Context) -> list[str]:
    """The unit's command. Live: this interpreter (-m hosttune). In a tree: the hosttune
    installed in that tree - the build machine's interpreter does not exist in the image.
    Either way, a unit we installed before that runs an existing hosttune is kept as it is."""
    boot = ctx.profile.boot
    assert boot is not None
    kept = None if boot.exec else installed_base(ctx.host)
    if boot.exec:
        base = shlex.split(boot.exec)
    elif kept:
        base = kept
    elif ctx.host.offline:
        found = tree_hosttune(ctx.host)
        base = [found] if found else [TREE_CANDIDATES[0]]  # validate() refused the latter
    else:
        base = [sys.executable, "-m", "hosttune"]
    return [*base, "apply", "--runtime-only", "--yes", "--profile", boot.profile_path]


OURS = frozenset({UNIT_NAME, *BEFORE})


def unit_text(ctx: Context, after: list[str]) -> str:
    """The unit, ordered after ``after``: AFTER less the units that wait for the end of the
    boot (tunables/_ordering.py safe_after)."""
    boot = ctx.profile.boot
    assert boot is not None
    cmd = " ".join(_systemd_quote(a) for a in exec_argv(ctx))
    return (
        f"{HEADER}"
        "[Unit]\n"
        # '%' starts a systemd specifier (systemd.unit(5)): doubled to stay literal
        f"Description=hosttune: re-apply runtime tuning (profile "
        f"{ctx.profile.name.replace('%', '%%')})\n"
        f"ConditionPathExists={boot.profile_path}\n"
        f"After={' '.join(after)}\n"
        f"Before={' '.join(BEFORE)}\n"
        "\n[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart={cmd}\n"
        "# allocating a large huge-page pool can take minutes on a big host\n"
        "TimeoutStartSec=15min\n"
        "\n[Install]\n"
        "WantedBy=multi-user.target\n"
    )


class BootUnitTunable(Tunable):
    name = "bootunit"
    section = "boot"

    def validate(self, ctx: Context) -> None:
        boot = ctx.profile.boot
        assert boot is not None
        if not boot.profile_path.startswith("/") or any(c.isspace() for c in boot.profile_path):
            raise ctx.error("boot.profile_path", "an absolute path without spaces, got "
                            f"{boot.profile_path!r}")
        if boot.exec is not None:
            try:
                argv = shlex.split(boot.exec)
            except ValueError as err:
                raise ctx.error("boot.exec", f"cannot split into words: {err}") from err
            if not argv or not argv[0].startswith("/"):
                raise ctx.error("boot.exec", "the command must start with an absolute path "
                                f"(systemd runs it without a shell), got {boot.exec!r}")
            if (ctx.host.offline and boot.unit and not ctx.runtime_only
                    and not ctx.audit_only and not tree_executable(ctx.host, argv[0])):
                raise ctx.error("boot.exec", f"{argv[0]} is not an executable inside "
                                f"{ctx.host.root}: hosttune-boot.service would fail at boot")
        elif (ctx.host.offline and boot.unit and not ctx.runtime_only and not ctx.audit_only
              and tree_hosttune(ctx.host) is None):
            raise ctx.error("boot.exec", f"no hosttune installed in {ctx.host.root} (looked "
                            f"for {', '.join(TREE_CANDIDATES)}): hosttune-boot.service would "
                            "run the interpreter of this machine, which the image lacks - "
                            "install hosttune in the tree, or set boot.exec to its path there")

    def evaluate(self, ctx: Context) -> Evaluation:
        boot = ctx.profile.boot
        assert boot is not None
        rows: list[Row] = []
        changes: list[Change] = []
        if boot.unit:
            after, left_out = safe_after(ctx.host, AFTER, OURS)
            unit_row, unit_ch = file_change(ctx, self.name, UNIT_PATH, unit_text(ctx, after),
                                            key=f"unit {UNIT_NAME}")
            exe = exec_argv(ctx)[0]
            if not ctx.host.offline and boot.exec is None and exe.startswith(FRAGILE_PREFIXES):
                unit_row = replace(unit_row, note=(
                    f"warning: ExecStart runs {exe}, under "
                    f"{next(p for p in FRAGILE_PREFIXES if exe.startswith(p))}, which may be "
                    "gone or not mounted at boot: install hosttune system-wide or set "
                    "boot.exec"))
            elif ctx.host.offline and boot.exec is None and tree_hosttune(ctx.host) is None:
                unit_row = replace(unit_row, note="no hosttune installed in this tree: apply "
                                   "refuses to write a unit that would not run (set boot.exec)")
            elif ctx.host.offline:
                unit_row = replace(unit_row, note=f"ExecStart runs {exe} (inside the tree)")
            if left_out:
                unit_row = replace(unit_row, note="; ".join(
                    x for x in (unit_row.note, "warning: " + "; ".join(left_out)) if x))
            items = [
                (unit_row, unit_ch),
                symlink_change(ctx, self.name, WANTS_PATH, UNIT_PATH,
                               key="enabled (multi-user.target.wants)"),
                file_change(ctx, self.name, boot.profile_path,
                            profile_copy_text(ctx.loaded.raw, ctx.profile.name),
                            key=f"profile copy {boot.profile_path}"),
            ]
        else:  # unit: false - remove what we installed before (only our own files)
            items = []
            for p in (UNIT_PATH, boot.profile_path):
                st = ctx.host.file_state(p)
                if st.content is not None and st.content.startswith(HEADER.encode()):
                    items.append(file_change(ctx, self.name, p, None, key=f"{p} (unit off)"))
            items.append(symlink_change(ctx, self.name, WANTS_PATH, None,
                                        key="enabled (multi-user.target.wants)",
                                        ours=UNIT_PATH))
        unit_changed = False
        for row, ch in items:
            rows.append(row)
            if ch:
                changes.append(ch)
                unit_changed |= ch.path in (UNIT_PATH, WANTS_PATH)
        if unit_changed:
            dr = daemon_reload(ctx, self.name)
            if dr:
                changes.append(dr)
        return Evaluation(rows, changes)
