"""The README stays true: every `otaml ...` command line in it parses with the real CLI, and its two
commands are the Makefile targets that CI calls."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from otaml.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            line = raw.split(" #", 1)[0].strip().removeprefix("$ ")
            if line.startswith("otaml "):
                lines.append(line)
    return lines


OTAML_LINES = _code_lines()


def test_the_readme_shows_the_cli() -> None:
    assert len(OTAML_LINES) >= 10


@pytest.mark.parametrize("line", OTAML_LINES)
def test_every_readme_command_parses(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = shlex.split(line)[1:]
    argv = [re.sub(r"\$\{?\w+\}?", "x", a) for a in argv]  # shell variables stand for values
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return
        pytest.fail(f"README command does not parse: {line}\n{capsys.readouterr().err}")
    assert isinstance(args, argparse.Namespace)
    assert getattr(args, "func", None) is not None, f"README command names no runnable command: {line}"


def test_the_two_commands_are_make_targets_and_ci_runs_the_test_one() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "make demo" in README
    assert "make test" in README
    assert re.search(r"^demo:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
