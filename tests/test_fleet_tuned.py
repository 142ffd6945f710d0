"""hosttune export tuned: the output parses the way tuned reads profiles (configparser with
'=' only, '#' inline comments, case-sensitive keys, ${variables}) and says what it leaves out."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
from pathlib import Path

import msgspec
import pytest

from hosttune.errors import ProfileError
from hosttune.fleet import export_tuned
from hosttune.host import Host
from hosttune.profile import LoadedProfile, Profile, builtin_names, load_profile
from hosttune.profile.schema import Section
from hosttune.tunables.hugepages import size_pools
from tests import fakehost
from tests.conftest import need, run_cli

# the plugin sections this exporter may write (tuned/plugins/plugin_<name>.py + main/variables)
TUNED_SECTIONS = {"main", "variables", "cpu", "vm", "sysctl", "sysfs", "bootloader", "irqbalance",
                  "modules"}
VAR_RE = re.compile(r"(?<!\\)\$\{(\w+)\}")  # tuned/profiles/variables.py


def tuned_parse(text: str) -> dict[str, dict[str, str]]:
    """Parse exactly like tuned's Loader._load_config_data, then expand [variables] like
    tuned's Variables (functions ${f:...} are not used by the exporter)."""
    cp = configparser.ConfigParser(delimiters=("=",), inline_comment_prefixes=("#",),
                                   strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text, "tuned.conf")
    raw = {s: {o: cp.get(s, o, raw=True) for o in cp.options(s)} for s in cp.sections()}
    variables = raw.get("variables", {})
    out: dict[str, dict[str, str]] = {}
    for s, opts in raw.items():
        out[s] = {}
        for k, v in opts.items():
            for name in VAR_RE.findall(v):
                assert name in variables, f"[{s}] {k}: undefined variable {name}"
            assert "${f:" not in v
            out[s][k] = VAR_RE.sub(lambda m: variables[m.group(1)], v)
    return out


def tuned_modifier(new_value: str, current: str) -> str | None:
    """tuned/plugins/base.py _process_assignment_modifiers: '>N' sets N only if greater."""
    op, val = new_value[:1], new_value[1:]
    if op == ">":
        return val if int(val) > int(current) else None
    if op == "<":
        return val if int(val) < int(current) else None
    return new_value


@pytest.mark.parametrize("name", builtin_names())
@pytest.mark.parametrize("tree", [None, "ryzen", "epyc", "vm"])
def test_every_builtin_profile_exports_and_parses(tmp_path, name, tree):
    root = None
    if tree:
        root = {"ryzen": fakehost.ryzen_9950x, "epyc": fakehost.epyc_2s,
                "vm": fakehost.this_vm}[tree](tmp_path / tree)
    exp = export_tuned(load_profile(name), Host(root) if root else None)
    parsed = tuned_parse(exp.render())
    assert set(parsed) <= TUNED_SECTIONS
    assert parsed["main"]["summary"]
    for sec, _ in exp.sections:
        expected = exp.section(sec)
        if sec != "irqbalance":
            assert parsed[sec] == expected
    # every sysctl key is one the kernel has (checked on the fake tree's /proc/sys)
    if root is not None:
        for key in parsed.get("sysctl", {}):
            assert (root / "proc/sys" / key.replace(".", "/")).exists(), key
        for path in parsed.get("sysfs", {}):
            parent = root / path.lstrip("/")
            assert parent.parent.is_dir(), path
    # the header lists what tuned cannot do, and nothing is both written and listed
    text = exp.render()
    for u in exp.unexpressed:
        assert f"#   - {u.setting}:" in text
    assert re.fullmatch(r"[a-zA-Z0-9_.-]+", exp.name)  # tuned's Loader.safe_name


def test_inference_profile_contents():
    exp = export_tuned(load_profile("inference"))
    p = tuned_parse(exp.render())
    assert p["cpu"] == {"governor": "performance"}
    assert p["vm"] == {"transparent_hugepages": "madvise"}
    assert p["sysctl"]["vm.swappiness"] == "0"
    assert p["sysctl"]["vm.overcommit_memory"] == "1"
    # the floor becomes tuned's '>' modifier: raises 65530, never lowers systemd's 1048576
    floor = p["sysctl"]["vm.max_map_count"]
    assert floor == ">262144"
    assert tuned_modifier(floor, "65530") == "262144"
    assert tuned_modifier(floor, "1048576") is None
    skipped = {u.setting for u in exp.unexpressed}
    assert {"swap", "memlock", "hugetlbfs"} <= skipped
    # the pool is 40% of RAM: without facts it is listed, not guessed
    assert "hugepages.pools.0 (2M)" in skipped
    assert "sysfs" not in p
    head = exp.render().split("[main]")[0]
    assert "Not expressible in tuned" in head and "memlock" in head


def test_pools_resolve_per_numa_node_with_a_host(epyc):
    facts = Host(epyc).facts
    exp = export_tuned(load_profile("inference"), Host(epyc))
    p = tuned_parse(exp.render())
    nodes = {k: int(v) for k, v in p["sysfs"].items()}
    assert set(nodes) == {
        f"/sys/devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages"
        for n in (0, 1)}
    # size: auto = the 2M hugetlbfs mount (40% of RAM, rounded down as the hugepages family
    # does), spread evenly over both nodes
    want = int(facts.mem_total_bytes * 0.4) // (2 * 1024**2)
    assert sum(nodes.values()) == want
    assert max(nodes.values()) - min(nodes.values()) <= 1


def test_explicit_pool_needs_no_facts():
    exp = export_tuned(load_profile("ryzen9950x-rtx5090"))
    skipped = {u.setting for u in exp.unexpressed}
    assert "hugepages.pools.0 (2M)" in skipped  # 'spread' needs the node list
    lp = _custom(hugepages={"pools": [{"pagesize": "1G", "size": 8, "nodes": "any"},
                                      {"pagesize": "2M", "size": "2GiB",
                                       "nodes": {0: 512, 1: "1GiB"}}]})
    p = tuned_parse(export_tuned(lp).render())
    assert p["sysfs"] == {
        "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "8",
        "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages": "512",
        "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages": "512",
    }
    # per-node sizes that do not add up to size: refused as apply refuses them
    lp = _custom(hugepages={"pools": [{"pagesize": "1G", "size": 8, "nodes": "any"},
                                      {"pagesize": "2M", "size": "4GiB",
                                       "nodes": {0: 512, 1: "1GiB"}}]})
    with pytest.raises(ProfileError) as ei:
        export_tuned(lp)
    assert ei.value.key == "hugepages.pools.1.nodes" and "add up to 1024" in str(ei.value)



def test_hostless_pools_are_sized_by_the_hugepages_family():
    """Without a host, export sizes pools with the hugepages family's size_pools, not a copy:
    per-node sizes in bytes and pages, and an 'auto' pool from its mounts' sizes in bytes."""
    lp = _custom(hugepages={"pools": [{"pagesize": "2M", "size": "auto",
                                       "nodes": {0: "2GiB", 1: 100}},
                                      {"pagesize": "1G", "size": "auto", "nodes": "any"}]},
                 hugetlbfs={"mounts": [{"path": "/srv/a", "pagesize": "1G", "size": "3GiB"},
                                       {"path": "/srv/b", "pagesize": "1G", "size": "2GiB"}]})
    sizes = size_pools(lp.profile, 0, lambda: [0, 1], lambda k, m: AssertionError(k, m))
    assert (sizes["2M"].explicit, sizes["1G"].pages) == ({0: 1024, 1: 100}, 5)
    p = tuned_parse(export_tuned(lp).render())
    assert p["sysfs"] == {
        "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages": "1024",
        "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages": "100",
        "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "5",
    }

def _custom(model: type[Profile] = Profile, **sections) -> LoadedProfile:
    data = {"name": "custom", "description": "custom # not a comment ${x}", **sections}
    return LoadedProfile(msgspec.convert(data, model, strict=False), ("test",))


def test_unwritable_values_are_listed_not_mangled():
    lp = _custom(sysctl={"settings": {"kernel.core_pattern": "core #1",
                                      "net.ipv4.tcp_rmem": "4096 87380 6291456",
                                      "kernel.domainname": "<lab>",
                                      "kernel.hostname": "${HOST}"}})
    exp = export_tuned(lp)
    p = tuned_parse(exp.render())
    assert p["sysctl"] == {"net.ipv4.tcp_rmem": "4096 87380 6291456"}
    skipped = {u.setting: u.reason for u in exp.unexpressed}
    assert "inline comment" in skipped["sysctl kernel.core_pattern"]
    assert "modifier" in skipped["sysctl kernel.domainname"]
    assert "variable" in skipped["sysctl kernel.hostname"]
    # the summary survives tuned's parser intact (no '#', no '${')
    assert p["main"]["summary"].startswith("custom")
    assert "#" not in p["main"]["summary"] and "${" not in p["main"]["summary"]


def test_sections_of_other_families_are_handled_generically():
    """Sections the GPU / kernel / IRQ / CUDA families add later: mapped where tuned has a
    plugin, listed otherwise - never dropped silently."""

    class Kernel(Section):
        cmdline: dict[str, str | bool | None] = {}
        remove: list[str] = []

    class Irq(Section):
        banned_cpus: list[int] = []
        gpu_irq_cpus: str | None = None

    class Gpu(Section):
        power_limit_w: int | str = "max"

    class CudaEnv(Section):
        vars: dict[str, str] = {}

    model = msgspec.defstruct("FutureProfile", [
        ("kernel", Kernel | None, None), ("irq", Irq | None, None), ("gpu", Gpu | None, None),
        ("cuda_env", CudaEnv | None, None), ("workload", dict | None, None)],
        bases=(Profile,), frozen=True)
    lp = _custom(model,
                 kernel={"cmdline": {"pcie_aspm": "off", "iommu": "pt", "quiet": True,
                                     "splash": False},
                         "remove": ["rcutree.rcu_idle_gp_delay"]},
                 irq={"banned_cpus": [24, 25, 26, 27, 28, 29, 30, 31, 0],
                      "gpu_irq_cpus": "24-31"},
                 gpu={"power_limit_w": 600}, cuda_env={"vars": {"CUDA_CACHE_MAXSIZE": "1"}},
                 workload={"containers": 3})
    exp = export_tuned(lp)
    p = tuned_parse(exp.render())
    assert p["bootloader"] == {"cmdline_hosttune": "pcie_aspm=off iommu=pt quiet"}
    assert p["irqbalance"] == {"banned_cpus": "0,24-31"}
    assert p["variables"] == {"hosttune_irqbalance_banned_cpus": "0,24-31"}
    skipped = {u.setting: u.reason for u in exp.unexpressed}
    assert "NVML" in skipped["gpu"]
    assert "CUDA" in skipped["cuda_env"]
    assert "container" in skipped["workload"]
    assert "kernel.remove" in skipped
    assert any(s.startswith("irq (gpu_irq_cpus") for s in skipped)


def test_cli_export(tmp_path: Path, epyc: Path):
    out = tmp_path / "tuned" / "tuned.conf"
    r = run_cli("export", "tuned", "--profile", "inference", "-o", str(out))
    assert r.returncode == 0, r.stderr
    parsed = tuned_parse(out.read_text())
    assert parsed["cpu"]["governor"] == "performance"
    r = run_cli("export", "tuned", "--profile", "inference", "--root", str(epyc), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert tuned_parse(data["tuned_conf"])["sysfs"] == data["sections"]["sysfs"]
    assert data["name"] == "hosttune-inference"
    r = run_cli("export", "tuned", "--profile", "inference")
    assert r.returncode == 0 and r.stdout.startswith("# tuned profile exported by hosttune")
    r = run_cli("export", "tuned", "--profile", "no-such-profile")
    assert r.returncode == 2 and "no built-in profile" in r.stderr
    r = run_cli("export", "tuned", "--root", str(tmp_path / "missing"))
    assert r.returncode == 2


# --- tuned's own loader -----------------------------------------------------------------------
# Debian's tuned package (python3-tuned for /usr/bin/python3): load the exported profile with
# tuned.profiles.Loader exactly as tuned-adm/tuned do (locator over a profile directory,
# merger, variables), and print each unit's type and options.
_TUNED_LOAD = r"""
import json, sys
from tuned.profiles.factory import Factory
from tuned.profiles.loader import Loader
from tuned.profiles.locator import Locator
from tuned.profiles.merger import Merger
from tuned.profiles.variables import Variables
loader = Loader(Locator([sys.argv[1]]), Factory(), Merger(), None, Variables())
p = loader.load([sys.argv[2]])
print(json.dumps({"name": p.name, "units": {n: {"type": u.type, "options": dict(u.options)}
                                            for n, u in p.units.items()}}))
"""
TUNED_PYTHON = "/usr/bin/python3"


def tuned_load(tmp_path: Path, name: str, text: str) -> dict:
    ok = os.path.exists(TUNED_PYTHON) and subprocess.run(
        [TUNED_PYTHON, "-c", "import tuned.profiles.loader"], capture_output=True,
        check=False).returncode == 0
    need(ok, "tuned (Debian package) is not installed")
    d = tmp_path / "tuned-profiles" / name
    d.mkdir(parents=True)
    (d / "tuned.conf").write_text(text)
    r = subprocess.run([TUNED_PYTHON, "-c", _TUNED_LOAD, str(d.parent), name],
                       capture_output=True, text=True, timeout=60, check=False,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", builtin_names())
@pytest.mark.parametrize("tree", [None, "ryzen", "epyc"])
def test_tuned_loads_every_export(tmp_path, name, tree):
    """tuned's own loader reads each export, and gets every option as written (the plugin
    sections are tuned plugin names: the loader makes a unit of each)."""
    root = None
    if tree:
        root = {"ryzen": fakehost.ryzen_9950x, "epyc": fakehost.epyc_2s}[tree](tmp_path / tree)
    exp = export_tuned(load_profile(name), Host(root) if root else None)
    loaded = tuned_load(tmp_path, exp.name, exp.render())
    assert loaded["name"] == exp.name
    units = loaded["units"]
    for sec, _ in exp.sections:
        if sec in ("main", "variables"):
            continue  # not units: the loader consumes them
        assert units[sec]["type"] == sec
        want = exp.section(sec)
        if sec == "irqbalance":  # ${variable} references, expanded by the loader
            variables = exp.section("variables")
            want = {k: VAR_RE.sub(lambda m: variables[m.group(1)], v) for k, v in want.items()}
        assert units[sec]["options"] == want, sec


def test_tuned_loader_catches_mistakes(tmp_path):
    """The loader check is real: a profile it cannot read fails."""
    d = tmp_path / "x"
    with pytest.raises(AssertionError):
        tuned_load(d, "hosttune-bad", "[main]\nsummary=x\n[sysctl\nvm.swappiness=0\n")


def test_nvidia_module_options_export_to_tuned_modules(tmp_path):
    """nvidia_modules options become tuned [modules] options, the exact words hosttune writes
    to its modprobe.d drop-in, and are no longer listed as inexpressible."""
    from hosttune.tunables.nvidia_modprobe import render

    lp = load_profile("ryzen9950x-rtx5090")
    exp = export_tuned(lp)
    mods = tuned_parse(exp.render())["modules"]
    ours = render(lp.profile.nvidia_modules, lp.profile.name)
    assert mods and {f"options {m} {v}" for m, v in mods.items()} == {
        ln for ln in ours.splitlines() if ln.startswith("options ")}
    skipped = {u.setting for u in exp.unexpressed}
    assert "nvidia_modules" not in skipped
    assert "nvidia_modules.initramfs" in skipped  # the part tuned really cannot do
    head = exp.render().split("[main]")[0]
    assert "#   - nvidia_modules: NVIDIA" not in head and "no tuned plugin" not in head
    # and tuned's loader gives the modules plugin the same options
    units = tuned_load(tmp_path, exp.name, exp.render())["units"]
    assert units["modules"] == {"type": "modules", "options": mods}
