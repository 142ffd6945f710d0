"""The arguments of the commands that have a typer-free fast path, declared once.

`hosttune audit` and `hosttune models load|list|verify` have a whole-process time budget, and
typer + click cost ~0.1 s to import and build. So each of these commands is declared here, as
data, and both ways in are derived from that one declaration:

- `parse`: click's parsing rules, implemented once for any declaration, for main()'s fast
  paths (audit_cmd, models_fast). It answers only the plain forms and returns None for
  anything else (--help, a typo, a missing or bad value), which typer then parses and explains.
- `typer_params` / `typer_info`: the same declaration as the typer command's parameters, with
  the help texts, env vars and metavars that --help shows.

tests/test_argspec.py checks with hypothesis that the two read every generated argv alike.
This module imports nothing heavy; typer only inside the functions the typer commands call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


# NamedTuples, not dataclasses: two frozen dataclasses cost ~2.5 ms more to create on a 2-vCPU
# VM, at every start of audit (0.3 s budget)
class Option(NamedTuple):
    """An option. ``value_type`` (str, int or Path) is both typer's annotation and what the
    fast parser converts a value with; ``dest`` is the keyword of the command's run function."""

    dest: str
    flags: tuple[str, ...]  # "--profile", "-p"
    help: str
    value_type: type = str
    default: Any = None
    flag: bool = False  # takes no value: given means True...
    off: str | None = None  # ...and this negative form False (--no-checksum)
    repeatable: bool = False  # every occurrence adds a value; none given: None, as typer
    envvar: str | None = None  # the value when the option is not given (and it is not empty)
    metavar: str | None = None
    min: int | None = None
    max: int | None = None


class Argument(NamedTuple):
    """A positional argument (a str: every one hosttune has)."""

    dest: str
    help: str
    required: bool = True


Param = Option | Argument
Spec = tuple[Param, ...]


def command(*params: Param) -> Spec:
    """A command's declaration, refused when it asks for what `parse` does not implement (it
    would parse it unlike click): click splits a repeatable option's env var and reads a flag's
    as a boolean word; positional arguments are filled in order, so optional ones come last."""
    for p in params:
        if isinstance(p, Argument):
            continue
        if p.envvar and (p.flag or p.repeatable):
            raise ValueError(f"{p.dest}: an env var only for an option with one value")
        if p.flag != isinstance(p.default, bool) or (p.off and not p.flag):
            raise ValueError(f"{p.dest}: a flag, and only a flag, has a bool default")
        if (p.min is not None or p.max is not None) and p.value_type is not int:
            raise ValueError(f"{p.dest}: min/max only for an int option")
    required = [p.required for p in params if isinstance(p, Argument)]
    if required != sorted(required, reverse=True):
        raise ValueError("an optional argument before a required one")
    if len({p.dest for p in params}) != len(params):
        raise ValueError("two parameters with one dest")
    return params


# --- the fast parser --------------------------------------------------------------------------
def parse(spec: Spec, argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """``argv`` as the keywords of the command's run function, read as click reads it: a later
    option wins, a repeatable one collects its values, ``--opt=value`` and ``--opt value``,
    positional arguments anywhere, and an option not given falls back to its (non-empty) env
    var, then to its default. None for anything that is not such a plain form: typer then
    parses it and explains what is wrong. When in doubt None, for typer is slower, not wrong."""
    scanned = _scan(spec, argv)
    if scanned is None:
        return None
    given, positional = scanned
    arguments = [p for p in spec if isinstance(p, Argument)]
    if not sum(a.required for a in arguments) <= len(positional) <= len(arguments):
        return None
    given.update(zip((a.dest for a in arguments), positional, strict=False))
    out: dict[str, Any] = {}
    for p in spec:
        if p.dest in given:
            out[p.dest] = given[p.dest]
        elif isinstance(p, Option) and p.envvar and environ.get(p.envvar):
            value = _convert(p, environ[p.envvar])
            if value is None:
                return None
            out[p.dest] = value
        else:
            out[p.dest] = p.default if isinstance(p, Option) else None
    return out


def _scan(spec: Spec, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]] | None:
    """The options given in ``argv`` ({dest: value}) and the positional arguments in order."""
    by_flag = {f: p for p in spec if isinstance(p, Option)
               for f in (*p.flags, *([p.off] if p.off else []))}
    given: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            continue
        # click splits --opt=value only; a short option's attached value (-pX, -p=X), "--" and
        # clustered short options are left to typer
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = by_flag.get(name)
        if opt is None or (opt.flag and eq):
            return None
        if opt.flag:
            given[opt.dest] = name != opt.off
            continue
        if not eq:
            # click takes the next word as the value even when it looks like an option
            # (--root --json: root '--json'); more likely a slip than meant, so not answered
            # here (typer reads it alike, only slower)
            if i == len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
            i += 1
        converted = _convert(opt, value)
        if converted is None:
            return None
        if opt.repeatable:
            given.setdefault(opt.dest, []).append(converted)
        else:
            given[opt.dest] = converted
    return given, positional


def _convert(opt: Option, value: str) -> Any:
    """``value`` as typer converts it for ``opt``, or None where typer might differ or refuse.
    An int is plain ASCII digits with an optional sign: typer (pydantic) also takes "3.0" and
    refuses other scripts' digits, which Python's int() takes."""
    if opt.value_type is not int:
        return opt.value_type(value)
    digits = value[1:] if value[:1] in ("+", "-") else value
    if not (digits.isascii() and digits.isdigit()):
        return None
    n = int(value)
    if (opt.min is not None and n < opt.min) or (opt.max is not None and n > opt.max):
        return None
    return n


# --- the typer side ---------------------------------------------------------------------------
def hint(p: Param) -> Any:
    """The Python type typer sees for ``p`` (the value the run function gets)."""
    if isinstance(p, Argument):
        return str if p.required else str | None
    if p.flag:
        return bool
    if p.repeatable:
        return list[p.value_type] | None  # type: ignore[name-defined]
    return p.value_type if p.default is not None else p.value_type | None


def typer_info(p: Param) -> Any:
    """``p`` as typer's typer.Option(...) / typer.Argument(...), for Annotated[hint, ...]."""
    import typer

    if isinstance(p, Argument):
        return typer.Argument(help=p.help)
    decls = (f"{p.flags[0]}/{p.off}", *p.flags[1:]) if p.off else p.flags
    return typer.Option(*decls, help=p.help, metavar=p.metavar, envvar=p.envvar, min=p.min,
                        max=p.max)


def annotated(p: Param) -> Any:
    """``p`` as typer's parameter annotation: Annotated[type, typer.Option(...)]."""
    from typing import Annotated

    return Annotated[hint(p), typer_info(p)]


def typer_params(spec: Spec) -> Callable[[F], F]:
    """Give a typer command function ``fn(**args)`` the parameters of ``spec``. typer reads a
    command's parameters from inspect.signature (which honours ``__signature__``) and its
    type hints; both are set here, in the order of ``spec``, the order of --help."""
    import inspect

    params = [inspect.Parameter(
        p.dest, inspect.Parameter.KEYWORD_ONLY, annotation=annotated(p),
        default=(p.default if isinstance(p, Option)
                 else inspect.Parameter.empty if p.required else None))
        for p in spec]

    def wrap(fn: F) -> F:
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return wrap


# --- the declarations -------------------------------------------------------------------------
PROFILE = Option("profile", ("--profile", "-p"), "Built-in profile name or YAML path "
                 "(default: $HOSTTUNE_PROFILE, else 'inference').", envvar="HOSTTUNE_PROFILE")
ROOT = Option("root", ("--root",), "Work on a filesystem tree (image, chroot, fixture) instead "
              "of /: paths map under DIR, no command is run.", value_type=Path, metavar="DIR",
              envvar="HOSTTUNE_ROOT")
JSON = Option("json_out", ("--json",), "Machine-readable output.", flag=True, default=False)
ONLY = Option("only", ("--only",), "Limit to these tunable families (repeatable).",
              repeatable=True)
MOUNT = Option("mount", ("--mount", "-m"), "hugetlbfs mount of the store (default: the "
               "profile's models.mount, else the only hugetlbfs mount).")

AUDIT = command(PROFILE, ROOT, JSON, ONLY)

MODELS_LOAD = command(
    Argument("file", "Model file to load (GGUF, safetensors, ...)."),
    Option("name", ("--name", "-n"), "Name in the store (default: file name)."),
    MOUNT,
    Option("node", ("--node",), "Put the pages on this NUMA node (memory policy, checked).",
           value_type=int),
    Option("replace", ("--replace",), "Replace a stored model of the same name (atomically, "
           "after the copy).", flag=True, default=False),
    Option("checksum", ("--checksum",), "Record an xxh3 checksum for `models verify`.",
           flag=True, off="--no-checksum", default=True),
    Option("threads", ("--threads",), "Copy threads (default: up to 4).", value_type=int,
           min=1, max=64),
    PROFILE, ROOT, JSON,
)
MODELS_LIST = command(MOUNT, PROFILE, ROOT, JSON)
MODELS_VERIFY = command(Argument("name", "Model name (default: all).", required=False),
                        MOUNT, PROFILE, ROOT, JSON)
MODELS: dict[str, Spec] = {"load": MODELS_LOAD, "list": MODELS_LIST, "verify": MODELS_VERIFY}
