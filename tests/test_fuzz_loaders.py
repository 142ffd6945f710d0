"""Property-based fuzzing of the two loaders that read untrusted files: the profile loader and
the journal loader. Whatever the input: a HosttuneError (exit 2) or success - never another
exception - and nothing written outside the tree (a decoy next to it is checksummed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hosttune.errors import HosttuneError
from tests.helpers import checksums

HOSTILE = Path(__file__).parent / "hostile"
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SLOW_FUZZ = settings(FUZZ, max_examples=40)  # a valid mutant costs a plan and an audit

# --- values: the awkward ones first -----------------------------------------------------------
_text = st.one_of(
    st.sampled_from(["", "auto", "0", "-1", "0-99999999999", "31-0", "/", "/etc", "/etc/shadow",
                     "/../../../../tmp/hosttune-escape", "/var/cache/../..", "%n", "a\nb",
                     "x\x00y", "[/bold]", "unlimited", "50%", "1e999", "max", "default",
                     "/etc/sysctl.d/90-x.conf", "node-local", "\u2028", "\udcff"]),
    st.text(max_size=40),
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True), _text)
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)), max_leaves=12)


def _leaves(d: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(d, dict):
        out = [prefix] if prefix else []
        for k, v in d.items():
            out += _leaves(v, (*prefix, k))
        return out
    if isinstance(d, list):
        out = [prefix]
        for i, v in enumerate(d):
            out += _leaves(v, (*prefix, i))
        return out
    return [prefix]


def _set(d: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with 1-3 of its nodes replaced by hostile values."""
    d = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _leaves(d)
        path = draw(st.sampled_from(paths))
        d = _set(d, path, draw(_value))
    return d


# --- the profile loader --------------------------------------------------------------------------
BUILTIN = yaml.safe_load(
    (Path(__file__).parent.parent / "hosttune/profile/builtin/ryzen9950x-rtx5090.yaml").read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(tree, decoy next to it, a directory for profile files)."""
    from tests import fakehost

    base = tmp_path_factory.mktemp("fuzz")
    tree = fakehost.ryzen_9950x(base / "tree")
    decoy = base / "decoy"
    decoy.mkdir()
    (decoy / "keep").write_text("decoy\n")
    prof = base / "profiles"
    prof.mkdir()
    return tree, decoy, prof


def _load_and_plan(world: tuple[Path, Path, Path], text: bytes) -> None:
    from hosttune.engine import core
    from hosttune.host import Host
    from hosttune.profile import load_profile
    from tests.helpers import snapshot

    tree, decoy, prof = world
    f = prof / "p.yaml"
    f.write_bytes(text)
    before = snapshot(tree), checksums([decoy])
    try:
        loaded = load_profile(str(f))
        core.plan(Host(tree), loaded)
        core.audit(Host(tree), loaded)
    except HosttuneError:
        pass
    assert (snapshot(tree), checksums([decoy])) == before


@SLOW_FUZZ
@given(data=mutated(BUILTIN))
def test_fuzz_profile_loader_mutated_builtin(world, monkeypatch, data):
    monkeypatch.setenv("HOSTTUNE_NO_CACHE", "1")
    try:
        text = yaml.safe_dump(data, allow_unicode=True).encode("utf-8", "surrogateescape")
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    _load_and_plan(world, text)


@FUZZ
@given(text=st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode),
                      st.sampled_from(sorted(p.read_bytes() for p in
                                             (HOSTILE / "profiles").iterdir()))))
def test_fuzz_profile_loader_raw_bytes(world, monkeypatch, text):
    monkeypatch.setenv("HOSTTUNE_NO_CACHE", "1")
    _load_and_plan(world, text)


# --- the journal loader --------------------------------------------------------------------------
VALID_JOURNAL = json.loads((HOSTILE / "journal-valid.json").read_text())


def _rollback(world: tuple[Path, Path, Path], raw: bytes) -> None:
    from hosttune.engine import core
    from hosttune.engine.journal import Journal
    from hosttune.host import Host

    tree, decoy, _ = world
    state = tree / "var/lib/hosttune"
    state.mkdir(parents=True, exist_ok=True)
    (state / "journal.json").write_bytes(raw)
    before = checksums([decoy]), sorted(p.name for p in tree.parent.iterdir())
    try:
        Journal.load(Host(tree))
        core.rollback(Host(tree))
    except HosttuneError:
        pass
    assert (checksums([decoy]), sorted(p.name for p in tree.parent.iterdir())) == before


@FUZZ
@given(data=mutated(VALID_JOURNAL))
def test_fuzz_journal_loader_mutated(world, data):
    try:
        raw = json.dumps(data).encode("utf-8", "surrogateescape")
    except (ValueError, UnicodeEncodeError):
        return
    _rollback(world, raw)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=400), _value.map(
    lambda v: json.dumps(v).encode("utf-8", "surrogateescape"))))
def test_fuzz_journal_loader_raw(world, raw):
    _rollback(world, raw)
