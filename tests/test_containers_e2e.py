"""Real end-to-end: Debian's dockerd, a FROM-scratch busybox image, models in a small hugetlbfs
store of our own, the planned services run by docker-compose 1.29, `containers verify` passes
and the checksum read inside each container matches; then containers that ignore the plan's
cpuset are reported. Mandatory in CI (need())."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from hosttune.host import Host
from tests.conftest import need, run_cli
from tests.containers_trees import compose_schema_validator
from tests.dockerd import ensure_dockerd

HP = 2 * 1024 * 1024
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
FREE = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

# The image's entrypoint: print the checksum of the model as the container reads it, then idle.
ENTRYPOINT = ["/bin/busybox", "sh", "-c",
              'echo "sum $(/bin/busybox sha256sum "$MODEL_PATH")"; '
              "exec /bin/busybox sleep 2147483647"]


def _fill(path: Path, data: bytes) -> None:
    """Write a hugetlbfs file: write(2) is EINVAL there, so size it (a huge-page multiple) and
    copy through a MAP_SHARED mapping (fs/hugetlbfs/inode.c)."""
    assert len(data) % HP == 0
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, len(data))
        m = mmap.mmap(fd, len(data), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            m[:] = data
        finally:
            m.close()
    finally:
        os.close(fd)


def _read(p: str) -> int:
    return int(Path(p).read_text().strip())


def _compose(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.root
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("memlock", ["ipc_lock", "ulimit"])
def test_planned_services_run_and_verify(tmp_path: Path, kernel_lock, memlock: str) -> None:
    need(os.geteuid() == 0, "needs root (hugetlbfs mount, dockerd)")
    need("hugetlbfs" in Path("/proc/filesystems").read_text(), "kernel without hugetlbfs")
    need(os.path.exists(NR), "no 2 MiB huge pages")
    need(shutil.which("docker-compose") is not None, "docker-compose not installed")
    need(os.path.exists("/bin/busybox"), "busybox-static not installed")
    why = ensure_dockerd()
    need(why is None, why or "")

    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto",
                                 timeout=120)
    tag = uuid.uuid4().hex[:8]
    project = f"hte2e{tag}"
    image = f"hosttune-e2e:{tag}"
    store = tmp_path / "store"
    store.mkdir()
    compose_file = tmp_path / "compose.yml"
    orig_nr = _read(NR)
    mounted = False
    built = False
    try:
        # -- a small pool and our own hugetlbfs store with two models -----------------------
        Path(NR).write_text(f"{orig_nr + 4}\n")
        need(_read(FREE) >= 3, "could not get 3 free 2 MiB huge pages")
        subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M,size=8M", "none",
                        str(store)], check=True, timeout=30)
        mounted = True
        models = {"m0.gguf": os.urandom(HP), "m1.gguf": os.urandom(2 * HP)}
        for name, data in models.items():
            _fill(store / name, data)
        sums = {name: hashlib.sha256(data).hexdigest() for name, data in models.items()}

        # -- the FROM scratch image ----------------------------------------------------------
        ctx = tmp_path / "image"
        ctx.mkdir()
        shutil.copy2("/bin/busybox", ctx / "busybox")
        (ctx / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            f"ENTRYPOINT {json.dumps(ENTRYPOINT)}\n")
        client.images.build(path=str(ctx), tag=image, rm=True, forcerm=True)
        built = True

        # -- the profile: two CPU workers on this 2-CPU VM --------------------------------------
        wl = {
            "image": image, "project": project,
            "cpu_workers": {"count": 2, "memory": "64MiB", "models": list(models)},
            "system_cores": 0, "memlock": memlock, "mlock": False, "store": str(store),
            "port_base": None, "tmpfs_size": "8MiB",
        }
        if memlock == "ulimit":
            # dockerd's hard memlock here is 8 MiB without CAP_SYS_RESOURCE: stay below it
            wl["memlock_limit"] = "4MiB"
        prof = tmp_path / "e2e.yaml"
        prof.write_text(yaml.safe_dump({"name": "e2e", "workload": wl}))
        ncpu = len(os.sched_getaffinity(0))
        need(ncpu >= 2, "needs at least 2 CPUs")

        r = run_cli("containers", "plan", "-p", str(prof), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        plan = json.loads(r.stdout)
        cpusets = [w["cpuset_cpus"] for w in plan["workers"]]
        assert len(cpusets) == 2 and len(set(cpusets)) == 2

        r = run_cli("containers", "compose", "-p", str(prof), "-o", str(compose_file))
        assert r.returncode == 0, r.stderr
        doc = yaml.safe_load(compose_file.read_text())
        compose_schema_validator().validate(doc)

        up = _compose("-f", str(compose_file), "-p", project, "up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr

        # -- the checksum each container read from the store ----------------------------------
        containers = {w["container"]: w for w in plan["workers"]}
        seen: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < len(containers):
            for name in containers:
                logs = client.containers.get(name).logs().decode()
                for line in logs.splitlines():
                    if line.startswith("sum "):
                        seen[name] = line.split()[1]
            time.sleep(0.5)
        for name, w in containers.items():
            assert seen.get(name) == sums[w["model"]], (name, seen, sums)

        # -- verify: everything as planned -------------------------------------------------
        r = run_cli("containers", "verify", "-p", str(prof), "--json")
        rep = json.loads(r.stdout)
        assert r.returncode == 0, rep["mismatches"]
        assert rep["ok"] is True
        checks = {(c["subject"], c["check"]): c for c in rep["checks"]}
        for name, w in containers.items():
            assert checks[(name, "cpuset.cpus")]["actual"] == w["cpuset_cpus"]
            assert checks[(name, "rootfs")]["actual"] == "read-only"
            assert checks[(name, f"mount {w['model_path'].rsplit('/', 1)[0]}")]["actual"] == \
                "hugetlbfs read-only"
            assert checks[(name, "memory limit")]["actual"] == "64 MiB"
            caps = checks[(name, "capabilities (effective)")]["actual"]
            assert caps == ("IPC_LOCK" if memlock == "ipc_lock" else "none")
            if memlock == "ulimit":
                assert checks[(name, "memlock soft/hard")]["actual"] == "4 MiB/4 MiB"
            assert checks[(name, "model file")]["actual"] == "visible"
        # the daemons' own memlock is reported as /proc says it is
        from hosttune.host.parsers import parse_limits

        d = checks[("dockerd", "memlock hard" if memlock == "ulimit" else "memlock soft/hard")]
        from hosttune.host.facts import find_pids
        from hosttune.profile.sizes import format_size

        pid = find_pids(Host("/"), "dockerd")[0]
        soft, hard = parse_limits(Path(f"/proc/{pid}/limits").read_text())["Max locked memory"]
        fmt = lambda v: "unlimited" if v is None else format_size(v)  # noqa: E731
        assert d["actual"].startswith(f"{fmt(soft)}/{fmt(hard)}"), d

        # -- a container started without the plan's cpuset is reported ----------------------
        rogue = f"{project}-rogue"
        client.containers.run(image, name=rogue, detach=True, read_only=True,
                              cap_drop=["ALL"], environment={"MODEL_PATH": "/nonexistent"},
                              labels={"io.hosttune.e2e": project})
        # and worker cpu-0 recreated by hand, with its labels but no cpuset
        w0 = next(w for w in plan["workers"] if w["name"] == "cpu-0")
        client.containers.get(w0["container"]).remove(force=True)
        client.containers.run(
            image, name=w0["container"], detach=True, read_only=True, cap_drop=["ALL"],
            environment={"MODEL_PATH": w0["model_path"]},
            labels={"io.hosttune.project": project, "io.hosttune.worker": "cpu-0"},
            volumes={str(store): {"bind": "/models", "mode": "ro"}},
            mem_limit=64 * 1024 * 1024)
        r = run_cli("containers", "verify", "-p", str(prof))
        assert r.returncode == 1, r.stdout + r.stderr
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("mismatch")]
        from hosttune.host.parsers import format_cpulist

        all_cpus = format_cpulist(Host("/").facts.cpu_ids)
        assert any(f"{w0['container']}: cpuset.cpus is {all_cpus}, plan says "
                   f"{w0['cpuset_cpus']} (started without a cpuset)" in ln for ln in lines), lines
        assert any(ln.startswith(f"mismatch {rogue}: cpuset.cpus") and "not in the plan" in ln
                   for ln in lines), lines
        # the hand-made container also lacks the plan's hardening
        assert any(f"{w0['container']}: no-new-privileges is 0" in ln for ln in lines), lines

        # a worker asking for more memlock than the runtime may grant does not start, and
        # verify says why (only where the daemon cannot raise its limit, as on this VM)
        st = Path(f"/proc/{pid}/status").read_text()
        cap_eff = int(next(ln.split()[1] for ln in st.splitlines()
                           if ln.startswith("CapEff:")), 16)
        if memlock == "ulimit" and hard is not None and not cap_eff >> 24 & 1:
            import docker.errors

            w1 = next(w for w in plan["workers"] if w["name"] == "cpu-1")
            client.containers.get(w1["container"]).remove(force=True)
            with pytest.raises(docker.errors.APIError, match="rlimit"):
                client.containers.run(
                    image, name=w1["container"], detach=True,
                    labels={"io.hosttune.project": project, "io.hosttune.worker": "cpu-1"},
                    ulimits=[docker.types.Ulimit(name="memlock", soft=2 * hard, hard=2 * hard)])
            r = run_cli("containers", "verify", "-p", str(prof))
            assert r.returncode == 1
            assert any(f"{w1['container']}: state is created" in ln and "rlimit type 8" in ln
                       for ln in r.stdout.splitlines()), r.stdout
    finally:
        subprocess.run(["docker-compose", "-f", str(compose_file), "-p", project, "down",
                        "--remove-orphans", "-t", "1"], capture_output=True, timeout=180,
                       check=False) if compose_file.exists() else None
        for c in client.containers.list(all=True):
            labels = c.labels or {}
            if labels.get("io.hosttune.project") == project or \
                    labels.get("io.hosttune.e2e") == project:
                c.remove(force=True)
        if built:
            client.images.remove(image, force=True)
        client.close()
        if mounted:
            subprocess.run(["umount", str(store)], check=False, timeout=30)
        Path(NR).write_text(f"{orig_nr}\n")
