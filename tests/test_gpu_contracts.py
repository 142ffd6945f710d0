"""The contract (apply -> audit clean -> apply again = nothing -> rollback byte-identical) for
every built-in profile on a tree holding an NVIDIA driver layout: as --root sees it (NVML
offline) and with a fake RTX 5090 / H100 answering NVML."""

from __future__ import annotations

import msgspec
import pytest

from hosttune import engine
from hosttune.errors import ProfileError
from hosttune.host import Host
from hosttune.host.gpu.fake import FakeNvml
from hosttune.profile import builtin_names, load_profile
from tests import fakehost
from tests.fake_nvidia import add_nvidia
from tests.helpers import snapshot


@pytest.mark.parametrize("backend", [None, "rtx5090", "h100"])
@pytest.mark.parametrize("profile", builtin_names())
def test_contract_on_nvidia_tree(tmp_path, profile, backend):
    tree = fakehost.ryzen_9950x(tmp_path / "t")
    add_nvidia(tree, [backend or "rtx5090"], vendor_unit_user="nvidia-persistenced")
    fake = FakeNvml([backend], root=True) if backend else None
    loaded = load_profile(profile)
    before = snapshot(tree)
    nvml_before = [msgspec.structs.asdict(g) for g in fake.gpus] if fake else []
    host = Host(tree, nvml_backend=fake)
    if profile == "ryzen9950x-rtx5090" and backend == "h100":
        # the 5090's clock lock does not fit an H100: refused before anything is written
        with pytest.raises(ProfileError, match="345-1980 MHz"):
            engine.apply(host, loaded)
        assert snapshot(tree) == before
        return
    rep = engine.apply(host, loaded)
    assert rep.ok, (rep.error, [s.to_json() for s in rep.steps if s.status != "applied"])
    assert host.runner.ran == []
    a = engine.audit(Host(tree, nvml_backend=fake), loaded)
    assert not a.drift, [r.to_json() for r in a.drift]
    assert engine.apply(Host(tree, nvml_backend=fake), loaded).steps == []
    rb = engine.rollback(Host(tree, nvml_backend=fake))
    assert rb.ok, [s.to_json() for s in rb.steps if s.status != "reverted"]
    assert snapshot(tree) == before
    if fake:
        after = [msgspec.structs.asdict(g) for g in fake.gpus]
        for b, a_ in zip(nvml_before, after, strict=True):
            for k in ("persistence", "power_limit_mw", "locked_graphics", "locked_memory",
                      "compute_mode"):
                assert b[k] == a_[k], k
