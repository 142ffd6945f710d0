"""Profiles: inheritance, precise errors naming file and key, nothing written on bad input."""

from __future__ import annotations

import json
import os
import time

import msgspec
import pytest

from hosttune.errors import ProfileError
from hosttune.profile import builtin_names, load_profile
from tests.conftest import REPO, run_cli
from tests.helpers import snapshot


def test_builtins_load_and_extend():
    assert {"inference", "ryzen9950x-rtx5090"} <= set(builtin_names())
    lp = load_profile("ryzen9950x-rtx5090")
    assert lp.profile.extends == "inference"
    assert lp.files == ("builtin:ryzen9950x-rtx5090", "builtin:inference")
    # inherited from the parent, overridden by the child
    assert lp.profile.swap is not None and lp.profile.swap.enabled is False
    assert lp.where("hugetlbfs.mounts") == "builtin:ryzen9950x-rtx5090"
    assert lp.where("sysctl.settings.vm.swappiness") == "builtin:inference"


def test_child_file_extends_builtin_and_overrides_one_key(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nextends: inference\nsysctl:\n  settings:\n    vm.swappiness: 1\n")
    lp = load_profile(str(f))
    assert lp.profile.sysctl is not None
    assert lp.profile.sysctl.settings["vm.swappiness"] == 1
    assert lp.profile.sysctl.settings["vm.dirty_ratio"] == 5  # merged, not replaced


@pytest.mark.parametrize(
    ("yaml_text", "key", "words"),
    [
        ("name: x\nswap:\n  enabled: maybe\n", "swap.enabled", "boolean"),
        ("name: x\nswap:\n  enabeld: false\n", "swap.enabeld", "unknown key"),
        ("name: x\nhugepages:\n  pools:\n    - pagesize: 3M\n", "hugepages.pools.0.pagesize",
         "2M"),
        ("name: x\nhugepages:\n  pools:\n    - size: lots\n", "hugepages.pools.0.size", "90GiB"),
        ("name: x\nsysctl:\n  settings:\n    vm.nr_hugepages: 4\n", "sysctl.settings",
         "hugepages"),
        ("name: x\nsysctl:\n  settings:\n    vm.max_map_count: '> 5'\n", "sysctl.settings",
         ">= N"),
        ("name: x\nmemlock:\n  scope: world\n", "memlock.scope", "group"),
    ],
)
def test_bad_input_names_file_and_key(tmp_path, yaml_text, key, words):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ProfileError) as exc:
        load_profile(str(f))
    msg = str(exc.value)
    assert str(f) in msg and key in msg and words in msg, msg


def test_yaml_syntax_error_has_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: x\nswap: [\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: invalid YAML \(line 3"):
        load_profile(str(f))


def test_extends_loop(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nextends: a.yaml\n")
    with pytest.raises(ProfileError, match="extends loop"):
        load_profile(str(tmp_path / "a.yaml"))


def test_unknown_builtin():
    with pytest.raises(ProfileError, match="no built-in profile 'nope'"):
        load_profile("nope")


def test_error_in_parent_names_parent_file(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\ncpu:\n  governor: 5\n")
    (tmp_path / "child.yaml").write_text("name: child\nextends: base.yaml\n")
    with pytest.raises(ProfileError) as exc:
        load_profile(str(tmp_path / "child.yaml"))
    assert "base.yaml: cpu.governor" in str(exc.value)


def test_cli_bad_profile_exit_2_and_nothing_written(ryzen, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nextends: inference\nswap:\n  enabled: perhaps\n")
    before = snapshot(ryzen)
    p = run_cli("apply", "--root", str(ryzen), "--profile", str(f), "--yes")
    assert p.returncode == 2
    assert "bad.yaml: swap.enabled" in p.stderr
    assert snapshot(ryzen) == before
    assert not (ryzen / "var/lib/hosttune").exists()


def test_cache_round_trip_equals_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    for name in builtin_names():
        a = load_profile(name).profile  # validates and stores
        b = load_profile(name).profile  # from the cache
        assert a == b
        assert msgspec.json.encode(a) == msgspec.json.encode(b)
    cached = load_profile("inference").profile
    monkeypatch.setenv("HOSTTUNE_NO_CACHE", "1")
    assert load_profile("inference").profile == cached


def test_cache_ignores_foreign_or_writable_entries(tmp_path, monkeypatch):
    from hosttune.profile import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    load_profile("inference")
    key = cache.cache_key("inference", "")
    entry = tmp_path / "c/hosttune/profiles" / f"{key}.json"
    assert entry.exists()
    assert cache.load(key) is not None
    entry.chmod(0o666)  # anyone could have written it: do not trust it
    assert cache.load(key) is None


def test_cache_follows_every_file_of_the_chain(tmp_path, monkeypatch):
    """A hit needs the stat of every file of the extends chain to match: an edited child or
    parent is parsed and validated again, never served stale; a cached load needs no YAML."""
    import subprocess
    import sys

    from hosttune.profile import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text("extends: inference\nsysctl:\n  settings:\n    vm.swappiness: 5\n")
    child.write_text("extends: base.yaml\nswap:\n  persist: false\n")
    assert cache.stamp(str(child)) is None  # just written: racy, not cached yet
    time.sleep(cache.RACY_NS / 1e9)
    a = load_profile("child.yaml")
    assert a.profile.sysctl.settings["vm.swappiness"] == 5 and a.files[1].endswith("base.yaml")
    hit = cache.load(cache.cache_key("child.yaml", str(tmp_path)))
    assert hit is not None and hit.files == list(a.files) and hit.origin == a.origin
    assert load_profile("child.yaml").profile == a.profile
    base.write_text("extends: inference\nsysctl:\n  settings:\n    vm.swappiness: 7\n")
    time.sleep(cache.RACY_NS / 1e9)
    assert load_profile("child.yaml").profile.sysctl.settings["vm.swappiness"] == 7
    child.write_text("extends: base.yaml\nswap:\n  persist: bogus\n")
    with pytest.raises(ProfileError, match="swap.persist"):
        load_profile("child.yaml")
    child.unlink()
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile("child.yaml")
    # a cached built-in profile loads without importing PyYAML (and so does audit: see
    # test_audit_fast_path)
    code = ("import sys; from hosttune.profile import load_profile; "
            "load_profile('ryzen9950x-rtx5090'); load_profile('ryzen9950x-rtx5090'); "
            "sys.modules.pop('yaml', None); load_profile('ryzen9950x-rtx5090'); "
            "print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "False"


def test_profiles_cli(cli):
    r = cli("profiles", "list", "--json")
    assert r.exit_code == 0
    names = [p["name"] for p in json.loads(r.output)]
    assert "ryzen9950x-rtx5090" in names
    r = cli("profiles", "show", "ryzen9950x-rtx5090")
    assert r.exit_code == 0 and "extends: inference" in r.output


def test_cache_stays_out_of_someone_elses_directory(tmp_path, monkeypatch):
    """`sudo -E hosttune audit` keeps the user's HOME: root writes no entry there."""
    from tests.conftest import need

    need(os.geteuid() == 0, "chown to another user needs root")
    from hosttune.profile import cache

    theirs = tmp_path / "home-of-someone"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    monkeypatch.setenv("XDG_CACHE_HOME", str(theirs / ".cache"))
    assert cache.cache_dir() is None
    load_profile("inference")
    assert not (theirs / ".cache").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine))
    assert cache.cache_dir() == mine / "hosttune" / "profiles"
