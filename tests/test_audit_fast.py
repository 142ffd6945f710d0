"""`hosttune audit` without typer, rich, PyYAML or pydantic (the 0.3 s budget): the argv
parser agrees with typer's, read-only profile views audit exactly like the pydantic models,
and the fast process really leaves those libraries out."""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.cli.audit_cmd import parse_args, render_rows, term_options
from hosttune.errors import HosttuneError
from hosttune.host import Host
from hosttune.host.gpu.fake import FakeNvml
from hosttune.profile import builtin_names, load_profile, schema, view
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


@pytest.mark.parametrize("profile", builtin_names())
def test_views_audit_exactly_like_the_models(tmp_path, monkeypatch, profile):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    models = load_profile(profile)  # validates and caches
    views = load_profile(profile, views=True)
    assert isinstance(models.profile, schema.Profile)
    assert isinstance(views.profile, view.View)
    assert (views.files, views.origin, views.raw) == (models.files, models.origin, models.raw)
    for name, (tree, fake) in _trees(tmp_path).items():
        a = _audit(Host(tree, nvml_backend=fake), models)
        b = _audit(Host(tree, nvml_backend=fake), views)
        assert a == b, name
    # nothing cached yet: the models, validated (a view is only ever built from the cache)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    assert isinstance(load_profile(profile, views=True).profile, schema.Profile)


def test_views_decode_every_value_like_the_models(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in builtin_names():
        m = load_profile(name).profile
        v = load_profile(name, views=True).profile

        def same(a, b, where):
            if isinstance(b, view.View):
                for f in type(a).model_fields:
                    same(getattr(a, f), getattr(b, f), f"{where}.{f}")
                for prop in view.DERIVED.get(type(a).__name__, {}):
                    assert getattr(a, prop) == getattr(b, prop), f"{where}.{prop}"
            elif isinstance(a, dict):
                assert list(a) == list(b), where  # keys keep type and order (int NUMA nodes)
                for k in a:
                    same(a[k], b[k], f"{where}[{k!r}]")
            elif isinstance(a, list | tuple):
                assert type(a) is type(b) and len(a) == len(b), where
                for i, (x, y) in enumerate(zip(a, b, strict=True)):
                    same(x, y, f"{where}[{i}]")
            else:
                assert type(a) is type(b) and a == b, where

        same(m, v, name)


def test_every_model_property_has_a_view():
    for cls in vars(schema).values():
        if isinstance(cls, type) and issubclass(cls, schema.BaseModel) and \
                cls.__module__ == schema.__name__:
            props = {n for n, o in inspect.getmembers(cls) if isinstance(o, property)
                     and not n.startswith(("model_", "__"))}
            assert props <= set(view.DERIVED.get(cls.__name__, {})), cls.__name__


def test_view_is_read_only_and_strict():
    v = view.View("SwapSection", {"enabled": False, "persist": True})
    assert v.persist is True and v == view.View("SwapSection", dict(persist=True, enabled=False))
    with pytest.raises(AttributeError, match="no attribute 'persit'"):
        _ = v.persit
    with pytest.raises(AttributeError, match="read-only"):
        v.enabled = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.encode({"when": object()})


def test_fast_audit_process_imports_no_cli_or_schema_libraries(tmp_path, ryzen):
    """The second run (profile cached) of `hosttune audit` - JSON or the table - loads none of
    typer, click, rich, PyYAML, pydantic (nor asyncio, which pydantic drags in)."""
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
    assert first[0] == 1 and "pydantic" in first[1]  # first run: validated
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
