"""`hosttune audit` without typer, rich or PyYAML (the 0.3 s budget): the argv parser agrees
with typer's, a profile from the cache is the very Struct a validated one is (and audits
alike), and the fast process really leaves those libraries out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from hosttune import engine
from hosttune.cli.audit_cmd import parse_args, render_rows, term_options
from hosttune.errors import HosttuneError
from hosttune.host import Host
from hosttune.host.gpu.fake import FakeNvml
from hosttune.profile import builtin_names, cache, load_profile, schema
from tests import fakehost
from tests.conftest import REPO, run_cli
from tests.fake_nvidia import add_nvidia
from tests.seed_tree import seed_tree

NO_ENV: dict[str, str] = {}


@pytest.mark.parametrize(("argv", "want"), [
    ([], {}),
    (["--json"], {"json_out": True}),
    (["-p", "x.yaml", "--json"], {"profile": "x.yaml", "json_out": True}),
    (["--profile=a", "--profile", "b"], {"profile": "b"}),  # the last one wins, like click
    (["--root", "/t", "--only", "swap", "--only=sysctl"],
     {"root": Path("/t"), "only": ["swap", "sysctl"]}),
])
def test_parse_args_plain_forms(argv, want):
    base = {"profile": None, "root": None, "json_out": False, "only": None}
    assert parse_args(argv, NO_ENV) == {**base, **want}


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["--bogus"], ["extra"], ["--profile"], ["--root", "--json"],
    ["-pinference"], ["-p=x"], ["--json=1"], ["--"],
])
def test_parse_args_leaves_the_rest_to_typer(argv):
    assert parse_args(argv, NO_ENV) is None


def test_parse_args_environment():
    env = {"HOSTTUNE_PROFILE": "ryzen9950x-rtx5090", "HOSTTUNE_ROOT": "/img"}
    got = parse_args([], env)
    assert got is not None and got["profile"] == "ryzen9950x-rtx5090"
    assert got["root"] == Path("/img")
    got = parse_args(["-p", "inference", "--root", "/t"], env)  # options beat the environment
    assert got is not None and (got["profile"], got["root"]) == ("inference", Path("/t"))
    got = parse_args([], {"HOSTTUNE_PROFILE": "", "HOSTTUNE_ROOT": ""})  # empty = unset
    assert got is not None and (got["profile"], got["root"]) == (None, None)


def _trees(tmp: Path) -> dict[str, tuple[Path, FakeNvml | None]]:
    gpu = fakehost.ryzen_9950x(tmp / "gpu")
    add_nvidia(gpu, ["rtx5090"], vendor_unit_user="nvidia-persistenced")
    return {
        "ryzen": (fakehost.ryzen_9950x(tmp / "ryzen"), None),
        "epyc": (fakehost.epyc_2s(tmp / "epyc"), None),
        "vm": (fakehost.this_vm(tmp / "vm"), None),
        "ryzen+rtx5090": (gpu, FakeNvml(["rtx5090"], root=True)),
        "seed": (seed_tree(tmp / "seed"), None),
    }


def _audit(host: Host, loaded) -> object:
    try:
        return engine.audit(host, loaded).to_json()
    except HosttuneError as err:  # e.g. a 90 GiB pool on the 23 GiB VM: refused alike
        return f"{type(err).__name__}: {err}"


# a profile with what JSON alone would lose: integer NUMA-node keys, [min, max] tuples, a
# per-device mapping of sections, mps given as a boolean
CUSTOM = """name: custom
extends: ryzen9950x-rtx5090
hugepages:
  pools:
    - {pagesize: 2M, size: 4GiB, nodes: {0: 1GiB, 1: 1536}}
hugetlbfs:
  mounts:
    - {path: /srv/models/, pagesize: 2M, size: 4GiB, gid: inference}
gpu:
  mps: true
  locked_clocks: {graphics: [1200, 2400], memory: max-sustained}
  devices: {'0': {power_limit: 450W, locked_clocks: {graphics: 2100}}}
"""


def _profiles(tmp: Path) -> list[str]:
    custom = tmp / "custom.yaml"
    custom.write_text(CUSTOM)
    os.utime(custom, ns=(1, 1))  # not "racy" (cache.RACY_NS): cached at once
    return [*builtin_names(), str(custom)]


def test_cached_profile_audits_exactly_like_the_validated_one(tmp_path, monkeypatch):
    """One model type on every path: a profile from the cache is the same Struct, equal to
    the validated one, and audits the same on every tree."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trees = _trees(tmp_path)
    for profile in _profiles(tmp_path):
        validated = load_profile(profile)  # validates and caches
        key = cache.cache_key(profile, "")
        assert cache.load(key) is not None, profile
        cached = load_profile(profile)
        assert type(cached.profile) is schema.Profile and cached.profile == validated.profile
        assert (cached.files, cached.origin) == (validated.files, validated.origin)
        for name, (tree, fake) in trees.items():
            a = _audit(Host(tree, nvml_backend=fake), validated)
            b = _audit(Host(tree, nvml_backend=fake), cached)
            assert a == b, (profile, name)


def test_cache_decodes_every_value_with_its_type(monkeypatch, tmp_path):
    """The cache's JSON comes back as the same classes and value types (tuples, int keys)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in _profiles(tmp_path):
        m = load_profile(name).profile
        hit = cache.load(cache.cache_key(name, ""))
        assert hit is not None, name
        v = hit.profile

        def same(a, b, where):
            assert type(a) is type(b), where
            if isinstance(a, msgspec.Struct):
                for f in msgspec.structs.fields(a):
                    same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
            elif isinstance(a, dict):
                assert list(a) == list(b), where  # keys keep type and order (int NUMA nodes)
                for k in a:
                    assert type(k) is type(next(x for x in b if x == k)), where
                    same(a[k], b[k], f"{where}[{k!r}]")
            elif isinstance(a, list | tuple):
                assert len(a) == len(b), where
                for i, (x, y) in enumerate(zip(a, b, strict=True)):
                    same(x, y, f"{where}[{i}]")
            else:
                assert a == b, where

        same(m, v, name)
    custom = load_profile(str(tmp_path / "custom.yaml")).profile
    assert custom.hugepages.pools[0].nodes == {0: "1GiB", 1: 1536}
    assert custom.gpu.locked_clocks.graphics == (1200, 2400)
    assert custom.gpu.mps == schema.GpuMps() and custom.gpu.mps_enabled
    assert custom.hugetlbfs.mounts[0].path == "/srv/models"  # normalised, and so cached


def test_profile_is_read_only():
    p = load_profile("inference").profile
    assert p.swap is not None
    with pytest.raises(AttributeError):
        p.swap.enabled = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _ = p.swap.enabeld  # type: ignore[attr-defined]
    changed = msgspec.structs.replace(p.swap, enabled=True)
    assert changed.enabled is True and p.swap.enabled is False


def test_fast_audit_process_imports_no_cli_or_schema_libraries(tmp_path, ryzen):
    """The second run (profile cached) of `hosttune audit` - JSON or the table - loads none of
    typer, click, rich, PyYAML (nor pydantic, nor asyncio)."""
    code = (
        "import sys, io, contextlib\n"
        "from hosttune.cli import main\n"
        "sys.argv = ['hosttune'] + sys.argv[1:]\n"
        "out = io.StringIO()\n"
        "try:\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = [m for m in ('typer', 'click', 'rich', 'yaml', 'pydantic', 'asyncio')\n"
        "         if m in sys.modules]\n"
        "sys.stderr.write(repr((code, heavy)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "c")}
    env.pop("HOSTTUNE_NO_CACHE", None)

    def run(*args: str) -> tuple[int, list[str]]:
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                           text=True, env=env, check=True, timeout=60)
        return eval(r.stderr.strip().splitlines()[-1])  # noqa: S307 - our own repr

    first = run("audit", "--json", "--root", str(ryzen))
    assert first[0] == 1 and "yaml" in first[1]  # first run: parsed and validated
    code_, heavy = run("audit", "--json", "--root", str(ryzen))
    assert code_ == 1 and heavy == []
    code_, heavy = run("audit", "--root", str(ryzen))
    assert code_ == 1 and heavy == []
    code_, heavy = run("audit", "--help")
    assert code_ == 0 and "typer" in heavy


def test_fast_path_and_typer_path_agree(cli, ryzen, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    env = {"XDG_CACHE_HOME": str(tmp_path / "c")}
    for args in (["--json", "--root", str(ryzen)],
                 ["--json", "--root", str(ryzen), "-p", "ryzen9950x-rtx5090", "--only", "swap"],
                 ["--json", "--root", str(tmp_path / "missing")],
                 ["--json", "--root", str(ryzen), "-p", "nope"]):
        fast = run_cli("audit", *args, env=env)
        slow = cli("audit", *args)
        assert fast.returncode == slow.exit_code, args
        if fast.returncode != 2:
            assert json.loads(fast.stdout) == json.loads(slow.stdout), args
        else:
            assert "error:" in fast.stderr


class _Row:
    def __init__(self, key, current, desired, status, needs=(), note=""):
        self.tunable, self.key, self.current, self.desired = "sysctl", key, current, desired
        self.status, self.needs, self.note = status, list(needs), note


ROWS = [_Row("vm.swappiness", "60", "0", "drift", ["root"]),
        _Row("vm.max_map_count", "65530", ">= 262144", "ok"),
        _Row("file /etc/sysctl.d/90-hosttune.conf", "absent", "present", "unsupported",
             note="no cpufreq policies in /sys/devices/system/cpu/cpufreq: a VM")]


def test_render_rows_aligned_unwrapped_for_pipes():
    out = render_rows(ROWS, title="t")
    lines = out.splitlines()
    assert lines[0] == "t" and lines[1].split() == ["SETTING", "CURRENT", "DESIRED", "STATUS"]
    assert len(lines) == 2 + len(ROWS)  # no folding without a width
    col = lines[1].index("STATUS")
    assert [ln[col:] for ln in lines[2:]] == [
        "drift · root", "ok", "unsupported · no cpufreq policies in "
        "/sys/devices/system/cpu/cpufreq: a VM"]
    assert "\x1b[" not in out


def test_render_rows_folds_to_the_width_and_colors_status_only():
    out = render_rows(ROWS, title="t", width=66, color=True)
    plain = [ln.replace("\x1b[1;31m", "").replace("\x1b[32m", "").replace("\x1b[2m", "")
             .replace("\x1b[1m", "").replace("\x1b[0m", "") for ln in out.splitlines()]
    assert "\x1b" not in "".join(plain)
    assert max(len(ln) for ln in plain) <= 66 and len(plain) > 2 + len(ROWS)  # folded
    assert "\x1b[1;31mdrift\x1b[0m · root" in out and "\x1b[32mok\x1b[0m" in out
    col = plain[1].index("STATUS")
    folded = "".join(ln[col:].replace(" ", "") for ln in plain[5:])  # the third row's status
    assert folded == ("unsupported · " + ROWS[2].note).replace(" ", "")
    # continuation lines leave the columns that did not fold blank
    cur = plain[1].index("CURRENT")
    assert plain[6:] and all(ln[cur:col].strip() == "" for ln in plain[6:])
    # floors: a column is not folded below 20/10/10/20 characters; lines run over instead
    narrow = render_rows(ROWS, width=30).splitlines()
    assert max(len(ln) for ln in narrow) > 30 and narrow[0].startswith("SETTING")


def test_term_options_follow_tty_and_color_conventions(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    for k in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS"):
        monkeypatch.delenv(k, raising=False)
    assert term_options(io.StringIO()) == {"width": None, "color": False}
    monkeypatch.setenv("COLUMNS", "100")
    assert term_options(io.StringIO()) == {"width": 100, "color": False}
    assert term_options(Tty())["color"] is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert term_options(Tty())["color"] is False
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert term_options(io.StringIO())["color"] is True
