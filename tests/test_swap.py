"""swap tunable: fstab parsing/editing on literal contents, fake trees, and a real swap file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hosttune import engine
from hosttune.host import Host
from hosttune.host.parsers import parse_swaps
from hosttune.profile import load_profile
from hosttune.tunables import knob_for
from hosttune.tunables.base import Change, Status
from hosttune.tunables.swap import (
    MARKER,
    disable_fstab_line,
    disable_swap_lines,
    enable_fstab_line,
    fstab_swap_lines,
    unit_name,
)
from tests.conftest import need
from tests.helpers import snapshot

FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=1111-aaaa /               ext4    errors=remount-ro 0       1
# swap was on /dev/sda5 during installation
UUID=5555-eeee none            swap    sw              0       0
/swap.img\tnone\tswap\tsw,pri=10\t0\t0
#/old.swap none swap sw 0 0
UUID=3333-cccc /mnt/swap-backups ext4 defaults,nofail 0 2
/dev/sdb1 /srv/data xfs defaults 0 0 # not swap
tmpfs /tmp tmpfs defaults 0 0
"""


def test_fstab_swap_lines_only_type_swap():
    lines = fstab_swap_lines(FSTAB)
    assert [(n, spec) for n, spec, _ in lines] == [(6, "UUID=5555-eeee"), (7, "/swap.img")]


def test_disable_swap_lines_comments_exactly_the_swap_entries():
    out = disable_swap_lines(FSTAB)
    changed = [(a, b) for a, b in zip(FSTAB.splitlines(), out.splitlines(), strict=True)
               if a != b]
    assert changed == [
        ("UUID=5555-eeee none            swap    sw              0       0",
         MARKER + "UUID=5555-eeee none            swap    sw              0       0"),
        ("/swap.img\tnone\tswap\tsw,pri=10\t0\t0",
         MARKER + "/swap.img\tnone\tswap\tsw,pri=10\t0\t0"),
    ]
    # the backup mount with 'swap' in its path and the comments stay
    assert "UUID=3333-cccc /mnt/swap-backups ext4" in out
    assert "# swap was on /dev/sda5 during installation\n" in out
    assert fstab_swap_lines(out) == []


def test_disable_then_enable_one_line_is_identity():
    line = "/swap.img\tnone\tswap\tsw,pri=10\t0\t0"
    out = disable_fstab_line(FSTAB, line)
    assert out != FSTAB
    assert enable_fstab_line(out, line) == FSTAB
    with pytest.raises(ValueError):
        disable_fstab_line(out, line)  # no longer active


def test_unit_name_escaping():
    assert unit_name("/swap.img") == "swap.img.swap"
    assert unit_name("/dev/zram0") == "dev-zram0.swap"
    assert unit_name("/var/swap-file") == "var-swap\\x2dfile.swap"


def test_parse_swaps_literal():
    text = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
            "/dev/zram0                              partition\t4194300\t\t0\t\t100\n"
            "/swap\\040file                           file\t\t65532\t\t0\t\t-2\n")
    d = parse_swaps(text)
    assert [(x.path, x.type, x.size_bytes, x.priority) for x in d] == [
        ("/dev/zram0", "partition", 4194300 * 1024, 100), ("/swap file", "file", 65532 * 1024, -2)]


# --- fstab edits change only swap lines (property) -------------------------------------------
_field = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/=-_.,", min_size=1, max_size=12)
_line = st.one_of(
    st.tuples(_field, _field, st.sampled_from(["ext4", "xfs", "swap", "tmpfs", "nfs"]), _field)
    .map(lambda t: f"{t[0]} {t[1]} {t[2]} {t[3]} 0 0"),
    st.text(alphabet="abc swap#\t", max_size=20).map(lambda s: "#" + s),
    st.just(""),
    st.just("/mnt/swap /backup/swap ext4 defaults 0 0"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_line, max_size=15), st.booleans())
def test_property_only_swap_lines_change(lines, trailing_nl):
    text = "\n".join(lines) + ("\n" if trailing_nl else "")
    out = disable_swap_lines(text)
    a, b = text.splitlines(), out.splitlines()
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        is_swap = not x.strip().startswith("#") and len(x.split()) >= 3 \
            and x.split()[2] == "swap"
        assert (y == MARKER + x) if is_swap else (y == x)
    assert out.endswith("\n") == text.endswith("\n") or not text
    # per-line revert in any order restores the text
    for _, _, raw in fstab_swap_lines(text)[::-1]:
        out = enable_fstab_line(out, raw)
    assert out == text


# --- fake trees ----------------------------------------------------------------------------
def _rows(tree: Path, profile: str = "inference"):
    rep = engine.audit(Host(tree), load_profile(profile), only={"swap"})
    return {r.key: r for r in rep.rows}


def test_ryzen_audit_and_plan(ryzen):
    rows = _rows(ryzen)
    assert rows["active /swap.img"].status == Status.OFFLINE  # --root: only a command changes it
    assert "/etc/fstab:4" in rows["active /swap.img"].note
    assert rows["fstab /swap.img"].status == Status.DRIFT
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"swap"})
    kinds = [(c.kind, c.runtime) for c in p.changes]
    assert kinds == [("action", True), ("action", False)]
    assert "-/swap.img none swap sw 0 0" in p.changes[1].diff
    assert f"+{MARKER}/swap.img none swap sw 0 0" in p.changes[1].diff


def test_ryzen_apply_touches_only_the_swap_line_and_rolls_back(ryzen):
    before = snapshot(ryzen)
    fstab0 = (ryzen / "etc/fstab").read_text()
    host = Host(ryzen)
    rep = engine.apply(host, load_profile("inference"), only={"swap"})
    assert rep.ok, rep.error
    assert host.runner.ran == []
    assert ("swapoff", "/swap.img") in rep.skipped_commands
    fstab1 = (ryzen / "etc/fstab").read_text()
    diff = [(a, b) for a, b in zip(fstab0.splitlines(), fstab1.splitlines(), strict=True)
            if a != b]
    assert diff == [("/swap.img none swap sw 0 0", MARKER + "/swap.img none swap sw 0 0")]
    assert "# backup disk, not swap related" in fstab1
    assert "UUID=3333-cccc /mnt/backup ext4 defaults,nofail 0 2" in fstab1
    # the fixture's /proc/swaps follows the recorded swapoff, so a second apply is a no-op
    assert parse_swaps((ryzen / "proc/swaps").read_text()) == []
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"swap"}).steps == []
    rb = engine.rollback(Host(ryzen))
    assert rb.ok
    assert ("swapon", "/swap.img") in rb.skipped_commands  # auto priority: plain swapon
    assert snapshot(ryzen) == before


def test_rollback_keeps_someone_elses_fstab_edit(ryzen):
    engine.apply(Host(ryzen), load_profile("inference"), only={"swap"})
    with open(ryzen / "etc/fstab", "a") as fh:
        fh.write("UUID=9999 /mnt/new ext4 defaults 0 2\n")
    assert engine.rollback(Host(ryzen)).ok
    text = (ryzen / "etc/fstab").read_text()
    assert "/swap.img none swap sw 0 0\n" in text and MARKER not in text
    assert text.endswith("UUID=9999 /mnt/new ext4 defaults 0 2\n")


def test_epyc_partition_and_uuid_entry(epyc):
    rows = _rows(epyc)
    assert rows["active /dev/nvme0n1p3"].status == Status.OFFLINE
    # no /dev/disk/by-uuid in the tree: the UUID entry is named as the likely source
    assert "UUID=4444-dddd" in rows["active /dev/nvme0n1p3"].note
    assert rows["fstab UUID=4444-dddd"].status == Status.DRIFT
    # with the by-uuid link the source is exact
    link = epyc / "dev/disk/by-uuid/4444-dddd"
    link.parent.mkdir(parents=True)
    (epyc / "dev/nvme0n1p3").write_text("")
    link.symlink_to("../../nvme0n1p3")
    assert "enabled at boot by /etc/fstab:4" in _rows(epyc)["active /dev/nvme0n1p3"].note
    host = Host(epyc)
    rep = engine.apply(host, load_profile("inference"), only={"swap"})
    assert rep.ok
    assert "#hosttune-disabled# UUID=4444-dddd none swap sw,pri=5 0 0" in \
        (epyc / "etc/fstab").read_text()


def test_vm_has_no_swap(vm):
    (vm / "proc/swaps").write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
    rows = _rows(vm)
    assert rows["active"].status == Status.OK
    assert all(r.status == Status.OK for r in rows.values())
    assert engine.plan(Host(vm), load_profile("inference"), only={"swap"}).changes == []


def test_swap_units_are_masked_and_restored(ryzen):
    sysd = ryzen / "etc/systemd/system"
    (sysd / "swapfile.swap").write_text("[Swap]\nWhat=/swapfile\n")
    wants = sysd / "swap.target.wants"
    wants.mkdir()
    (wants / "dev-zram0.swap").symlink_to("/usr/lib/systemd/system/dev-zram0.swap")
    (ryzen / "run/systemd/system").mkdir(parents=True)  # systemd runs: reload after changes
    before = snapshot(ryzen)
    rows = _rows(ryzen)
    assert rows["unit swapfile.swap"].status == Status.DRIFT
    assert rows["unit dev-zram0.swap"].status == Status.DRIFT
    host = Host(ryzen)
    rep = engine.apply(host, load_profile("inference"), only={"swap"})
    assert rep.ok, rep.error
    assert os.readlink(sysd / "swapfile.swap") == "/dev/null"
    assert os.readlink(sysd / "dev-zram0.swap") == "/dev/null"
    assert ("systemctl", "daemon-reload") in rep.skipped_commands
    assert host.runner.ran == []
    assert _rows(ryzen)["unit swapfile.swap"].status == Status.OK
    rb = engine.rollback(Host(ryzen))
    assert rb.ok, [s.to_json() for s in rb.steps]
    assert snapshot(ryzen) == before
    assert (sysd / "swapfile.swap").read_text() == "[Swap]\nWhat=/swapfile\n"


def test_zram_source_and_persist_false(ryzen):
    (ryzen / "proc/swaps").write_text(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/zram0                              partition\t4194300\t\t0\t\t100\n")
    rows = _rows(ryzen)
    assert "zram" in rows["active /dev/zram0"].note
    prof = ryzen.parent / "p.yaml"
    prof.write_text("name: t\nextends: inference\nswap: {enabled: false, persist: false}\n")
    p = engine.plan(Host(ryzen), load_profile(str(prof)), only={"swap"})
    assert [c.id for c in p.changes] == ["swap/swapoff:/dev/zram0"]


def test_enabled_true_manages_nothing(ryzen):
    prof = ryzen.parent / "p.yaml"
    prof.write_text("name: t\nextends: inference\nswap: {enabled: true}\n")
    p = engine.plan(Host(ryzen), load_profile(str(prof)), only={"swap"})
    assert p.changes == []
    assert [r.status for r in p.audit.rows] == [Status.OK]


def test_cli_plan_json_lists_swapoff(ryzen, cli):
    r = cli("plan", "--root", str(ryzen), "--only", "swap", "--json")
    assert r.exit_code == 1
    data = json.loads(r.output)
    assert any(c["summary"].startswith("swapoff /swap.img") for c in data["changes"])


# --- the real kernel ---------------------------------------------------------------------------
def _swap_supported() -> bool:
    return os.path.exists("/proc/swaps") and os.geteuid() == 0


@pytest.mark.parametrize("prio", [7, None])
def test_real_swap_file_off_and_restored(tmp_path, kernel_lock, prio):
    need(_swap_supported(), "needs root and swap support")
    swapfile = Path("/var/tmp") / f"hosttune-test-{os.getpid()}.swap"
    host = Host("/", state_dir=str(tmp_path / "state"))
    prof = tmp_path / "p.yaml"
    # persist: false - this test must never touch the real /etc/fstab
    prof.write_text("name: t\nswap: {enabled: false, persist: false}\n")
    loaded = load_profile(str(prof))
    try:
        # real blocks (a sparse file is refused by swapon)
        subprocess.run(["dd", "if=/dev/zero", f"of={swapfile}", "bs=1M", "count=64",
                        "status=none"], check=True)
        os.chmod(swapfile, 0o600)
        subprocess.run(["mkswap", str(swapfile)], check=True, capture_output=True)
        others = parse_swaps(Path("/proc/swaps").read_text())
        argv = ["swapon", str(swapfile)] if prio is None else \
            ["swapon", "-p", str(prio), str(swapfile)]
        r = subprocess.run(argv, capture_output=True, text=True)
        need(r.returncode == 0, f"swapon not possible here: {r.stderr.strip()}")
        active = {d.path: d for d in parse_swaps(Path("/proc/swaps").read_text())}
        prio0 = active[str(swapfile)].priority
        assert prio is None or prio0 == prio

        p = engine.plan(host, loaded, only={"swap"})
        ids = [c.id for c in p.changes]
        assert f"swap/swapoff:{swapfile}" in ids
        assert all(c.runtime for c in p.changes)  # nothing persistent with persist: false
        rep = engine.apply(host, loaded, only={"swap"})
        assert rep.ok, rep.error
        assert ("swapoff", str(swapfile)) in host.runner.ran
        assert str(swapfile) not in Path("/proc/swaps").read_text()

        rb = engine.rollback(Host("/", state_dir=str(tmp_path / "state")))
        assert rb.ok, [s.to_json() for s in rb.steps]
        active = {d.path: d for d in parse_swaps(Path("/proc/swaps").read_text())}
        assert str(swapfile) in active
        if prio is not None or not others:
            # an auto (negative) priority comes back equal when no other swap is active:
            # the kernel hands out --least_priority again (mm/swapfile.c)
            assert active[str(swapfile)].priority == prio0
    finally:
        if str(swapfile) in Path("/proc/swaps").read_text():
            subprocess.run(["swapoff", str(swapfile)], check=False)
        swapfile.unlink(missing_ok=True)


def test_action_revert_uses_original_priority():
    """revert argv: -p N for an admin priority, plain swapon for a kernel-assigned one."""
    class Rec(Host):
        def __init__(self) -> None:
            super().__init__("/nonexistent-root")
            self.calls: list[list[str]] = []

    for prio, argv in ((5, ["swapon", "-p", "5", "/s"]), (-3, ["swapon", "/s"])):
        host = Rec()
        ch = Change(id="swap/swapoff:/s", tunable="swap", kind="action", summary="",
                    params={"knob": "swapoff", "path": "/s", "priority": prio})
        knob_for(ch).restore(host, {"active": True, "priority": prio, "index": 1, "line": ""})
        assert host.runner.skipped == [tuple(argv)]


def test_unreadable_swaps_is_needs_root(ryzen):
    from tests.helpers import NonRootHost

    host = NonRootHost(ryzen)
    host.deny = ("/proc/swaps", "/etc/fstab")
    rows = {r.key: r for r in engine.audit(host, load_profile("inference"), only={"swap"}).rows}
    assert rows["active"].status == Status.NEEDS_ROOT
    assert rows["fstab /etc/fstab"].status == Status.NEEDS_ROOT


ZRAM_SWAPS = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
              "/dev/zram0                              partition\t4194300\t\t0\t\t100\n")


def test_zram_generator_unit_is_masked(ryzen):
    (ryzen / "proc/swaps").write_text(ZRAM_SWAPS)
    (ryzen / "usr/lib/systemd").mkdir(parents=True)
    (ryzen / "usr/lib/systemd/zram-generator.conf").write_text("[zram0]\n")
    before = snapshot(ryzen)
    rows = _rows(ryzen)
    assert "unit dev-zram0.swap" in rows["active /dev/zram0"].note
    assert rows["unit dev-zram0.swap"].status == Status.DRIFT
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"swap"}).ok
    assert os.readlink(ryzen / "etc/systemd/system/dev-zram0.swap") == "/dev/null"
    assert not engine.audit(Host(ryzen), load_profile("inference"), only={"swap"}).drift
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_zramswap_service_is_masked(ryzen):
    (ryzen / "proc/swaps").write_text(ZRAM_SWAPS)
    wants = ryzen / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "zramswap.service").symlink_to("/lib/systemd/system/zramswap.service")
    rows = _rows(ryzen)
    assert "enabled at boot by zramswap.service" in rows["active /dev/zram0"].note
    p = engine.plan(Host(ryzen), load_profile("inference"), only={"swap"})
    assert "swap/mask:zramswap.service" in [c.id for c in p.changes]
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"swap"}).ok
    assert _rows(ryzen)["unit zramswap.service"].status == Status.OK


def test_crlf_fstab_round_trip():
    text = "UUID=1 / ext4 defaults 0 1\r\n/swap.img none swap sw 0 0\r\n"
    (_, _, raw), = fstab_swap_lines(text)
    out = disable_fstab_line(text, raw)
    assert out == "UUID=1 / ext4 defaults 0 1\r\n" + MARKER + "/swap.img none swap sw 0 0\r\n"
    assert enable_fstab_line(out, raw) == text


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_each_step_then_rollback_restores(tmp_path, when):
    """SIGKILL during apply of the swap + memlock families (action, file, symlink, command
    kinds), then rollback: the tree is byte-identical to before."""
    from tests import fakehost
    from tests.conftest import run_cli

    tree = fakehost.ryzen_9950x(tmp_path / "t")
    (tree / "etc/systemd/system/swapfile.swap").write_text("[Swap]\nWhat=/swapfile\n")
    (tree / "run/systemd/system").mkdir(parents=True)
    before = snapshot(tree)
    n = len(engine.plan(Host(tree), load_profile("inference"), only={"swap", "memlock"}).changes)
    assert n == 8  # swapoff, fstab line, mask, reload, limits.d, 2 drop-ins, reload
    for step in range(n):
        p = run_cli("apply", "--root", str(tree), "--yes", "--only", "swap", "--only", "memlock",
                    env={"HOSTTUNE_TEST_CRASH": f"{step}:{when}"})
        assert p.returncode == -9, (step, p.stdout, p.stderr)
        r = run_cli("rollback", "--root", str(tree), "--yes")
        assert r.returncode == 0, (step, r.stdout, r.stderr)
        assert snapshot(tree) == before, (step, when)
