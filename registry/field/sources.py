"""Where device summaries come from: any iterable of ``(device_id, groups, summary)``; here, a JSONL file or a
fleet snapshot read from the broker.

One JSON object per line: ``{"device_id": "pump-7", "groups": ["plant-a"], "summary": {...}}`` (what the fleet
agent publishes as ``summary``). An unreadable line is passed on as such, so :func:`~registry.field.report.aggregate`
counts it as malformed rather than the read stopping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any, Any]]:
    """``(device_id, groups, summary)`` per non-empty line of ``path``."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                yield (None, None, None)
                continue
            if not isinstance(record, dict):
                yield (None, None, record)
                continue
            yield (record.get("device_id"), record.get("groups"), record.get("summary"))


def write_jsonl(path: str | os.PathLike[str], entries: Iterator[tuple[str, Any, Any]] | list[Any]) -> int:
    """Write ``(device_id, groups, summary)`` tuples as JSONL; return the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for device_id, groups, summary in entries:
            out.write(json.dumps({"device_id": device_id, "groups": groups, "summary": summary}) + "\n")
            count += 1
    return count


def snapshot_summaries(snapshot: Any) -> list[tuple[str, list[str], Any]]:
    """Every device's retained field summary in a fleet snapshot (:class:`registry.fleet.collect.FleetSnapshot`),
    with the groups of its retained state (``hw=pi4``, ``site=plant-3``: one report group per key and value)."""
    return [
        (
            device_id,
            [f"{k}={v}" for k, v in sorted(view.state.groups.items())] if view.state is not None else [],
            view.field_summary,
        )
        for device_id, view in sorted(snapshot.devices.items())
        if view.field_summary is not None
    ]
