"""The Ansible collection, run for real: ansible-playbook against localhost (connection local).

The role installs hosttune from a copy of this checkout into a virtualenv, applies a profile to
a fake host tree (--root), verifies it; a second run reports changed=0; check mode writes
nothing; rollback restores the tree byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import fakehost
from tests.conftest import REPO, USER_CACHE, need
from tests.helpers import snapshot

COLLECTIONS = REPO / "fleet" / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections" / "hosttune" / "tune"
MODULE = COLLECTION / "plugins" / "modules" / "hosttune.py"

PROFILE = """\
name: fleet-test
extends: inference
description: fleet test profile (inline in the playbook)
sysctl:
  settings:
    vm.swappiness: 1
"""

pytestmark = pytest.mark.slow


def _ansible(tool: str) -> str:
    exe = shutil.which(tool) or str(Path(sys.executable).with_name(tool))
    need(os.access(exe, os.X_OK), f"{tool} (ansible-core from PyPI) is not installed")
    return exe


def full_snapshot(root: Path) -> dict[str, str]:
    """Everything under root, hosttune's state included (check mode must not even lock)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel + "/"] = oct(p.stat().st_mode)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


class Ansible:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = dict(os.environ)
        self.env.update({
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_HOME": str(work / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
            "ANSIBLE_REMOTE_TEMP": str(work / "ansible-remote-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "LC_ALL": "C.UTF-8",
            "PYTHONPATH": "",  # the role's virtualenv must provide hosttune, not this checkout
        })
        self.env.pop("HOSTTUNE_ROOT", None)
        self.env.pop("HOSTTUNE_PROFILE", None)
        self.exe = _ansible("ansible-playbook")

    def play(self, name: str, plays: list, extra: dict, *args: str
             ) -> tuple[subprocess.CompletedProcess, int]:
        pb = self.work / f"{name}.yml"
        pb.write_text(yaml.safe_dump(plays, sort_keys=False))
        ev = self.work / f"{name}-vars.json"
        ev.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **extra}))
        r = subprocess.run([self.exe, "-i", "localhost,", "-c", "local", str(pb),
                            "-e", f"@{ev}", *args], capture_output=True, text=True,
                           env=self.env, timeout=300, check=False)
        m = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0",
                      r.stdout)
        assert r.returncode == 0 and m, f"{name} failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
        return r, int(m.group(1))


def _role_play(result_file: Path) -> list:
    return [{
        "name": "tune", "hosts": "all", "gather_facts": False,
        "roles": [{"role": "hosttune.tune.hosttune"}],
        "post_tasks": [{
            "name": "save what the role registered",
            "ansible.builtin.copy": {
                "content": "{{ {'apply': hosttune_apply, 'facts': ansible_facts.hosttune"
                           " | default({})} | to_json }}",
                "dest": str(result_file)},
            "check_mode": False, "changed_when": False,
        }],
    }]


@pytest.fixture
def src_copy(tmp_path: Path) -> Path:
    """What pip installs: a copy of the package sources (an in-tree build would leave build/
    and *.egg-info in the checkout)."""
    dst = tmp_path / "src"
    dst.mkdir()
    shutil.copytree(REPO / "hosttune", dst / "hosttune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, dst / f)
    return dst


def test_role_apply_idempotent_check_and_rollback(tmp_path: Path, src_copy: Path) -> None:
    ans = Ansible(tmp_path)
    tree = fakehost.ryzen_9950x(tmp_path / "tree")
    before = snapshot(tree)
    venv = tmp_path / "venv"
    role_vars = {
        "hosttune_venv": str(venv), "hosttune_python": sys.executable,
        "hosttune_pip_source": str(src_copy),
        # the test machine has the dependencies; do not download them again
        "hosttune_venv_site_packages": True, "hosttune_pip_extra_args": "--no-deps",
        "hosttune_profile_content": PROFILE, "hosttune_root": str(tree),
    }
    res = tmp_path / "result.json"

    # 1. install + apply + verify
    r, changed = ans.play("apply", _role_play(res), role_vars)
    assert changed >= 2, r.stdout  # install + apply
    assert (venv / "bin" / "hosttune").exists()
    out = json.loads(res.read_text())
    assert out["apply"]["changed"] is True
    assert out["apply"]["apply"]["ok"] is True
    assert out["facts"]["drift"] == 0
    assert out["facts"]["reboot_required"] is False
    assert out["facts"]["profile"] == "fleet-test"
    conf = (tree / "etc/sysctl.d/90-hosttune.conf").read_text()
    assert "vm.swappiness = 1" in conf
    assert (tree / "proc/sys/vm/swappiness").read_text().strip() == "1"
    assert "TASK [hosttune.tune.hosttune : Verify the host against the profile]" in r.stdout
    # the venv's hosttune ran, not this checkout
    assert all(c[0] == str(venv / "bin" / "hosttune") for c in out["apply"]["commands"])
    applied = snapshot(tree)
    assert applied != before

    # 2. second run: nothing to do
    r, changed = ans.play("apply-again", _role_play(res), role_vars)
    assert changed == 0, r.stdout
    assert json.loads(res.read_text())["apply"]["changed"] is False
    assert snapshot(tree) == applied

    # 3. check mode (with --diff) on a fresh tree: reports the changes, writes nothing
    tree2 = fakehost.ryzen_9950x(tmp_path / "tree2")
    full2 = full_snapshot(tree2)
    r, changed = ans.play("check", _role_play(res), {**role_vars, "hosttune_root": str(tree2)},
                          "--check", "--diff")
    assert changed >= 1, r.stdout
    assert full_snapshot(tree2) == full2
    out = json.loads(res.read_text())
    assert out["apply"]["changed"] is True and "apply" not in out["apply"]
    assert "+++ /etc/sysctl.d/90-hosttune.conf" in r.stdout
    assert "+vm.swappiness = 1" in r.stdout
    assert "sysctl vm.swappiness: 60 -> 1" in r.stdout

    # 4. rollback: check mode first, then for real, then again (nothing left)
    exe = str(venv / "bin" / "hosttune")
    mod = {"root": str(tree), "executable": exe}
    tasks = [
        {"name": "rollback (check)", "hosttune.tune.hosttune": {"state": "rolled_back", **mod},
         "check_mode": True, "register": "rb_check"},
        {"name": "rollback", "hosttune.tune.hosttune": {"state": "rolled_back", **mod},
         "register": "rb"},
        {"name": "rollback again", "hosttune.tune.hosttune": {"state": "rolled_back", **mod},
         "register": "rb_again"},
        {"name": "an unknown profile fails with hosttune's message",
         "hosttune.tune.hosttune": {"state": "audited", "profile": "no-such-profile", **mod},
         "register": "bad", "ignore_errors": True},
        {"name": "save", "ansible.builtin.copy": {
            "content": "{{ {'check': rb_check, 'rb': rb, 'again': rb_again, 'bad': bad}"
                       " | to_json }}", "dest": str(res)},
         "changed_when": False},
    ]
    snap_before_check = full_snapshot(tree)
    r, _ = ans.play("rollback", [{"hosts": "all", "gather_facts": False, "tasks": tasks}], {})
    out = json.loads(res.read_text())
    assert out["check"]["changed"] is True
    assert out["check"]["rollback"]["entries"] > 0
    assert out["rb"]["changed"] is True and out["rb"]["rollback"]["ok"] is True
    assert out["again"]["changed"] is False
    assert out["bad"]["failed"] is True
    assert "no built-in profile 'no-such-profile'" in out["bad"]["msg"]
    assert snap_before_check != full_snapshot(tree)  # the real rollback did write
    assert snapshot(tree) == before  # byte-identical (hosttune's own journal aside)

    # 5. the same through the role (hosttune_state: rolled_back): apply, then roll back
    installed = {**role_vars, "hosttune_install": False, "hosttune_executable": exe}
    r, changed = ans.play("apply-role", _role_play(res), installed)
    assert changed >= 1 and snapshot(tree) == applied, r.stdout
    rb_play = [{"name": "roll back", "hosts": "all", "gather_facts": False,
                "roles": [{"role": "hosttune.tune.hosttune"}],
                "post_tasks": [{"name": "save", "ansible.builtin.copy": {
                    "content": "{{ hosttune_rollback | to_json }}", "dest": str(res)},
                    "changed_when": False}]}]
    r, changed = ans.play("rollback-role", rb_play, {**installed,
                                                     "hosttune_state": "rolled_back"})
    assert changed == 1, r.stdout
    assert json.loads(res.read_text())["rollback"]["ok"] is True
    assert snapshot(tree) == before
    r, changed = ans.play("rollback-role-again", rb_play, {**installed,
                                                           "hosttune_state": "rolled_back"})
    assert changed == 0, r.stdout


FAKE_HOSTTUNE = r'''#!{python}
"""A stand-in hosttune CLI whose plan needs a reboot (no real tunable does yet in a tree)."""
import json, os, sys
state = os.path.join(os.path.dirname(os.path.abspath(__file__)), "applied")
cmd = sys.argv[1]
row = {{"tunable": "kernel", "key": "cmdline pcie_aspm", "current": "absent",
        "desired": "off", "status": "drift", "note": "", "needs": ["reboot"]}}
done = os.path.exists(state)
if done:
    row = dict(row, status="needs reboot", current="off (after reboot)")
audit = {{"profile": "p", "root": "/", "offline": False, "rows": [row],
          "counts": {{row["status"]: 1}}, "drift": 0 if done else 1}}
change = {{"id": "kernel/cmdline", "tunable": "kernel", "kind": "file",
           "summary": "update /etc/default/grub.d/90-hosttune.cfg", "runtime": False,
           "needs": ["reboot"], "diff": "--- a\n+++ b\n+pcie_aspm=off\n"}}
if cmd == "plan":
    print(json.dumps(dict(audit, changes=[] if done else [change],
                          needs=[] if done else ["reboot"])))
    sys.exit(0 if done else 1)
if cmd == "apply":
    open(state, "w").close()
    print(json.dumps({{"ok": True, "changed": True, "steps": [], "verify": [],
                       "needs": ["reboot", "restart docker.service"]}}))
    sys.exit(0)
if cmd == "audit":
    print(json.dumps(audit))
    sys.exit(1 if audit["drift"] else 0)
sys.exit(2)
'''


def test_role_notifies_reboot_only_when_needed(tmp_path: Path) -> None:
    """The reboot handler is notified on the run that applied a reboot-needing change, never
    reboots while hosttune_reboot_allowed is false, and is not notified again."""
    ans = Ansible(tmp_path)
    fake = tmp_path / "bin" / "hosttune"
    fake.parent.mkdir()
    fake.write_text(FAKE_HOSTTUNE.format(python=sys.executable))
    fake.chmod(0o755)
    res = tmp_path / "result.json"
    role_vars = {"hosttune_install": False, "hosttune_executable": str(fake),
                 "hosttune_profile": "inference"}
    r, changed = ans.play("reboot", _role_play(res), role_vars)
    out = json.loads(res.read_text())
    assert out["apply"]["reboot_required"] is True
    assert out["apply"]["restart_required"] == ["docker.service"]
    assert out["facts"]["reboot_required"] is True
    assert "RUNNING HANDLER [hosttune.tune.hosttune : Report the reboot that hosttune needs]" \
        in r.stdout
    assert "hosttune_reboot_allowed is false" in r.stdout
    # the real handlers are skipped by their guards
    assert re.search(r"RUNNING HANDLER \[hosttune.tune.hosttune : Reboot for hosttune\] \*+\n"
                     r"skipping", r.stdout), r.stdout
    assert re.search(r"RUNNING HANDLER \[hosttune.tune.hosttune : Restart services for "
                     r"hosttune\] \*+\nskipping", r.stdout), r.stdout
    # second run: nothing applied, no notification, but the fact still says reboot
    r, changed = ans.play("reboot-again", _role_play(res), role_vars)
    assert changed == 0, r.stdout
    assert "RUNNING HANDLER" not in r.stdout
    assert json.loads(res.read_text())["facts"]["reboot_required"] is True


def test_module_documentation_parses_with_ansible_doc(tmp_path: Path) -> None:
    exe = _ansible("ansible-doc")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_HOME=str(tmp_path / "ah"), LC_ALL="C.UTF-8")
    r = subprocess.run([exe, "--json", "hosttune.tune.hosttune"], capture_output=True,
                       text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["hosttune.tune.hosttune"]
    opts = doc["doc"]["options"]
    assert set(opts) >= {"state", "profile", "profile_content", "root", "executable"}
    assert opts["state"]["choices"] == ["applied", "audited", "rolled_back"]
    assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert doc["doc"]["attributes"]["diff_mode"]["support"] == "full"
    assert "reboot_required" in doc["return"]
    examples = yaml.safe_load(doc["examples"])
    assert all(any(k.startswith("hosttune.tune.") or k.startswith("ansible.builtin.")
                   for k in task) for task in examples)
    # every option of the module's argument_spec is documented, and nothing more
    spec = re.search(r"argument_spec=dict\((.*?)\n        \),", MODULE.read_text(), re.S)
    assert spec
    assert set(re.findall(r"^\s+(\w+)=dict\(", spec.group(1), re.M)) == set(opts)


def test_example_playbook_syntax(tmp_path: Path) -> None:
    exe = _ansible("ansible-playbook")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_HOME=str(tmp_path / "ah"), LC_ALL="C.UTF-8")
    r = subprocess.run([exe, "--syntax-check", "-i", "localhost,",
                        str(REPO / "fleet" / "ansible" / "site.yml")],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_role_defaults_match_argument_specs() -> None:
    role = COLLECTION / "roles" / "hosttune"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    opts = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(opts)
    for k, v in defaults.items():
        assert opts[k]["default"] == v, k


def _checkout_hosttune(tmp_path: Path) -> Path:
    """A hosttune executable that runs this checkout (the module only needs the CLI)."""
    exe = tmp_path / "bin" / "hosttune"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m hosttune \"$@\"\n")
    exe.chmod(0o755)
    return exe


def test_failed_verification_reports_the_changes_that_stayed(tmp_path: Path) -> None:
    """An apply whose verification fails after writing (a hand-made sysctl.d file overrides the
    profile at boot) keeps its changes: the task fails, is changed, lists what stayed applied
    and what still drifts, and says how to undo it; the tree really holds the changes. In
    check and diff mode the same task writes nothing."""
    ans = Ansible(tmp_path)
    exe = _checkout_hosttune(tmp_path)
    tree = fakehost.ryzen_9950x(tmp_path / "tree")
    fakehost.w(tree, "/etc/sysctl.d/99-zz-local.conf", "vm.swappiness = 60\n")
    res = tmp_path / "result.json"
    task = {"hosttune.tune.hosttune": {"profile": "inference", "root": str(tree),
                                       "executable": str(exe)},
            "ignore_errors": True}
    play = [{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "apply (check)", **task, "check_mode": True, "register": "check"},
        {"name": "apply", **task, "register": "run"},
        {"name": "save", "ansible.builtin.copy": {
            "content": "{{ {'check': check, 'run': run} | to_json }}", "dest": str(res)},
         "check_mode": False, "changed_when": False},
    ]}]
    before = full_snapshot(tree)
    pb = tmp_path / "failing.yml"
    pb.write_text(yaml.safe_dump(play, sort_keys=False))
    r = subprocess.run([ans.exe, "-i", "localhost,", "-c", "local", str(pb), "--diff",
                        "-e", f"ansible_python_interpreter={sys.executable}"],
                       capture_output=True, text=True, env=ans.env, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]  # ignore_errors
    out = json.loads(res.read_text())
    check, run = out["check"], out["run"]
    assert check["changed"] is True and not check.get("failed")
    assert "+vm.swappiness = 0" in r.stdout  # --diff shows the drop-in
    assert run["failed"] is True and run["changed"] is True
    assert "stay applied" in run["msg"] and "state: rolled_back" in run["msg"]
    assert "reverted" not in run["msg"] and "undone" not in run["msg"]
    assert any("vm.swappiness" in d and "99-zz-local.conf" in d for d in run["drifting"])
    assert "vm.swappiness" in run["msg"]
    assert run["applied"] and run["reverted"] == []
    assert len(run["applied"]) == len(run["apply"]["steps"])
    # what the module says stayed is what the tree holds
    assert "vm.swappiness = 0" in (tree / "etc/sysctl.d/90-hosttune.conf").read_text()
    assert (tree / "proc/sys/vm/swappiness").read_text().strip() == "0"
    assert full_snapshot(tree) != before
    assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0\s+"
                     r"skipped=0\s+rescued=0\s+ignored=1", r.stdout), r.stdout[-2000:]


def _load_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hosttune_module", MODULE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_failed_step_is_reported_as_undone(tmp_path: Path, monkeypatch) -> None:
    """A step that fails makes the engine undo the run: the module then says nothing changed
    and every change was undone (the engine's own report, a failure injected at step 3)."""
    from hosttune import engine
    from hosttune.engine import core
    from hosttune.host import Host
    from hosttune.profile import load_profile

    tree = fakehost.ryzen_9950x(tmp_path / "tree")
    before = snapshot(tree)
    real, calls = core.do_apply, []

    def flaky(host, ch):
        calls.append(ch.id)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(host, ch)

    monkeypatch.setattr(core, "do_apply", flaky)
    rep = engine.apply(Host(tree), load_profile("inference")).to_json()
    assert rep["ok"] is False and snapshot(tree) == before
    assert rep["changed"] is False  # the engine's own report: nothing stayed applied
    out = _load_module()._apply_outcome(rep)
    assert out["changed"] is False and out["applied"] == []
    assert len(out["reverted"]) == len(calls) == 3  # the failed step too: restored
    assert "Every change of this run was undone" in out["msg"]
    assert "Input/output error" in out["msg"]
    # and the verification failure keeps them (same report shape as the playbook test)
    fakehost.w(tree, "/etc/sysctl.d/99-zz-local.conf", "vm.swappiness = 60\n")
    monkeypatch.setattr(core, "do_apply", real)
    rep = engine.apply(Host(tree), load_profile("inference")).to_json()
    assert rep["changed"] is True
    out = _load_module()._apply_outcome(rep)
    assert out["changed"] is True and len(out["applied"]) == len(rep["steps"])


def test_ansible_test_sanity_passes(tmp_path: Path) -> None:
    """ansible-test sanity (every test: validate-modules, pylint, ansible-doc, yamllint, ...) for
    the collection, through .ci/ansible-sanity (no download from ansible-test's own host)."""
    _ansible("ansible-test")
    r = subprocess.run([str(REPO / ".ci" / "ansible-sanity")], capture_output=True, text=True,
                       timeout=1200, check=False,
                       env=dict(os.environ, PYTHON=sys.executable,
                                HOSTTUNE_ANSIBLE_TEST_HOME=os.path.join(
                                    USER_CACHE, "hosttune", "ansible-test")))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert r.stdout.count('Running sanity test "') >= 20, r.stdout
    assert 'Running sanity test "validate-modules"' in r.stdout
