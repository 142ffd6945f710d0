"""msgspec's error paths mapped to the profile's one-line errors (hosttune/profile/explain.py):
every value a path may stand for is a candidate (a mapping's keys are '[...]' to msgspec), the
one that fails is named with its real key - a null, 0 or empty key and a null value included -
and what was expected comes from the schema's types."""

from __future__ import annotations

import msgspec
import pytest

from hosttune.errors import ProfileError
from hosttune.profile import load_profile
from hosttune.profile.explain import NOT_A_NAME, candidates, describe, explain, parse_path
from hosttune.profile.schema import HugePagePool, Profile


def _error(tmp_path, text: str) -> str:
    f = tmp_path / "p.yaml"
    f.write_text("name: x\n" + text)
    with pytest.raises(ProfileError) as ei:
        load_profile(str(f))
    msg = str(ei.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg
    return msg[len(f"{f}: "):]


def test_parse_path():
    assert parse_path("$") == []
    assert parse_path("$.hugepages.pools[0].nodes[...]") == ["hugepages", "pools", 0, "nodes",
                                                             None]
    with pytest.raises(ValueError):
        parse_path("$.a b")


def test_candidates_are_every_key_of_a_mapping_falsy_and_null_ones_too():
    data = {"name": "x", "hugepages": {"pools": [
        {"nodes": {0: None, None: 5, "": 1, 2: "1GiB"}}]}}
    got = candidates(parse_path("$.hugepages.pools[0].nodes[...]"), data, Profile)
    assert [c.parts[-1] for c in got] == [0, None, "", 2]
    assert [c.value for c in got] == [None, 5, 1, "1GiB"]
    assert all(c.parts[:4] == ("hugepages", "pools", 0, "nodes") for c in got)
    assert {describe(c.type) for c in got} == {"a string or an integer"}
    # a key the data does not have (a default) is no candidate; a null value is one
    assert candidates(parse_path("$.hugepages.retries"), data, Profile) == []
    null = candidates(parse_path("$.hugepages.pools[0].nodes"), data, Profile)
    assert len(null) == 1 and null[0].key == "hugepages.pools.0.nodes"
    # two mappings crossed: every pair
    opts = {"name": "x", "nvidia_modules": {"options": {"a": {"p": 1, "q": 2}, "b": {"r": 3}}}}
    got = candidates(parse_path("$.nvidia_modules.options[...][...]"), opts, Profile)
    assert [c.key for c in got] == ["nvidia_modules.options.a.p", "nvidia_modules.options.a.q",
                                    "nvidia_modules.options.b.r"]


def test_a_null_key_among_good_ones_is_named(tmp_path):
    msg = _error(tmp_path, "hugepages:\n  pools:\n    - {size: 2GiB, nodes: {0: 1GiB, null: 5}}\n")
    assert msg == "hugepages.pools.0.nodes: expected an integer as a key (got None)"
    msg = _error(tmp_path, "hugepages:\n  pools:\n    - nodes: {'0': 1GiB, x: 5}\n")
    assert msg == "hugepages.pools.0.nodes: expected an integer as a key (got 'x')"


def test_a_bad_value_under_a_falsy_key_is_named(tmp_path):
    msg = _error(tmp_path, "hugepages:\n  pools:\n    - nodes: {1: 1GiB, 0: null}\n")
    assert msg == "hugepages.pools.0.nodes.0: expected a string or an integer (got None)"
    msg = _error(tmp_path, "sysctl:\n  settings:\n    vm.swappiness: 1\n    vm.dirty_ratio: [5]\n")
    assert msg == ("sysctl.settings.vm.dirty_ratio: expected a string or an integer "
                   "(got a list of 1)")


def test_keys_that_are_not_strings(tmp_path):
    assert _error(tmp_path, "sysctl:\n  settings:\n    5: 1\n") == \
        "sysctl.settings: expected a string as a key (got 5)"
    assert _error(tmp_path, "sysctl:\n  settings:\n    null: 1\n") == \
        "sysctl.settings: expected a string as a key (got None)"
    assert _error(tmp_path, "gpu:\n  devices: {0: {power_limit: 300}}\n") == \
        "gpu.devices: expected a string as a key (got 0)"
    assert _error(tmp_path, "swap:\n  null: true\n") == \
        "swap.None: unknown key (not part of the profile schema)"


def test_the_failing_entry_of_a_mapping_of_sections_is_named(tmp_path):
    msg = _error(tmp_path, "gpu:\n  devices:\n    a: {power_limit: 300}\n"
                           "    b: {power_limit: lots}\n    c: {power_limit: 200}\n")
    assert msg == "gpu.devices.b.power_limit: expected 'max', 'default' or watts ('450W'), " \
        "got 'lots'"
    msg = _error(tmp_path, "gpu:\n  devices:\n    a: {power_limit: 300}\n    b: {bogus: 1}\n")
    assert msg == "gpu.devices.b.bogus: unknown key (not part of the profile schema)"
    msg = _error(tmp_path, "nvidia_modules:\n  options:\n    nvidia: {A: 1}\n    nv: {B: [1]}\n")
    assert msg.startswith("nvidia_modules.options.nv.B: expected ")


def test_what_was_expected_comes_from_the_type(tmp_path):
    assert _error(tmp_path, "memlock:\n  scope: world\n") == \
        "memlock.scope: expected 'group' or 'everyone' (got 'world')"
    assert _error(tmp_path, "hugepages:\n  retries: 0\n") == \
        "hugepages.retries: expected an integer from 1 to 50 (got 0)"
    assert _error(tmp_path, "swap:\n  enabled: maybe\n") == \
        "swap.enabled: expected a boolean (true or false) (got 'maybe')"
    assert _error(tmp_path, "hugetlbfs:\n  mounts:\n    - pagesize: 2M\n") == \
        "hugetlbfs.mounts.0.path: required key missing"
    assert _error(tmp_path, "gpu:\n  mps: maybe\n") == \
        "gpu.mps: expected a mapping, a boolean (true or false) or null (got 'maybe')"


def test_keys_that_are_not_names_are_never_printed(tmp_path):
    secret = "root:$6$DECOY:19000"
    msg = _error(tmp_path, f"hugepages:\n  pools:\n    - nodes: {{'{secret}': 5}}\n")
    assert msg == f"hugepages.pools.0.nodes: expected an integer as a key (got {NOT_A_NAME})"
    # an unknown key that reads like a msgspec path is found in the data, not in the message
    tricky = "x` - at `$.swap"
    msg = _error(tmp_path, f"swap:\n  enabled: true\n'{tricky}': 1\n")
    assert msg == f"{NOT_A_NAME}: unknown key (not part of the profile schema)"
    assert "DECOY" not in msg


def test_explain_on_a_direct_conversion():
    data = {"pagesize": "2M", "nodes": {3: "1GiB", 4: "lots"}}
    with pytest.raises(msgspec.ValidationError) as ei:
        msgspec.convert(data, HugePagePool, strict=False)
    assert explain(ei.value, data, HugePagePool) == (
        "nodes", "expected a size like '90GiB' or '512MiB', got 'lots'")
