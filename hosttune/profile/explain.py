"""A msgspec ValidationError of a profile, as the loader's one line: the dotted key path
(``hugepages.pools.0.size``), what was expected, and the value that was given.

msgspec says where a value failed as a JSON path: ``Expected `int`, got `str` - at
`$.hugepages.pools[0].retries```. It does not name mapping keys: a value under any key of a
mapping is ``[...]`` (``$.gpu.devices[...].power_limit``), and a bad key is ``- at `key` in
`$.hugepages.pools[0].nodes```. `candidates` follows such a path through the merged YAML and
returns *every* value it can stand for, each with its real key path; `explain` keeps those that
fail on their own (so ``nodes: {0: 1GiB, null: 5}`` names the null key, and a bad value under a
falsy key such as 0 is found too). What was expected is read from the schema's types, so the
message says ``'group' or 'everyone'`` where msgspec says ``Invalid enum value``.

Keys that are not plain names are shown as ``<a key that is not a name>``: they may be lines of
some other file given as a profile (a shadow entry parses as a YAML key), and errors never print
another file's lines. Imported only when a profile is invalid."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import msgspec

_KEY_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,100}")
_SEGMENT_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[(\.\.\.)\]")
_MISSING = object()  # a key not in the data (None is a value like any other)
NOT_A_NAME = "<a key that is not a name>"
UNKNOWN_KEY = "unknown key (not part of the profile schema)"


def key_part(k: Any) -> str:
    """One part of a dotted key path: a list index, a plain name, or NOT_A_NAME."""
    text = str(k)
    return text if _KEY_RE.fullmatch(text) else NOT_A_NAME


def show_key(k: Any) -> str:
    """A mapping key as the value it is: repr for a non-string (None, 1.5, True) and for a
    plain name, NOT_A_NAME for any other string."""
    if isinstance(k, str):
        return repr(k) if _KEY_RE.fullmatch(k) else NOT_A_NAME
    return repr(k)


class Candidate(msgspec.Struct, frozen=True):
    """One place in the data that a msgspec path may mean."""

    parts: tuple[Any, ...]  # the real keys and indexes from the root
    value: Any  # the data there
    type: Any  # the schema's type there (typing form, Annotated kept)

    @property
    def key(self) -> str:
        return ".".join(key_part(p) for p in self.parts)


def parse_path(path: str) -> list[str | int | None]:
    """``$.a[0][...].b`` -> ['a', 0, None, 'b'] (None: any key of a mapping)."""
    out: list[str | int | None] = []
    pos = 1  # after '$'
    while pos < len(path):
        m = _SEGMENT_RE.match(path, pos)
        if m is None:
            raise ValueError(f"not a msgspec path: {path!r}")
        out.append(m.group(1) if m.group(1) else int(m.group(2)) if m.group(2) else None)
        pos = m.end()
    return out


# --- the schema's types ------------------------------------------------------------------
def _strip(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    """(the type inside any Annotated, the Meta constraints found on the way)."""
    metas: list[msgspec.Meta] = []
    while typing.get_origin(tp) is typing.Annotated:
        metas += [m for m in tp.__metadata__ if isinstance(m, msgspec.Meta)]
        tp = tp.__origin__
    return tp, metas


def members(tp: Any) -> list[Any]:
    """The members of a union (each still Annotated where it was); [tp] for any other type."""
    base, _ = _strip(tp)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(base) for m in members(arg)]
    return [tp]


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_field(tp: Any, name: str) -> Any:
    for m in members(tp):
        base, _ = _strip(m)
        if _is_struct(base):
            for f in msgspec.structs.fields(base):
                if f.name == name:
                    return f.type
    return None


def _item(tp: Any, index: int) -> Any:
    for m in members(tp):
        base, _ = _strip(m)
        origin, args = typing.get_origin(base), typing.get_args(base)
        if origin is list and args:
            return args[0]
        if origin is tuple and args:
            return args[0] if len(args) == 2 and args[1] is Ellipsis else \
                args[min(index, len(args) - 1)]
    return None


def _mapping(tp: Any) -> tuple[Any, Any] | None:
    """(key type, value type) of the mapping member of ``tp``, if it has one."""
    for m in members(tp):
        base, _ = _strip(m)
        if typing.get_origin(base) is dict:
            k, v = typing.get_args(base)
            return k, v
    return None


def _bounds(metas: list[msgspec.Meta]) -> str:
    ge = next((m.ge for m in metas if m.ge is not None), None)
    le = next((m.le for m in metas if m.le is not None), None)
    if ge is not None and le is not None:
        return f" from {ge} to {le}"
    if ge is not None:
        return f" >= {ge}"
    if le is not None:
        return f" <= {le}"
    return ""


def describe(tp: Any) -> str:
    """What ``tp`` accepts, in words: "an integer >= 1 or null", "'2M' or '1G'"."""
    parts: list[str] = []
    ms = members(tp)
    has_int = any(_strip(m)[0] is int for m in ms)
    for m in ms:
        base, metas = _strip(m)
        if base is bool:
            # a bool beside int is in the type only to be refused by name (sysctl values)
            words = [] if has_int else ["a boolean (true or false)"]
        elif base is int:
            words = ["an integer" + _bounds(metas)]
        elif base is float:
            words = ["a number"]
        elif base is str:
            pattern = next((x.pattern for x in metas if x.pattern is not None), None)
            words = ["a string" + (f" matching {pattern}" if pattern else "")]
        elif base is type(None):
            words = ["null"]
        elif typing.get_origin(base) is typing.Literal:
            words = [repr(a) for a in typing.get_args(base)]
        elif typing.get_origin(base) is tuple:
            words = [f"a list of {len(typing.get_args(base))}"]
        elif typing.get_origin(base) is list:
            words = ["a list"]
        elif typing.get_origin(base) is dict or _is_struct(base):
            words = ["a mapping"]
        else:
            words = [getattr(base, "__name__", str(base))]
        parts += [w for w in words if w not in parts]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def fails(value: Any, tp: Any) -> bool:
    """Whether ``value`` is refused as ``tp`` (the loader's conversion rules)."""
    try:
        msgspec.convert(value, tp, strict=False)
    except (msgspec.ValidationError, TypeError, ValueError):
        return True
    return False


# --- following a path through the data -----------------------------------------------------
def candidates(path: list[str | int | None], data: Any, root: Any) -> list[Candidate]:
    """Every place in ``data`` (typed ``root``) the msgspec path may mean: one per key of each
    mapping the path crosses with ``[...]``, in the mapping's order. A place whose data is
    missing (a default) is left out."""
    cands = [Candidate((), data, root)]
    for seg in path:
        nxt: list[Candidate] = []
        for c in cands:
            if isinstance(seg, str):
                if isinstance(c.value, dict):
                    v = c.value.get(seg, _MISSING)
                    if v is not _MISSING:
                        nxt.append(Candidate((*c.parts, seg), v, _struct_field(c.type, seg)))
            elif isinstance(seg, int):
                if isinstance(c.value, list | tuple) and seg < len(c.value):
                    nxt.append(Candidate((*c.parts, seg), c.value[seg], _item(c.type, seg)))
            elif isinstance(c.value, dict):
                kv = _mapping(c.type)
                for k, v in c.value.items():
                    nxt.append(Candidate((*c.parts, k), v, kv[1] if kv else None))
        cands = nxt
    return cands


def shown_value(v: Any) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list | tuple):
        return f"a list of {len(v)}"
    return repr(v)


def _with_got(message: str, value: Any) -> str:
    """A rule's message and the value, unless the message quotes it already."""
    return message if repr(value) in message else f"{message} (got {shown_value(value)})"


_WHERE_RE = re.compile(
    r" - at (`key` in )?`(\$(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\[\.\.\.\])*)`\Z")


def explain(err: msgspec.ValidationError, data: dict[str, Any], root: Any) -> tuple[str, str]:
    """(dotted key path, message) for the loader's ProfileError."""
    text = str(err)
    m = _WHERE_RE.search(text)
    msg, at_key, path = (text[:m.start()], bool(m.group(1)), parse_path(m.group(2))) if m \
        else (text, False, [])
    cands = candidates(path, data, root)
    if msg.startswith("Object contains unknown field `"):
        # the key from the data, not from the message: the message quotes the key as given
        # (another file's line, perhaps), and a key can itself look like ' - at `$.x`'
        found = next((k for c in cands for k in _unknown_keys(c)), None) or \
            next(_unknown_anywhere(Candidate((), data, root)), None)
        return (found.key if found else ""), UNKNOWN_KEY
    m = re.fullmatch(r"Object missing required field `([A-Za-z_][A-Za-z0-9_]*)`", msg)
    if m and cands:
        return ".".join(p for p in (cands[0].key, m.group(1)) if p), "required key missing"
    if not cands:
        return "", msg
    if at_key:
        return _explain_key(cands, msg)
    cause = err.__cause__
    if isinstance(cause, ValueError | TypeError):  # a rule of the section (__post_init__)
        return _explain_rule(cands, cause)
    bad = [c for c in cands if c.type is None or fails(c.value, c.type)] or cands
    c = bad[0]
    if c.type is None:
        return c.key, _with_got(msg, c.value)
    return c.key, f"expected {describe(c.type)} (got {shown_value(c.value)})"


def _struct_fields(tp: Any) -> set[str] | None:
    for m in members(tp):
        base, _ = _strip(m)
        if _is_struct(base):
            return {f.name for f in msgspec.structs.fields(base)}
    return None


def _unknown_keys(c: Candidate) -> list[Candidate]:
    """The keys of a section's mapping that the section does not have."""
    names = _struct_fields(c.type)
    if names is None or not isinstance(c.value, dict):
        return []
    return [Candidate((*c.parts, k), v, None) for k, v in c.value.items() if k not in names]


def _unknown_anywhere(c: Candidate) -> Iterator[Candidate]:
    """Unknown keys anywhere below ``c`` (depth first, in the data's order)."""
    yield from _unknown_keys(c)
    value, tp = c.value, c.type
    if isinstance(value, dict):
        names = _struct_fields(tp)
        kv = _mapping(tp)
        for k, v in value.items():
            sub = _struct_field(tp, k) if names is not None and k in names else \
                kv[1] if kv is not None and names is None else None
            if sub is not None:
                yield from _unknown_anywhere(Candidate((*c.parts, k), v, sub))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            sub = _item(tp, i)
            if sub is not None:
                yield from _unknown_anywhere(Candidate((*c.parts, i), v, sub))


def _explain_key(cands: list[Candidate], msg: str) -> tuple[str, str]:
    for c in cands:
        if not isinstance(c.value, dict):
            continue
        kv = _mapping(c.type)
        if kv is None:  # a section's keys are names (strings): any other key is unknown
            for k in c.value:
                if not isinstance(k, str):
                    return ".".join(p for p in (c.key, key_part(k)) if p), UNKNOWN_KEY
            continue
        for k in c.value:
            if fails(k, kv[0]):
                return c.key, f"expected {describe(kv[0])} as a key (got {show_key(k)})"
    return cands[0].key, msg


def _explain_rule(cands: list[Candidate], cause: BaseException) -> tuple[str, str]:
    from hosttune.profile.schema import FieldError

    bad = [c for c in cands if c.type is None or fails(c.value, c.type)] or cands
    c = bad[0]
    msg = str(cause)
    if not isinstance(cause, FieldError):
        return c.key, msg
    key = ".".join(p for p in (c.key, key_part(cause.field)) if p)
    value = c.value.get(cause.field, _MISSING) if isinstance(c.value, dict) else _MISSING
    if value is _MISSING or isinstance(value, dict | list):
        return key, msg
    return key, _with_got(msg, value)
