"""argspec: the fast parser and the typer commands, both derived from one declaration, read
every argv alike, and what the fast parser does not answer goes to typer.

hypothesis writes command lines from each declaration - options in any order, repeated, in
the ``--opt=value`` and ``--opt value`` forms, positional arguments anywhere, env vars set,
unset or empty - and the fast parse (what main() runs) must equal what the typer command hands
its run function for the same argv and environment. Plain forms must be answered (else the
fast path would be no faster); noise (--help, typos, ``--``, ``-pX``, bad numbers) may be
answered only exactly like typer, and what is not answered must reach typer."""

from __future__ import annotations

import contextlib
import functools
import os
import typing
from pathlib import Path
from unittest import mock

import pytest
import typer
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st

from hosttune import cli
from hosttune.cli import argspec, audit_cmd, models_fast
from hosttune.cli.argspec import Argument, Option

# command path -> (declaration, the run function both ways in call)
COMMANDS = {
    ("audit",): (argspec.AUDIT, "hosttune.cli.audit_cmd.run_audit"),
    ("models", "load"): (argspec.MODELS_LOAD, "hosttune.cli.models_fast.run_load"),
    ("models", "list"): (argspec.MODELS_LIST, "hosttune.cli.models_fast.run_list"),
    ("models", "verify"): (argspec.MODELS_VERIFY, "hosttune.cli.models_fast.run_verify"),
}
ENVVARS = sorted({p.envvar for spec, _ in COMMANDS.values() for p in spec
                  if isinstance(p, Option) and p.envvar})
PROPERTY = settings(max_examples=100, deadline=None)

# what an argv word can be (no NUL and no lone surrogate: not in a real argv, and typer's Path
# check stats the value, which raises on them)
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
               max_size=6)
PLAIN_TEXT = TEXT.filter(lambda v: not v.startswith("-"))
# numbers typer (pydantic) and Python's int() read differently, out of range, not numbers
MESSY = ("3.0", "\u0663", " 3", "+3", "-1", "0", "65", "3_0", "", "x")


def fast_parse(path: tuple[str, ...], argv: list[str], env: dict[str, str]):
    """What main()'s fast path reads the line as: run keywords, or None (typer's turn)."""
    if path == ("audit",):
        return audit_cmd.parse_args(argv, env)
    got = models_fast.parse_args([path[1], *argv], env)
    if got is not None:
        assert got.pop("command") == path[1]
    return got


@functools.cache
def _click_root():
    return typer.main.get_command(cli.build_app())


@contextlib.contextmanager
def environ(env: dict[str, str]):
    """os.environ with exactly ``env`` of the declarations' env vars (click reads os.environ)."""
    with mock.patch.dict(os.environ):
        for k in ENVVARS:
            os.environ.pop(k, None)
        os.environ.update(env)
        yield


def click_parse(path: tuple[str, ...], argv: list[str], env: dict[str, str]):
    """The keywords the typer command hands its run function, or None: a usage error, --help."""
    seen: list[dict] = []
    with environ(env), mock.patch(COMMANDS[path][1], lambda **kw: seen.append(kw) or 0):
        try:
            _click_root().main([*path, *argv], prog_name="hosttune", standalone_mode=False)
        except typer.TyperException as err:
            assert getattr(err, "exit_code", None) == 2, err  # a usage error, not a crash
    return seen[0] if seen else None


def routed(path: tuple[str, ...], argv: list[str], env: dict[str, str]):
    """What main() does with the line: ("fast", run keywords) or ("typer", None)."""
    calls: list[tuple[str, dict | None]] = []

    def run(**kw):
        calls.append(("fast", kw))
        return 0

    def build_app(only=None):
        return lambda: calls.append(("typer", None))

    with environ(env), mock.patch(COMMANDS[path][1], run), \
            mock.patch.object(cli, "build_app", build_app), \
            mock.patch("os._exit", side_effect=SystemExit):
        try:
            cli._main([*path, *argv])  # the fast paths exit; typer's (here) returns
        except SystemExit:
            pass
    assert len(calls) == 1, calls
    return calls[0]


# --- strategies -------------------------------------------------------------------------------
@st.composite
def occurrence(draw, p: Option) -> list[str]:
    """One plain use of option ``p``: a value click takes as meant (no ``-p=x``, which is the
    value "=x" to click, and no value that looks like an option after a space)."""
    if p.flag:
        return [draw(st.sampled_from(p.flags + ((p.off,) if p.off else ())))]
    flag = draw(st.sampled_from(p.flags))
    eq = flag.startswith("--") and draw(st.booleans())
    if p.value_type is int:
        value = draw(st.integers(max(p.min or 0, 0), p.max or 99).map(str))
    else:
        value = draw(TEXT if eq else PLAIN_TEXT)
    return [f"{flag}={value}"] if eq else [flag, value]


@st.composite
def command_line(draw, spec: argspec.Spec) -> list[str]:
    """Options in any order (repeated, either form) with the positional arguments among them."""
    options = [p for p in spec if isinstance(p, Option)]
    groups = draw(st.lists(st.sampled_from(options).flatmap(occurrence), max_size=6))
    arguments = [p for p in spec if isinstance(p, Argument)]
    n = draw(st.integers(sum(a.required for a in arguments), len(arguments)))
    words = PLAIN_TEXT.filter(bool) | st.just("-")
    for value in draw(st.lists(words, min_size=n, max_size=n)):
        groups.insert(draw(st.integers(0, len(groups))), [value])
    return [w for g in groups for w in g]


def environment() -> st.SearchStrategy[dict[str, str]]:
    """Each env var unset, empty (click: unset) or set."""
    value = st.one_of(st.none(), st.just(""), TEXT)
    return st.fixed_dictionaries({k: value for k in ENVVARS}).map(
        lambda d: {k: v for k, v in d.items() if v is not None})


def edge_words(spec: argspec.Spec) -> list[list[str]]:
    """Words at the edge of what the fast parser answers: for each option its flags without a
    value, with an empty, option-like or attached one, a flag's ``=value``, bad numbers."""
    out = [[w] for w in ("--", "-", "-h", "--help", "--bogus", "-x", "extra", "")]
    for p in spec:
        if not isinstance(p, Option):
            continue
        for f in p.flags + ((p.off,) if p.off else ()):
            out += [[f], [f + "="], [f + "=1"], [f, "-"], [f, "--"], [f, "-v"], [f, ""]]
            if not f.startswith("--"):
                out += [[f + "X"], [f + "=X"]]
            if p.value_type is int:
                out += [[f, m] for m in MESSY] + [[f"{f}={m}"] for m in MESSY]
    return out


@st.composite
def perturbed_line(draw, spec: argspec.Spec) -> list[str]:
    """A plain line with one thing changed: an edge word in, a word replaced or one left out."""
    words = draw(command_line(spec))
    how = draw(st.sampled_from(["insert", "replace", "drop"]) if words else st.just("insert"))
    if how == "drop":
        del words[draw(st.integers(0, len(words) - 1))]
        return words
    edge = draw(st.sampled_from(edge_words(spec)) | TEXT.map(lambda w: [w]))
    i = draw(st.integers(0, len(words) - (how == "replace")))
    words[i:i + (how == "replace")] = edge
    return words


def assert_fast_is_exact_or_typers(path: tuple[str, ...], argv: list[str],
                                   env: dict[str, str]) -> None:
    fast = fast_parse(path, argv, env)
    if fast is None:
        assert routed(path, argv, env) == ("typer", None)
    else:
        assert fast == click_parse(path, argv, env)
        assert routed(path, argv, env) == ("fast", fast)


# --- the properties ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
@PROPERTY
@given(data=st.data())
def test_plain_forms_parse_fast_and_exactly_like_click(path, data):
    spec = COMMANDS[path][0]
    argv, env = data.draw(command_line(spec)), data.draw(environment())
    fast = fast_parse(path, argv, env)
    assert fast is not None, "a plain form left to typer: the fast path misses it"
    assert fast == click_parse(path, argv, env)
    assert routed(path, argv, env) == ("fast", fast)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
@PROPERTY
@given(data=st.data())
def test_other_forms_are_typers_or_read_exactly_like_click(path, data):
    spec = COMMANDS[path][0]
    argv, env = data.draw(perturbed_line(spec)), data.draw(environment())
    assert_fast_is_exact_or_typers(path, argv, env)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_edge_word_is_typers_or_read_exactly_like_click(path):
    spec = COMMANDS[path][0]
    base = ["f" for p in spec if isinstance(p, Argument) and p.required]
    for words in edge_words(spec):
        for argv in ([*base, *words], [*words, *base]):
            assert_fast_is_exact_or_typers(path, argv, {})
    assert_fast_is_exact_or_typers(path, [], {})


# --- the declarations -------------------------------------------------------------------------
def test_shared_aliases_annotate_the_declared_types():
    """common's RootOpt & co. (plan, apply, unload, ...) carry argspec's option and its type."""
    from hosttune.cli import common, core_cmds, models

    for alias, p in ((common.RootOpt, argspec.ROOT), (common.JsonOpt, argspec.JSON),
                     (common.ProfileOpt, argspec.PROFILE), (models.MountOpt, argspec.MOUNT),
                     (core_cmds.OnlyOpt, argspec.ONLY)):
        hint, info = typing.get_args(alias)
        assert hint == argspec.hint(p), p.dest
        assert info.help == p.help and info.envvar == p.envvar, p.dest


def test_parse_examples():
    env = {"HOSTTUNE_ROOT": "/img"}
    got = argspec.parse(argspec.MODELS_VERIFY, ["-m", "/a", "m1", "--mount=/b"], env)
    assert got == {"name": "m1", "mount": "/b", "profile": None, "root": Path("/img"),
                   "json_out": False}
    load = argspec.MODELS_LOAD
    assert argspec.parse(load, ["f", "--threads", "+4"], {})["threads"] == 4
    for bad in (["f", "--threads", "\u0663"], ["f", "--threads=3.0"], ["f", "--node", " 1"]):
        assert argspec.parse(load, bad, {}) is None, bad  # typer's to convert (or refuse)
    assert argspec.parse(load, ["f", "--no-checksum", "--checksum"], {})["checksum"] is True


@pytest.mark.parametrize("params", [
    # click reads a flag's env var as a word, and splits a repeatable option's
    [Option("x", ("--x",), "h", flag=True, default=False, envvar="X")],
    [Option("x", ("--x",), "h", repeatable=True, envvar="X")],
    [Option("x", ("--x",), "h", flag=True)],  # a flag needs its bool default
    [Option("x", ("--x",), "h", off="--no-x")],
    [Option("x", ("--x",), "h", min=1)],  # min/max: int options only
    [Argument("a", "h", required=False), Argument("b", "h")],  # filled in order
    [Option("x", ("--x",), "h"), Argument("x", "h")],
])
def test_declarations_the_fast_parser_cannot_honour_are_refused(params):
    with pytest.raises(ValueError):
        argspec.command(*params)
