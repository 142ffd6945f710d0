"""Parsers of /proc, /sys and /etc files: small pure functions over literal file contents.

Each is tested on real file contents in tests/test_parsers.py (psutil habit)."""

from __future__ import annotations

import re

import msgspec

# --- /proc/meminfo ----------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo -> {key: value}; values with a 'kB' unit are converted to bytes.

    HugePages_* lines are page counts (no unit) and stay counts."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            val = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1] == "kB":
            val *= 1024
        out[key.strip()] = val
    return out


# --- /proc/swaps ------------------------------------------------------------------------------


class SwapDevice(msgspec.Struct, frozen=True):
    path: str
    type: str  # "partition" | "file"
    size_bytes: int
    used_bytes: int
    priority: int


def _unescape_octal(s: str) -> str:
    # /proc/swaps and /proc/self/mountinfo escape space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def parse_swaps(text: str) -> list[SwapDevice]:
    """/proc/swaps: header line, then 'Filename Type Size Used Priority' (sizes in KiB).

    A deleted swap file shows as '/swapfile\\040(deleted)' - kept as is after unescaping."""
    out: list[SwapDevice] = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            out.append(SwapDevice(_unescape_octal(parts[0]), parts[1], int(parts[2]) * 1024,
                                  int(parts[3]) * 1024, int(parts[4])))
        except ValueError:
            continue
    return out


# --- /proc/<pid>/limits -----------------------------------------------------------------------


def parse_limits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """/proc/<pid>/limits -> {"Max locked memory": (soft, hard)}; None means unlimited.

    Columns are aligned with spaces; the limit name itself contains spaces, so split on the
    fixed header positions instead of whitespace."""
    lines = text.splitlines()
    if not lines:
        return {}
    header = lines[0]
    soft_col = header.find("Soft Limit")
    hard_col = header.find("Hard Limit")
    units_col = header.find("Units")
    out: dict[str, tuple[int | None, int | None]] = {}
    for line in lines[1:]:
        if soft_col < 0 or hard_col < 0:
            break
        name = line[:soft_col].strip()
        soft = line[soft_col:hard_col].strip()
        hard = line[hard_col:units_col if units_col > 0 else None].strip()

        def conv(v: str) -> int | None:
            return None if v == "unlimited" else int(v)

        try:
            out[name] = (conv(soft), conv(hard))
        except ValueError:
            continue
    return out


# --- CPU lists --------------------------------------------------------------------------------


MAX_CPUS = 8192  # CONFIG_NR_CPUS is at most 8192 (arch/x86/Kconfig, MAXSMP)


def _cpu_id(s: str, part: str) -> int:
    if not s.strip().isdigit():  # also refuses '-1', '+3', '' and '1e9'
        raise ValueError(f"bad CPU number in {part!r}")
    n = int(s)
    if n >= MAX_CPUS:
        raise ValueError(f"CPU {n} in {part!r}: no kernel has more than {MAX_CPUS} CPUs")
    return n


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (sysfs cpulist format; stride 'a-b:s/g' too).

    ValueError for anything else, and for CPU numbers no kernel has (a range such as
    0-99999999999 would otherwise be built in memory)."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return []
    if len(text) > 65536:
        raise ValueError("a CPU list longer than 64 KiB")
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            rng, _, stride = part.partition(":")
            a, b = rng.split("-", 1)
            lo, hi = _cpu_id(a, part), _cpu_id(b, part)
            if hi < lo:
                raise ValueError(f"bad CPU range {part!r}")
            if stride:
                used_s, _, group_s = stride.partition("/")
                used, group = _cpu_id(used_s, part), _cpu_id(group_s, part)
                if group == 0:
                    raise ValueError(f"bad CPU stride {part!r}")
                for base in range(lo, hi + 1, group):
                    out.update(c for c in range(base, min(base + used, hi + 1)))
            else:
                out.update(range(lo, hi + 1))
        else:
            out.add(_cpu_id(part, part))
    return sorted(out)


def format_cpulist(cpus: list[int] | set[int] | tuple[int, ...]) -> str:
    """[0,1,2,3,8] -> '0-3,8'."""
    s = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)


# --- fstab ------------------------------------------------------------------------------------


class FstabEntry(msgspec.Struct, frozen=True):
    lineno: int  # 1-based
    spec: str
    file: str
    vfstype: str
    options: str
    freq: str = "0"
    passno: str = "0"


# One prefix for every fstab line hosttune comments out (swap entries it disabled, an operator's
# hugetlbfs entry its own replaces): rollback restores exactly these lines, and the doctor does
# not mistake them for an over-broad hand edit.
FSTAB_DISABLED = "#hosttune-disabled# "


def parse_fstab(text: str) -> list[FstabEntry]:
    """Active (uncommented) fstab entries with their line numbers."""
    out: list[FstabEntry] = []
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) < 3:
            continue
        parts += ["defaults", "0", "0"][len(parts) - 3:]
        out.append(FstabEntry(i, _unescape_octal(parts[0]), _unescape_octal(parts[1]),
                              parts[2], parts[3], parts[4], parts[5]))
    return out


# --- sysctl.conf ------------------------------------------------------------------------------


class SysctlAssignment(msgspec.Struct, frozen=True):
    key: str  # normalised: dots, e.g. vm.swappiness
    value: str
    lineno: int
    ignore_errors: bool = False  # '-key = value' (systemd-sysctl)


def normalise_sysctl_key(key: str) -> str:
    # sysctl.d(5): "/" and "." are interchangeable as separators; first separator decides.
    key = key.strip()
    if "/" in key and ("." not in key or key.index("/") < key.index(".")):
        return key.replace("/", ".")
    return key


def parse_sysctl_conf(text: str) -> list[SysctlAssignment]:
    """sysctl.d(5) syntax: 'key = value', comments start with # or ; ."""
    out: list[SysctlAssignment] = []
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        key, sep, value = s.partition("=")
        if not sep:
            continue
        key = key.strip()
        ignore = key.startswith("-")
        if ignore:
            key = key[1:]
        out.append(SysctlAssignment(normalise_sysctl_key(key), value.strip(), i, ignore))
    return out


def sysctl_key_to_path(key: str) -> str:
    return "/proc/sys/" + normalise_sysctl_key(key).replace(".", "/")


def normalise_sysctl_value(value: str) -> str:
    """Kernel prints multi-value sysctls tab-separated; files use spaces."""
    return " ".join(value.split())


# --- /proc/self/mountinfo ---------------------------------------------------------------------


class Mount(msgspec.Struct, frozen=True):
    mount_point: str
    fstype: str
    source: str
    options: dict[str, str]  # mount options + super options merged; flag options map to ""


def parse_mountinfo(text: str) -> list[Mount]:
    """proc(5) mountinfo: 'id parent maj:min root mnt opts [optional...] - fstype src superopts'."""
    out: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lp = left.split()
        rp = right.split()
        if len(lp) < 6 or len(rp) < 2:
            continue
        opts: dict[str, str] = {}
        for o in (lp[5] + "," + (rp[2] if len(rp) > 2 else "")).split(","):
            if not o:
                continue
            k, _, v = o.partition("=")
            opts[k] = v
        out.append(Mount(_unescape_octal(lp[4]), rp[0], _unescape_octal(rp[1]), opts))
    return out


# --- /proc/cmdline ----------------------------------------------------------------------------


def parse_cmdline(text: str) -> list[str]:
    """Kernel command line -> tokens (quoted values kept together), stopping at '--'
    (the rest belongs to init)."""
    import shlex

    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    if "--" in tokens:
        tokens = tokens[: tokens.index("--")]
    return tokens


# --- sizes ------------------------------------------------------------------------------------


def parse_kb_dirname(name: str) -> int:
    """'hugepages-2048kB' -> 2097152 bytes."""
    m = re.fullmatch(r"hugepages-(\d+)kB", name)
    if not m:
        raise ValueError(f"not a hugepages directory: {name}")
    return int(m.group(1)) * 1024


def parse_bracketed_choice(text: str) -> tuple[str | None, list[str]]:
    """'always [madvise] never' -> ('madvise', ['always', 'madvise', 'never'])."""
    choices: list[str] = []
    selected: str | None = None
    for tok in text.split():
        if tok.startswith("[") and tok.endswith("]"):
            tok = tok[1:-1]
            selected = tok
        choices.append(tok)
    return selected, choices


_MEMPARSE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)")


def memparse(text: str) -> tuple[int, str] | None:
    """A size as the kernel reads mount options and boot parameters (lib/cmdline.c memparse):
    a C integer (0x hex, leading-0 octal) and an optional K/M/G/T/P/E suffix (binary); the
    rest of the text is returned, as the caller decides what may follow ('%', 'iB', ...).
    None when no number starts the text (the kernel then reads 0)."""
    m = _MEMPARSE.match(text)
    if m is None:
        return None
    number, suffix = m.groups()
    value = int(number, 0) if not number.startswith("0") or number.lower().startswith("0x") \
        else int(number, 8)
    shift = 10 * ("kmgtpe".index(suffix.lower()) + 1) if suffix else 0
    return value << shift, text[m.end():]
