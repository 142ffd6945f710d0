from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import fakehost

# In CI (.ci/run sets HOSTTUNE_CI_STRICT=1) a test that needs root, hugetlbfs or dockerd must
# run: its skip becomes a failure.
STRICT = os.environ.get("HOSTTUNE_CI_STRICT") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip locally when ``condition`` is false; fail in CI."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"required in CI but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def ryzen(tmp_path: Path) -> Path:
    return fakehost.ryzen_9950x(tmp_path / "ryzen")


@pytest.fixture
def epyc(tmp_path: Path) -> Path:
    return fakehost.epyc_2s(tmp_path / "epyc")


@pytest.fixture
def vm(tmp_path: Path) -> Path:
    return fakehost.this_vm(tmp_path / "vm")


@pytest.fixture(params=["ryzen", "epyc", "vm"])
def any_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return {"ryzen": fakehost.ryzen_9950x, "epyc": fakehost.epyc_2s,
            "vm": fakehost.this_vm}[request.param](tmp_path / request.param)
