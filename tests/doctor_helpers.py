"""What the doctor tests share: a minimal tree (base /etc, /proc, one NUMA node) and a booted
Host whose systemctl/journalctl answers are canned."""

from __future__ import annotations

from pathlib import Path

from hosttune.host import CommandResult, Host, Runner
from tests import fakehost


def minimal(tmp_path: Path) -> fakehost.TreeBuilder:
    b = fakehost.TreeBuilder(tmp_path / "t")
    b.base_etc()
    b.proc(64 * 1024**3)
    b.nodes({0: ([0, 1], 64 * 1024**3)})
    return b


class CannedRunner(Runner):
    """Answers systemctl/journalctl from canned output keyed by argv; anything else is
    recorded as skipped, as under --root."""

    def __init__(self, answers: dict[tuple[str, ...], str]) -> None:
        super().__init__(offline=True)
        self.answers = answers

    def run(self, argv, **kw):  # type: ignore[override]
        args = tuple(argv)
        for key, out in self.answers.items():
            if args[:len(key)] == key or (key[0] == args[0] and set(key) <= set(args)):
                return CommandResult(args, 0, out)
        self.skipped.append(args)
        return CommandResult(args, 0, skipped=True)


def booted(root: Path, answers: dict[tuple[str, ...], str]) -> Host:
    h = Host(root)
    h.runner = CannedRunner(answers)
    return h
