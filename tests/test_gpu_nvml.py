"""GPU family on fake NVML: the gateway per GPU model, apply/rollback round trips, needs-root,
runtime-only re-apply, profile validation, generated units, `status gpu`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pynvml
import pytest

from hosttune import engine
from hosttune.errors import NeedsRootError, ProfileError
from hosttune.host import Host
from hosttune.host.gpu.fake import FakeNvml
from hosttune.host.gpu.nvml import ComputeMode, Nvml, NvmlState, make_gateway
from hosttune.profile import load_profile
from tests.conftest import need, run_cli
from tests.fake_nvidia import add_nvidia
from tests.helpers import snapshot

GPU_ONLY = {"gpu", "gpu_persistence", "gpu_mps"}


def write_profile(tmp_path: Path, body: str, name: str = "p") -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\n" + body)
    return str(p)


# --- the gateway, per model ------------------------------------------------------------------
def test_rtx5090_readings_and_geforce_refusals():
    nv = Nvml(FakeNvml(["rtx5090"], root=True))
    (g,) = nv.devices()
    assert (g.name, g.brand, g.architecture) == ("NVIDIA GeForce RTX 5090", "geforce",
                                                 "blackwell")
    assert nv.power_limit_constraints_w(g).get() == (400.0, 600.0)  # NVML mW -> W at the edge
    assert nv.default_power_limit_w(g).get() == 575.0
    assert nv.supported_memory_clocks_mhz(g).get()[0] == 14001
    gr = nv.supported_graphics_clocks_mhz(g, 14001).get()
    assert gr[0] == 3090 and 2400 in gr and 2550 in gr
    rated = nv.rated_boost_clock_mhz(g)  # N/A on GeForce
    assert rated.state is NvmlState.UNSUPPORTED and not rated.ok
    assert nv.compute_mode(g).get() is ComputeMode.DEFAULT
    assert nv.memory(g).get().total_bytes == 32607 * 1024 * 1024
    with pytest.raises(Exception) as ei:
        nv.set_locked_memory_clocks_mhz(g, 14001, 14001)
    assert "unsupported on this GPU" in str(ei.value)
    nv.set_locked_graphics_clocks_mhz(g, 2400, 2550)  # Volta+: accepted on GeForce


def test_h100_supports_memory_locks_and_reports_rated_clock():
    fake = FakeNvml(["h100"], root=True)
    nv = Nvml(fake)
    (g,) = nv.devices()
    assert nv.power_limit_constraints_w(g).get() == (350.0, 700.0)
    assert nv.rated_boost_clock_mhz(g).get() == 1980
    assert nv.supported_memory_clocks_mhz(g).get() == [2619]
    nv.set_locked_memory_clocks_mhz(g, 2619, 2619)
    assert fake.gpus[0].locked_memory == (2619, 2619)
    nv.set_power_limit_w(g, 450)
    assert fake.gpus[0].power_limit_mw == 450_000  # watts -> mW at the edge


@pytest.mark.parametrize("driver", ["no-driver", "driver-not-loaded"])
def test_no_driver_is_a_state_never_a_crash(driver):
    nv = Nvml(FakeNvml([], driver=driver))
    assert nv.state[0] is NvmlState.NO_DRIVER
    assert "no NVIDIA driver" in nv.state[1]
    assert nv.devices() == []
    assert nv.driver().state is NvmlState.NO_DRIVER


def test_fake_raises_like_pynvml_before_init():
    fake = FakeNvml(["h100"])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        FakeNvml([], driver="no-driver").nvmlInit()


def test_setters_need_root_like_the_real_library():
    fake = FakeNvml(["rtx5090"], root=False)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        fake.nvmlInit()
        fake.nvmlDeviceSetPowerManagementLimit(fake.nvmlDeviceGetHandleByIndex(0), 600_000)
    nv = Nvml(FakeNvml(["rtx5090"], root=False))
    (g,) = nv.devices()
    assert nv.power_limit_w(g).get() == 575.0  # reading needs no root
    with pytest.raises(NeedsRootError, match="needs root"):
        nv.set_power_limit_w(g, 600)
    with pytest.raises(NeedsRootError):
        nv.set_compute_mode(g, ComputeMode.EXCLUSIVE_PROCESS)


def test_root_tree_never_uses_the_live_driver(ryzen, monkeypatch):
    monkeypatch.delenv("HOSTTUNE_FAKE_NVML", raising=False)

    def boom() -> None:
        raise AssertionError("nvmlInit called for a --root tree")

    monkeypatch.setattr(pynvml, "nvmlInit", boom)
    assert make_gateway(Host(ryzen)).state[0] is NvmlState.NO_DRIVER
    add_nvidia(ryzen, ["rtx5090", "rtx5090"])
    nv = make_gateway(Host(ryzen))
    assert nv.state[0] is NvmlState.OFFLINE
    assert [g.name for g in nv.devices()] == ["NVIDIA GeForce RTX 5090"] * 2


# --- round trips -----------------------------------------------------------------------------
def test_rtx5090_round_trip_seed_profile(ryzen):
    add_nvidia(ryzen, ["rtx5090"], vendor_unit_user="nvidia-persistenced")  # seed: no account
    fake = FakeNvml(["rtx5090"], root=True)
    loaded = load_profile("ryzen9950x-rtx5090")
    before = snapshot(ryzen)
    rep = engine.apply(Host(ryzen, nvml_backend=fake), loaded, only=GPU_ONLY)
    assert rep.ok, (rep.error, [s.to_json() for s in rep.steps])
    g = fake.gpus[0]
    assert g.power_limit_mw == 600_000  # 'max' from the constraints, not a typed-in 600
    assert g.locked_graphics == (2400, 2550)
    assert g.locked_memory is None  # GeForce: never attempted
    assert g.compute_mode == pynvml.NVML_COMPUTEMODE_DEFAULT
    dropin = (ryzen / "etc/systemd/system/nvidia-persistenced.service.d/90-hosttune.conf")
    text = dropin.read_text()
    assert "ExecStart=\n" in text and "--user" not in text.split("ExecStart=\n")[1]
    assert (ryzen / "etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
            ).is_symlink()
    a = engine.audit(Host(ryzen, nvml_backend=fake), loaded, only=GPU_ONLY)
    rows = {r.key: r for r in a.rows}
    assert not a.drift, [r.to_json() for r in a.drift]
    assert str(rows["gpu0 locked memory clocks"].status) == "unsupported"
    assert "GeForce" in rows["gpu0 locked memory clocks"].note
    assert str(rows["gpu0 persistence mode"].status) == "offline"  # daemon starts at boot
    rep2 = engine.apply(Host(ryzen, nvml_backend=fake), loaded, only=GPU_ONLY)
    assert rep2.steps == []
    rb = engine.rollback(Host(ryzen, nvml_backend=fake))
    assert rb.ok, [s.to_json() for s in rb.steps]
    assert snapshot(ryzen) == before
    assert (g.power_limit_mw, g.locked_graphics) == (575_000, None)


def test_h100_round_trip_with_mps_and_legacy_persistence(epyc, tmp_path):
    add_nvidia(epyc, ["h100", "h100"], persistenced=False)
    fake = FakeNvml(["h100", "h100"], root=True)
    prof = write_profile(tmp_path, """
gpu:
  persistence: true
  power_limit: 500W
  locked_clocks: {graphics: max-sustained, memory: max-sustained}
  mps: true
  clients: 4
  devices:
    "1": {power_limit: max}
""")
    loaded = load_profile(prof)
    before = snapshot(epyc)
    rep = engine.apply(Host(epyc, nvml_backend=fake), loaded)
    assert rep.ok, (rep.error, [s.to_json() for s in rep.steps])
    g0, g1 = fake.gpus
    assert (g0.power_limit_mw, g1.power_limit_mw) == (500_000, 700_000)
    assert g0.locked_graphics == (1980, 1980) and g0.locked_memory == (2619, 2619)
    assert g0.compute_mode == pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS  # set for MPS
    assert g0.persistence == pynvml.NVML_FEATURE_ENABLED  # legacy: no daemon installed
    ids = [s.change.id for s in rep.steps]
    assert ids.index(f"gpu/{g0.uuid}/compute-mode") < ids.index(
        "gpu_mps//etc/systemd/system/hosttune-nvidia-mps.service")
    unit = (epyc / "etc/systemd/system/hosttune-nvidia-mps.service").read_text()
    assert "|" not in unit and "/tmp" not in unit
    assert engine.audit(Host(epyc, nvml_backend=fake), loaded).drift == []
    assert engine.apply(Host(epyc, nvml_backend=fake), loaded).steps == []
    rb = engine.rollback(Host(epyc, nvml_backend=fake))
    assert rb.ok
    assert snapshot(epyc) == before
    assert g0.locked_memory is None and g0.compute_mode == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert g0.persistence == pynvml.NVML_FEATURE_DISABLED and g1.power_limit_mw == 700_000


def test_runtime_only_reapplies_exactly_the_nvml_settings(epyc, tmp_path):
    add_nvidia(epyc, ["h100"], persistenced=False)
    fake = FakeNvml(["h100"], root=True)
    loaded = load_profile(write_profile(tmp_path, """
gpu:
  persistence: legacy
  power_limit: max
  locked_clocks: {graphics: max-sustained, memory: max-sustained}
  mps: true
"""))
    assert engine.apply(Host(epyc, nvml_backend=fake), loaded).ok
    # a reboot: the driver starts from defaults, /run is empty
    shutil.rmtree(epyc / "run/hosttune")
    (epyc / "proc/sys/kernel/random/boot_id").write_text("00000000-new-boot\n")
    fresh = FakeNvml(["h100"], root=True)
    fresh.gpus[0].power_limit_mw = 400_000
    p = engine.plan(Host(epyc, nvml_backend=fresh), loaded, runtime_only=True)
    assert {c.kind for c in p.changes} == {"action"} and all(c.runtime for c in p.changes)
    assert sorted(c.params["op"] for c in p.changes) == [
        "compute-mode", "graphics-locked-clocks", "memory-locked-clocks", "persistence-mode",
        "power-limit"]
    rep = engine.apply(Host(epyc, nvml_backend=fresh), loaded, runtime_only=True)
    assert rep.ok
    assert fresh.gpus[0].locked_graphics == (1980, 1980)
    assert engine.plan(Host(epyc, nvml_backend=fresh), loaded).changes == []


def test_non_root_apply_fails_cleanly_with_needs_root(ryzen):
    add_nvidia(ryzen, ["rtx5090"])
    fake = FakeNvml(["rtx5090"], root=False)
    loaded = load_profile("ryzen9950x-rtx5090")
    before = snapshot(ryzen)
    rep = engine.apply(Host(ryzen, nvml_backend=fake), loaded, only={"gpu"})
    assert not rep.ok
    assert "needs root" in rep.error
    assert snapshot(ryzen) == before  # the transaction was undone
    assert fake.gpus[0].power_limit_mw == 575_000


def test_not_supported_at_apply_is_reported_not_failed(epyc, tmp_path):
    add_nvidia(epyc, ["h100"], persistenced=False)
    fake = FakeNvml(["h100"], root=True)
    fake.gpus[0].model.memory_lock_supported = False  # e.g. a board/driver that refuses it
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  locked_clocks: {memory: 2619}\n"))
    before = snapshot(epyc)
    rep = engine.apply(Host(epyc, nvml_backend=fake), loaded)
    assert rep.ok, rep.error
    (row,) = [r for r in rep.verify if r.key == "gpu0 locked memory clocks"]
    assert str(row.status) == "unsupported" and "refused" in row.note
    assert engine.rollback(Host(epyc, nvml_backend=fake)).ok
    assert snapshot(epyc) == before


def test_max_sustained_graphics_on_geforce_is_unsupported(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"])
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  locked_clocks: {graphics: "
                                                  "max-sustained}\n"))
    a = engine.audit(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded)
    (row,) = [r for r in a.rows if r.key == "gpu0 locked graphics clocks"]
    assert str(row.status) == "unsupported" and "rated boost" in row.note


def test_explicit_clock_is_snapped_to_a_supported_one(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"])
    fake = FakeNvml(["rtx5090"], root=True)
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  locked_clocks: {graphics: 2407}\n"))
    p = engine.plan(Host(ryzen, nvml_backend=fake), loaded)
    (ch,) = p.changes
    assert (ch.params["min_mhz"], ch.params["max_mhz"]) == (2400, 2400)


# --- profile validation ----------------------------------------------------------------------
def test_exclusive_process_with_several_clients_and_no_mps_is_refused(tmp_path):
    with pytest.raises(ProfileError) as ei:
        load_profile(write_profile(tmp_path, "gpu:\n  clients: 3\n  compute_mode: "
                                             "exclusive_process\n"))
    assert "gpu.compute_mode" in str(ei.value) and "busy or unavailable" in str(ei.value)
    load_profile(write_profile(tmp_path, "gpu:\n  clients: 3\n  compute_mode: "
                                         "exclusive_process\n  mps: true\n", "ok"))


def test_power_outside_constraints_names_the_key(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"])
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  power_limit: 800W\n"))
    with pytest.raises(ProfileError) as ei:
        engine.audit(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded)
    assert "gpu.power_limit" in str(ei.value) and "400-600 W" in str(ei.value)


def test_clock_outside_supported_names_the_key(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"])
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  locked_clocks: {graphics: "
                                                  "[2400, 5000]}\n"))
    with pytest.raises(ProfileError) as ei:
        engine.audit(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded)
    assert "gpu.locked_clocks.graphics" in str(ei.value) and "180-3090" in str(ei.value)


@pytest.mark.parametrize("bad", ["/tmp/nvidia-mps", "/var/tmp/mps", "/srv/mps"])
def test_mps_pipe_dir_not_world_writable(tmp_path, bad):
    with pytest.raises(ProfileError, match="gpu.mps.pipe_dir"):
        load_profile(write_profile(tmp_path, f"gpu:\n  mps: {{pipe_dir: {bad}}}\n"))


def test_missing_persistenced_user_named_in_profile_is_refused(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"])
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  persistence: daemon\n"
                                                  "  persistenced_user: nvidia-persistenced\n"))
    with pytest.raises(ProfileError, match="gpu.persistenced_user"):
        engine.audit(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded)


def test_existing_account_keeps_vendor_unit_untouched(ryzen):
    add_nvidia(ryzen, ["rtx5090"], vendor_unit_user="nvpd", accounts=("nvpd",))
    fake = FakeNvml(["rtx5090"], root=True)
    p = engine.plan(Host(ryzen, nvml_backend=fake), load_profile("inference"),
                    only={"gpu_persistence"})
    paths = [c.path for c in p.changes]
    assert paths == ["/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"]


def test_ubuntu_no_persistence_mode_is_dropped(ryzen):
    add_nvidia(ryzen, ["rtx5090"], vendor_unit_user="nvpd", accounts=("nvpd",),
               vendor_no_pm=True)
    fake = FakeNvml(["rtx5090"], root=True)
    p = engine.plan(Host(ryzen, nvml_backend=fake), load_profile("inference"),
                    only={"gpu_persistence"})
    (dropin,) = [c for c in p.changes if c.path and c.path.endswith("90-hosttune.conf")]
    assert dropin.value is not None
    start = dropin.value.split("ExecStart=\n")[1]
    assert start == "ExecStart=/usr/bin/nvidia-persistenced --user nvpd --verbose\n"


def test_seed_mps_unit_is_reported(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"], seed_mps_unit=True)
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  mps: true\n"))
    a = engine.audit(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded,
                     only={"gpu_mps"})
    (row,) = [r for r in a.rows if r.key.startswith("nvidia-mps.service")]
    assert str(row.status) == "conflict"
    assert "literal" in row.current and "world-writable" in row.current


# --- generated units -------------------------------------------------------------------------
def _verify_root(tmp_path: Path, tree: Path) -> Path:
    """A root for `systemd-analyze verify --root`: the distro's units plus the tree's."""
    vr = tmp_path / "verify"
    shutil.copytree("/lib/systemd/system", vr / "usr/lib/systemd/system", symlinks=True)
    for sub in ("etc/systemd/system", "lib/systemd/system", "usr/bin", "usr/local/libexec"):
        if (tree / sub).exists():
            shutil.copytree(tree / sub, vr / sub, symlinks=True, dirs_exist_ok=True)
    (vr / "bin").mkdir(exist_ok=True)
    shutil.copy("/bin/rm", vr / "bin/rm")
    return vr


def test_generated_units_pass_systemd_analyze_verify(ryzen, tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (package systemd)")
    add_nvidia(ryzen, ["rtx5090"], vendor_unit_user=None)  # no packaged unit: hosttune's
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  persistence: true\n  mps: true\n"))
    assert engine.apply(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"], root=True)), loaded).ok
    vr = _verify_root(tmp_path, ryzen)
    for unit in ("nvidia-persistenced.service", "hosttune-nvidia-mps.service"):
        r = subprocess.run(["systemd-analyze", "verify", f"--root={vr}", unit],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr.strip() == "", (unit, r.stderr)


def test_persistenced_dropin_passes_verify(ryzen, tmp_path):
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (package systemd)")
    add_nvidia(ryzen, ["rtx5090"], vendor_unit_user="nvidia-persistenced")
    assert engine.apply(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"], root=True)),
                        load_profile("inference"), only={"gpu_persistence"}).ok
    vr = _verify_root(tmp_path, ryzen)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={vr}",
                        "nvidia-persistenced.service"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_mps_stop_helper_writes_quit_to_the_control_stdin(tmp_path):
    from hosttune.tunables.gpu_mps import render_helper

    got = tmp_path / "stdin.txt"
    control = tmp_path / "nvidia-cuda-mps-control"
    control.write_text(f"#!/bin/sh\necho \"$CUDA_MPS_PIPE_DIRECTORY\" > {got}.env\n"
                       f"cat > {got}\n")
    control.chmod(0o755)
    helper = tmp_path / "quit"
    helper.write_text(render_helper(str(control)))
    helper.chmod(0o755)
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps"}
    subprocess.run([str(helper)], check=True, env=env, timeout=10)
    assert got.read_text() == "quit\n"
    assert Path(f"{got}.env").read_text().strip() == "/run/nvidia-mps"


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_root_tree_with_driver_round_trip(ryzen):
    add_nvidia(ryzen, ["rtx5090"])
    before = snapshot(ryzen)
    env = {"HOSTTUNE_FAKE_NVML": ""}
    p = run_cli("audit", "--root", str(ryzen), "-p", "ryzen9950x-rtx5090", "--only", "gpu",
                "--json", env=env)
    rows = json.loads(p.stdout)["rows"]
    assert {r["status"] for r in rows} == {"offline"}, rows
    p = run_cli("apply", "--root", str(ryzen), "-p", "ryzen9950x-rtx5090", "--yes", "--json",
                "--only", "gpu_persistence", "--only", "gpu", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (ryzen / "etc/systemd/system/nvidia-persistenced.service.d/90-hosttune.conf").exists()
    p = run_cli("rollback", "--root", str(ryzen), "--yes", env=env)
    assert p.returncode == 0, p.stderr
    assert snapshot(ryzen) == before


def test_cli_apply_then_audit_across_processes_with_fake_state(ryzen, tmp_path):
    add_nvidia(ryzen, ["rtx5090"], accounts=("nvpd",))
    env = {"HOSTTUNE_FAKE_NVML": "rtx5090", "HOSTTUNE_FAKE_NVML_ROOT": "1",
           "HOSTTUNE_FAKE_NVML_STATE": str(tmp_path / "nvml.json")}
    p = run_cli("apply", "--root", str(ryzen), "-p", "ryzen9950x-rtx5090", "--yes", "--only",
                "gpu", "--json", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_cli("audit", "--root", str(ryzen), "-p", "ryzen9950x-rtx5090", "--only", "gpu",
                env=env)
    assert p.returncode == 0, p.stdout
    assert "unsupported" in p.stdout and "GeForce" in p.stdout
    p = run_cli("status", "gpu", "--root", str(ryzen), "--json", env=env)
    g = json.loads(p.stdout)["gpus"][0]
    assert g["power"]["limit_w"] == 600.0
    assert g["clocks"]["locked_graphics_mhz"] == [2400, 2550]


def test_status_gpu_json_fields_and_downtrained_link(tmp_path):
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps({"gpus": [{"pcie_width": 8, "pcie_gen": 5}]}))
    env = {"HOSTTUNE_FAKE_NVML": "rtx5090", "HOSTTUNE_FAKE_NVML_STATE": str(state)}
    p = run_cli("status", "gpu", "--json", env=env)
    assert p.returncode == 1, p.stdout + p.stderr  # a finding
    data = json.loads(p.stdout)
    (g,) = data["gpus"]
    assert g["power"] == {"usage_w": 30.0, "limit_w": 575.0, "enforced_limit_w": 575.0,
                          "default_limit_w": 575.0, "min_limit_w": 400.0, "max_limit_w": 600.0}
    assert set(g["clocks"]) == {"graphics_mhz", "sm_mhz", "memory_mhz", "max_graphics_mhz",
                                "max_memory_mhz", "locked_graphics_mhz", "locked_memory_mhz"}
    assert g["pcie"]["width"] == 8 and g["pcie"]["downtrained"] is True
    assert g["memory"]["total_bytes"] == g["memory"]["used_bytes"] + g["memory"]["free_bytes"]
    assert g["compute_mode"] == "DEFAULT" and g["persistence_mode"] is False
    assert g["temperature_c"] == 34 and g["clock_event_reasons"] == ["gpu_idle"]
    assert any("down-trained" in f for f in data["findings"])


def test_status_gpu_idle_gen_drop_is_not_a_finding():
    p = run_cli("status", "gpu", "--json", env={"HOSTTUNE_FAKE_NVML": "h200"})
    assert p.returncode == 0, p.stdout
    g = json.loads(p.stdout)["gpus"][0]
    assert g["pcie"]["gen"] < g["pcie"]["max_gen"] and not g["pcie"]["downtrained"]


def test_status_gpu_without_driver(cli):
    r = run_cli("status", "gpu", "--json", env={"HOSTTUNE_FAKE_NVML": "no-driver"})
    assert r.returncode == 0
    assert json.loads(r.stdout)["driver"]["status"] == "no NVIDIA driver"
    r = run_cli("status", "gpu", env={"HOSTTUNE_FAKE_NVML": "driver-not-loaded"})
    assert r.returncode == 0 and "no NVIDIA driver" in r.stdout


def test_gpu_clients_from_the_workload_section():
    from types import SimpleNamespace as NS

    from hosttune.tunables.gpu_common import gpu_clients

    gpu = NS(clients=None)
    shared = NS(workload=NS(gpu_workers=NS(count=3, gpus=[0, 0, 1])), gpu=gpu)
    assert gpu_clients(shared) == 2  # two workers on GPU 0
    assert gpu_clients(NS(workload=NS(gpu_workers=NS(count=2, gpus="auto")), gpu=gpu)) == 1
    assert gpu_clients(NS(workload=None, gpu=NS(clients=4))) == 4


def test_exclusive_process_refused_for_shared_workload(ryzen, tmp_path, monkeypatch):
    """The workload section (another family's) decides the client count when present."""
    import hosttune.tunables.gpu_nvml as mod
    from hosttune.tunables.base import Context

    add_nvidia(ryzen, ["rtx5090"])
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  compute_mode: exclusive_process\n"))
    monkeypatch.setattr(mod, "gpu_clients", lambda profile: 3)
    ctx = Context(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"])), loaded)
    with pytest.raises(ProfileError) as ei:
        mod.GpuTunable().validate(ctx)
    assert "gpu.compute_mode" in str(ei.value) and "3 GPU containers" in str(ei.value)


def test_live_audit_as_non_root_marks_drift_needs_root(tmp_path, monkeypatch):
    """Audit needs no root (NVML reads are unprivileged); drift says a change needs root."""
    monkeypatch.setattr(Host, "is_root", property(lambda self: False))
    fake = FakeNvml(["rtx5090"], root=False)
    loaded = load_profile(write_profile(tmp_path, "gpu:\n  power_limit: max\n"))
    a = engine.audit(Host("/", nvml_backend=fake), loaded, only={"gpu"})
    (row,) = a.rows
    assert (str(row.status), row.needs, row.current) == ("drift", ("root",), "575 W")
    assert fake.setter_calls == []


def test_status_gpu_root_tree_is_offline(ryzen):
    add_nvidia(ryzen, ["rtx5090", "h100"])
    p = run_cli("status", "gpu", "--root", str(ryzen), "--json", env={"HOSTTUNE_FAKE_NVML": ""})
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["driver"]["status"] == "offline"
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA GeForce RTX 5090",
                                                 "NVIDIA H100 80GB HBM3"]


def test_literal_nvml_constants_match_pynvml():
    from hosttune.host.gpu import nvml as gw

    for name in ("NVML_FEATURE_DISABLED", "NVML_FEATURE_ENABLED", "NVML_CLOCK_GRAPHICS",
                 "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_CLOCK_VIDEO",
                 "NVML_CLOCK_ID_APP_CLOCK_DEFAULT", "NVML_TEMPERATURE_GPU",
                 "NVML_COMPUTEMODE_DEFAULT", "NVML_COMPUTEMODE_PROHIBITED",
                 "NVML_COMPUTEMODE_EXCLUSIVE_PROCESS"):
        assert getattr(gw, name) == getattr(pynvml, name), name
    for n in dir(pynvml):
        if n.startswith("NVML_BRAND_") and n != "NVML_BRAND_COUNT":
            assert getattr(pynvml, n) in gw.BRANDS, n
        if n.startswith("NVML_DEVICE_ARCH_"):
            assert gw.ARCHS[getattr(pynvml, n)] == n[len("NVML_DEVICE_ARCH_"):].lower(), n


def test_importing_the_tunables_does_not_import_pynvml():
    import subprocess
    import sys

    code = ("import sys, hosttune.tunables as t; t.all_tunables(); "
            "print('pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                         check=True).stdout
    assert out.strip() == "False"


def test_rollback_after_the_driver_is_gone(ryzen):
    """NVML settings die with the driver: rollback then restores hosttune's files only."""
    add_nvidia(ryzen, ["rtx5090"], accounts=("nvpd",))
    loaded = load_profile("ryzen9950x-rtx5090")
    before = snapshot(ryzen)
    assert engine.apply(Host(ryzen, nvml_backend=FakeNvml(["rtx5090"], root=True)), loaded,
                        only=GPU_ONLY).ok
    rb = engine.rollback(Host(ryzen, nvml_backend=FakeNvml([], driver="no-driver")))
    assert rb.ok, [s.to_json() for s in rb.steps]
    assert snapshot(ryzen) == before


def test_lost_gpu_raises_gpu_is_lost_and_the_gateway_names_it():
    fake = FakeNvml(["h100", "h100"])
    fake.gpus[0].lost = True
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 2  # still counted, like the real driver
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetHandleByIndex(0)
    nv = Nvml(fake)
    assert [g.index for g in nv.devices()] == [1]
    assert nv.unreadable_devices() == {0: (NvmlState.GPU_LOST, "the GPU fell off the bus "
                                                               "(NVML_ERROR_GPU_IS_LOST)")}
    fake.gpus[1].lost = True  # after enumeration: every reading says so
    assert nv.power_usage_w(nv.devices()[0]).state is NvmlState.GPU_LOST


def test_live_host_without_nvidia_module_never_imports_pynvml(tmp_path) -> None:
    """/proc/driver/nvidia appears when the nvidia module loads; without it the gateway says
    'no driver' without paying pynvml's import (every audit on a GPU-less host)."""
    import subprocess
    import sys

    code = ("import sys\nfrom hosttune.host import Host\n"
            f"h = Host({str(tmp_path)!r})\nh.offline = False  # a live host with no driver\n"
            "nv = h.nvml()\nprint(nv.state[0].name, 'pynvml' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "HOSTTUNE_FAKE_NVML"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout.split()
    assert out == ["NO_DRIVER", "False"]


def test_gateway_init_and_device_list_are_thread_safe():
    """The exporter's scrape and audit threads share one gateway: a thread arriving while
    another is inside a slow nvmlInit must wait for it, not read an uninitialised NVML (the
    real library raises NVMLError_Uninitialized there, as the fake does) and cache no GPUs."""
    import threading
    import time

    class SlowInit(FakeNvml):
        def nvmlInit(self) -> None:
            time.sleep(0.2)
            super().nvmlInit()

    nv = Nvml(SlowInit(["h100", "h100"]))
    start = threading.Barrier(4)
    seen: list[object] = []

    def worker(i: int) -> None:
        start.wait()
        if i % 2:
            seen.append(len(nv.devices()))
        else:
            d = nv.driver()
            seen.append(d.value.gpu_count if d.ok else d.state)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [2, 2, 2, 2]
    assert nv.state == (NvmlState.OK, "")
