"""Scenario 3: power cuts during apply and rollback.

QEMU is killed (SIGKILL: the guest loses whatever it had not written to its disk, like a real
power loss) at step points spread over `apply` and over `rollback`. Each boot first recovers
the previous cut (`hosttune rollback --yes`) and checks the result against the pristine state,
then starts the next run and is cut: about one boot per cut.

After each cut the recovered state must be byte-identical to pristine (/etc and the audit), no
zero-length, truncated or temp files may be left under /etc or the state dir, and rollback must
name the running daemons that still carry a tuned memlock limit.

CI runs HOSTTUNE_VM_CUTS=12 (9 in apply, 3 in rollback); a long run:
    HOSTTUNE_VM=1 HOSTTUNE_VM_CUTS=60 python3 -m pytest -m vm tests/vm/test_power_cut.py
Cut points: point p of a run with N steps is step p//2, before (p even) or after (p odd) it
changes the host (the HOSTTUNE_TEST_MARK lines); fractions evenly spread over 0..1 pick p.
Results go to <logs>/power-cut/results.json and docs/reliability.md records the counts."""

from __future__ import annotations

import json
import os
import re

import pytest

from tests.vm import checks
from tests.vm.conftest import VmEnv
from tests.vm.power_cut_plan import announced_points, cut_matcher, plan

pytestmark = [pytest.mark.vm, pytest.mark.timeout(5400)]

CUTS = int(os.environ.get("HOSTTUNE_VM_CUTS", "12"))

COMMON = checks.PRELUDE + """
export HOSTTUNE_TEST_MARK=
steps() { # steps apply|rollback -> how many step points the run will have (2 per step)
  if [ "$1" = apply ]; then hosttune plan -p inference --json; else
    hosttune rollback --dry-run --json; fi | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(2 * (len(d["changes"]) if "changes" in d else d["entries"]))'
}
cut_run() { # cut_run apply|rollback FRACTION [STEPS]: announce the point, then run with
  # marks on (STEPS: the step points of an earlier boot's same run, else asked here)
  local n=${3:-} p
  [ -n "$n" ] || n=$(steps "$1")
  p=$(python3 -c "print(min(int($2 * $n), $n - 1))")
  local point="$((p / 2)):$([ $((p % 2)) = 0 ] && echo before || echo after)"
  # straight to the console, like the step marks (the unit's own output goes via journald)
  echo "HT-CUT-AT $1 $point of $n" > /dev/console
  export HOSTTUNE_TEST_PAUSE="$1 $point"  # hosttune holds there until the cut lands
  if [ "$1" = apply ]; then
    HOSTTUNE_TEST_MARK=/dev/console hosttune apply -p inference --yes --json > /dev/null 2>&1
  else
    HOSTTUNE_TEST_MARK=/dev/console hosttune rollback --yes --json > /dev/null 2>&1
  fi
  echo "HT-NOT-CUT" > /dev/console  # the run ended before its point showed: a failure
  sleep 600
}
"""

RECOVER = """
for c in dockerd containerd; do
  p=$(pidof -s $c) && grep 'Max locked memory' /proc/$p/limits > $o/limits-$c
done
run recover.json hosttune rollback --yes --json
# what rollback said to do: restart the daemons it named (then the audit must be pristine)
grep -q 'still runs with the tuned memlock' $o/recover.json && \
  systemctl restart containerd.service docker.service
snap_etc etc-recovered.tar
find /etc /var/lib/hosttune -xdev -type f \\( -size 0 -o -name '*tmp*' -o -name '*.new' \\) \\
  > $o/suspicious 2>/dev/null || true
ls -la /var/lib/hosttune > $o/state-dir 2>&1 || true
run audit-recovered.json hosttune audit -p inference --json
"""

PRISTINE = """
run audit-pristine.json hosttune audit -p inference --json
snap_etc etc-pristine.tar
find /etc -xdev -type f -size 0 > $o/zero-pristine
"""


def _check(res, run: tuple[str, float], pristine, prev_console: str) -> dict[str, object]:
    """What the recovery (in boot ``res``, before its own cut) left, against pristine."""
    o = res.out
    problems: list[str] = []
    if "recover.json" not in o:
        return {"run": run[0], "fraction": run[1], "recovered": False,
                "problems": ["no recovery results came back"]}
    if o.get("recover.json.rc", "").strip() != "0":
        problems.append(f"rollback exit {o.get('recover.json.rc', '?').strip()}: "
                        f"{o.get('recover.json', '')[-500:]} {o.get('recover.json.err', '')}")
    diffs = checks.etc_differences(pristine.out_dir / "etc-pristine.tar",
                                   res.out_dir / "etc-recovered.tar",
                                   checks.ETC_EXCEPTIONS)
    problems += [f"/etc: {d}" for d in diffs]
    zero = set(pristine.out["zero-pristine"].split())
    left = [f for f in o.get("suspicious", "").split() if f not in zero]
    problems += [f"left behind: {f}" for f in left]
    if checks.comparable(checks.audit_rows(o.get("audit-recovered.json", '{"rows": []}'))) != \
            checks.comparable(checks.audit_rows(pristine.out["audit-pristine.json"])):
        problems.append("audit differs from pristine")
    rep = json.loads(o["recover.json"]) if o.get("recover.json", "").strip() else {}
    for daemon in ("dockerd", "containerd"):
        tuned = o.get(f"limits-{daemon}", "").split()[3:5] == ["unlimited", "unlimited"]
        told = any(ln.startswith(f"{daemon} ") for ln in rep.get("still_running", []))
        if tuned != told:
            problems.append(f"{daemon} ran with memlock {'unlimited' if tuned else 'default'}"
                            f" but rollback {'did not name' if tuned else 'named'} it")
    m = re.search(r"HT-CUT-AT .*", prev_console)  # the whole line, for the report
    return {"run": run[0], "fraction": round(run[1], 3), "point": m.group(0) if m else "?",
            "recovered": not problems, "problems": problems,
            "still_running": rep.get("still_running", []),
            "undid_interrupted": len(rep.get("recovered", []))}


def test_power_cuts(vm_env: VmEnv) -> None:
    tree = vm_env.tree("cut")
    tree.swapfile(checks.SWAP, 64)
    fstab = (tree.path / "etc/fstab").read_text()
    tree.write("/etc/fstab", fstab + f"{checks.SWAP} none swap sw 0 0\n")
    vm = vm_env.guest("cut", tree)
    runs = plan(CUTS)
    results: list[dict[str, object]] = []
    pristine = None
    prev_console = ""
    points: dict[str, str] = {}
    for i, run in enumerate([*runs, ("final", 0.0)]):
        phase, frac = run
        script = COMMON + (PRISTINE if i == 0 else RECOVER) + "\nht_flush\n"
        if phase == "apply":
            script += f"cut_run apply {frac} {points.get('apply', '')}\n"
        elif phase == "rollback":
            script += ("hosttune apply -p inference --yes --json > /dev/null 2>&1\n"
                       f"cut_run rollback {frac} {points.get('rollback', '')}\n")
        res = vm.boot(script, label=f"{i:02d}-{phase}", cut_at=cut_matcher(),
                      stage_timeout_s=900)
        if i == 0:
            pristine = res
            assert "audit-pristine.json" in res.out, res.tail()
        else:
            results.append(_check(res, runs[i - 1], pristine, prev_console))
        prev_console = res.console
        points.update(announced_points(res.console))
        if phase != "final":
            assert res.cut, f"boot {i} ({phase}) was not cut (console {res.log}):\n{res.tail()}"
            assert "HT-NOT-CUT" not in res.console
    lost = [r for r in results if not r["recovered"]]
    out = vm_env.logs / "power-cut-results.json"
    out.write_text(json.dumps({"tried": len(results), "recovered": len(results) - len(lost),
                               "lost": len(lost), "runs": results}, indent=2))
    assert len(results) == CUTS
    assert lost == [], json.dumps(lost, indent=2)
