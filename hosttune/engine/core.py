"""audit -> plan -> apply -> verify -> rollback.

Data flows one way: profile -> evaluate(host) -> changes -> apply (journaled) -> report.
Nothing here prints; every function returns a typed report."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import msgspec
from msgspec import field

from hosttune.engine.journal import Journal, JournalWriteError, Lock
from hosttune.errors import ApplyError, HosttuneError, NeedsRootError, UsageError
from hosttune.host import Host
from hosttune.profile import LoadedProfile
from hosttune.tunables import all_tunables, get_tunable, knob_for
from hosttune.tunables.base import Change, Context, Row, Status, Tunable

ProgressFn = Callable[[int, int, Change], None]


# --- reports ----------------------------------------------------------------------------------
class AuditReport(msgspec.Struct, frozen=True):
    profile: str
    root: str
    rows: list[Row]
    offline: bool

    @property
    def drift(self) -> list[Row]:
        return [r for r in self.rows if r.status.is_drift]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "root": self.root, "offline": self.offline,
                "rows": [r.to_json() for r in self.rows], "counts": self.counts(),
                "drift": len(self.drift)}


class PlanReport(msgspec.Struct, frozen=True):
    audit: AuditReport
    changes: list[Change]

    @property
    def needs(self) -> list[str]:
        seen: dict[str, None] = {}
        for c in self.changes:
            for n in c.needs:
                seen.setdefault(n, None)
        return list(seen)

    @property
    def warnings(self) -> list[str]:
        """Row notes that flag a risk in what apply would write (e.g. a boot unit running an
        interpreter under /tmp)."""
        return [f"{r.tunable} {r.key}: {r.note.removeprefix('warning: ')}" for r in
                self.audit.rows if r.note.startswith("warning:")]

    def to_json(self) -> dict[str, Any]:
        return {**self.audit.to_json(), "changes": [c.to_json() for c in self.changes],
                "needs": self.needs, "warnings": self.warnings}


class StepResult(msgspec.Struct, frozen=True):
    change: Change
    status: str  # applied | failed | reverted | revert-failed | skipped
    error: str = ""
    skipped_commands: tuple[tuple[str, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.change.id, "summary": self.change.summary, "status": self.status,
                "error": self.error,
                "skipped_commands": [list(c) for c in self.skipped_commands]}


class ApplyReport(msgspec.Struct, frozen=True):
    ok: bool
    steps: list[StepResult]
    verify: list[Row]
    recovered: list[StepResult] = field(default_factory=list)
    error: str = ""
    needs: list[str] = field(default_factory=list)
    skipped_commands: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything of this run stayed applied: after a failed step the engine undoes
        every step (they come back as "reverted"), and then the host is as before."""
        undone = {s.change.id for s in self.steps if s.status == "reverted"}
        return any(s.status == "revert-failed" or (s.status == "applied"
                                                   and s.change.id not in undone)
                   for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": self.changed, "error": self.error,
                "steps": [s.to_json() for s in self.steps],
                "recovered": [s.to_json() for s in self.recovered],
                "verify": [r.to_json() for r in self.verify], "needs": self.needs,
                "skipped_commands": [list(c) for c in self.skipped_commands]}


class RollbackReport(msgspec.Struct, frozen=True):
    ok: bool
    steps: list[StepResult]
    recovered: list[StepResult] = field(default_factory=list)
    skipped_commands: list[tuple[str, ...]] = field(default_factory=list)
    still_running: list[str] = field(default_factory=list)  # restart these to finish

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [s.to_json() for s in self.steps],
                "recovered": [s.to_json() for s in self.recovered],
                "skipped_commands": [list(c) for c in self.skipped_commands],
                "still_running": self.still_running}


# --- evaluation ---------------------------------------------------------------------------------
def _tunables(ctx: Context, only: set[str] | None = None) -> list[Tunable]:
    names = [t.name for t in all_tunables()]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        # a typo must not turn into "nothing to check" (exit 0) or an empty apply
        raise UsageError(f"--only {', '.join(unknown)}: no such family (families: "
                         f"{', '.join(names)})")
    out = []
    for t in all_tunables():
        if only and t.name not in only:
            continue
        if t.enabled(ctx):
            out.append(t)
    return out


def _evaluate(ctx: Context, only: set[str] | None = None) -> tuple[list[Row], list[Change]]:
    rows: list[Row] = []
    changes: list[Change] = []
    for t in _tunables(ctx, only):
        try:
            ev = t.evaluate(ctx)
        except HosttuneError:
            raise
        except PermissionError as err:
            rows.append(Row(t.name, "*", "?", "?", Status.NEEDS_ROOT, str(err)))
            continue
        except OSError as err:
            rows.append(Row(t.name, "*", "?", "?", Status.ERROR, f"reading failed: {err}"))
            continue
        rows.extend(ev.rows)
        changes.extend(ev.changes)
    seen: set[str] = set()
    for c in changes:
        if c.id in seen:
            raise HosttuneError(f"internal error: two changes share the id {c.id}")
        seen.add(c.id)
    return rows, changes


def validate(ctx: Context, only: set[str] | None = None) -> None:
    for t in _tunables(ctx, only):
        t.validate(ctx)


def audit(host: Host, loaded: LoadedProfile, *, only: set[str] | None = None) -> AuditReport:
    ctx = Context(host, loaded, audit_only=True)
    validate(ctx, only)
    rows, _ = _evaluate(ctx, only)
    return AuditReport(loaded.profile.name, str(host.root), rows, host.offline)


def plan(host: Host, loaded: LoadedProfile, *, runtime_only: bool = False,
         only: set[str] | None = None) -> PlanReport:
    ctx = Context(host, loaded, runtime_only=runtime_only)
    validate(ctx, only)
    rows, changes = _evaluate(ctx, only)
    if runtime_only:
        changes = [c for c in changes if c.runtime]
    return PlanReport(AuditReport(loaded.profile.name, str(host.root), rows, host.offline),
                      changes)


# --- knobs: capture, apply, revert ----------------------------------------------------------------
def capture(host: Host, change: Change) -> dict[str, Any]:
    """The value ``change`` is about to replace, as the journal records it (a family knob's
    value sits under "action": the journal's layout of version 1)."""
    value = knob_for(change).read(host)
    return {"action": value} if change.kind == "action" else value


def do_apply(host: Host, change: Change) -> None:
    knob = knob_for(change)
    knob.write(host, knob.desired())


def do_revert(host: Host, change: Change, orig: dict[str, Any]) -> None:
    if change.path is not None:
        # a write killed between its temp file and the rename leaves .NAME.hosttune-tmp-PID
        # behind; it would also keep the directories the run created from being removed
        host.remove_temp_files(change.path)
    knob_for(change).restore(host, orig["action"] if change.kind == "action" else orig)


# --- test hook: simulate kill -9 at a given point -------------------------------------------------
_CRASH_ENV = "HOSTTUNE_TEST_CRASH"  # "<step>:<before|after>" - used by the crash tests only


_MARK_ENV = "HOSTTUNE_TEST_MARK"  # a file (the guest's /dev/console): one line per step point
_PAUSE_ENV = "HOSTTUNE_TEST_PAUSE"  # "<phase> <step>:<when>": hold there after the mark


def _maybe_crash(step: int, when: str, phase: str = "apply") -> None:
    mark = os.environ.get(_MARK_ENV)
    if mark:
        # the real-boot power-cut tests cut the guest's power when this line shows; the pause
        # keeps the run at that point until the cut lands (the console is polled)
        point = f"{phase} {step}:{when}"
        with open(mark, "a", encoding="utf-8") as fh:
            fh.write(f"HOSTTUNE-STEP {point}\n")
        if os.environ.get(_PAUSE_ENV) == point:
            time.sleep(5)
    spec = os.environ.get(_CRASH_ENV)
    if spec and spec == (f"{step}:{when}" if phase == "apply" else f"{phase} {step}:{when}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _unchanged(host: Host, change: Change, before: dict[str, Any]) -> bool:
    try:
        now = capture(host, change)
    except Exception:
        return False
    now.pop("created_dirs", None)
    return now == {k: v for k, v in before.items() if k != "created_dirs"}


def revert_order(pairs: list[tuple[Change, Any]]) -> list[tuple[Change, Any]]:
    """Reverse order, except post-commands (daemon-reload, update-grub: params.post) which run
    after every file they depend on has been restored."""
    body = [p for p in pairs if not p[0].params.get("post")]
    post = [p for p in pairs if p[0].params.get("post")]
    return list(reversed(body)) + post


# --- transactions ---------------------------------------------------------------------------------
def _undo_transaction(host: Host, journal: Journal) -> list[StepResult]:
    """Undo every step of the journal's open transaction (reverse order) and drop the entries
    it introduced. Used after a failure and after a crash."""
    txn = journal.transaction
    if txn is None:
        return []
    results: list[StepResult] = []
    failed = False
    pairs = [(Change.from_json(s["change"]), s) for s in txn["steps"]]
    for ch, step in revert_order(pairs):
        before = step["before"]
        try:
            do_revert(host, ch, before)
            results.append(StepResult(ch, "reverted"))
        except Exception as err:  # keep going: report every failure
            # The step that failed (or was in flight at a kill) may never have changed
            # anything: if the host still holds the captured value, there is nothing to undo.
            if step.get("status") == "pending" and _unchanged(host, ch, before):
                results.append(StepResult(ch, "reverted", "unchanged"))
                continue
            failed = True
            results.append(StepResult(ch, "revert-failed", str(err)))
    if not failed:
        journal.entries = [e for e in journal.entries if e.get("txn") != txn["id"]]
        journal.transaction = None
    try:
        journal.save()
    except JournalWriteError as err:
        # the host is restored; the journal on disk still holds the transaction, whose
        # restores are idempotent: the next run undoes it again and clears it
        raise ApplyError(f"{err}: the changes were undone, but the journal could not record "
                         "it; free space and run `hosttune rollback`") from err
    if failed:
        raise ApplyError("could not undo the interrupted run: " + "; ".join(
            f"{r.change.id}: {r.error}" for r in results if r.status == "revert-failed"))
    return results


class _Run(msgspec.Struct):
    """One apply's transaction: the steps done so far and the commands skipped on the way."""

    host: Host
    journal: Journal
    txn_id: str
    known: set[str]
    steps: list[StepResult] = field(default_factory=list)
    skipped: list[tuple[str, ...]] = field(default_factory=list)

    def step(self, i: int, ch: Change) -> None:
        """Journal ``ch``'s original, then apply it; raises what failed (nothing is undone)."""
        journal = self.journal
        assert journal.transaction is not None
        n_skipped = len(self.host.runner.skipped)
        # capture and the journal write belong to the transaction: a step whose original
        # cannot be recorded (disk full, read-only state dir) undoes the run
        before = capture(self.host, ch)
        journal.transaction["steps"].append(
            {"change": ch.to_json(), "before": before, "status": "pending"})
        if ch.id not in self.known:
            journal.entries.append({"id": ch.id, "change": ch.to_json(), "original": before,
                                    "txn": self.txn_id, "at": time.time()})
            self.known.add(ch.id)
        journal.save()  # the original is on disk before the change is made
        _maybe_crash(i, "before")
        do_apply(self.host, ch)
        new_skipped = tuple(self.host.runner.skipped[n_skipped:])
        self.skipped.extend(new_skipped)
        _maybe_crash(i, "after")
        journal.transaction["steps"][-1]["status"] = "done"
        self.steps.append(StepResult(ch, "applied", skipped_commands=new_skipped))

    def failed(self, recovered: list[StepResult], error: str,
               failed: StepResult | None = None) -> ApplyReport:
        """Undo every step of the run and report why."""
        undone = _undo_transaction(self.host, self.journal)
        done = [*self.steps, *([failed] if failed else [])]
        return ApplyReport(False, done + undone, [], recovered, error=error,
                           skipped_commands=self.skipped)


def _begin(host: Host, journal: Journal, loaded: LoadedProfile) -> _Run:
    txn_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(4).hex()}"
    journal.transaction = {"id": txn_id, "pid": os.getpid(), "started": time.time(),
                           "profile": loaded.profile.name, "steps": []}
    try:
        journal.save()
    except JournalWriteError:
        journal.transaction = None
        raise  # nothing changed yet: exit 2 with the journal's error
    return _Run(host, journal, txn_id, journal.ids())


def _commit(host: Host, journal: Journal) -> None:
    """Close the transaction on disk; if that cannot be written, undo the run."""
    txn, journal.transaction = journal.transaction, None
    try:
        journal.save()
    except JournalWriteError as err:
        # every step is applied but the journal on disk still holds the transaction (and
        # lists every step): undo the run now; if that cannot be recorded either, the
        # next run finds the transaction and undoes it again (restores are idempotent)
        journal.transaction = txn
        try:
            _undo_transaction(host, journal)
        except ApplyError as again:
            raise again from err
        raise ApplyError(f"{err}; the run was undone") from err


def apply(host: Host, loaded: LoadedProfile, *, runtime_only: bool = False,
          only: set[str] | None = None, progress: ProgressFn | None = None) -> ApplyReport:
    if not host.can_write:
        raise NeedsRootError("apply changes the host: run it as root (or use --root DIR "
                             "for a tree you can write)")
    with Lock(host):
        journal = Journal.load(host)
        recovered = _undo_transaction(host, journal) if journal.transaction else []
        p = plan(host, loaded, runtime_only=runtime_only, only=only)
        changes, needs = p.changes, p.needs
        ctx = Context(host, loaded, runtime_only=runtime_only)
        if not changes:
            return ApplyReport(True, [], _evaluate(ctx, only)[0], recovered)
        run = _begin(host, journal, loaded)
        replanned = False
        i = 0
        while i < len(changes):
            ch = changes[i]
            if progress:
                progress(i, len(changes), ch)
            try:
                run.step(i, ch)
            except Exception as err:
                if isinstance(err, JournalWriteError):
                    n = len(run.steps)
                    _undo_transaction(host, journal)
                    raise ApplyError(f"{err}; the {n} step(s) already applied were "
                                     "undone") from err
                return run.failed(recovered, f"{ch.summary}: {err}",
                                  StepResult(ch, "failed", str(err)))
            i += 1
            if i == len(changes) and not replanned \
                    and any(c.params.get("replan") for c in changes):
                # a step can change what another family wants (a reserve: auto 1G pool the
                # kernel allocated only in part now belongs on the kernel command line): plan
                # once more and apply what is new in the same transaction. After a full apply
                # a plan is empty (the contract tests check it), so only that shows up here.
                replanned = True
                try:
                    again = plan(host, loaded, runtime_only=runtime_only, only=only)
                except Exception as err:
                    return run.failed(recovered, f"planning after {ch.summary}: {err}")
                changes = [*changes, *again.changes]
                needs = list(dict.fromkeys([*needs, *again.needs]))
        _commit(host, journal)
        return _verified(ctx, only, run, recovered, needs)


def _verified(ctx: Context, only: set[str] | None, run: _Run, recovered: list[StepResult],
              needs: list[str]) -> ApplyReport:
    verify_rows, left = _evaluate(ctx, only)
    if ctx.runtime_only:
        # boot-time re-apply: only live values are its business (a missing drop-in is
        # audit's finding, and must not fail hosttune-boot.service)
        ok = not [c for c in left if c.runtime]
    else:
        ok = not any(r.status.is_drift for r in verify_rows)
    return ApplyReport(ok, run.steps, verify_rows, recovered, needs=needs,
                       error="" if ok else "verification found settings still drifting",
                       skipped_commands=run.skipped)


def rollback(host: Host, *, progress: ProgressFn | None = None) -> RollbackReport:
    if not host.can_write:
        raise NeedsRootError("rollback changes the host: run it as root (or use --root DIR)")
    with Lock(host):
        journal = Journal.load(host)
        recovered = _undo_transaction(host, journal) if journal.transaction else []
        results: list[StepResult] = []
        entries = list(journal.entries)
        n0 = len(host.runner.skipped)
        pairs = [(Change.from_json(e["change"]), e) for e in entries]
        for i, (ch, entry) in enumerate(revert_order(pairs)):
            if progress:
                progress(i, len(entries), ch)
            _maybe_crash(i, "before", "rollback")
            try:
                do_revert(host, ch, entry["original"])
                results.append(StepResult(ch, "reverted"))
                # done is on disk before the next step: after a power cut or a kill, the next
                # rollback repeats at most the step that was in flight
                journal.entries = [e for e in journal.entries if e is not entry]
                journal.save()
            except Exception as err:
                results.append(StepResult(ch, "revert-failed", str(err)))
            _maybe_crash(i, "after", "rollback")
        remaining = journal.entries
        journal.save()
        if not remaining:
            journal.archive()
        reverted = [r.change for r in [*recovered, *results] if r.status == "reverted"]
        return RollbackReport(not remaining, results, recovered,
                              list(host.runner.skipped[n0:]), _still_running(host, reverted))


def _still_running(host: Host, reverted: list[Change]) -> list[str]:
    """Running processes that keep a value rollback restored on disk until they restart
    (a daemon's memlock limit), one line each, from the families that know."""
    notes: list[str] = []
    for name in dict.fromkeys(c.tunable for c in reverted):
        notes.extend(get_tunable(name).still_running(host, [c for c in reverted
                                                             if c.tunable == name]))
    return notes


def journal_status(host: Host) -> dict[str, Any]:
    j = Journal.load(host)
    return {"path": j.path, "exists": host.exists(j.path), "entries": len(j.entries),
            "interrupted": j.transaction is not None,
            "ids": [e["id"] for e in j.entries]}
