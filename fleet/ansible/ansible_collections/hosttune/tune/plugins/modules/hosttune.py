#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosttune contributors
# Apache License 2.0 (see LICENSE in this collection)
# SPDX-License-Identifier: Apache-2.0

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hosttune
short_description: Apply, audit or roll back a hosttune profile on the target
version_added: "0.1.0"
description:
  - Runs the C(hosttune) command-line tool on the target (C(plan), C(apply), C(audit),
    C(rollback) with C(--json)) and reports its results the Ansible way.
  - O(state=applied) plans first and applies only when the plan has changes, so the task is
    C(changed) only when something on the host changed.
  - Sets the fact C(ansible_facts.hosttune) with the audit result, C(reboot_required) and
    C(restart_required).
  - The tool itself must be installed on the target; the collection's role
    C(hosttune.tune.hosttune) installs it.
options:
  state:
    description:
      - V(applied) brings the host to the profile (transactional; every change journaled).
      - V(audited) only compares the host with the profile (read-only).
      - V(rolled_back) restores the exact originals recorded by earlier applies.
    type: str
    choices: [applied, audited, rolled_back]
    default: applied
  profile:
    description:
      - Name of a built-in profile (C(hosttune profiles list)) or the path of a profile YAML
        file on the target.
      - Required for O(state=applied) and O(state=audited) unless O(profile_content) is given.
    type: str
  profile_content:
    description:
      - The profile YAML itself. It is written to a temporary file on the target; its
        C(extends) may name a built-in profile or an absolute path.
    type: str
  root:
    description:
      - Work on the filesystem tree under this directory instead of C(/) (C(--root)), for example an image,
        a chroot or a test fixture. No external command is run in this mode.
    type: path
  executable:
    description:
      - Path of the C(hosttune) executable on the target.
      - Default is C(hosttune) from C(PATH), C(/opt/hosttune/venv/bin) or C(/usr/local/bin).
    type: path
  runtime_only:
    description:
      - Only live values, no persistent files (what the boot-time re-apply does).
    type: bool
    default: false
  only:
    description:
      - Limit to these tunable families (for example V(sysctl)).
    type: list
    elements: str
  fail_on_drift:
    description:
      - With O(state=audited), fail when a setting drifts from the profile.
    type: bool
    default: false
attributes:
  check_mode:
    description: Runs C(hosttune plan) or C(hosttune rollback --dry-run) and writes nothing.
    support: full
  diff_mode:
    description: Returns the unified diffs of every file the plan changes and the runtime values.
    support: full
notes:
  - Changes on the live system need root (O(root) trees need only write access to the tree).
  - A failed apply is reported as the engine left it. When a step fails, the engine undoes the
    whole run (C(changed=false), C(reverted) lists what was undone). When verification fails
    after every step was written, the changes stay (C(changed=true), C(applied) lists them,
    C(drifting) says what still drifts); restore them with O(state=rolled_back).
  - C(reboot_required) is true when the applied changes (for example kernel command-line
    parameters) only take effect after a reboot; the module never reboots.
author:
  - hosttune contributors (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Tune a GPU inference host with a built-in profile
  hosttune.tune.hosttune:
    profile: ryzen9950x-rtx5090
  register: tuned

- name: Apply an inline profile
  hosttune.tune.hosttune:
    profile_content: |
      name: site
      extends: inference
      sysctl:
        settings:
          vm.swappiness: 1

- name: Verify (fails when a setting drifted)
  hosttune.tune.hosttune:
    state: audited
    profile: inference
    fail_on_drift: true

- name: Restore the original values
  hosttune.tune.hosttune:
    state: rolled_back

- name: Reboot only when the changes need it
  ansible.builtin.reboot:
  when: ansible_facts.hosttune.reboot_required
"""

RETURN = r"""
changes:
  description: The planned changes (C(hosttune plan --json) C(changes)).
  returned: state is applied
  type: list
  elements: dict
  sample: [{"id": "sysctl/vm.swappiness", "summary": "sysctl vm.swappiness: 60 -> 0",
            "kind": "kernel", "runtime": true, "needs": []}]
apply:
  description: The apply report (C(ok), C(changed), C(steps), C(verify), C(needs)).
  returned: state is applied and something was applied
  type: dict
rollback:
  description: The rollback report (C(ok), C(steps)); in check mode the journal status.
  returned: state is rolled_back
  type: dict
applied:
  description: Summaries of the changes that stay applied after this run (also when it failed).
  returned: state is applied and hosttune apply ran
  type: list
  elements: str
reverted:
  description: Summaries of the changes the engine undid because a step failed.
  returned: state is applied and hosttune apply ran
  type: list
  elements: str
drifting:
  description: Settings still drifting after the apply (why a verification failed).
  returned: state is applied and hosttune apply ran
  type: list
  elements: str
audit:
  description: The audit report (C(rows), C(counts), C(drift)).
  returned: when a profile is known
  type: dict
drift:
  description: Number of settings that drift from the profile.
  returned: when a profile is known
  type: int
  sample: 0
reboot_required:
  description: A reboot is needed for applied (or, in check mode, planned) changes.
  returned: always
  type: bool
  sample: false
restart_required:
  description: Services to restart for the changes to take effect.
  returned: always
  type: list
  elements: str
  sample: ["docker.service"]
needs:
  description: Everything the changes still need (C(reboot), C(restart docker.service)).
  returned: always
  type: list
  elements: str
commands:
  description: The hosttune command lines that were run.
  returned: always
  type: list
  elements: list
ansible_facts:
  description: Facts about the tuning of this host.
  returned: always
  type: dict
  contains:
    hosttune:
      description: C(profile), C(audit), C(drift), C(reboot_required), C(restart_required).
      type: dict
      returned: always
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

ENV = {"NO_COLOR": "1", "COLUMNS": "200"}
AUDIT_KEYS = ("profile", "root", "offline", "rows", "counts", "drift")


class Runner(object):
    def __init__(self, module, exe, root):
        self.module = module
        self.exe = exe
        self.root = root
        self.commands = []

    def json(self, args, ok_rcs=(0, 1)):
        argv = [self.exe] + list(args) + ["--json"]
        if self.root:
            argv += ["--root", self.root]
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv, environ_update=ENV)
        if rc not in ok_rcs:
            self.module.fail_json(msg="hosttune %s failed (exit %d): %s"
                                  % (args[0], rc, (err or out).strip()),
                                  rc=rc, stdout=out, stderr=err, cmd=argv,
                                  commands=self.commands)
        try:
            data = json.loads(out)
        except ValueError:
            self.module.fail_json(msg="hosttune %s printed no JSON" % args[0], rc=rc,
                                  stdout=out, stderr=err, cmd=argv, commands=self.commands)
        return rc, data


def _unique(items):
    seen = []
    for i in items:
        if i not in seen:
            seen.append(i)
    return seen


def _audit_part(report):
    return dict((k, report[k]) for k in AUDIT_KEYS if k in report)


def _needs_of(audit, extra=()):
    needs = list(extra)
    for row in (audit or {}).get("rows", []):
        if row.get("status") in ("needs reboot", "needs restart"):
            needs.extend(row.get("needs") or [])
            if row.get("status") == "needs reboot" and not row.get("needs"):
                needs.append("reboot")
    return _unique(needs)


DRIFTING = ("drift", "conflict", "error")


def _apply_outcome(rep):
    """What the engine did, from its report: the changes that stay applied, those it undid, the
    settings still drifting, whether the host changed, and a message saying what to do.

    A step that failed makes the engine undo the whole run (its steps then show up again as
    reverted, and the report's changed is false); a verification that fails after every step
    keeps the changes (changed is true)."""
    steps = rep.get("steps") or []
    undone = set(s.get("id") for s in steps if s.get("status") == "reverted")
    applied = [s.get("summary") for s in steps
               if s.get("status") == "applied" and s.get("id") not in undone]
    reverted = [s.get("summary") for s in steps
                if s.get("status") == "reverted" and s.get("error") != "unchanged"]
    stuck = [s.get("summary") for s in steps if s.get("status") == "revert-failed"]
    failed = [s for s in steps if s.get("status") == "failed"]
    drifting = ["%s %s: %s (want %s)%s" % (r.get("tunable"), r.get("key"), r.get("current"),
                                           r.get("desired"),
                                           " - " + r["note"] if r.get("note") else "")
                for r in rep.get("verify") or [] if r.get("status") in DRIFTING]
    out = dict(applied=applied, reverted=reverted, drifting=drifting,
               changed=bool(rep.get("changed")), msg="")
    if rep.get("ok"):
        return out
    error = rep.get("error") or "unknown error"
    if failed:
        out["msg"] = "hosttune apply failed: %s. " % error
        if stuck:
            out["msg"] += ("These changes could not be undone and are still applied: %s; "
                           "run hosttune rollback (state: rolled_back)." % "; ".join(stuck))
        else:
            out["msg"] += ("Every change of this run was undone (%d); the host is as before."
                           % len(reverted))
    else:
        out["msg"] = ("hosttune applied %d change(s), and they stay applied, but %s: %s. Fix "
                      "the host or the profile and run again, or restore the originals with "
                      "state: rolled_back." % (len(applied), error,
                                               "; ".join(drifting) or "see apply.verify"))
    return out


def _diff(changes):
    out = []
    runtime = []
    for c in changes:
        if c.get("diff"):
            d = c["diff"]
            where = c.get("path") or c.get("id")
            out.append({"before_header": where, "after_header": where,
                        "prepared": d if d.endswith("\n") else d + "\n"})
        else:
            runtime.append("%s: %s\n" % ("runtime" if c.get("runtime") else c.get("kind"),
                                         c.get("summary")))
    if runtime:
        out.append({"prepared": "".join(runtime)})
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="applied",
                       choices=["applied", "audited", "rolled_back"]),
            profile=dict(type="str"),
            profile_content=dict(type="str"),
            root=dict(type="path"),
            executable=dict(type="path"),
            runtime_only=dict(type="bool", default=False),
            only=dict(type="list", elements="str"),
            fail_on_drift=dict(type="bool", default=False),
        ),
        mutually_exclusive=[["profile", "profile_content"]],
        required_if=[["state", "applied", ["profile", "profile_content"], True],
                     ["state", "audited", ["profile", "profile_content"], True]],
        supports_check_mode=True,
    )
    p = module.params
    exe = p["executable"] or module.get_bin_path(
        "hosttune", required=False, opt_dirs=["/opt/hosttune/venv/bin", "/usr/local/bin"])
    if not exe or not os.access(exe, os.X_OK):
        module.fail_json(msg="hosttune executable not found (%s): install it (role "
                         "hosttune.tune.hosttune) or set executable" % (exe or "PATH"))
    if p["root"] and not os.path.isdir(p["root"]):
        module.fail_json(msg="root %s is not a directory" % p["root"])
    run = Runner(module, exe, p["root"])

    profile = p["profile"]
    if p["profile_content"] is not None:
        profile = os.path.join(module.tmpdir, "hosttune-profile.yaml")
        with open(profile, "w") as fh:
            fh.write(p["profile_content"])
    sel = []
    for fam in p["only"] or []:
        sel += ["--only", fam]

    result = dict(changed=False, needs=[], reboot_required=False, restart_required=[])
    audit = None
    needs = []
    state = p["state"]

    if state == "applied":
        extra = ["--runtime-only"] if p["runtime_only"] else []
        plan = run.json(["plan", "--profile", profile] + sel + extra)[1]
        changes = plan.get("changes", [])
        result["changes"] = changes
        if module._diff and changes:
            result["diff"] = _diff(changes)
        if module.check_mode or not changes:
            result["changed"] = bool(changes)
            audit = _audit_part(plan)
            needs = plan.get("needs", []) if module.check_mode else []
        else:
            rep = run.json(["apply", "--yes", "--profile", profile] + sel + extra)[1]
            result["apply"] = rep
            outcome = _apply_outcome(rep)
            result.update(changed=outcome["changed"], applied=outcome["applied"],
                          reverted=outcome["reverted"], drifting=outcome["drifting"])
            if not rep.get("ok"):
                module.fail_json(msg=outcome["msg"], commands=run.commands, **result)
            needs = rep.get("needs", [])
            audit = run.json(["audit", "--profile", profile] + sel)[1]
    elif state == "audited":
        audit = run.json(["audit", "--profile", profile] + sel)[1]
    else:
        st = run.json(["rollback", "--dry-run"])[1]
        pending = bool(st.get("entries") or st.get("interrupted"))
        if module._diff and pending:
            result["diff"] = [{"prepared": "".join("revert: %s\n" % i for i in st.get("ids", []))
                               or "undo an interrupted run\n"}]
        if module.check_mode or not pending:
            result["rollback"] = st
            result["changed"] = pending
        else:
            rb = run.json(["rollback", "--yes"])[1]
            result["rollback"] = rb
            if not rb.get("ok"):
                module.fail_json(msg="hosttune rollback could not restore every original",
                                 rollback=rb, commands=run.commands)
            result["changed"] = bool(rb.get("steps") or rb.get("recovered"))
        if profile:
            audit = run.json(["audit", "--profile", profile] + sel)[1]

    needs = _needs_of(audit, needs)
    facts = dict(
        reboot_required="reboot" in needs,
        restart_required=_unique(n.split(" ", 1)[1] for n in needs
                                 if n.startswith("restart ")),
    )
    if audit is not None:
        audit = _audit_part(audit)
        result["audit"] = audit
        result["drift"] = audit.get("drift", 0)
        facts.update(profile=audit.get("profile"), audit=audit, drift=audit.get("drift", 0))
    result.update(needs=needs, reboot_required=facts["reboot_required"],
                  restart_required=facts["restart_required"], commands=run.commands,
                  ansible_facts=dict(hosttune=facts))
    if state == "audited" and p["fail_on_drift"] and result.get("drift"):
        bad = [r for r in audit["rows"] if r.get("status") in ("drift", "conflict", "error")]
        module.fail_json(msg="%d setting(s) drift from the profile: %s" % (
            len(bad), ", ".join("%s %s" % (r["tunable"], r["key"]) for r in bad[:10])),
            **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
