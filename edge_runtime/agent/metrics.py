"""The agent's metrics as Prometheus text, written to a textfile (node_exporter's textfile collector).

A textfile, not a port: the agent opens no socket, costs no extra memory, and its figures survive its
restarts. Point node_exporter's ``--collector.textfile.directory`` at the file's directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edge_runtime.agent.reconcile import UpdateReport
from edge_runtime.agent.state import AgentState

COUNTERS = (
    ("checks", "Channel polls (one HEAD each)."),
    ("updates", "Updates that finished probation."),
    ("rollbacks", "Updates rolled back (canary or probation failed)."),
    ("refusals", "Images refused (no platform for the device, or the verification policy)."),
    ("failures", "Steps that failed and will be retried (registry, containerd, network)."),
    ("restarts", "Serving containers restarted by the supervisor."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(state: AgentState, report: UpdateReport | None = None) -> str:
    """Prometheus text (format 0.0.4) for the agent's state and its last step."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP otaml_agent_{name} {help_text}")
        lines.append(f"# TYPE otaml_agent_{name} {kind}")
        lines.extend(f"otaml_agent_{name}{labels} {value:g}" for labels, value in samples)

    for key, help_text in COUNTERS:
        metric(f"{key}_total", "counter", help_text, [("", state.counters.get(key, 0))])
    cur = state.current
    metric(
        "current_version_info",
        "gauge",
        "The image serving now (value 1).",
        [(f'{{model="{_escape(cur.model)}",version="{_escape(cur.version)}",digest="{cur.digest}"}}', 1)]
        if cur
        else [],
    )
    metric(
        "insecure",
        "gauge",
        "1 when verification is off ([trust] insecure = true): the device runs unapproved images.",
        [("", 1 if state.trust_status == "insecure" else 0)],
    )
    metric(
        "trust_info",
        "gauge",
        "The last trust metadata refresh: status is ok or a reason code (value 1).",
        [(f'{{status="{_escape(state.trust_status)}"}}', 1)] if state.trust_status else [],
    )
    metric("trust_targets_version", "gauge", "Highest TUF targets version trusted.", [("", state.trust_floor)])
    metric("blocked_digests", "gauge", "Digests refused (blocked until a new approval).", [("", len(state.blocked))])
    metric(
        "consecutive_failures", "gauge", "Failed steps in a row (drives back-off).", [("", state.consecutive_failures)]
    )
    metric("last_check_timestamp_seconds", "gauge", "When the channel was last polled.", [("", state.last_check_at)])
    metric("last_error_timestamp_seconds", "gauge", "When the last error happened.", [("", state.last_error_at)])
    metric(
        "last_error_info",
        "gauge",
        "The last error (value 1; empty when none).",
        [(f'{{error="{_escape(state.last_error[:300])}"}}', 1)] if state.last_error else [],
    )
    if report is not None and "total_s" in report.timings:
        metric(
            "last_step_duration_seconds",
            "gauge",
            "Duration of the last step, by outcome.",
            [(f'{{outcome="{report.outcome}"}}', report.timings["total_s"])],
        )
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Atomically replace ``path`` (node_exporter must never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
