"""What the agent tells the fleet: its state as a :class:`DeviceState` (the shadow) and each step as an event.

Pure mapping from the agent's own records (:class:`~edge_runtime.agent.state.AgentState` and the step's
:class:`~edge_runtime.agent.reconcile.UpdateReport`) to the fleet documents; the MQTT reporter publishes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_runtime.fleet.messages import DeviceEvent, DeviceState

# Step outcomes worth an event (the others — unchanged, skipped — are the quiet steady state).
EVENT_OUTCOMES = ("updated", "rolled_back", "refused", "error", "recovered")
QUIET_OUTCOMES = ("unchanged", "skipped")


def _last_real(state: Any, report: Any | None) -> tuple[str, str, str]:
    """The last step that did something, with the rollout it ran under: a rollback stays the device's last
    outcome through the quiet steps after it (``skipped``: blocked), so the rollout controller still sees it on
    its next look, and a later rollout does not take it for its own."""
    if report is not None and report.outcome not in QUIET_OUTCOMES:
        return str(report.outcome), str(report.reason), str(state.rollout_id)
    for entry in reversed(state.history):
        if entry.get("outcome") not in QUIET_OUTCOMES:
            return str(entry.get("outcome", "")), str(entry.get("reason", "")), str(entry.get("rollout_id", ""))
    if report is not None:
        return str(report.outcome), str(report.reason), str(state.rollout_id)
    return "", "", ""


def _version(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def device_state(
    state: Any,
    report: Any | None,
    *,
    device_id: str,
    groups: Mapping[str, str],
    model: str,
    health: str,
    now: float,
) -> DeviceState:
    """The device shadow after a step. ``state`` is an AgentState, ``report`` the step's UpdateReport (or None)."""
    cur = state.current
    idle = "serving" if cur is not None else "waiting"
    phase = state.phase if state.phase != "idle" else idle
    last_outcome, last_reason, outcome_rollout_id = _last_real(state, report)
    return DeviceState(
        device_id=device_id,
        groups=dict(groups),
        model=(cur.model if cur is not None and cur.model else model),
        version=_version(cur.version) if cur is not None else 0,
        digest=cur.digest if cur is not None else "",
        phase=phase,
        trust=state.trust_status,
        last_outcome=last_outcome,
        last_reason=last_reason,
        rollout_id=state.rollout_id,
        outcome_rollout_id=outcome_rollout_id,
        blocked=tuple(sorted(state.blocked))[:8],
        health=health,
        last_seen=now,
    )


def started_event(state: Any, *, device_id: str, now: float) -> DeviceEvent | None:
    """The event for an update that began pulling its candidate (``state`` an AgentState); None otherwise."""
    cand = state.candidate
    if state.phase != "pulling" or cand is None:
        return None
    return DeviceEvent(
        device_id=device_id,
        kind="update",
        at=now,
        outcome="started",
        version=_version(cand.version),
        detail={"digest": cand.digest, "step": "pull"},
    )


def update_event(report: Any, *, device_id: str, now: float) -> DeviceEvent | None:
    """The event for a step that changed something or failed; None for a quiet step."""
    if report.outcome not in EVENT_OUTCOMES:
        return None
    return DeviceEvent(
        device_id=device_id,
        kind="update",
        at=now,
        outcome=report.outcome,
        reason=report.reason,
        version=_version(report.version),
        detail={"digest": report.digest, "step": report.step, "error": report.error[:300]},
    )
