"""Load profiles from YAML: ``extends:`` inheritance, precise errors (file + key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hosttune.errors import ProfileError
from hosttune.profile.loaded import LoadedProfile

# pydantic (hosttune.profile.schema) is imported where a profile is validated, not here: a
# cached profile loads without it (cache.py)

# the package directory itself (not importlib.resources): hosttune is never installed zipped,
# and the profile cache stats these files on every load
BUILTIN_DIR = Path(__file__).parent / "builtin"
MAX_DEPTH = 10


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
                 stamps: list[tuple[str, list[int] | None]]) -> tuple[str, str]:
    """(display name, YAML text); appends the file's stat, taken before reading, to stamps."""
    from hosttune.profile.cache import stamp

    name, path = _source(ref, base_dir)
    if name.startswith("builtin:") and not path.is_file():
        raise ProfileError(
            f"no built-in profile {ref!r} (built-in: {', '.join(builtin_names())}); "
            "give a path to use a file"
        )
    stamps.append((str(path.absolute()), stamp(str(path))))
    try:
        return name, path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError(f"cannot read profile: {err.strerror}", file=name) from err


def _parse_yaml(name: str, text: str) -> dict[str, Any]:
    import yaml  # here, not at the top: a cached profile is loaded without it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ProfileError(f"invalid YAML{where}: {problem}", file=name) from err
    if data is None:
        data = {}
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
        name, text = _read_source(cur, cur_base, stamps)
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


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        # pydantic puts union-member names (e.g. 'str', 'int', 'literal[...]') in loc; drop them
        if isinstance(p, str) and (p in {"str", "int", "float", "bool", "dict[int,union[str,int]]"}
                                   or p.startswith(("literal[", "function-", "dict["))):
            continue
        parts.append(str(p))
    return ".".join(parts)


def load_profile(ref: str, base_dir: Path | None = None, *,
                 views: bool = False) -> LoadedProfile:
    """Load a built-in name or a YAML path, resolving ``extends``. Raises ProfileError.

    ``views``: a cached profile comes back as read-only `view.View` objects, without
    importing pydantic (for audit, which only reads it); a profile that is not cached yet is
    validated and comes back as the pydantic models either way."""
    from hosttune.profile import cache

    relative = _is_path(ref) and not ref.startswith("/")
    base = str((base_dir or Path.cwd()).absolute()) if relative else ""
    key = cache.cache_key(ref, base)
    hit = cache.load(key, views=views)
    if hit is not None:
        return LoadedProfile(hit.profile, tuple(hit.files), hit.origin, hit.raw)
    stamps: list[tuple[str, list[int] | None]] = []
    merged, files, origin = load_raw(ref, base_dir, stamps)
    if "name" not in merged:
        merged["name"] = Path(files[0]).stem if not files[0].startswith("builtin:") else ref
    from pydantic import ValidationError

    from hosttune.profile.schema import Profile

    try:
        profile = Profile.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        where = _loc_to_key(first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key (not part of the profile schema)"
        got = first.get("input")
        if first["type"] != "extra_forbidden" and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        more = len(err.errors()) - 1
        if more:
            msg += f"; and {more} more error{'s' if more > 1 else ''}"
        lp = LoadedProfile(Profile.model_construct(name="?"), tuple(files), origin, merged)
        raise lp.error(where, msg) from err
    cache.store(key, stamps, cache.Entry(profile, files, origin, merged))
    return LoadedProfile(profile, tuple(files), origin, merged)
