"""``python -m edge_runtime`` dispatch."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator

import pytest

from edge_runtime.__main__ import main


def test_agent_is_dispatched_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    fake = types.ModuleType("edge_runtime.agent.cli")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edge_runtime.agent.cli", fake)
    assert main(["agent", "--config", "x.toml"]) == 7
    assert seen == [["--config", "x.toml"]]


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """``serve`` reconfigures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("keep_logging")
def test_serve_without_bundle_exits_with_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTAML_BUNDLE", raising=False)
    assert main(["serve"]) == 2
