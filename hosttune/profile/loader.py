"""Load profiles from YAML: ``extends:`` inheritance, precise errors (file + key)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hosttune.errors import ProfileError
from hosttune.profile.loaded import LoadedProfile

# PyYAML is imported where a profile is parsed, not here: a cached profile loads without it
# (cache.py)

# the package directory itself (not importlib.resources): hosttune is never installed zipped,
# and the profile cache stats these files on every load
BUILTIN_DIR = Path(__file__).parent / "builtin"
MAX_DEPTH = 10
MAX_BYTES = 1 << 20  # the built-in profiles are ~4 KiB
MAX_NODES = 20_000  # YAML nodes after alias expansion (a "billion laughs" has 10**9)
MAX_NESTING = 32  # mappings/lists inside each other
PROFILE_SUFFIXES = (".yaml", ".yml")


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in BUILTIN_DIR.iterdir() if p.name.endswith(".yaml"))


def _is_path(ref: str) -> bool:
    """A file path, as opposed to the name of a built-in profile."""
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def _source(ref: str, base_dir: Path | None) -> tuple[str, Path]:
    """Resolve a profile reference to (display name, file)."""
    if _is_path(ref):
        p = Path(ref)
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return str(p), p
    return f"builtin:{ref}", BUILTIN_DIR / f"{ref}.yaml"


def _read_source(ref: str, base_dir: Path | None,
                 stamps: list[tuple[str, list[int] | None]],
                 referrer: str | None = None) -> tuple[str, str]:
    """(display name, YAML text); appends the file's stat, taken before reading, to stamps."""
    from hosttune.profile.cache import stamp

    name, path = _source(ref, base_dir)
    if name.startswith("builtin:") and not path.is_file():
        raise ProfileError(
            f"no built-in profile {ref!r} (built-in: {', '.join(builtin_names())}); "
            "give a path to use a file"
        )
    if not name.startswith("builtin:") and not path.name.endswith(PROFILE_SUFFIXES):
        # never parse (and quote in an error) a file that is not a profile: /etc/shadow,
        # /dev/zero
        if referrer is not None:
            raise ProfileError(f"{name}: a profile file name ends in .yaml or .yml",
                               file=referrer, key="extends")
        raise ProfileError("a profile file name ends in .yaml or .yml", file=name)
    stamps.append((str(path.absolute()), stamp(str(path))))
    return name, _read_text(name, path)


def _read_text(name: str, path: Path) -> str:
    """A profile's text: a regular file (a FIFO would block, /dev/urandom never ends) of at
    most MAX_BYTES, in UTF-8."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ProfileError(f"cannot read profile: {err.strerror}", file=name) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError("not a regular file", file=name)
        data = os.read(fd, MAX_BYTES + 1)
        while len(data) <= MAX_BYTES:
            more = os.read(fd, MAX_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as err:
        raise ProfileError(f"cannot read profile: {err.strerror}", file=name) from err
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ProfileError(f"larger than {MAX_BYTES >> 10} KiB: not a profile", file=name)
    if not data.strip():
        raise ProfileError("the file is empty", file=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProfileError(f"not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); "
                           "save the profile as UTF-8", file=name) from err
    return text.removeprefix("\ufeff")


def _node_count(node: Any, depth: int, memo: dict[int, int]) -> int:
    """Nodes of the document once aliases are expanded (memoised per node: a shared node is
    counted once per use without being walked again)."""
    import yaml

    if depth > MAX_NESTING:
        raise _TooDeep
    key = id(node)
    if key in memo:
        return memo[key]
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_node_count(c, depth + 1, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_node_count(k, depth + 1, memo) + _node_count(v, depth + 1, memo)
                 for k, v in node.value)
    memo[key] = n
    if n > MAX_NODES:
        raise _TooBig
    return n


class _TooDeep(Exception):
    pass


class _TooBig(Exception):
    pass


def _loader_class() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last
        one silently: a typo'd override would go unnoticed)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for k, _ in node.value:
                if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, yaml.ScalarNode):
                    continue
                ident = (k.tag, k.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {k.value!r} (first on line "
                        f"{seen[ident].line + 1})", k.start_mark)
                seen[ident] = k.start_mark
            return super().construct_mapping(node, deep=deep)

    return Loader


def _parse_yaml(name: str, text: str) -> dict[str, Any]:
    import yaml  # here, not at the top: a cached profile is loaded without it

    try:
        loader = _loader_class()(text)  # the reader refuses control characters already here
    except yaml.reader.ReaderError as err:
        raise ProfileError(f"invalid YAML: {err.reason} (character {err.character:#x} at "
                           f"offset {err.position})", file=name) from err
    try:
        node = loader.get_single_node()
        if node is not None:
            _node_count(node, 0, {})
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ProfileError(f"invalid YAML{where}: {problem}", file=name) from err
    except (_TooDeep, RecursionError) as err:
        raise ProfileError(f"nested more than {MAX_NESTING} levels deep", file=name) from err
    except _TooBig as err:
        raise ProfileError(f"more than {MAX_NODES} YAML nodes once aliases are expanded "
                           "(an alias bomb?)", file=name) from err
    finally:
        loader.dispose()
    if data is None:
        raise ProfileError("the profile is empty", file=name)
    if not isinstance(data, dict):
        raise ProfileError("a profile must be a YAML mapping", file=name)
    return data


def _merge(base: dict[str, Any], over: dict[str, Any], origin: dict[str, str], src: str,
           prefix: str = "") -> dict[str, Any]:
    """Deep merge: mappings merge key by key, everything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, src, key + ".")
        else:
            out[k] = v
            for o in [o for o in origin if o == key or o.startswith(key + ".")]:
                del origin[o]
            _record(v, key, src, origin)
    return out


def _record(v: Any, key: str, src: str, origin: dict[str, str]) -> None:
    origin[key] = src
    if isinstance(v, dict):
        for k, sub in v.items():
            _record(sub, f"{key}.{k}", src, origin)
    elif isinstance(v, list):
        for i, sub in enumerate(v):
            _record(sub, f"{key}.{i}", src, origin)


def load_raw(ref: str, base_dir: Path | None = None,
             stamps: list[tuple[str, list[int] | None]] | None = None,
             ) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The merged YAML of ``ref`` and its ``extends`` chain, the chain's display names (child
    first) and where each key came from. ``stamps`` collects the files' stats."""
    stamps = [] if stamps is None else stamps
    chain: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    cur: str | None = ref
    cur_base = base_dir
    while cur is not None:
        name, text = _read_source(cur, cur_base, stamps, chain[-1][0] if chain else None)
        if name in seen:
            raise ProfileError(f"extends loop: {' -> '.join([n for n, _ in chain] + [name])}",
                               file=chain[0][0] if chain else name, key="extends")
        seen.add(name)
        data = _parse_yaml(name, text)
        chain.append((name, data))
        if len(chain) > MAX_DEPTH:
            raise ProfileError("extends chain deeper than 10", file=name, key="extends")
        ext = data.get("extends")
        if ext is not None and not isinstance(ext, str):
            raise ProfileError("extends must be a profile name or path", file=name,
                               key="extends")
        cur = ext
        if not name.startswith("builtin:"):
            cur_base = Path(name).parent
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, data in reversed(chain):
        merged = _merge(merged, data, origin, name)
    merged["extends"] = chain[0][1].get("extends")
    return merged, [n for n, _ in chain], origin


# Every profile string may end up in a generated file (the profile name in headers and in the
# boot unit's Description=, values in sysctl.d, limits.d, modprobe.d, fstab, unit drop-ins):
# a newline there would start a line of its own (`kernel.core_pattern = |...`, `ExecStartPre=`).
# No control characters anywhere, then; `description` (never written but into the profile copy,
# as YAML) may span lines.
_MULTILINE_KEYS = frozenset({"description"})


def _control_char(text: str, multiline: bool) -> str | None:
    for c in text:
        if (c in "\n\t" and multiline) or c.isprintable() or c == " ":
            continue
        return c
    return None


def _string_problem(v: Any, key: str) -> tuple[str, str] | None:
    """(key, message) for the first string with a control character, or None."""
    if isinstance(v, str):
        c = _control_char(v, key.rsplit(".", 1)[-1] in _MULTILINE_KEYS)
        if c is not None:
            return key, (f"control character {c!r} at offset {v.index(c)}: a value is "
                         "written into configuration files and must stay on one line")
    elif isinstance(v, dict):
        for k, sub in v.items():
            sk = f"{key}.{k}" if key else str(k)
            if isinstance(k, str) and _control_char(k, False) is not None:
                return sk, "control character in a key"
            found = _string_problem(sub, sk)
            if found:
                return found
    elif isinstance(v, list):
        for i, sub in enumerate(v):
            found = _string_problem(sub, f"{key}.{i}")
            if found:
                return found
    return None


def load_profile(ref: str, base_dir: Path | None = None) -> LoadedProfile:
    """Load a built-in name or a YAML path, resolving ``extends``. Raises ProfileError.

    The profile is validated into the schema's Structs, or decoded into the very same Structs
    from the cache (cache.py: no PyYAML on a hit)."""
    from hosttune.profile import cache

    relative = _is_path(ref) and not ref.startswith("/")
    base = str((base_dir or Path.cwd()).absolute()) if relative else ""
    key = cache.cache_key(ref, base)
    hit = cache.load(key)
    if hit is not None:
        return LoadedProfile(hit.profile, tuple(hit.files), hit.origin, hit.raw)
    stamps: list[tuple[str, list[int] | None]] = []
    merged, files, origin = load_raw(ref, base_dir, stamps)
    if "name" not in merged:
        merged["name"] = Path(files[0]).stem if not files[0].startswith("builtin:") else ref
    import msgspec

    from hosttune.profile.schema import Profile

    bad = _string_problem(merged, "")
    if bad:
        lp = LoadedProfile(Profile(name="?"), tuple(files), origin, merged)
        raise lp.error(*bad)
    try:
        # strict=False: '5' for an int, 1.0 for 1, 0/1 and 'true'/'false' for a boolean, as
        # operators write them (never a boolean for a number, nor a number for a string)
        profile = msgspec.convert(merged, Profile, strict=False)
    except msgspec.ValidationError as err:
        from hosttune.profile.explain import explain

        where, msg = explain(err, merged, Profile)
        lp = LoadedProfile(Profile(name="?"), tuple(files), origin, merged)
        raise lp.error(where, msg) from err
    cache.store(key, stamps, cache.Entry(profile, files, origin, merged))
    return LoadedProfile(profile, tuple(files), origin, merged)
