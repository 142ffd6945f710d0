"""The power-cut scenario's plan and console matching (tests/vm/test_power_cut.py), in a module
of their own so that the harness's fast tests (test_harness.py) check them without importing
a test module."""

from __future__ import annotations

import re
from collections.abc import Callable


def plan(n: int) -> list[tuple[str, float]]:
    """n cut runs: three quarters in apply, a quarter in rollback, evenly spread."""
    n_rb = max(1, n // 4)
    n_ap = n - n_rb
    return ([("apply", (i + 0.5) / n_ap) for i in range(n_ap)]
            + [("rollback", (i + 0.5) / n_rb) for i in range(n_rb)])


# a cut run's announcement on the console: "HT-CUT-AT apply 3:before of 46"
CUT_AT = re.compile(r"HT-CUT-AT (\w+) (\d+:\w+) of (\d+)")


def announced_points(console: str) -> dict[str, str]:
    """run -> its step points, as announced on a boot's console: every apply from pristine
    (and every rollback of a full apply) has as many, so later boots reuse the count instead
    of asking `hosttune plan` again under TCG."""
    return {m[1]: m[3] for m in CUT_AT.finditer(console)}


def cut_matcher() -> Callable[[str], bool]:
    def match(console: str) -> bool:
        m = CUT_AT.search(console)
        if m is None:
            return False
        return f"HOSTTUNE-STEP {m.group(1)} {m.group(2)}" in console[m.end():]
    return match
