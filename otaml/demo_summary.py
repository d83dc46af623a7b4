"""What ``otaml demo`` found: a row per model version, the end state, the load counts; as a table or JSON."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class VersionRow:
    """One model version's way through promotion and the device.

    ``move_to_serving_s``: from the channel tag moving to the first response the public port answered with
    this version (None when it never served). ``window_*``: requests the load generator made from the channel
    move until the agent finished with this version (hand-over and probation, or the refusal / rollback).
    """

    version: str
    detector: str = ""
    promotion: str = ""  # "gates passed" | "refused by gates, forced" | ...
    digest: str = ""
    agent_outcome: str = ""  # the agent's UpdateReport outcome: updated | rolled_back | refused | ...
    agent_step: str = ""  # the step that decided (done, canary, probation, verify)
    agent_error: str = ""
    move_to_serving_s: float | None = None
    agent_total_s: float | None = None
    bytes_pulled: int = 0
    window_requests: int = 0
    window_failed: int = 0


@dataclass
class DemoSummary:
    mode: str
    mode_reason: str
    workdir: str
    public_port: int = 0
    versions: list[VersionRow] = field(default_factory=list)
    serving_version: str = ""  # what the public port answers at the end
    blocked: dict[str, str] = field(default_factory=dict)  # digest -> reason, from the agent's state
    rollbacks: int = 0
    refusals: int = 0
    requests_total: int = 0
    failed_total: int = 0
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    # The fleet stage (otaml/demo_fleet.py): devices, the good and the bad rollout, the fleet status table.
    fleet: dict[str, Any] = field(default_factory=dict)

    @property
    def handover_failures(self) -> int:
        return sum(v.window_failed for v in self.versions)

    def row(self, version: str) -> VersionRow | None:
        return next((v for v in self.versions if v.version == version), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["handover_failures"] = self.handover_failures
        return data


def readable(reason: str, limit: int = 160) -> str:
    """A block reason for a table: the service's own message when the reason quotes its JSON log line."""
    match = re.search(r'"msg":\s*"((?:[^"\\]|\\.)*)"', reason)
    if match:
        prefix = reason.split(":", 1)[0] if ":" in reason else ""
        reason = (f"{prefix}: " if prefix and len(prefix) < 20 else "") + match.group(1).replace('\\"', '"')
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _bytes(n: int) -> str:
    if n <= 0:
        return "0"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


COLUMNS = ("version", "promotion", "agent", "move→serving", "agent step", "pulled", "requests", "failed")


def format_table(summary: DemoSummary) -> str:
    """The human summary: a table of versions, then the end state."""
    rows = [COLUMNS]
    for v in summary.versions:
        outcome = v.agent_outcome.replace("_", " ") or "-"
        if v.agent_step and v.agent_outcome not in ("updated", ""):
            outcome += f" ({v.agent_step})"
        rows.append(
            (
                f"v{v.version}" + (f" {v.detector}" if v.detector else ""),
                v.promotion or "-",
                outcome,
                _seconds(v.move_to_serving_s),
                _seconds(v.agent_total_s),
                _bytes(v.bytes_pulled),
                str(v.window_requests),
                str(v.window_failed),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        f"mode             {summary.mode} ({summary.mode_reason})",
        f"serving now      v{summary.serving_version or '?'} on port {summary.public_port}",
        f"blocked          {len(summary.blocked)}"
        + "".join(f"\n  {d[:19]}…  {readable(r)}" for d, r in summary.blocked.items()),
        f"rollbacks        {summary.rollbacks}  (refusals {summary.refusals})",
        f"load             {summary.requests_total} requests, {summary.failed_total} failed "
        f"({summary.handover_failures} during hand-overs)",
        f"took             {summary.duration_s:.0f} s; workdir {summary.workdir}",
    ]
    fleet = summary.fleet
    if fleet.get("skipped"):
        lines.insert(-1, f"fleet            skipped: {fleet['skipped']}")
    elif fleet:
        lines[-1:-1] = [
            f"fleet            {fleet.get('devices', 0)} devices: the good rollout {fleet.get('good_rollout', '?')} in "
            f"{fleet.get('good_waves', '?')} waves; the broken one {fleet.get('bad_rollout', '?')} in wave "
            f"{fleet.get('bad_halted_in_wave', '?')} (tried by {', '.join(fleet.get('bad_tried_by', [])) or 'none'})",
            f"                 the alarming model {fleet.get('model_rollout', '?')} in wave "
            f"{fleet.get('model_halted_in_wave', '?')} on model health: {fleet.get('model_reason', '?')}",
        ]
    return "\n".join(lines)
