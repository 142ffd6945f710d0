"""The CLI as a shell user meets it: output saved to a file, piped into head, data with
characters rich would interpret, a declined prompt, a dry run, the README's install command."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import yaml

from hosttune.profile import load_profile
from tests import fakehost
from tests.conftest import REPO, need, run_cli
from tests.containers_trees import add_nvidia_gpu


@pytest.mark.parametrize("columns", ["80", "40"])
@pytest.mark.parametrize("name", ["inference", "ryzen9950x-rtx5090"])
def test_profiles_show_saved_to_a_file_is_the_profile(tmp_path: Path, name: str,
                                                       columns: str) -> None:
    """`profiles show P > f.yaml` (narrow or no terminal) writes valid YAML that loads as the
    same profile: the obvious way to start a custom one."""
    r = run_cli("profiles", "show", name, env={"COLUMNS": columns})
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "mine.yaml"
    saved.write_text(r.stdout)
    data = yaml.safe_load(r.stdout)
    assert data["name"] == name
    want = msgspec.to_builtins(load_profile(name).profile, str_keys=True)
    assert msgspec.to_builtins(load_profile(str(saved)).profile, str_keys=True) == want


def test_pci_addresses_print_as_they_are(tmp_path: Path) -> None:
    """0000:ab:00.0 is not ':ab:' the emoji code (nor is any other data markup)."""
    root = fakehost.ryzen_9950x(tmp_path / "t")
    add_nvidia_gpu(root, "0000:ab:00.0", local_cpus=[0, 1])
    r = run_cli("topology", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "GPU 0: 0000:ab:00.0" in r.stdout, r.stdout
    assert "\N{NEGATIVE SQUARED AB}" not in r.stdout


def test_error_messages_print_data_verbatim(tmp_path: Path) -> None:
    bad = tmp_path / "x[bold]y:ab:z[/].yaml"
    r = run_cli("audit", "-p", str(bad))
    assert r.returncode == 2
    assert str(bad) in r.stderr.replace("\n", ""), r.stderr
    assert "\N{NEGATIVE SQUARED AB}" not in r.stderr
    r = run_cli("plan", "-p", str(bad))  # the typer path prints through the same function
    assert r.returncode == 2 and str(bad) in r.stderr.replace("\n", ""), r.stderr


@pytest.mark.parametrize("args", [("audit",), ("audit", "--json"), ("profiles", "show")])
def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    """`hosttune audit | head -3`: the reader closes the pipe; no BrokenPipeError traceback.
    The read end is closed before hosttune writes, so every write meets EPIPE (the race
    that made it happen only sometimes, made certain)."""
    root = fakehost.ryzen_9950x(tmp_path / "t")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "hosttune", *args, "--root", str(root)]
                         if args[0] == "audit" else [sys.executable, "-m", "hosttune", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 1), (rc, err)
    # and through a real shell pipe, as the user types it
    sh = subprocess.run(["bash", "-c", f"{shlex.join([sys.executable, '-m', 'hosttune', *args])}"
                         f" {'--root ' + shlex.quote(str(root)) if args[0] == 'audit' else ''}"
                         " | head -3"], capture_output=True, text=True, env=env, timeout=120,
                        check=False)
    assert len(sh.stdout.splitlines()) == 3 and "Traceback" not in sh.stderr, sh.stderr


def _in_a_terminal(argv: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal on stdin (a prompt is shown) and type ``answer``."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200")
    env.pop("CI", None)
    p = subprocess.Popen([sys.executable, "-m", "hosttune", *argv], stdin=slave,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    os.close(slave)
    os.write(master, answer)
    out = p.communicate(timeout=120)[0].decode()
    os.close(master)
    return p.returncode, out


def test_declining_the_prompt_is_not_an_error(tmp_path: Path) -> None:
    root = fakehost.ryzen_9950x(tmp_path / "t")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    rc, out = _in_a_terminal(["apply", "--root", str(root)], b"n\n")
    assert "Apply " in out and "change(s)?" in out, out  # the prompt was shown
    assert rc == 0, out
    assert "error:" not in out and "aborted" not in out and "nothing was changed" in out
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    # rollback's prompt too
    assert run_cli("apply", "--yes", "--root", str(root)).returncode == 0
    rc, out = _in_a_terminal(["rollback", "--root", str(root)], b"n\n")
    assert "Restore them?" in out and rc == 0 and "error:" not in out, out


def test_rollback_dry_run_names_only_files_that_exist(tmp_path: Path) -> None:
    root = fakehost.ryzen_9950x(tmp_path / "t")
    r = run_cli("rollback", "--dry-run", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "journal.json" not in r.stdout and "Nothing to roll back" in r.stdout, r.stdout
    assert "no journal in " + str(root / "var/lib/hosttune") in r.stdout
    assert run_cli("apply", "--yes", "--root", str(root)).returncode == 0
    r = run_cli("rollback", "--dry-run", "--root", str(root))
    assert r.returncode == 1, r.stderr
    named = re.search(r" in (\S+journal\.json)", r.stdout)
    assert named and Path(named.group(1)).is_file(), r.stdout
    r = run_cli("rollback", "--dry-run", "--json", "--root", str(root))
    assert '"exists": true' in r.stdout


# --- README ---------------------------------------------------------------------------------------
def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_starts_with_two_commands() -> None:
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert cmds[1] == ".ci/install-test-deps && python3 -m pytest"
    # never pip into the system Python: Debian 12's is externally managed (PEP 668)
    assert not re.search(r"(^|&& )python3 -m pip install", cmds[0])


@pytest.mark.slow
def test_readme_first_command_works_with_debians_python(tmp_path: Path) -> None:
    """The first README command, as written, with Debian's /usr/bin/python3 (externally
    managed). Only the venv's directory is moved into tmp_path; the apt-get part runs when
    python3-venv is missing (it is a no-op otherwise, and other tests may hold apt's lock)."""
    need(Path("/usr/lib/python3.11/EXTERNALLY-MANAGED").exists(),
         "Debian's externally managed /usr/bin/python3 is not here")
    need(os.geteuid() == 0, "the README command runs as root (apt-get)")
    cmd = _readme_commands()[0].replace("/opt/hosttune/venv", str(tmp_path / "venv"))
    has_venv = subprocess.run(["dpkg", "-s", "python3-venv"], capture_output=True,
                              check=False).returncode == 0
    if has_venv:
        parts = cmd.split(" && ")
        cmd = " && ".join(p for p in parts if not p.startswith("apt-get "))
    src = tmp_path / "src"  # pip install . builds in the tree: use a copy of the sources
    shutil.copytree(REPO / "hosttune", src / "hosttune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(tmp_path / "home"),
           "LC_ALL": "C.UTF-8"}
    for k in ("PIP_INDEX_URL", "PIP_CERT", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL",
              "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "no_proxy"):
        if k in os.environ:
            env[k] = os.environ[k]
    r = subprocess.run(["bash", "-c", cmd], cwd=src, capture_output=True, text=True, env=env,
                       timeout=900, check=False)
    assert r.returncode in (0, 1), r.stdout[-3000:] + r.stderr[-3000:]
    assert "hosttune audit · profile inference" in r.stdout, r.stdout[-3000:]
    # and what it replaces is refused there, as the README says
    refused = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "--dry-run", "."],
                             cwd=src, capture_output=True, text=True, env=env, timeout=300,
                             check=False)
    assert refused.returncode != 0 and "externally-managed" in refused.stderr


def test_a_failed_verification_says_the_changes_stayed(tmp_path: Path) -> None:
    root = fakehost.ryzen_9950x(tmp_path / "t")
    fakehost.w(root, "/etc/sysctl.d/99-zz-local.conf", "vm.swappiness = 60\n")
    r = run_cli("apply", "--yes", "--root", str(root))
    assert r.returncode == 1, r.stderr
    assert "the changes above stay applied" in r.stdout and "reverted" not in r.stdout
    assert "vm.swappiness = 0" in (root / "etc/sysctl.d/90-hosttune.conf").read_text()


def test_a_failed_step_says_everything_was_undone(tmp_path: Path) -> None:
    """A step that fails (a sysfs file the confined writer refuses: a symlink out of the tree)
    makes the engine undo the run: --json says changed false, the text output says reverted,
    and the tree is as before."""
    root = fakehost.ryzen_9950x(tmp_path / "t")
    gov = root / "sys/devices/system/cpu/cpufreq/policy3/scaling_governor"
    gov.unlink()
    gov.symlink_to("/nonexistent/scaling_governor")
    def files() -> dict[Path, bytes]:  # the engine's own state (journal, lock) aside
        state = root / "var/lib/hosttune"
        return {p: p.read_bytes() for p in root.rglob("*")
                if p.is_file() and state not in p.parents}

    before = files()
    r = run_cli("apply", "--yes", "--json", "--root", str(root))
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] is False and rep["changed"] is False
    assert "failed" in [s["status"] for s in rep["steps"]]
    assert "applied" in [s["status"] for s in rep["steps"]]  # steps ran, then were undone
    r = run_cli("apply", "--yes", "--root", str(root))
    assert r.returncode == 1, r.stderr
    assert "every change of this run was reverted" in r.stdout
    assert "stay applied" not in r.stdout
    assert files() == before
