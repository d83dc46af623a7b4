"""The rollout record and the device's own wave decision.

A rollout moves ``model`` on ``channel`` from ``stable_version`` to ``version`` through ``waves``
(cumulative percentages of the channel's devices, e.g. ``(1, 10, 50, 100)``), optionally only for devices
whose groups match ``group``. The record is signed (a TUF target of the fleet repository's ``rollouts`` role,
see :mod:`edge_runtime.trust`), so neither the registry nor the broker can widen a rollout: each device
computes its own :func:`bucket` from its id and the rollout id and runs the candidate only while its bucket
is inside the current wave.

==========  ================================================================================
state       who runs the candidate ``version``
==========  ================================================================================
running     devices (matching ``group``) whose bucket < ``waves[wave]``
paused      same as running (a pause stops advancing, it does not move devices)
completed   every matching device
halted      nobody: the wave returns to ``stable_version`` (``reason`` says why)
aborted     nobody (an operator's abort)
==========  ================================================================================

The record travels as the target ``rollouts/<channel>/<model>`` (:func:`target_path`) of the delegated
``rollouts`` role: ``custom`` holds :meth:`RolloutRecord.to_dict`, ``length`` and ``hashes.sha256`` are those of
:func:`canonical_json` of that dict, and :meth:`RolloutRecord.from_target` checks all of it.

Pure code: no I/O, no python-tuf.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge_runtime.errors import InputError

STATES = ("running", "paused", "completed", "halted", "aborted")
CANDIDATE_STATES = ("running", "paused", "completed")
ROLLOUT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # channel and model: one path component
TARGET_PREFIX = "rollouts"


def target_path(channel: str, model: str) -> str:
    """``rollouts/<channel>/<model>``: where the record of ``model`` on ``channel`` is signed."""
    for kind, value in (("channel", channel), ("model", model)):
        if not isinstance(value, str) or not NAME_RE.match(value):
            raise InputError(f"{kind} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' (max 128)")
    return f"{TARGET_PREFIX}/{channel}/{model}"


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes a record's target length and hash are computed over (sorted keys, no spaces, UTF-8)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def bucket(device_id: str, rollout_id: str) -> float:
    """The device's place in ``[0, 100)`` for this rollout: uniform, stable, and different per rollout."""
    digest = hashlib.sha256(f"{rollout_id}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def matches(groups: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """True when every ``key=value`` of ``selector`` is in the device's ``groups`` (empty selector: all)."""
    return all(groups.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout of ``model`` on ``channel``; ``wave`` indexes ``waves`` (the wave now open)."""

    rollout_id: str
    model: str
    channel: str
    version: int
    stable_version: int
    waves: tuple[int, ...]
    wave: int = 0
    state: str = "running"
    group: Mapping[str, str] = field(default_factory=dict)
    max_failure_rate: float = 0.05
    soak_s: float = 600.0
    started_at: float = 0.0
    wave_started_at: float = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.rollout_id, str) or not ROLLOUT_ID_RE.match(self.rollout_id):
            raise InputError(f"rollout id {self.rollout_id!r} is not valid: letters, digits, '.', '_', '-' (max 64)")
        waves = self.waves
        if (
            not waves
            or not all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 100 for w in waves)
            or list(waves) != sorted(set(waves))
            or waves[-1] != 100
        ):
            raise InputError(
                f"waves {list(waves)!r} must be increasing percentages in 1..100 that end at 100, e.g. 1,10,50,100"
            )
        for kind in ("channel", "model"):
            value = getattr(self, kind)
            if not isinstance(value, str) or not NAME_RE.match(value):
                raise InputError(f"rollout {kind} {value!r} is not a valid name: letters, digits, '.', '_', '-'")
        if isinstance(self.wave, bool) or not isinstance(self.wave, int) or not 0 <= self.wave < len(waves):
            raise InputError(f"wave index {self.wave!r} is outside the {len(waves)} waves {list(waves)}")
        if self.state not in STATES:
            raise InputError(f"rollout state {self.state!r} is not one of {', '.join(STATES)}")
        for name in ("version", "stable_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name} {value!r} is not a model version number")
        if self.version == self.stable_version:
            raise InputError(f"rollout of version {self.version} from itself: the stable version must differ")
        for name in ("soak_s", "started_at", "wave_started_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"rollout field {name!r} has value {value!r}; use a finite number >= 0 (seconds)")
            # Whole seconds: TUF signs canonical JSON, which has no floats, so the record carries integers and a
            # record read back from the repository equals the one published.
            object.__setattr__(self, name, float(int(value)))
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise InputError(f"max failure rate {rate!r} is not a number")
        if not 0.0 <= float(rate) <= 1.0:
            raise InputError(f"max failure rate {rate!r} is not a fraction in [0, 1]")
        object.__setattr__(self, "max_failure_rate", float(rate))
        if not isinstance(self.reason, str):
            raise InputError(f"rollout reason {self.reason!r} is not text")

    @property
    def percent(self) -> int:
        """The share of matching devices that run the candidate now (0 when halted or aborted)."""
        if self.state == "completed":
            return 100
        if self.state not in CANDIDATE_STATES:
            return 0
        return self.waves[self.wave]

    @property
    def target_path(self) -> str:
        return target_path(self.channel, self.model)

    @property
    def active(self) -> bool:
        """Still moving (running or paused): a new rollout of the same model and channel must wait for it."""
        return self.state in ("running", "paused")

    def in_wave(self, device_id: str, groups: Mapping[str, str]) -> bool:
        """Whether this device runs the candidate now."""
        return matches(groups, self.group) and bucket(device_id, self.rollout_id) < self.percent

    def version_for(self, device_id: str, groups: Mapping[str, str]) -> int:
        """The model version this device should run under this record."""
        return self.version if self.in_wave(device_id, groups) else self.stable_version

    def advanced(self, now: float) -> RolloutRecord:
        """The record with the next wave open (or completed after the last)."""
        if self.wave + 1 >= len(self.waves):
            return replace(self, state="completed", wave_started_at=now)
        return replace(self, wave=self.wave + 1, wave_started_at=now)

    def to_dict(self) -> dict[str, Any]:
        """JSON without floats (canonical JSON, what TUF signs, has none): seconds as integers, the failure rate
        as its decimal text (``"0.05"``)."""
        return {
            "rollout_id": self.rollout_id,
            "model": self.model,
            "channel": self.channel,
            "version": self.version,
            "stable_version": self.stable_version,
            "waves": list(self.waves),
            "wave": self.wave,
            "state": self.state,
            "group": dict(self.group),
            "max_failure_rate": repr(float(self.max_failure_rate)),
            "soak_s": int(self.soak_s),
            "started_at": int(self.started_at),
            "wave_started_at": int(self.wave_started_at),
            "reason": self.reason,
        }

    @classmethod
    def from_target(cls, path: str, length: int, hashes: Mapping[str, str], custom: Any) -> RolloutRecord:
        """The record of a verified ``rollouts/<channel>/<model>`` target; :class:`InputError` when the custom
        fields are no record, do not hash to the signed length and sha256, or name another channel or model."""
        if not isinstance(custom, Mapping):
            raise InputError(f"rollout target {path!r} has no record in its custom fields")
        try:
            data = canonical_json(custom)
        except (TypeError, ValueError) as exc:
            raise InputError(f"rollout target {path!r} holds a record that is not plain JSON: {exc}") from exc
        sha = hashlib.sha256(data).hexdigest()
        if length != len(data) or hashes.get("sha256") != sha:
            raise InputError(
                f"rollout target {path!r}: the signed length/sha256 ({length}, {hashes.get('sha256')}) are not "
                f"those of its record ({len(data)}, {sha})"
            )
        record = cls.from_dict(custom)
        if record.target_path != path:
            raise InputError(f"rollout target {path!r} holds the record of {record.target_path!r}")
        return record

    @classmethod
    def from_dict(cls, doc: Any) -> RolloutRecord:
        """Parse a record (from verified metadata); :class:`InputError` naming the bad field."""
        if not isinstance(doc, Mapping):
            raise InputError(f"rollout record is a {type(doc).__name__}, not an object")
        try:
            group = doc.get("group", {})
            if not isinstance(group, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in group.items()
            ):
                raise InputError("rollout record field 'group' must map strings to strings")
            waves = doc["waves"]
            if not isinstance(waves, list):
                raise InputError("rollout record field 'waves' must be a list of percentages")
            return cls(
                rollout_id=doc["rollout_id"],
                model=doc["model"],
                channel=doc["channel"],
                version=doc["version"],
                stable_version=doc["stable_version"],
                waves=tuple(waves),
                wave=doc.get("wave", 0),
                state=doc.get("state", "running"),
                group=dict(group),
                max_failure_rate=_rate(doc.get("max_failure_rate", "0.05")),
                soak_s=_number(doc, "soak_s", 600.0),
                started_at=_number(doc, "started_at", 0.0),
                wave_started_at=_number(doc, "wave_started_at", 0.0),
                reason=doc.get("reason", ""),
            )
        except KeyError as exc:
            raise InputError(f"rollout record has no field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"rollout record has a field of the wrong type: {exc}") from exc


def _number(doc: Mapping[str, Any], key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"rollout record field {key!r} has value {str(value)[:80]!r}; expected a number")
    return float(value)


def _rate(value: Any) -> float:
    """The failure rate from its decimal text (or a number, as older records and tests write it)."""
    if isinstance(value, str) and len(value) <= 32:
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise InputError(f"rollout record field 'max_failure_rate' has value {str(value)[:80]!r}; expected e.g. '0.05'")
