"""Hostile input, as a hostile tester would try it (issue: "one confined door").

Every case is exit 2 with one line that names the file, key or entry, within the hang guard,
and writes nothing. The hostile files are data: tests/hostile/ (profiles.txt and journals.txt
say which fragment the error must contain)."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hosttune import engine
from hosttune.errors import ApplyError
from hosttune.host import Host
from hosttune.profile import load_profile
from tests.conftest import REPO, need, run_cli
from tests.helpers import snapshot

HOSTILE = Path(__file__).parent / "hostile"
MEM_LIMIT = 1 << 30  # address space: python and its libraries reserve some of it before any work


def _manifest(name: str) -> list[tuple[str, str]]:
    out = []
    for line in (HOSTILE / name).read_text().splitlines():
        if line and not line.startswith("#"):
            f, frag = line.split("\t")
            out.append((f, frag))
    return out


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


def run_bounded(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI under a memory cap, with a hang guard of 10 s (the issue's bound)."""
    e = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", HOSTTUNE_NO_CACHE="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hosttune", *args], capture_output=True,
                          text=True, env=e, timeout=10, preexec_fn=_limits, check=False)


def assert_one_line_error(p: subprocess.CompletedProcess, fragment: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    for frag in fragment.split(" && "):
        assert frag in lines[0], lines[0]
    return lines[0]


# --- profiles ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fragment"), _manifest("profiles.txt"))
def test_hostile_profile_is_exit_2_one_line_and_writes_nothing(ryzen, name, fragment):
    before = snapshot(ryzen)
    for cmd in (["audit"], ["apply", "--yes"]):
        p = run_bounded(*cmd, "--root", str(ryzen), "--profile", str(HOSTILE / "profiles" / name))
        line = assert_one_line_error(p, fragment)
        assert str(HOSTILE / "profiles" / name) in line or "profiles/" in line
    assert snapshot(ryzen) == before
    assert not (ryzen / "var/lib/hosttune/journal.json").exists()


def test_extends_of_a_system_file_never_prints_it(ryzen, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:$6$DECOY-SECRET:19000:0:99999:7:::\n")
    os.chmod(secret, 0o600)
    prof = tmp_path / "p.yaml"
    prof.write_text(f"name: x\nextends: {secret}\n")
    p = run_bounded("plan", "--root", str(ryzen), "--profile", str(prof))
    assert_one_line_error(p, "<a key that is not a name>: unknown key")
    assert "DECOY-SECRET" not in p.stderr + p.stdout


def _special(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.yaml"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "devzero":
        p.symlink_to("/dev/zero")
    elif kind == "urandom":
        p.symlink_to("/dev/urandom")
    elif kind == "directory":
        p.mkdir()
    elif kind == "huge":
        p.write_text("name: x\ndescription: '" + "x" * (2 << 20) + "'\n")
    return p


@pytest.mark.parametrize(("kind", "fragment"), [
    ("fifo", "not a regular file"), ("devzero", "not a regular file"),
    ("urandom", "not a regular file"), ("directory", "not a regular file"),
    ("huge", "larger than 1024 KiB"),
])
@pytest.mark.parametrize("via", ["profile", "extends"])
def test_special_files_as_profiles_do_not_hang(ryzen, tmp_path, kind, fragment, via):
    target = _special(tmp_path, kind)
    ref = target
    if via == "extends":
        ref = tmp_path / "child.yaml"
        ref.write_text(f"name: x\nextends: {target}\n")
    p = run_bounded("plan", "--root", str(ryzen), "--profile", str(ref))
    assert_one_line_error(p, fragment)


def test_loader_rejects_duplicates_but_keeps_merge_keys(tmp_path):
    from hosttune.profile.loader import load_raw

    p = tmp_path / "m.yaml"
    p.write_text("name: x\nsysctl:\n  settings:\n    <<: {vm.swappiness: 1}\n"
                 "    vm.swappiness: 0\n")
    merged, _, _ = load_raw(str(p))
    assert merged["sysctl"]["settings"] == {"vm.swappiness": 0}


# --- journals ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fragment"), _manifest("journals.txt"))
def test_hostile_journal_is_exit_2_naming_the_entry(ryzen, name, fragment):
    state = ryzen / "var/lib/hosttune"
    state.mkdir(parents=True)
    data = (HOSTILE / "journals" / name).read_bytes()
    (state / "journal.json").write_bytes(data)
    before = snapshot(ryzen)
    for cmd in (["rollback", "--yes"], ["apply", "--yes"]):
        p = run_bounded(*cmd, "--root", str(ryzen))
        assert_one_line_error(p, fragment)
    assert snapshot(ryzen) == before
    assert (state / "journal.json").read_bytes() == data  # kept for the operator
    assert not Path("/tmp/hosttune-escape").exists()


def test_a_valid_journal_passes_the_same_checks(ryzen):
    state = ryzen / "var/lib/hosttune"
    state.mkdir(parents=True)
    (state / "journal.json").write_bytes((HOSTILE / "journal-valid.json").read_bytes())
    (ryzen / "etc/sysctl.d/90-hosttune.conf").write_text("vm.swappiness = 0\n")
    p = run_bounded("rollback", "--yes", "--root", str(ryzen))
    assert p.returncode == 0, p.stderr
    assert not (ryzen / "etc/sysctl.d/90-hosttune.conf").exists()


def test_journal_that_is_a_directory(ryzen):
    (ryzen / "var/lib/hosttune/journal.json").mkdir(parents=True)
    for cmd in (["rollback", "--yes"], ["apply", "--yes"]):
        assert_one_line_error(run_bounded(*cmd, "--root", str(ryzen)), "not a regular file")


# --- hostile host content ----------------------------------------------------------------------
@pytest.mark.parametrize(("rel", "content", "fragment"), [
    ("sys/devices/system/cpu/online", b"garbage\n", "cpu/online (under && not a CPU list"),
    ("sys/devices/system/cpu/online", b"0-99999999999\n", "cpu/online (under && not a CPU list"),
    ("sys/devices/system/cpu/online", b"31-0\n", "cpu/online (under && not a CPU list"),
    ("sys/devices/system/cpu/cpu3/topology/thread_siblings_list", b"3,x\n",
     "thread_siblings_list (under && not a CPU list"),
    ("sys/devices/system/node/node0/cpulist", b"\xff\xfe\n",
     "node0/cpulist (under && not a CPU list"),
    ("proc/meminfo", b"MemTotal: -5 kB\n", "/proc/meminfo (under && negative MemTotal"),
    ("proc/meminfo", b"\x00\xff garbage \x01\n" * 100, None),
    ("proc/meminfo", b"MemTotal: " + b"9" * 5000 + b" kB\n", None),
])
def test_garbage_host_files_are_an_error_not_a_traceback(ryzen, rel, content, fragment):
    (ryzen / rel).write_bytes(content)
    for cmd in (["audit"], ["plan"]):
        p = run_bounded(*cmd, "--root", str(ryzen))
        assert "Traceback" not in p.stderr and "internal error" not in p.stderr, p.stderr
        if fragment is None:
            assert p.returncode in (0, 1, 2), p.stderr
        else:
            assert_one_line_error(p, fragment)


def test_non_utf8_bytes_in_fstab_and_environment_are_kept_byte_for_byte(ryzen):
    latin = b"# caf\xe9 \xff\xfe written by hand\n"
    for rel in ("etc/fstab", "etc/environment"):
        f = ryzen / rel
        f.write_bytes(f.read_bytes() + latin if f.exists() else latin)
    original = snapshot(ryzen)
    engine.apply(Host(ryzen), load_profile("ryzen9950x-rtx5090"))  # raises on a refusal
    assert latin in (ryzen / "etc/fstab").read_bytes()
    assert latin in (ryzen / "etc/environment").read_bytes()
    assert b"# BEGIN hosttune" in (ryzen / "etc/environment").read_bytes() or \
        (ryzen / "etc/environment").read_bytes() != original
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == original


# --- the journal write belongs to the transaction ----------------------------------------------
def _failing_journal(monkeypatch, from_call: int, err: int = errno.ENOSPC) -> None:
    from hosttune.host import fsops

    real = fsops.atomic_write
    calls = {"n": 0}

    def atomic_write(root, p, data, **kw):
        if p.endswith("/journal.json"):
            calls["n"] += 1
            if calls["n"] >= from_call:
                raise OSError(err, os.strerror(err))
        return real(root, p, data, **kw)

    monkeypatch.setattr(fsops, "atomic_write", atomic_write)


@pytest.mark.parametrize("from_call", [1, 2, 4, 6])
def test_full_state_dir_mid_apply_undoes_the_run(ryzen, monkeypatch, from_call):
    from hosttune.engine import core
    from hosttune.host import Host
    from hosttune.profile import load_profile

    loaded = load_profile("inference")
    original = snapshot(ryzen)
    _failing_journal(monkeypatch, from_call)
    with pytest.raises(ApplyError if from_call > 1 else Exception,
                       match="No space left on device"):
        core.apply(Host(ryzen), loaded)
    assert snapshot(ryzen) == original
    monkeypatch.undo()
    # once there is space again, rollback finds a consistent journal (or none)
    r = core.rollback(Host(ryzen))
    assert r.ok
    assert snapshot(ryzen) == original


def test_read_only_state_dir_is_exit_2_and_changes_nothing(ryzen):
    need(os.geteuid() == 0, "a read-only bind mount needs root")
    state = ryzen / "var/lib/hosttune"
    state.mkdir(parents=True)
    original = snapshot(ryzen)
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        p = run_bounded("apply", "--yes", "--root", str(ryzen))
        assert_one_line_error(p, "/var/lib/hosttune/lock (under && Read-only file system")
    finally:
        subprocess.run(["umount", str(state)], check=True)
    assert snapshot(ryzen) == original


# --- temp files of a killed write ----------------------------------------------------------------
def test_recovery_removes_hosttunes_temp_files(ryzen):
    assert not (ryzen / "etc/hosttune").exists()
    original = snapshot(ryzen)
    engine.apply(Host(ryzen), load_profile("inference"))  # raises on a refusal
    # a kill between the temp file and the rename leaves these behind
    (ryzen / "etc/.fstab.hosttune-tmp-4242").write_text("partial")
    (ryzen / "etc/hosttune/.profile.yaml.hosttune-tmp-4243").write_text("partial")
    assert engine.rollback(Host(ryzen)).ok
    assert snapshot(ryzen) == original  # etc/hosttune (created by apply) is gone too


# --- one lock per tree ---------------------------------------------------------------------------
def test_two_state_dirs_cannot_apply_to_one_tree_at_once(ryzen):
    from hosttune.engine.journal import Lock
    from hosttune.host import Host

    with Lock(Host(ryzen, state_dir="/var/lib/a")):
        p = run_cli("apply", "--root", str(ryzen), "--yes",
                    env={"HOSTTUNE_STATE_DIR": "/var/lib/b"})
    assert p.returncode == 2
    assert "holds" in p.stderr
    assert not (ryzen / "var/lib/b/journal.json").exists()


# --- the CLI's last resort -----------------------------------------------------------------------
def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import hosttune.cli as cli

    def boom(argv):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "_main", boom)
    monkeypatch.setattr(sys, "argv", ["hosttune", "plan"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "RuntimeError: boom" in err and "--debug" in err
    monkeypatch.setattr(sys, "argv", ["hosttune", "--debug", "plan"])
    with pytest.raises(RuntimeError, match="boom"):
        cli.main()


def test_rich_markup_in_a_value_is_printed_as_text(ryzen, tmp_path):
    prof = tmp_path / "m.yaml"
    prof.write_text("name: x\nsysctl:\n  file: '[/bold]/etc/x[red]'\n")
    p = run_bounded("plan", "--root", str(ryzen), "--profile", str(prof))
    assert_one_line_error(p, "[/bold]/etc/x[red]")


def test_journal_problem_names_nothing_for_a_real_journal(ryzen):
    """The validator accepts every journal hosttune writes itself."""
    from hosttune.engine.journal import journal_problem

    p = run_cli("apply", "--root", str(ryzen), "--profile", "ryzen9950x-rtx5090", "--yes",
                env={"HOSTTUNE_TEST_CRASH": "5:after"})
    assert p.returncode < 0
    data = json.loads((ryzen / "var/lib/hosttune/journal.json").read_text())
    assert data["transaction"] is not None and data["entries"]
    assert journal_problem(data) is None


def test_journal_failure_after_the_last_step_undoes_the_run(ryzen, monkeypatch):
    """The final save (transaction closed) fails: every step is undone, not left applied."""
    from hosttune.engine import core
    from hosttune.host import Host, fsops
    from hosttune.profile import load_profile

    loaded = load_profile("inference")
    n = len(core.plan(Host(ryzen), loaded).changes)
    original = snapshot(ryzen)
    real = fsops.atomic_write
    calls = {"n": 0}

    def atomic_write(root, p, data, **kw):
        if p.endswith("/journal.json"):
            calls["n"] += 1
            if calls["n"] == n + 2:  # 1 (open) + n steps, then the closing save
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(root, p, data, **kw)

    monkeypatch.setattr(fsops, "atomic_write", atomic_write)
    with pytest.raises(ApplyError, match="the run was undone"):
        core.apply(Host(ryzen), loaded)
    assert snapshot(ryzen) == original
