from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.agent.state import HISTORY_LIMIT, AgentState, Deployment, StateError, StateStore


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = AgentState(
        current=Deployment("sha256:" + "a" * 64, "r@a", "pump", "2", "otaml-svc-a", 18082),
        previous=Deployment("sha256:" + "b" * 64, "r@b", "pump", "1", "otaml-svc-b", 18081),
        phase="probation",
        blocked={"sha256:" + "c" * 64: "canary: golden mismatch"},
    )
    state.count("updates")
    store.save(state)
    assert store.load().to_dict() == state.to_dict()
    assert not list(tmp_path.glob(".state.*")), "temporary files must not be left behind"


def test_fresh_device_has_empty_state(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "new").load() == AgentState()


def test_corrupt_state_says_how_to_recover(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="move it aside"):
        StateStore(tmp_path).load()


def test_history_is_bounded() -> None:
    state = AgentState()
    for i in range(HISTORY_LIMIT + 5):
        state.record({"i": i})
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[-1] == {"rollout_id": "", "i": HISTORY_LIMIT + 4}  # with the rollout it ran under
