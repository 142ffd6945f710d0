"""Scenario 5 (issue 17 part 3): a fleet over SSH. Three guests with sshd, each reached on a
forwarded loopback port (127.0.0.1 only; the guests' user-mode network is restrict=on), all
up at once, driven by ansible-playbook with the repo's role and module:

  check mode with --diff (reports, changes nothing) -> apply (changed) -> apply again
  (changed=0 on every host) -> reboot of the guests -> audit through the module (ok
  everywhere) -> rollback through the role (the originals are back).

fleet3 is deliberately different: its host_vars give it another profile (vm.swappiness 10
where the fleet has 1). It converges to its own profile like the others, and the fleet-wide
comparison (the fleet's profile audited on every host) names it as the one that differs.

Lean on purpose (CI budget): sysctl only (hosttune_only), the guests booted one after the
other (-smp 1, 1 GiB each; three TCG boots at once on 2 cores starve each other) and then
all kept up for the whole play; one vm_lock for the whole time they run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import need
from tests.vm import guest as g
from tests.vm.conftest import VmEnv

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("fleet1", "fleet2", "fleet3")
FLEET_PROFILE = "name: fleet\nextends: inference\nsysctl:\n  settings:\n    vm.swappiness: 1\n"
ODD_PROFILE = "name: fleet-odd\nextends: inference\nsysctl:\n  settings:\n    vm.swappiness: 10\n"
ROLE_VARS = {"hosttune_install": False, "hosttune_executable": f"{g.GUEST_VENV}/bin/hosttune",
             "hosttune_only": ["sysctl"], "hosttune_profile_content": FLEET_PROFILE}
RECAP = re.compile(r"^(fleet\d)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    def __init__(self, work: Path, logs: Path, ports: dict[str, int], key: Path) -> None:
        self.work, self.logs = work, logs
        exe = shutil.which("ansible-playbook") or str(
            Path(sys.executable).with_name("ansible-playbook"))
        need(os.access(exe, os.X_OK), "ansible-playbook (ansible-core) is not installed")
        self.exe = exe
        inv = {"all": {"hosts": {h: {"ansible_host": "127.0.0.1", "ansible_port": p}
                                 for h, p in ports.items()},
                       "vars": {"ansible_user": "root",
                                "ansible_ssh_private_key_file": str(key),
                                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                "-o UserKnownHostsFile=/dev/null -o ConnectTimeout=30",
                                "ansible_python_interpreter": "/usr/bin/python3", **ROLE_VARS}}}
        inv["all"]["hosts"]["fleet3"]["hosttune_profile_content"] = ODD_PROFILE
        self.inventory = work / "inventory.yml"
        self.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / "fleet/ansible"),
                        ANSIBLE_HOME=str(work / "ansible-home"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_PIPELINING="1",
                        ANSIBLE_HOST_KEY_CHECKING="0", ANSIBLE_FORKS="3", LC_ALL="C.UTF-8",
                        PYTHONPATH="")
        self.recaps: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def play(self, name: str, plays: list, *args: str) -> dict[str, tuple[int, int, int, int]]:
        pb = self.work / f"{name}.yml"
        pb.write_text(yaml.safe_dump(plays, sort_keys=False))
        t0 = time.monotonic()
        r = subprocess.run([self.exe, "-i", str(self.inventory), str(pb), *args],
                           capture_output=True, text=True, env=self.env, timeout=1800,
                           check=False)
        self.seconds[name] = round(time.monotonic() - t0, 1)
        (self.logs / f"play-{name}.log").write_text(r.stdout + r.stderr)
        recap = {m[1]: (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
                 for m in RECAP.finditer(r.stdout)}
        self.recaps[name] = "\n".join(ln for ln in r.stdout.splitlines()
                                      if RECAP.match(ln))
        assert sorted(recap) == list(HOSTS), f"{name}:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
        return recap


def _role(**extra: object) -> list:
    return [{"name": "hosttune", "hosts": "all", "gather_facts": False,
             "vars": dict(extra), "roles": [{"role": "hosttune.tune.hosttune"}]}]


def _probe(dest: Path, *, compare: bool) -> list:
    """Save each host's live vm.swappiness (and, with compare, its audit against its own
    profile and against the fleet's) on the controller."""
    tasks: list[dict] = [
        {"name": "live swappiness", "ansible.builtin.command": "sysctl -n vm.swappiness",
         "register": "swp", "changed_when": False, "check_mode": False}]
    if compare:
        own = {"state": "audited", "executable": ROLE_VARS["hosttune_executable"],
               "only": ["sysctl"], "profile_content": "{{ hosttune_profile_content }}"}
        tasks += [
            {"name": "audit against its own profile", "hosttune.tune.hosttune":
             {**own, "fail_on_drift": True}, "register": "own"},
            {"name": "compare with the fleet's profile", "hosttune.tune.hosttune":
             {**own, "profile_content": FLEET_PROFILE, "fail_on_drift": False},
             "register": "fleetwide"},
            {"name": "report a host that differs from the fleet", "ansible.builtin.debug":
             {"msg": "{{ inventory_hostname }} differs from the fleet profile: "
                     "{{ fleetwide.drift }} setting(s)"},
             "when": "fleetwide.drift | int > 0"}]
    content = ("{{ {'swappiness': swp.stdout, 'own': own | default({}), "
               "'fleetwide': fleetwide | default({})} | to_json }}")
    tasks.append({"name": "save on the controller", "ansible.builtin.copy":
                  {"content": content, "dest": f"{dest}/{{{{ inventory_hostname }}}}.json"},
                  "delegate_to": "localhost", "check_mode": False, "changed_when": False,
                  "vars": {"ansible_python_interpreter": sys.executable,
                           "ansible_connection": "local"}})
    return [{"name": "probe", "hosts": "all", "gather_facts": False, "tasks": tasks}]


def _read(d: Path) -> dict[str, dict]:
    return {h: json.loads((d / f"{h}.json").read_text()) for h in HOSTS}


def test_fleet_over_ssh(vm_env: VmEnv) -> None:
    need(shutil.which("ssh") is not None, "ssh (openssh-client) is not installed")
    base = vm_env.base  # the shared image: sshd is in it, enabled by Tree.ssh_host
    work = vm_env.work / "fleet"
    work.mkdir(parents=True, exist_ok=True)
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    guests = {}
    for h in HOSTS:
        t0 = time.monotonic()
        tree = g.Tree.extract(base, work / h / "tree")
        tree.install_hosttune(vm_env.wheels)
        tree.ssh_host(h, (key.with_suffix(".pub")).read_text())
        disk = tree.make_disk(work / h / "disk.img")
        shutil.rmtree(tree.path, ignore_errors=True)
        guests[h] = g.Guest(disk, vm_env.logs / "fleet", name=h)
        print(f"{h}: image {time.monotonic() - t0:.0f} s")
    ports = {h: _free_port() for h in HOSTS}
    fleet = Fleet(work, vm_env.logs / "fleet", ports, key)
    timings: dict[str, float] = {}
    with g.vm_lock(), contextlib.ExitStack() as up:
        t0 = time.monotonic()
        for h in HOSTS:  # one after the other: each boot has the CPUs to itself
            up.enter_context(guests[h].serve(ports[h]))
            timings[f"boot {h}"] = round(time.monotonic() - t0, 1)
        probe = work / "probe"
        probe.mkdir()
        # 1. check mode + diff: every host would change, none did
        rc = fleet.play("check", _role(), "--check", "--diff")
        assert all(c[1] >= 1 and c[2] == 0 and c[3] == 0 for c in rc.values()), rc
        log = (vm_env.logs / "fleet/play-check.log").read_text()
        assert "+vm.swappiness = 1" in log and "+vm.swappiness = 10" in log
        fleet.play("probe-after-check", _probe(probe, compare=False))
        assert {h: v["swappiness"] for h, v in _read(probe).items()} == dict.fromkeys(HOSTS,
                                                                                      "60")
        # 2. apply, 3. apply again
        rc = fleet.play("apply", _role())
        assert all(c[1] >= 1 and c[2:] == (0, 0) for c in rc.values()), rc
        rc = fleet.play("apply-again", _role())
        assert all(c[1] == 0 and c[2:] == (0, 0) for c in rc.values()), rc
        # 4. reboot the guests (QEMU stays, the guest reboots; Ansible waits for sshd)
        rc = fleet.play("reboot", [{"name": "reboot", "hosts": "all", "gather_facts": False,
                                    "tasks": [{"name": "reboot", "ansible.builtin.reboot":
                                               {"reboot_timeout": 900}}]}])
        assert all(c[1] == 1 and c[2:] == (0, 0) for c in rc.values()), rc
        # 5. audit through the module: ok everywhere; fleet3 differs from the fleet
        rc = fleet.play("audit", _probe(probe, compare=True))
        assert all(c[1] == 0 and c[2:] == (0, 0) for c in rc.values()), rc
        res = _read(probe)
        assert {h: v["swappiness"] for h, v in res.items()} == \
            {"fleet1": "1", "fleet2": "1", "fleet3": "10"}
        assert all(v["own"]["drift"] == 0 for v in res.values()), res
        assert {h: v["fleetwide"]["drift"] for h, v in res.items()} == \
            {"fleet1": 0, "fleet2": 0, "fleet3": 2}
        odd = {r["key"] for r in res["fleet3"]["fleetwide"]["audit"]["rows"]
               if r["status"] == "drift"}
        assert odd == {"vm.swappiness", "file /etc/sysctl.d/90-hosttune.conf"}, odd
        assert "fleet3 differs from the fleet profile" in \
            (vm_env.logs / "fleet/play-audit.log").read_text()
        # 6. rollback through the role: the originals are back everywhere
        rc = fleet.play("rollback", _role(hosttune_state="rolled_back"))
        assert all(c[1] >= 1 and c[2:] == (0, 0) for c in rc.values()), rc
        fleet.play("probe-after-rollback", _probe(probe, compare=False))
        assert {h: v["swappiness"] for h, v in _read(probe).items()} == dict.fromkeys(HOSTS,
                                                                                      "60")
        fleet.play("poweroff", [{"name": "power off", "hosts": "all", "gather_facts": False,
                                 "tasks": [{"name": "poweroff", "ansible.builtin.command":
                                            "systemctl --no-block poweroff"}]}])
    timings.update(fleet.seconds)
    (vm_env.logs / "fleet/recaps.txt").write_text(
        "\n\n".join(f"# {k}\n{v}" for k, v in fleet.recaps.items()) + "\n")
    (vm_env.logs / "fleet/timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings))
