from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_runtime.agent import cli
from otaml import cmd_agent

from .fakes import Behaviour, World, digest_of


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    agent.reconcile()
    world.publish("2", Behaviour(score_offset=1.0))
    agent.reconcile()
    file = tmp_path / "agent.toml"
    file.write_text(
        '[registry]\nurl = "http://127.0.0.1:5000"\nrepository = "pump"\n[trust]\ninsecure = true\n'
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    return file


def test_status_shows_versions_blocked_digests_and_history(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "current    pump v1" in out
    assert digest_of("2") in out
    assert "golden replay" in out
    assert "rolled_back" in out


def test_otaml_agent_status_json(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="otaml")
    cmd_agent.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["agent", "status", "--json", "--config", str(config_file)])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["current"]["version"] == "1"
    assert list(data["blocked"]) == [digest_of("2")]
    assert data["history"][-1]["outcome"] == "rolled_back"


def test_bad_config_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "agent.example.toml" in capsys.readouterr().err
