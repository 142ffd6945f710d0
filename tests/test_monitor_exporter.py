"""Exporter: metrics parsed with prometheus-client's text parser and checked against the tree;
a real scrape over loopback; the Grafana dashboard only names metrics the exporter emits; the
systemd unit verifies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from hosttune.errors import HosttuneError
from hosttune.host import Host
from hosttune.monitor import exporter as exp
from hosttune.monitor.snapshot import Monitor
from tests.conftest import REPO, need
from tests.monitor_trees import CID_A, CID_B, CID_C, MiB, full_ryzen, two_gpus

DASHBOARD = REPO / "docs/grafana-dashboard.json"
UNIT = REPO / "hosttune/monitor/units/hosttune-exporter.service"


def scrape_text(mon: Monitor) -> str:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(exp.HosttuneCollector(mon))
    return generate_latest(reg).decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(ss, name: str, **labels: str) -> float:
    hits = [v for lab, v in ss[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(hits) == 1, (name, labels, ss.get(name))
    return hits[0]


def test_exporter_metrics_match_the_tree(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    host = Host(root, nvml_backend=two_gpus())
    mon = Monitor(host, "inference")
    ss = samples(scrape_text(mon))
    p = "hosttune_"

    # audit: per-setting compliance equals the engine's audit of the same tree
    from hosttune import engine
    from hosttune.profile import load_profile

    rep = engine.audit(host, load_profile("inference"))
    assert one(ss, p + "drift_settings", profile="inference") == len(rep.drift)
    for r in rep.rows:
        assert one(ss, p + "setting_compliant", tunable=r.tunable, key=r.key) == \
            (0.0 if r.status.is_drift else 1.0)
    assert abs(one(ss, p + "audit_last_timestamp_seconds") - time.time()) < 60
    assert one(ss, p + "audit_up") == 1.0

    # huge pages: system-wide and per node in separate metrics (no node="all" rollup)
    two_mib = str(2 * MiB)
    assert one(ss, p + "hugepages_pool_pages", page_size_bytes=two_mib) == 100
    assert one(ss, p + "hugepages_reserved_pages", page_size_bytes=two_mib) == 10
    assert one(ss, p + "hugepages_node_free_pages", node="0", page_size_bytes=two_mib) == 40
    assert one(ss, p + "hugepages_node_surplus_pages", node="0", page_size_bytes=two_mib) == 2
    for name in ("pool", "free", "surplus", "reserved"):
        assert all("node" not in lab for lab, _ in ss[f"{p}hugepages_{name}_pages"]), name
    assert all(lab["node"].isdigit() for lab, _ in ss[p + "hugepages_node_pool_pages"])

    assert one(ss, p + "memlocked_bytes") == 123 * MiB
    assert one(ss, p + "model_store_used_bytes", mount="/srv/hosttune/models") == 6 * MiB
    assert one(ss, p + "model_store_size_bytes", mount="/srv/hosttune/models") == 4096 * MiB
    assert one(ss, p + "model_store_files", mount="/srv/hosttune/models") == 2

    # containers: VmLck, cpuset compliance, memory, cpu time
    assert one(ss, p + "container_vmlck_bytes", id=CID_A[:12]) == 3 * MiB
    assert one(ss, p + "container_cpuset_compliant", id=CID_A[:12]) == 1
    assert one(ss, p + "container_cpuset_compliant", id=CID_B[:12]) == 0
    assert one(ss, p + "container_cpuset_compliant", id=CID_C[:12]) == 0
    assert one(ss, p + "container_memory_bytes", id=CID_A[:12]) == 700 * MiB
    assert one(ss, p + "container_cpu_seconds_total", id=CID_B[:12]) == pytest.approx(1.5)

    # CPU
    assert one(ss, p + "cpu_frequency_hertz", cpu="3", source="cpufreq") == 4003000 * 1000
    assert one(ss, p + "cpu_frequency_hertz", cpu="3", source="cpuinfo") == \
        pytest.approx(3031.5e6)
    assert one(ss, p + "cpu_governor_info", cpu="3", governor="performance") == 1

    # GPU: power/clock/compute mode; NOT_SUPPORTED power is absent, not a fake zero
    assert one(ss, p + "gpu_power_watts", gpu="0") == 312.5
    assert [lab for lab, _ in ss[p + "gpu_power_watts"] if lab["gpu"] == "1"] == []
    assert one(ss, p + "gpu_power_limit_watts", gpu="1") == 575.0
    assert one(ss, p + "gpu_clock_hertz", gpu="0", clock="sm") == 1980e6
    assert one(ss, p + "gpu_compute_mode", gpu="0", mode="EXCLUSIVE_PROCESS") == 1
    assert one(ss, p + "gpu_compute_mode", gpu="0", mode="DEFAULT") == 0
    assert one(ss, p + "gpu_persistence_mode", gpu="1") == 0
    for c in ("cpu", "memory", "hugepages", "memlocked", "store", "containers", "gpu", "audit"):
        assert one(ss, p + "collector_up", collector=c) == 1, c


def _trees(tmp_path: Path) -> dict[str, tuple[Host, str]]:
    """Every fixture tree, and one whose audit reports two findings on one file:line."""
    from tests import fakehost
    from tests.fake_nvidia import add_nvidia
    from tests.seed_tree import seed_nvml, seed_tree

    dup = full_ryzen(tmp_path / "dup")
    add_nvidia(dup, ["rtx5090"])
    fakehost.w(dup, "/etc/modprobe.d/zz-local.conf",
               "options nvidia NVreg_Bogus=1 NVreg_Other=2\n")
    return {
        "ryzen": (Host(full_ryzen(tmp_path / "r"), nvml_backend=two_gpus()), "inference"),
        "epyc": (Host(fakehost.epyc_2s(tmp_path / "epyc")), "inference"),
        "vm": (Host(fakehost.this_vm(tmp_path / "vm")), "inference"),
        "seed": (Host(seed_tree(tmp_path / "seed"), nvml_backend=seed_nvml()), "inference"),
        "two-findings-one-line": (Host(dup), "ryzen9950x-rtx5090"),
    }


def _repeated_series(text: str) -> list[str]:
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    dup = []
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            k = (smp.name, tuple(sorted(smp.labels.items())))
            if k in seen:
                dup.append(f"{smp.name}{dict(k[1])}")
            seen.add(k)
    return dup


def test_no_series_repeats_on_any_tree(tmp_path: Path) -> None:
    for name, (host, profile) in _trees(tmp_path).items():
        text = scrape_text(Monitor(host, profile))
        assert _repeated_series(text) == [], name
    # the tree really has two findings on one key: the exporter folds them into one series
    host, profile = _trees(tmp_path / "again")["two-findings-one-line"]
    ss = samples(scrape_text(Monitor(host, profile)))
    assert one(ss, "hosttune_setting_compliant", tunable="nvidia_modules",
               key="/etc/modprobe.d/zz-local.conf:1") == 0.0


def _promtool() -> str:
    exe = shutil.which("promtool")
    need(exe is not None, "promtool (Debian package prometheus) is not installed")
    assert exe is not None
    return exe


def _promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)


def test_promtool_accepts_the_exposition_of_every_tree(tmp_path: Path) -> None:
    for name, (host, profile) in _trees(tmp_path).items():
        r = _promtool_check(scrape_text(Monitor(host, profile)))
        assert r.returncode == 0, (name, r.stdout + r.stderr)


def test_promtool_catches_naming_mistakes() -> None:
    """The check is real: a gauge named like a counter is rejected."""
    bad = "# HELP x_total x\n# TYPE x_total gauge\nx_total 1\n"
    r = _promtool_check(bad)
    assert r.returncode != 0 and "_total" in r.stdout + r.stderr


def test_unavailable_subsystems_are_marked_down(vm: Path) -> None:
    mon = Monitor(Host(vm), "inference")
    ss = samples(scrape_text(mon))
    assert one(ss, "hosttune_collector_up", collector="gpu") == 0
    assert "hosttune_gpu_power_watts" not in ss


def test_scrape_does_not_run_the_audit(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    mon = Monitor(Host(root), "inference", audit_interval_s=3600)
    assert mon.audit is not None
    mon.audit.start()
    try:
        deadline = time.time() + 30
        while mon.audit.runs == 0 and time.time() < deadline:
            time.sleep(0.05)
        for _ in range(5):
            scrape_text(mon)
        assert mon.audit.runs == 1
    finally:
        mon.audit.stop()


def test_listen_parsing() -> None:
    assert exp.parse_listen("127.0.0.1:9866") == ("127.0.0.1", 9866)
    assert exp.parse_listen("[::1]:0") == ("::1", 0)
    assert exp.parse_listen(":9866") == ("127.0.0.1", 9866)
    for bad in ("localhost:9866", "127.0.0.1", "1.2.3.4:99999"):
        with pytest.raises(HosttuneError):
            exp.parse_listen(bad)
    assert exp.is_loopback("127.0.0.1") and not exp.is_loopback("0.0.0.0")


def test_exporter_refuses_non_loopback_without_flag() -> None:
    from tests.conftest import run_cli

    r = run_cli("exporter", "--listen", "0.0.0.0:0")
    assert r.returncode == 2 and "not a loopback address" in r.stderr


def _start_exporter(*args: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "hosttune", "exporter", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        proc.kill()
        raise AssertionError(f"exporter did not start: {line}{proc.stderr.read()}")
    return proc, int(m.group(1))


def test_real_scrape_over_loopback(tmp_path: Path) -> None:
    root = full_ryzen(tmp_path)
    proc, port = _start_exporter("--listen", "127.0.0.1:0", "--root", str(root))
    try:
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
            assert resp.status == 200
        assert time.monotonic() - t0 < 5
        ss = samples(body)
        assert one(ss, "hosttune_memlocked_bytes") == 123 * MiB
        assert one(ss, "hosttune_container_vmlck_bytes", id=CID_A[:12]) == 3 * MiB
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM is a clean stop


def test_live_scrapes_never_wait_for_the_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps a scrape cheap (timed in bench/bench_scrape.py, docs/benchmarks.md): the audit
    runs only on its background thread, never on the scrape path. With the live host's audit
    held mid-run, every scrape still answers (audit_up 0) and no scrape starts another audit;
    once the audit finishes, the next scrape serves its result."""
    import threading

    from hosttune.monitor import snapshot

    release, calls = threading.Event(), []
    real = snapshot.collect_audit

    def held_audit(host: Host, profile: str | None):  # type: ignore[no-untyped-def]
        calls.append(threading.current_thread().name)
        release.wait(60)
        return real(host, profile)

    monkeypatch.setattr(snapshot, "collect_audit", held_audit)
    mon = Monitor(Host("/"), "inference", audit_interval_s=3600)
    ex = exp.start(mon, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{ex.port}/metrics"
        for _ in range(5):  # a scrape that ran the audit would block here until urlopen times out
            body = urllib.request.urlopen(url, timeout=20).read().decode()
            assert "hosttune_memlocked_bytes" in body
            assert "hosttune_audit_up 0.0" in body
        assert calls == ["hosttune-audit"]
        release.set()
        deadline = time.monotonic() + 60
        while mon.audit is not None and mon.audit.runs == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        body = urllib.request.urlopen(url, timeout=20).read().decode()
        assert "hosttune_audit_up 1.0" in body
        assert calls == ["hosttune-audit"]
    finally:
        release.set()
        ex.stop()


def test_promtool_accepts_a_live_scrape() -> None:
    """What Prometheus scrapes over HTTP from this live host (audit included) passes
    Prometheus's own linter, and no series repeats."""
    _promtool()
    proc, port = _start_exporter("--listen", "127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.time() + 60
        body = ""
        while time.time() < deadline:  # the first audit runs on a background thread
            body = urllib.request.urlopen(url, timeout=10).read().decode()
            if "hosttune_audit_up 1.0" in body:
                break
            time.sleep(0.2)
        assert "hosttune_audit_up 1.0" in body, body[-2000:]
        r = _promtool_check(body)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _repeated_series(body) == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- dashboard ------------------------------------------------------------------------------------
def _dashboard_metric_names() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(o: object) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                if k in ("expr", "query") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for x in o:
                walk(x)

    walk(dash)
    assert exprs, "dashboard has no queries"
    return {m for e in exprs for m in re.findall(r"\bhosttune_[a-z_]+", e)}


def test_dashboard_is_valid_and_uses_only_exported_metrics(tmp_path: Path) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and isinstance(dash["panels"], list) and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(p)
    mon = Monitor(Host(full_ryzen(tmp_path), nvml_backend=two_gpus()), "inference")
    exported = {f.name for f in text_string_to_metric_families(scrape_text(mon))}
    exported |= {n + "_total" for n in exported}
    used = _dashboard_metric_names()
    assert used - exported == set()
    # and every metric family the exporter defines is on the dashboard somewhere
    defined = {"hosttune_" + n + ("_total" if k == "counter" else "")
               for n, (k, _) in exp.METRICS.items()}
    assert defined - used == set()


# --- systemd unit -------------------------------------------------------------------------------
def test_unit_runs_unprivileged_on_loopback() -> None:
    text = UNIT.read_text()
    assert "DynamicUser=yes" in text
    exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "--listen 127.0.0.1:9866" in exec_line
    assert "User=root" not in text


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    sa = shutil.which("systemd-analyze")
    need(sa is not None, "systemd-analyze not installed")
    assert sa is not None
    # verify checks that ExecStart's binary exists: point it at this checkout's entry point
    exe = shutil.which("hosttune") or "/usr/local/bin/hosttune"
    need(os.path.exists(exe), "hosttune entry point not installed (pip install -e .)")
    text = UNIT.read_text().replace("/usr/local/bin/hosttune", exe)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    r = subprocess.run([sa, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    problems = [line for line in (r.stdout + r.stderr).splitlines() if UNIT.name in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


_DROP_AND_SERVE = r"""
import os, sys, time
from hosttune.host import Host
from hosttune.monitor import exporter as exp
from hosttune.monitor.snapshot import Monitor
# import what is loaded lazily while still allowed to read the interpreter's site-packages
import encodings.idna, hosttune.engine, hosttune.profile, pynvml  # noqa
from hosttune.tunables import all_tunables
all_tunables()
# load the profile (msgspec, the schema, PyYAML) while site-packages is still readable
os.environ["HOSTTUNE_NO_CACHE"] = "1"
hosttune.profile.load_profile("inference")
del os.environ["HOSTTUNE_NO_CACHE"]
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # nobody, like DynamicUser
srv = exp.start(Monitor(Host("/"), "inference", audit_interval_s=3600), "127.0.0.1", 0)
print(srv.port, os.geteuid(), flush=True)
time.sleep(120)
"""


def test_exporter_works_as_unprivileged_user() -> None:
    need(os.geteuid() == 0, "needs root to drop to an unprivileged user")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _DROP_AND_SERVE], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        port, euid = (int(x) for x in line.split())
        assert euid == 65534
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.time() + 30
        while True:  # the first audit runs on the background thread
            ss = samples(urllib.request.urlopen(url, timeout=10).read().decode())
            if one(ss, "hosttune_audit_up") == 1 or time.time() > deadline:
                break
            time.sleep(0.2)
        for c in ("cpu", "memory", "hugepages", "memlocked", "containers", "audit"):
            assert one(ss, "hosttune_collector_up", collector=c) == 1, c
        assert one(ss, "hosttune_drift_settings", profile="inference") >= 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
