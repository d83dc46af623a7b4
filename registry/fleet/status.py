"""``otaml fleet status``: a :class:`~registry.fleet.collect.FleetSnapshot` for people (a table) and machines
(JSON). Pure: no broker, no clock of its own (``now`` is passed in).

A device *fails* when its last update outcome is ``rolled_back``, ``refused`` or ``error`` or its health is
``unhealthy``; an update event seen with one of those outcomes is listed too. A device is *offline* when its
retained availability says so (its Last Will, or a clean shutdown).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from registry.fleet.collect import DeviceView, FleetSnapshot

FAILED_OUTCOMES = ("rolled_back", "refused", "error")


def summarize(snapshot: FleetSnapshot, now: float) -> dict[str, Any]:
    """The snapshot as a JSON-ready document (``otaml fleet status --json``)."""
    devices = [_device(view, now) for _, view in sorted(snapshot.devices.items())]
    versions: Counter[tuple[str, int]] = Counter(
        (view.state.model, view.state.version) for view in snapshot.devices.values() if view.state is not None
    )
    return {
        "fleet": snapshot.fleet,
        "collected_at": snapshot.collected_at,
        "complete": snapshot.complete,
        "devices": devices,
        "versions": [
            {"model": model, "version": version, "devices": count}
            for (model, version), count in sorted(versions.items())
        ],
        "failures": _failures(snapshot),
        "offline": [d["device_id"] for d in devices if d["online"] is False],
        "no_state": [d["device_id"] for d in devices if d["version"] is None],
        "rejected": dict(sorted(snapshot.rejected.items())),
        "rejected_samples": [
            {"topic": r.topic, "reason": r.reason, "detail": r.detail} for r in snapshot.rejected_samples
        ],
    }


def _device(view: DeviceView, now: float) -> dict[str, Any]:
    state = view.state
    return {
        "device_id": view.device_id,
        "online": view.online,
        "model": state.model if state else None,
        "version": state.version if state else None,
        "digest": state.digest if state else None,
        "phase": state.phase if state else None,
        "trust": state.trust if state else None,
        "health": state.health if state else None,
        "last_outcome": state.last_outcome if state else None,
        "last_reason": state.last_reason if state else None,
        "rollout_id": state.rollout_id if state else None,
        "groups": dict(state.groups) if state else {},
        "blocked": list(state.blocked) if state else [],
        "last_seen": state.last_seen if state else None,
        "last_seen_age_s": round(max(now - state.last_seen, 0.0), 1) if state and state.last_seen else None,
        "field_bytes": view.field_bytes,
        "field": view.field_summary,
        "events_seen": len(view.events),
    }


def _failures(snapshot: FleetSnapshot) -> list[dict[str, Any]]:
    failures = []
    for device_id, view in sorted(snapshot.devices.items()):
        state = view.state
        if state is not None and (state.last_outcome in FAILED_OUTCOMES or state.health == "unhealthy"):
            failures.append(
                {
                    "device_id": device_id,
                    "source": "state",
                    "outcome": state.last_outcome or "unhealthy",
                    "reason": state.last_reason or ("unhealthy" if state.health == "unhealthy" else ""),
                    "version": state.version,
                }
            )
        for event in view.events:
            if event.kind == "update" and event.outcome in FAILED_OUTCOMES:
                failures.append(
                    {
                        "device_id": device_id,
                        "source": "event",
                        "outcome": event.outcome,
                        "reason": event.reason,
                        "version": event.version,
                        "at": event.at,
                    }
                )
    return failures


def render(snapshot: FleetSnapshot, now: float) -> str:
    """The snapshot as text: the devices table, counts per version, failures, offline devices, refused messages."""
    doc = summarize(snapshot, now)
    lines = [f"fleet {doc['fleet']}: {len(doc['devices'])} devices" + ("" if doc["complete"] else " (incomplete)")]
    header = ("DEVICE", "ONLINE", "MODEL", "VERSION", "PHASE", "HEALTH", "LAST OUTCOME", "LAST SEEN", "GROUPS")
    rows = [header]
    for d in doc["devices"]:
        online = {True: "yes", False: "OFFLINE", None: "?"}[d["online"]]
        outcome = f"{d['last_outcome']}({d['last_reason']})" if d["last_reason"] else d["last_outcome"] or "-"
        age = d["last_seen_age_s"]
        rows.append(
            (
                d["device_id"],
                online,
                d["model"] or "-",
                "-" if d["version"] is None else f"v{d['version']}",
                d["phase"] or "-",
                d["health"] or "-",
                outcome,
                "-" if age is None else f"{_age(age)} ago",
                ",".join(f"{k}={v}" for k, v in sorted(d["groups"].items())) or "-",
            )
        )
    shown = [[_printable(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in shown]
    lines.append("")
    lines.append(
        "versions: "
        + (", ".join(f"{v['model'] or '?'} v{v['version']}: {v['devices']}" for v in doc["versions"]) or "none")
    )
    if doc["failures"]:
        lines.append("failures:")
        lines += [
            f"  {f['device_id']}: {f['outcome']} v{f['version']} ({f['reason'] or 'no reason'})"
            for f in doc["failures"]
        ]
    lines.append("offline: " + (", ".join(doc["offline"]) or "none"))
    if doc["rejected"]:
        total = sum(doc["rejected"].values())
        lines.append(
            f"refused device messages: {total} ("
            + ", ".join(f"{reason}: {n}" for reason, n in doc["rejected"].items())
            + ")"
        )
        lines += [f"  {r['topic']}: {r['reason']}: {r['detail']}" for r in doc["rejected_samples"][:5]]
    # Every string here came from a device: a control character must not reach the operator's terminal.
    return "\n".join(_printable(line) for line in lines)


def _printable(text: str) -> str:
    """``text`` with control and other unprintable characters shown escaped (``\\x1b``), never sent raw."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
