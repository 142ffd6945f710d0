"""hugetlbfs mounts (fstab / mount unit) and hosttune-boot.service on the fake trees; every
unit written is checked with the real `systemd-analyze verify`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from hosttune import engine
from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.host.parsers import Mount
from hosttune.profile import load_profile
from hosttune.tunables._systemd import escape_path, mount_unit_name
from hosttune.tunables.base import Context, Status
from hosttune.tunables.bootunit import UNIT_PATH, WANTS_PATH, BootUnitTunable
from hosttune.tunables.hugepages import resolve
from hosttune.tunables.hugetlbfs import (
    MARK,
    HugetlbfsTunable,
    fstab_set,
    mount_options,
    options_match,
)
from tests.conftest import need, run_cli
from tests.helpers import snapshot

GiB = 1024**3
MNT = """name: t
hugepages:
  pools:
    - {{pagesize: 2M, size: {pool}}}
  min_free_ram: 8GiB
  thp: null
hugetlbfs:
  mounts:
    - path: /mnt/models-hugepages
      size: {size}
      mode: "0750"
      gid: {gid}
      persist: {persist}
"""


def mount_profile(tmp: Path, pool: str = "auto", size: str = "20GiB", gid: str = "0",
                  persist: str = "fstab", extra: str = "") -> Path:
    p = tmp / "m.yaml"
    p.write_text(MNT.format(pool=pool, size=size, gid=gid, persist=persist) + extra)
    return p


def verify_unit(path: Path, root: Path | None = None) -> None:
    """systemd-analyze verify; with ``root`` (a tree the unit belongs to) its commands are
    looked up inside that tree (--root), beside this machine's own system units (a fake tree
    has no sysinit.target)."""
    sa = shutil.which("systemd-analyze")
    need(sa is not None, "systemd-analyze (package systemd) is not installed")
    assert sa is not None
    argv = [sa, "verify", str(path)]
    if root is not None:
        import tempfile

        vroot = Path(tempfile.mkdtemp(prefix="verify-root-"))
        shutil.copytree("/usr/lib/systemd/system", vroot / "usr/lib/systemd/system",
                        symlinks=True)
        rel = path.relative_to(root)
        (vroot / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, vroot / rel)
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                exe = line.split("=", 1)[1].split()[0]
                if (root / exe.lstrip("/")).exists():
                    (vroot / exe.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / exe.lstrip("/"), vroot / exe.lstrip("/"))
        argv = [sa, "verify", f"--root={vroot}", str(vroot / rel)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Refusing" not in p.stderr and "not executable" not in p.stderr, p.stderr


# --- unit names ---
@pytest.mark.parametrize("path", ["/mnt/models-hugepages", "/srv/hosttune/models", "/a/.b/c_d",
                                  "/x/ünï", "/m/a:b@c+d"])
def test_escape_matches_systemd_escape(path):
    se = shutil.which("systemd-escape")
    need(se is not None, "systemd-escape is not installed")
    assert se is not None
    real = subprocess.run([se, "--path", path], capture_output=True, text=True, check=True)
    assert escape_path(path) == real.stdout.strip()


def test_mount_unit_name():
    assert mount_unit_name("/mnt/models-hugepages") == "mnt-models\\x2dhugepages.mount"


# --- fstab editing ---
SEED_FSTAB = ("UUID=1 / ext4 defaults 0 1\n"
              "none /mnt/models-hugepages hugetlbfs pagesize=2M,size=30G 0 0\n"
              "/swap.img none swap sw 0 0\n")


def test_fstab_set_marks_disables_and_restores():
    line = "hugetlbfs /mnt/models-hugepages hugetlbfs pagesize=2M,size=1 0 0\n"
    new = fstab_set(SEED_FSTAB, "/mnt/models-hugepages", line)
    assert "#hosttune-disabled# none /mnt/models-hugepages hugetlbfs" in new
    assert new.endswith(MARK + "/mnt/models-hugepages\n" + line)
    assert "/swap.img none swap sw 0 0\n" in new  # nothing else changes
    assert fstab_set(new, "/mnt/models-hugepages", line) == new  # idempotent
    assert fstab_set(new, "/mnt/models-hugepages", None) == SEED_FSTAB


def test_seed_fstab_line_is_replaced_and_rollback_is_exact(ryzen, tmp_path):
    (ryzen / "etc/fstab").write_text(SEED_FSTAB.rstrip("\n"))  # no final newline either
    os.chmod(ryzen / "etc/fstab", 0o640)
    prof = mount_profile(tmp_path)
    before = snapshot(ryzen)
    rep = engine.apply(Host(ryzen), load_profile(str(prof)))
    assert rep.ok, rep.error
    fstab = (ryzen / "etc/fstab").read_text()
    assert ("hugetlbfs /mnt/models-hugepages hugetlbfs pagesize=2M,size=21474836480,mode=0750,"
            "uid=0,gid=0 0 0\n") in fstab
    assert oct(os.stat(ryzen / "etc/fstab").st_mode & 0o777) == "0o640"
    a = engine.audit(Host(ryzen), load_profile(str(prof)))
    assert not a.drift
    (row,) = [r for r in a.rows if r.key == "/mnt/models-hugepages mounted"]
    assert row.status == Status.OFFLINE  # only a command could mount it in a tree
    assert engine.apply(Host(ryzen), load_profile(str(prof))).steps == []
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_rollback_keeps_lines_others_added_after_us(ryzen, tmp_path):
    orig = (ryzen / "etc/fstab").read_text()
    prof = mount_profile(tmp_path)
    assert engine.apply(Host(ryzen), load_profile(str(prof)), only={"hugetlbfs"}).ok
    with open(ryzen / "etc/fstab", "a") as fh:
        fh.write("UUID=9 /data xfs defaults 0 2\n")
    assert engine.rollback(Host(ryzen)).ok
    assert (ryzen / "etc/fstab").read_text() == orig + "UUID=9 /data xfs defaults 0 2\n"


def test_offline_mode_plans_no_mount_command(ryzen, tmp_path):
    h = Host(ryzen)
    p = engine.plan(h, load_profile(str(mount_profile(tmp_path))))
    assert not [c for c in p.changes if c.kind in ("command", "action") and c.runtime
                and c.tunable == "hugetlbfs"]
    rep = engine.apply(h, load_profile(str(mount_profile(tmp_path))))
    assert rep.ok and h.runner.ran == [] and not (ryzen / "mnt/models-hugepages").exists()


# --- sizing against the pool ---
def test_mount_larger_than_pool_is_refused_and_nothing_written(ryzen, tmp_path):
    prof = mount_profile(tmp_path, pool="10GiB", size="20GiB")
    before = snapshot(ryzen)
    with pytest.raises(ProfileError) as ei:
        engine.apply(Host(ryzen), load_profile(str(prof)))
    err = str(ei.value)
    assert f"{prof}: hugetlbfs.mounts.0.size:" in err and "larger than its 2M pool" in err
    assert snapshot(ryzen) == before


def test_mounts_adding_up_beyond_the_pool_are_refused(ryzen, tmp_path):
    prof = mount_profile(tmp_path, pool="30GiB", extra="    - {path: /srv/b, size: 20GiB}\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), load_profile(str(prof)))
    assert ei.value.key == "hugetlbfs.mounts.1.size" and "add up to 40 GiB" in str(ei.value)


def test_mount_auto_is_the_pool(ryzen, tmp_path):
    prof = mount_profile(tmp_path, pool="16GiB", size="auto")
    res = resolve(Context(Host(ryzen), load_profile(str(prof))))
    assert res.mounts[0].bytes == 16 * GiB


def test_mount_auto_without_any_pool_is_refused(ryzen, tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nhugetlbfs:\n  mounts:\n    - {path: /srv/m, size: auto}\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), load_profile(str(p)))
    assert ei.value.key == "hugetlbfs.mounts.0.size"


def test_mount_smaller_than_its_models_is_flagged(ryzen, tmp_path):
    models = ryzen / "srv/gguf"
    models.mkdir(parents=True)
    for i in range(3):
        with open(models / f"m{i}.gguf", "wb") as fh:
            fh.truncate(30 * 10**9)  # three 30 GB models (the seed mounted 30G for them)
    extra = "      models: [/srv/gguf/m0.gguf, /srv/gguf/m1.gguf, /srv/gguf/m2.gguf, /srv/x]\n"
    prof = mount_profile(tmp_path, pool="90GiB", size="30GiB", extra=extra)
    ev = HugetlbfsTunable().evaluate(Context(Host(ryzen), load_profile(str(prof))))
    (row,) = [r for r in ev.rows if r.key.endswith("capacity")]
    assert row.status == Status.CONFLICT
    assert "too small" in row.note and "missing: /srv/x" in row.note
    prof = mount_profile(tmp_path, pool="90GiB", size="90GiB", extra=extra)
    ev = HugetlbfsTunable().evaluate(Context(Host(ryzen), load_profile(str(prof))))
    (row,) = [r for r in ev.rows if r.key.endswith("capacity")]
    assert row.status == Status.OK


def test_group_name_resolves_and_unknown_group_is_refused(ryzen, tmp_path):
    prof = mount_profile(tmp_path, gid="inference")
    ev = HugetlbfsTunable().evaluate(Context(Host(ryzen), load_profile(str(prof))))
    assert any("gid=997" in c.diff for c in ev.changes)
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), load_profile(str(mount_profile(tmp_path, gid="nogroup"))))
    assert ei.value.key == "hugetlbfs.mounts.0.gid"


def test_options_match_reads_kernel_format(ryzen, tmp_path):
    ctx = Context(Host(ryzen), load_profile(str(mount_profile(tmp_path, size="64MiB"))))
    plan = resolve(ctx).mounts[0]
    assert mount_options(plan, 997) == "pagesize=2M,size=67108864,mode=0750,uid=0,gid=997"
    # what /proc/self/mountinfo showed here for that mount
    mnt = Mount("/mnt/models-hugepages", "hugetlbfs", "hugetlbfs",
                {"rw": "", "relatime": "", "gid": "997", "mode": "750", "pagesize": "2M",
                 "size": "67108864"})
    assert options_match(mnt, plan, 997) == []
    small = Mount(mnt.mount_point, "hugetlbfs", "none", {**mnt.options, "size": "1048576"})
    assert options_match(small, plan, 997) == ["size=1048576 (want 67108864)"]


def test_live_mode_reports_a_foreign_mount_with_other_options(ryzen, tmp_path):
    mi = ryzen / "proc/self/mountinfo"
    mi.write_text(mi.read_text() + "90 22 0:50 / /mnt/models-hugepages rw,relatime - hugetlbfs "
                  "none rw,pagesize=2M,size=32212254720\n")
    ev = HugetlbfsTunable().evaluate(Context(Host(ryzen), load_profile(str(
        mount_profile(tmp_path)))))
    (row,) = [r for r in ev.rows if r.key.endswith("mounted")]
    assert row.status == Status.DRIFT and "never unmounts" in row.note
    assert not [c for c in ev.changes if c.id.startswith("hugetlbfs/mount")]


# --- mount units ---
def test_mount_unit_written_enabled_verified_and_removed(ryzen, tmp_path):
    (ryzen / "run/systemd/system").mkdir(parents=True)  # systemd runs: daemon-reload planned
    prof = mount_profile(tmp_path, persist="unit")
    before = snapshot(ryzen)
    h = Host(ryzen)
    rep = engine.apply(h, load_profile(str(prof)), only={"hugepages", "hugetlbfs"})
    assert rep.ok, rep.error
    name = "mnt-models\\x2dhugepages.mount"
    unit = ryzen / "etc/systemd/system" / name
    text = unit.read_text()
    assert "Where=/mnt/models-hugepages\n" in text and "Type=hugetlbfs\n" in text
    link = ryzen / "etc/systemd/system/local-fs.target.wants" / name
    assert os.readlink(link) == f"/etc/systemd/system/{name}"
    assert ("systemctl", "daemon-reload") in h.runner.skipped
    assert MARK not in (ryzen / "etc/fstab").read_text()
    verify_unit(unit)
    # switching to fstab removes our unit and its link
    rep = engine.apply(Host(ryzen), load_profile(str(mount_profile(tmp_path))),
                       only={"hugepages", "hugetlbfs"})
    assert rep.ok, rep.error
    assert not unit.exists() and not os.path.lexists(link)
    assert MARK in (ryzen / "etc/fstab").read_text()
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


# --- boot unit ---
def test_boot_unit_profile_copy_and_verify(ryzen, tmp_path):
    loaded = load_profile("ryzen9950x-rtx5090")
    before = snapshot(ryzen)
    rep = engine.apply(Host(ryzen), loaded)
    assert rep.ok, rep.error
    unit = ryzen / UNIT_PATH.lstrip("/")
    text = unit.read_text()
    assert "After=local-fs.target systemd-sysctl.service nvidia-persistenced.service\n" in text
    assert "Before=docker.service containerd.service\n" in text
    assert "Wants=" not in text and "Requires=" not in text
    assert "Type=oneshot\nRemainAfterExit=yes\n" in text
    assert "WantedBy=multi-user.target\n" in text
    # a tree: the hosttune installed in it, never this machine's interpreter
    assert ("ExecStart=/usr/local/bin/hosttune apply --runtime-only --yes --profile "
            "/etc/hosttune/profile.yaml\n") in text
    assert os.readlink(ryzen / WANTS_PATH.lstrip("/")) == UNIT_PATH
    verify_unit(unit, root=ryzen)  # ExecStart resolved inside the tree
    # the copy is a complete profile: applying it changes nothing (same rows, same bytes)
    copy = ryzen / "etc/hosttune/profile.yaml"
    loaded_copy = load_profile(str(copy))
    text = copy.read_text()
    assert '"extends"' not in text and text.count("\n{\n") == 1  # one JSON mapping
    import yaml

    assert yaml.safe_load(text) == json.loads(text[text.index("\n{") + 1:])  # JSON is YAML
    assert msgspec.structs.replace(loaded_copy.profile, extends=None) == \
        msgspec.structs.replace(loaded.profile, extends=None)
    assert engine.plan(Host(ryzen), loaded_copy).changes == []
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == before


def test_boot_exec_override_and_runtime_only(ryzen, tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("name: b\nboot:\n  exec: /usr/local/bin/hosttune\n"
                 "  profile_path: /etc/hosttune/b.yaml\n")
    ctx = Context(Host(ryzen), load_profile(str(p)))
    ev = BootUnitTunable().evaluate(ctx)
    (unit,) = [c for c in ev.changes if c.path == UNIT_PATH]
    assert ("ExecStart=/usr/local/bin/hosttune apply --runtime-only --yes --profile "
            "/etc/hosttune/b.yaml\n") in (unit.value or "")
    ctx = Context(Host(ryzen), load_profile(str(p)), runtime_only=True)
    assert BootUnitTunable().evaluate(ctx).changes == []


@pytest.mark.parametrize(("yaml", "key"), [
    ("boot:\n  exec: hosttune\n", "boot.exec"),
    ("boot:\n  profile_path: etc/p.yaml\n", "boot.profile_path"),
])
def test_boot_bad_input(ryzen, tmp_path, yaml, key):
    p = tmp_path / "b.yaml"
    p.write_text("name: b\n" + yaml)
    before = snapshot(ryzen)
    with pytest.raises(ProfileError) as ei:
        engine.apply(Host(ryzen), load_profile(str(p)))
    assert ei.value.key == key and ei.value.file == str(p)
    assert snapshot(ryzen) == before


def test_boot_unit_off_removes_only_ours(ryzen, tmp_path):
    loaded = load_profile("ryzen9950x-rtx5090")
    assert engine.apply(Host(ryzen), loaded, only={"bootunit"}).ok
    p = tmp_path / "off.yaml"
    p.write_text("name: unitoff\nboot:\n  unit: false\n")
    assert engine.apply(Host(ryzen), load_profile(str(p))).ok
    assert not (ryzen / UNIT_PATH.lstrip("/")).exists()
    assert not os.path.lexists(ryzen / WANTS_PATH.lstrip("/"))
    # a hand-made unit of that name is not ours: left alone
    (ryzen / UNIT_PATH.lstrip("/")).write_text("[Service]\nExecStart=/bin/true\n")
    assert engine.plan(Host(ryzen), load_profile(str(p))).changes == []


def test_fstab_entry_passes_findmnt_verify(ryzen, tmp_path):
    findmnt = shutil.which("findmnt")
    need(findmnt is not None, "findmnt (util-linux) is not installed")
    assert findmnt is not None
    mp = tmp_path / "mp"
    mp.mkdir()  # findmnt checks that the mount point exists (systemd would create it)
    prof = tmp_path / "f.yaml"
    prof.write_text(MNT.format(pool="auto", size="1GiB", gid="inference", persist="fstab")
                    .replace("/mnt/models-hugepages", str(mp)))
    assert engine.apply(Host(ryzen), load_profile(str(prof)), only={"hugetlbfs"}).ok
    text = (ryzen / "etc/fstab").read_text()
    ours = text[text.index(MARK):]
    tab = tmp_path / "fstab.ours"
    tab.write_text(ours)
    p = subprocess.run([findmnt, "--verify", "--tab-file", str(tab)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no errors or warnings" in p.stdout, p.stdout


# --- the boot unit's command in a tree (an image) and live -------------------------------------
def _unit_text(root: Path, loaded) -> str:
    ev = BootUnitTunable().evaluate(Context(Host(root), loaded))
    (unit,) = [c for c in ev.changes if c.path == UNIT_PATH]
    return unit.value or ""


def test_boot_unit_in_tree_runs_the_trees_hosttune(ryzen):
    """Before: ExecStart named the interpreter of whoever ran apply --root (a venv on the build
    machine), which the image does not have: the unit failed at the image's first boot."""
    loaded = load_profile("inference")
    os.unlink(ryzen / "usr/local/bin/hosttune")
    venv = ryzen / "opt/hosttune/bin"
    venv.mkdir(parents=True)
    (venv / "python3").symlink_to("/usr/bin/python3")  # resolved inside the tree
    (ryzen / "usr/bin").mkdir(parents=True, exist_ok=True)
    (ryzen / "usr/bin/python3").write_text("")
    (ryzen / "usr/bin/python3").chmod(0o755)
    (venv / "hosttune").write_text("#!/opt/hosttune/bin/python3\n")
    (venv / "hosttune").chmod(0o755)
    text = _unit_text(ryzen, loaded)
    assert "ExecStart=/opt/hosttune/bin/hosttune apply --runtime-only --yes --profile " in text
    # a console script linked into /usr/local/bin (absolute link, resolved inside the tree)
    (ryzen / "usr/local/bin/hosttune").symlink_to("/opt/hosttune/bin/hosttune")
    assert "ExecStart=/usr/local/bin/hosttune apply " in _unit_text(ryzen, loaded)


def test_boot_unit_in_tree_without_hosttune_is_refused(ryzen, tmp_path):
    os.unlink(ryzen / "usr/local/bin/hosttune")
    before = snapshot(ryzen)
    with pytest.raises(ProfileError) as ei:
        engine.apply(Host(ryzen), load_profile("inference"))
    assert ei.value.key == "boot.exec"
    assert "no hosttune installed in" in str(ei.value) and "/opt/hosttune/bin/hosttune" in \
        str(ei.value)
    assert snapshot(ryzen) == before
    r = run_cli("apply", "--root", str(ryzen), "-p", "inference", "--yes")
    assert r.returncode == 2 and "boot.exec" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    # a link that leaves the tree's hosttune dangling inside the tree is no hosttune either
    (ryzen / "usr/local/bin/hosttune").symlink_to("/opt/nowhere/hosttune")
    with pytest.raises(ProfileError):
        engine.plan(Host(ryzen), load_profile("inference"))
    # boot.exec naming a program the tree lacks
    p = tmp_path / "b.yaml"
    p.write_text("name: b\nboot:\n  exec: /usr/bin/hosttune-missing\n")
    with pytest.raises(ProfileError) as ei:
        engine.plan(Host(ryzen), load_profile(str(p)))
    assert ei.value.key == "boot.exec" and "not an executable inside" in str(ei.value)
    # unit: false needs no hosttune in the tree
    p.write_text("name: b\nboot:\n  unit: false\n")
    engine.plan(Host(ryzen), load_profile(str(p)))
    # audit and the boot-time (runtime-only) apply write no unit: they do not refuse
    os.unlink(ryzen / "usr/local/bin/hosttune")
    rows = {r.key: r for r in engine.audit(Host(ryzen), load_profile("inference"),
                                           only={"bootunit"}).rows}
    assert "no hosttune installed in this tree" in rows["unit hosttune-boot.service"].note
    engine.plan(Host(ryzen), load_profile("inference"), runtime_only=True)


@pytest.mark.parametrize(("exe", "warned"), [
    ("/tmp/venv/bin/python3", True), ("/home/ann/.venv/bin/python3", True),
    ("/root/.pyenv/versions/3.11.7/bin/python3", True), ("/usr/bin/python3", False),
    ("/opt/hosttune/bin/python3", False)])
def test_live_plan_warns_about_a_fragile_interpreter(monkeypatch, exe, warned):
    """Live, the unit runs this interpreter: under /tmp or a home it may be gone at boot."""
    import sys

    monkeypatch.setattr(sys, "executable", exe)
    p = engine.plan(Host("/"), load_profile("inference"), only={"bootunit"})
    got = [w for w in p.warnings if "ExecStart runs" in w]
    assert bool(got) == warned, p.warnings
    if warned:
        assert exe in got[0] and "boot.exec" in got[0]
        assert p.to_json()["warnings"] == p.warnings


def test_unit_written_in_a_tree_is_ok_on_its_first_live_audit(ryzen):
    """Seen on a real boot: apply --root wrote ExecStart=/opt/hosttune/bin/hosttune; the live
    audit in the booted image computed `<its python> -m hosttune` and called the unit
    'differs'. A unit of ours that runs an existing hosttune is kept."""
    assert engine.apply(Host(ryzen), load_profile("inference"), only={"bootunit"}).ok
    live = Host(ryzen)
    live.offline = False  # the booted image: same files, audited live
    rows = {r.key: r for r in engine.audit(live, load_profile("inference"),
                                           only={"bootunit"}).rows}
    assert rows["unit hosttune-boot.service"].status == Status.OK
    # ours but its program is gone: rewritten with this interpreter
    os.unlink(ryzen / "usr/local/bin/hosttune")
    rows = {r.key: r for r in engine.audit(live, load_profile("inference"),
                                           only={"bootunit"}).rows}
    assert rows["unit hosttune-boot.service"].status == Status.DRIFT


# --- a mount that is its pool, and an image that does not know its RAM ------------------------
@pytest.mark.parametrize("pool,size,extra,whole", [
    ("auto", "20GiB", "", True),          # the pool holds what the mount holds
    ("16GiB", "auto", "", True),          # the mount takes the pool
    ("30GiB", "20GiB", "", False),        # both sized: a pool larger than its mount
    ("auto", "20GiB", "    - {path: /srv/b, size: 8GiB}\n", False),  # two mounts share it
])
def test_whole_pool_is_decided_from_the_profile(ryzen, tmp_path, pool, size, extra, whole):
    prof = mount_profile(tmp_path, pool=pool, size=size, extra=extra)
    res = resolve(Context(Host(ryzen), load_profile(str(prof))))
    assert res.mounts[0].whole_pool is whole


def test_unlimited_mount_matches_only_a_mount_that_is_its_pool(ryzen, tmp_path):
    unlimited = Mount("/mnt/models-hugepages", "hugetlbfs", "hugetlbfs",
                      {"rw": "", "mode": "750", "pagesize": "2M"})
    whole = resolve(Context(Host(ryzen), load_profile(str(mount_profile(tmp_path))))).mounts[0]
    assert options_match(unlimited, whole, 0) == []
    part = resolve(Context(Host(ryzen), load_profile(str(
        mount_profile(tmp_path, pool="30GiB"))))).mounts[0]
    assert options_match(unlimited, part, 0) == [f"size=unlimited (want {20 * GiB})"]


def _image(tmp_path: Path) -> Path:
    """A rootfs that has never booted: /etc, no /proc, no /sys (what mmdebstrap leaves)."""
    img = tmp_path / "image"
    (img / "etc").mkdir(parents=True)
    (img / "etc/fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    (img / "etc/group").write_text("root:x:0:\n")
    return img


def test_image_gets_a_fstab_line_without_size_that_its_first_boot_audits_ok(ryzen, tmp_path):
    """Seen on a real boot (tests/vm/test_root_image.py): an image prepared with apply --root
    got no fstab line (no huge page sizes, no RAM in the tree), and its first boot's audit
    reported the line missing. The mount is its pool, so the line needs no size=."""
    img = _image(tmp_path)
    prof = load_profile("inference")
    rows = {r.key: r for r in engine.plan(Host(img), prof, only={"hugetlbfs"}).audit.rows}
    assert rows["/srv/hosttune/models mounted"].status == Status.OFFLINE
    assert engine.apply(Host(img), prof, only={"hugetlbfs"}).ok
    line = "hugetlbfs /srv/hosttune/models hugetlbfs pagesize=2M,mode=0750,uid=0,gid=0 0 0\n"
    fstab = (img / "etc/fstab").read_text()
    assert fstab.endswith(MARK + "/srv/hosttune/models\n" + line)
    # its first boot: systemd mounted that line (mountinfo shows no size=), the pool is there
    (ryzen / "etc/fstab").write_text(fstab)
    mi = ryzen / "proc/self/mountinfo"
    mi.write_text(mi.read_text() + "90 22 0:50 / /srv/hosttune/models rw,relatime - hugetlbfs "
                  "hugetlbfs rw,pagesize=2M,mode=750\n")
    booted = Host(ryzen)
    booted.offline = False  # audited live, as the booted image is
    rows = {r.key: r for r in engine.audit(booted, prof, only={"hugetlbfs"}).rows}
    assert rows["/srv/hosttune/models fstab"].status == Status.OK
    assert rows["/srv/hosttune/models mounted"].status == Status.OK
    assert not [c for c in engine.plan(booted, prof, only={"hugetlbfs"}).changes
                if c.path == "/etc/fstab"], "a live apply keeps the image's line"


def test_image_keeps_an_explicit_pool_unsupported(tmp_path):
    """A mount that is not its pool cannot be sized without the RAM: no line is guessed."""
    img = _image(tmp_path)
    prof = tmp_path / "p.yaml"
    prof.write_text(MNT.format(pool="30%", size="20%", gid="0", persist="fstab"))
    rows = engine.plan(Host(img), load_profile(str(prof)), only={"hugetlbfs"}).audit.rows
    assert [(r.status, r.note) for r in rows] == [(Status.UNSUPPORTED,
                                                   "no 2M huge pages here")]
    assert not engine.plan(Host(img), load_profile(str(prof)), only={"hugetlbfs"}).changes
