"""What a test run leaves on the machine: its own profile cache (removed at the end), the
temporary trees of failed tests only, of the last run only."""

from __future__ import annotations

import os
from pathlib import Path

from hosttune.profile import cache
from tests import fakehost
from tests.conftest import USER_CACHE, run_cli


def test_suite_uses_its_own_profile_cache(tmp_path: Path) -> None:
    d = cache.cache_dir()
    assert d is not None
    assert not str(d).startswith(os.path.join(USER_CACHE, "")), d
    user = Path(USER_CACHE) / "hosttune" / "profiles"
    before = sorted(os.listdir(user)) if user.is_dir() else []
    prof = tmp_path / "p.yaml"
    prof.write_text("name: hygiene\nextends: inference\n")
    r = run_cli("audit", "-p", str(prof), "--root", str(fakehost.this_vm(tmp_path / "vm")),
                env={"HOSTTUNE_NO_CACHE": ""})
    assert r.returncode in (0, 1), r.stderr
    assert (sorted(os.listdir(user)) if user.is_dir() else []) == before
    assert d.is_dir() and os.listdir(d)  # the run cached its profile, in the suite's cache


def test_only_failed_tests_keep_their_trees(pytestconfig) -> None:
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) == 1


def test_no_test_module_imports_another() -> None:
    """What test modules share lives in helper modules (tests/helpers.py, tests/*_trees.py,
    tests/*_helpers.py) or in fixtures (conftest.py and the plugins it names): a test module
    imported by another would have its tests depend on the other's and run twice under
    ``from tests.test_x import *``."""
    import ast

    tests = Path(__file__).resolve().parent
    offenders = []
    for f in sorted([*tests.glob("*.py"), *tests.glob("vm/*.py")]):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            offenders += [f"{f.relative_to(tests)}:{node.lineno}: {n}" for n in names
                          if n.rsplit(".", 1)[-1].startswith("test_")]
    assert offenders == []
