"""The knob contract (tunables/knob.py), called through the library: read gives the journal's
original, write(desired()) applies, restore(original) gives read's value back."""

from __future__ import annotations

import pytest

from hosttune import engine
from hosttune.errors import HostError, ProfileError
from hosttune.host import Host
from hosttune.profile import builtin_names, load_profile
from hosttune.tunables import all_tunables, knob_for
from hosttune.tunables.base import Change, Evaluation, Status, setting
from hosttune.tunables.hugetlbfs import FstabMountKnob
from hosttune.tunables.knob import GENERIC


def _file(path: str, value: str | None, kind: str = "file", mode: int = 0o644) -> Change:
    return Change(id=f"sysctl/{path}", tunable="sysctl", kind=kind,  # type: ignore[arg-type]
                  summary="", path=path, value=value, mode=mode)


def test_file_knob_round_trip_removes_the_directories_it_created(tmp_path):
    host = Host(tmp_path)
    knob = knob_for(_file("/etc/new.d/sub/x.conf", "a = 1\n", mode=0o600))
    original = knob.read(host)
    assert original["exists"] is False
    assert original["created_dirs"] == ["/etc", "/etc/new.d", "/etc/new.d/sub"]
    knob.write(host, knob.desired())
    f = tmp_path / "etc/new.d/sub/x.conf"
    assert f.read_text() == "a = 1\n" and f.stat().st_mode & 0o777 == 0o600
    knob.restore(host, original)
    assert not (tmp_path / "etc").exists()
    assert {k: v for k, v in knob.read(host).items() if k != "created_dirs"} == \
        {k: v for k, v in original.items() if k != "created_dirs"}


def test_symlink_knob_replaces_a_file_and_restores_it_byte_for_byte(tmp_path):
    unit = tmp_path / "etc/systemd/system/swap.swap"
    unit.parent.mkdir(parents=True)
    unit.write_bytes(b"[Swap]\nWhat=/swap\n\xff")
    unit.chmod(0o640)
    host = Host(tmp_path)
    knob = knob_for(_file("/etc/systemd/system/swap.swap", "/dev/null", kind="symlink"))
    original = knob.read(host)
    knob.write(host, knob.desired())
    assert unit.is_symlink() and str(unit.readlink()) == "/dev/null"
    knob.restore(host, original)
    assert not unit.is_symlink()
    assert unit.read_bytes() == b"[Swap]\nWhat=/swap\n\xff" and unit.stat().st_mode & 0o777 == 0o640


def test_a_file_knob_does_not_write_through_a_link_it_did_not_make(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/x.conf").symlink_to("/etc/shadow")
    knob = knob_for(_file("/etc/x.conf", "a = 1\n"))
    with pytest.raises(HostError):
        knob.write(Host(tmp_path), knob.desired())
    assert (tmp_path / "etc/x.conf").is_symlink()


def test_choice_knob_selects_one_word_and_a_tree_shows_it_bracketed(tmp_path):
    f = tmp_path / "sys/kernel/mm/transparent_hugepage/enabled"
    f.parent.mkdir(parents=True)
    f.write_text("always [madvise] never\n")
    host = Host(tmp_path)
    knob = knob_for(Change(id="hugepages/thp", tunable="hugepages", kind="choice", summary="",
                           path="/sys/kernel/mm/transparent_hugepage/enabled", value="never"))
    original = knob.read(host)
    assert original == {"value": "madvise"}
    knob.write(host, knob.desired())
    assert f.read_text() == "always madvise [never]\n"
    knob.restore(host, original)
    assert f.read_text() == "always [madvise] never\n"


FSTAB = b"# static\nUUID=1 / ext4 defaults 0 1\n"
OURS = "hugetlbfs /mnt/models hugetlbfs pagesize=2M 0 0\n"  # as fstab_line writes it


def _fstab_knob() -> FstabMountKnob:
    return FstabMountKnob(Change(id="hugetlbfs/fstab /mnt/models", tunable="hugetlbfs",
                                 kind="action", summary="", path="/etc/fstab",
                                 params={"knob": "fstab", "mount": "/mnt/models",
                                         "line": OURS}))


@pytest.fixture
def applied_fstab(tmp_path):
    """/etc/fstab in a tree with hosttune's line applied: (host, knob, original, the file)."""
    (tmp_path / "etc").mkdir()
    fstab = tmp_path / "etc/fstab"
    fstab.write_bytes(FSTAB)
    host = Host(tmp_path)
    knob = _fstab_knob()
    original = knob.read(host)
    knob.write(host, knob.desired())
    return host, knob, original, fstab


def test_shared_file_knob_restores_exact_bytes_when_nobody_else_edited(applied_fstab):
    host, knob, original, fstab = applied_fstab
    assert OURS in fstab.read_text() and fstab.read_bytes().startswith(FSTAB)
    knob.restore(host, original)
    assert fstab.read_bytes() == FSTAB


def test_shared_file_knob_keeps_an_edit_made_after_apply(applied_fstab):
    host, knob, original, fstab = applied_fstab
    fstab.write_bytes(fstab.read_bytes() + b"/dev/sdb1 /data xfs defaults 0 2\n")
    knob.restore(host, original)
    text = fstab.read_text()
    assert OURS not in text and "/dev/sdb1 /data xfs" in text and text.startswith(FSTAB.decode())


def test_knob_names_are_unique_per_family_and_never_a_generic_kind():
    for t in all_tunables():
        names = [k.name for k in t.knobs]
        assert len(names) == len(set(names)), t.name
        assert not set(names) & set(GENERIC), t.name


def test_an_action_change_naming_no_knob_of_its_family_is_refused():
    ch = Change(id="hugepages/2M", tunable="hugepages", kind="action", summary="",
                params={"knob": "exec"})
    with pytest.raises(HostError, match="no knob 'exec'"):
        knob_for(ch)


@pytest.mark.parametrize("profile", builtin_names())
def test_every_planned_change_has_a_knob_that_can_read_it(any_tree, profile):
    host = Host(any_tree)
    try:
        plan = engine.plan(host, load_profile(profile))
    except ProfileError as err:
        # a profile made for a bigger box is refused before anything is planned
        assert profile != "inference" and err.file and err.key, err
        return
    assert plan.changes
    for ch in plan.changes:
        knob = knob_for(ch)
        assert knob.id == ch.id
        if ch.kind != "command":
            knob.read(host)  # the original can be captured before anything is written


def test_setting_gives_a_row_and_its_change_only_when_it_drifts():
    ch = _file("/proc/sys/vm/swappiness", "0", kind="kernel")
    out = Evaluation()
    out.add(*setting("sysctl", "vm.swappiness", "0", "0", ch, note="n"))
    out.add(*setting("sysctl", "vm.swappiness", "60", "0", ch, note="n", drift_note="d"))
    # shown differently from how it compares: a floor
    out.add(*setting("sysctl", "vm.max_map_count", "70000", ">= 65530", ch, ok=True))
    # holds now, but a file loaded later at boot sets it back: nothing to change now
    out.add(*setting("sysctl", "vm.swappiness", "0", "0", ch, overridden=True))
    assert [(r.current, r.status, r.note) for r in out.rows] == [
        ("0", Status.OK, "n"), ("60", Status.DRIFT, "d"), ("70000", Status.OK, ""),
        ("0", Status.CONFLICT, "")]
    assert out.changes == [ch]
