"""The rollout controller: judge a wave from what the fleet reports, then advance it, halt it, or wait.

    judge(record, devices, now) -> Decision        pure: no I/O, no clock, never raises on what devices report
    RolloutService(store, states)                  the I/O shell: start, pause, resume, abort, step
    RecordStore / TufRecordStore                   the signed records (the TUF repository's ``rollouts`` role)
    StateSource / SnapshotStateSource / FileStateSource / StaticStateSource
                                                   what the fleet reports (the broker's retained messages, a file)

Which devices are in the wave is computed with the device's own functions (:mod:`edge_runtime.fleet.rollout`),
so the controller judges exactly the devices that run the candidate. The controller keeps nothing between runs:
every step reads the signed record and the fleet's states, and publishes with a compare-and-swap, so it can be
restarted at any time and two controllers at once cannot both move one rollout.

Errors::

    OtamlError
    └── RolloutError                 a rollout operation was refused; nothing was published
        ├── RolloutInputError        a bad argument: unknown rollout, unapproved version, ... (also InputError)
        └── FleetStateError          the fleet's states cannot be read (file missing, not JSON, too large, or
                                     the broker's retained messages did not all arrive in time)
    registry.tuf.errors.RolloutConflict   another controller or operator published first (nothing written)
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from securesystemslib.signer import Signer

from edge_runtime.errors import InputError, OtamlError
from edge_runtime.fleet.messages import MAX_MESSAGE_BYTES, DeviceState, MalformedMessage, check_id, parse_state
from edge_runtime.fleet.rollout import NAME_RE, ROLLOUT_ID_RE, RolloutRecord, bucket, matches
from edge_runtime.trust.approval import Approval
from registry.fleet.model_health import ModelHealthLimits, assess
from registry.tuf.errors import RolloutConflict
from registry.tuf.repository import FleetRepository

FAILED_OUTCOMES = ("rolled_back", "refused", "error")
MAX_NAMED = 20  # devices named in a halt reason; the record is signed and read by every device: keep it small
MAX_CODE = 48
_CODE_CHARS = re.compile(r"[^A-Za-z0-9._:/-]")
Action = Literal["advance", "halt", "wait", "hold"]
log = logging.getLogger("otaml.fleet")


class RolloutError(OtamlError):
    """A rollout operation was refused; nothing was published."""

    reason = "rollout-error"


class RolloutInputError(RolloutError, InputError):
    """A rollout argument is wrong: the message names it and what to do."""

    reason = "rollout-input"


class FleetStateError(RolloutError):
    """The fleet's reported states cannot be read at all (one bad device message is skipped, not this)."""

    reason = "fleet-state"


UPDATE_PHASES = ("pulling", "canary", "handover", "probation")
HARDWARE_KEY = "hw"  # the device group that names its hardware class (a fault may show on one class only)
FIRST_WAVE_TRIES = 1000


# --- the pure core -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObservedDevice:
    """One device as the fleet channel shows it: its retained state and whether it is online (availability)."""

    state: DeviceState
    online: bool
    field: Any = None  # the device's field summary (a dict from the broker, untrusted), if it published one


@dataclass(frozen=True)
class Failure:
    """A device of the wave that counts against the rollout, with a reason code (``rolled_back:canary-failed``,
    ``refused:not-approved``, ``unhealthy``, ``offline-after-switch``)."""

    device_id: str
    code: str

    def __str__(self) -> str:
        return f"{self.device_id} ({self.code})"


@dataclass(frozen=True)
class Decision:
    """What :func:`judge` concluded. ``record`` is the record to publish (the input one for ``wait``/``hold``).

    ``in_wave``: devices of this rollout inside the current wave; ``healthy``: those running the candidate
    healthy; ``waiting``: online ones not there yet; ``offline``: offline ones that never switched (they neither
    fail nor hold the wave); ``ignored``: device reports that were unusable (named, counted, never fatal).
    """

    action: Action
    record: RolloutRecord
    reason: str
    in_wave: tuple[str, ...] = ()
    healthy: tuple[str, ...] = ()
    failures: tuple[Failure, ...] = ()
    waiting: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.action in ("advance", "halt")

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "record": self.record.to_dict(),
            "in_wave": list(self.in_wave),
            "healthy": list(self.healthy),
            "failures": [{"device_id": f.device_id, "code": f.code} for f in self.failures],
            "waiting": list(self.waiting),
            "offline": list(self.offline),
            "ignored": list(self.ignored),
        }


def judge(
    record: RolloutRecord, devices: Iterable[Any], now: float, model_limits: ModelHealthLimits | None = None
) -> Decision:
    """Decide one step of ``record`` from the fleet's ``devices`` (:class:`ObservedDevice`) at ``now`` (Unix s).

    - Devices of the rollout: those reporting ``record.model`` (and, if they report a ``channel`` group, this
      channel). In the wave: their group matches and their :func:`~edge_runtime.fleet.rollout.bucket` is below
      the wave's percentage, exactly as the device decides it, so a device joining mid-rollout is judged the same.
    - Failures in the wave: an update outcome ``rolled_back``/``refused``/``error`` for this rollout, running the
      candidate unhealthy, or offline after switching to it.
    - **halt** when failures / devices in the wave > ``max_failure_rate`` (and at least one failed): the new record
      is ``halted``, so every device returns to ``stable_version``; its reason names devices and reason codes.
    - **halt** as well when ``model_limits`` are given and the candidate *model* misbehaves in the field
      (:func:`registry.fleet.model_health.assess`: anomaly ratio far above the stable version's on comparable
      devices, or its inputs drifting from its training reference), even with every container healthy.
    - **advance** (running only) when every other online device of the wave runs the candidate healthy and the
      wave has soaked ``soak_s`` seconds; **wait** otherwise. **hold**: paused, completed, halted or aborted.

    Anything unusable in ``devices`` (wrong types, bad ids, duplicates) is skipped and named in ``ignored``.
    """
    if record.state not in ("running", "paused"):
        why = f"rollout is {record.state}" + (f": {record.reason}" if record.reason else "")
        return Decision("hold", record, why)
    usable, ignored = _usable(devices)
    position = f"wave {record.wave + 1}/{len(record.waves)} ({record.percent}%)"
    in_wave: list[str] = []
    healthy: list[str] = []
    failures: list[Failure] = []
    waiting: list[str] = []
    offline: list[str] = []
    for device in usable:
        state = device.state
        if state.model != record.model or state.groups.get("channel", record.channel) != record.channel:
            continue
        if not (matches(state.groups, record.group) and bucket(state.device_id, record.rollout_id) < record.percent):
            continue
        in_wave.append(state.device_id)
        on_candidate = state.version == record.version
        outcome_rollout = state.outcome_rollout_id or state.rollout_id  # "": an older agent's, the current one
        if state.last_outcome in FAILED_OUTCOMES and outcome_rollout == record.rollout_id:
            failures.append(Failure(state.device_id, f"{state.last_outcome}:{_code(state.last_reason)}"))
        elif on_candidate and not device.online:
            failures.append(Failure(state.device_id, "offline-after-switch"))
        elif not device.online and state.rollout_id == record.rollout_id and state.phase in UPDATE_PHASES:
            failures.append(Failure(state.device_id, f"offline-during-{state.phase}"))
        elif on_candidate and state.health == "unhealthy":
            failures.append(Failure(state.device_id, "unhealthy"))
        elif not device.online:
            offline.append(state.device_id)
        elif on_candidate and state.health == "ok":
            healthy.append(state.device_id)
        else:
            waiting.append(state.device_id)

    def decide(action: Action, new: RolloutRecord, reason: str) -> Decision:
        return Decision(
            action, new, reason, tuple(in_wave), tuple(healthy), tuple(failures), tuple(waiting), tuple(offline),
            tuple(ignored),
        )  # fmt: skip

    if failures and len(failures) / len(in_wave) > record.max_failure_rate:
        named = ", ".join(str(f) for f in failures[:MAX_NAMED])
        more = f" and {len(failures) - MAX_NAMED} more" if len(failures) > MAX_NAMED else ""
        reason = (
            f"halted in {position}: {len(failures)} of {len(in_wave)} devices failed, above the "
            f"{record.max_failure_rate:.1%} limit: {named}{more}; devices return to v{record.stable_version}"
        )
        return decide("halt", replace(record, state="halted", reason=reason), reason)
    if model_limits is not None:
        verdict = assess(record, [(d.state.device_id, d.state.groups, d.field) for d in usable], model_limits)
        if verdict is not None:
            failures.extend(Failure(device_id, verdict.code) for device_id in verdict.devices[:MAX_NAMED])
            reason = f"halted in {position}: {verdict.reason}; devices return to v{record.stable_version}"
            return decide("halt", replace(record, state="halted", reason=reason[:500]), reason)
    if record.state == "paused":
        return decide("hold", record, f"paused in {position}; resume it to advance")
    if waiting:
        reason = f"{position}: {len(waiting)} of {len(in_wave)} devices not yet on v{record.version} healthy: " + (
            ", ".join(waiting[:MAX_NAMED]) + (" ..." if len(waiting) > MAX_NAMED else "")
        )
        return decide("wait", record, reason)
    if in_wave and not healthy:
        return decide("wait", record, f"{position}: no device of the wave is healthy on v{record.version} yet")
    if not (isinstance(now, int | float) and math.isfinite(now) and now >= 0):
        return decide("wait", record, f"{position}: the controller's clock reads {now!r}, not a time; not advancing")
    soaked = now - record.wave_started_at
    if not soaked >= record.soak_s:
        reason = f"{position}: soaking, {max(0.0, soaked):.0f} s of {record.soak_s:.0f} s"
        return decide("wait", record, reason)
    nxt = record.advanced(now)
    done = "completed" if nxt.state == "completed" else f"opened wave {nxt.wave + 1} ({nxt.waves[nxt.wave]}%)"
    reason = (
        f"{done}: {position} soaked {soaked:.0f} s with {len(healthy)} of {len(in_wave)} devices healthy on "
        f"v{record.version}" + (f", {len(failures)} failed (within the limit)" if failures else "")
    )
    return decide("advance", replace(nxt, reason=reason), reason)


def _code(reason: str) -> str:
    """A device's reason code as it may appear in a signed record: short, and only code characters (the device
    chose it; the record is read by every device)."""
    kept = _CODE_CHARS.sub("?", reason[:MAX_CODE])
    return kept or "unknown"


def _usable(devices: Iterable[Any]) -> tuple[list[ObservedDevice], list[str]]:
    """Devices whose report has the types the judge reads; the newest report per device id wins."""
    newest: dict[str, ObservedDevice] = {}
    ignored: list[str] = []
    try:
        items = list(devices)
    except Exception as exc:  # an iterator that fails midway: judge nobody rather than crash the controller
        return [], [f"device list unreadable: {type(exc).__name__}"]
    for index, item in enumerate(items):
        problem = _problem(item)
        if problem:
            ignored.append(f"#{index}: {problem}")
            continue
        state = item.state
        other = newest.get(state.device_id)
        if other is not None:
            ignored.append(f"#{index}: {state.device_id} reported twice; the newer report counts")
            if other.state.last_seen > state.last_seen:
                continue
        newest[state.device_id] = item
    return list(newest.values()), ignored


def _problem(item: Any) -> str:
    if not isinstance(item, ObservedDevice) or not isinstance(item.state, DeviceState):
        return f"not a device report ({type(item).__name__})"
    if not isinstance(item.online, bool):
        return "availability is not online/offline"
    s = item.state
    try:
        check_id("device id", s.device_id)
    except InputError:
        return f"device id {str(s.device_id)[:64]!r} is invalid"
    if not isinstance(s.groups, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in s.groups.items()
    ):
        return f"{s.device_id}: groups are not strings"
    for name in ("model", "last_outcome", "last_reason", "rollout_id", "health"):
        if not isinstance(getattr(s, name), str):
            return f"{s.device_id}: {name} is not text"
    if isinstance(s.version, bool) or not isinstance(s.version, int):
        return f"{s.device_id}: version {str(s.version)[:20]!r} is not a number"
    last_seen = s.last_seen
    if isinstance(last_seen, bool) or not isinstance(last_seen, int | float) or not math.isfinite(last_seen):
        return f"{s.device_id}: last_seen is not a time"
    return ""


# --- where records and states come from ---------------------------------------------------------------------
class RecordStore(Protocol):
    """The signed rollout records, and which versions they may name."""

    def records(self) -> list[RolloutRecord]:
        """Every record, ordered by channel and model."""
        ...

    def get(self, channel: str, model: str) -> RolloutRecord | None: ...

    def publish(self, record: RolloutRecord, *, expected: RolloutRecord | None) -> None:
        """Publish ``record`` if the current one still equals ``expected`` (None: there is none); else raise
        :class:`~registry.tuf.errors.RolloutConflict` and write nothing."""
        ...

    def approvals(self, channel: str, model: str) -> list[Approval]:
        """Approvals of ``model`` for ``channel`` (the four-eyes targets), lowest version first."""
        ...

    def keep_fresh(self, now: float) -> bool:
        """Re-sign the records before they expire; True when it did."""
        ...


class TufRecordStore:
    """Records as targets of the TUF repository's ``rollouts`` role, signed with the controller's key.

    ``signer`` may be None for a read-only store (``otaml rollout status``); publishing then refuses.
    """

    def __init__(self, repo: FleetRepository, signer: Signer | None) -> None:
        self.repo = repo
        self._signer = signer

    def records(self) -> list[RolloutRecord]:
        return self.repo.rollout_records()

    def get(self, channel: str, model: str) -> RolloutRecord | None:
        return self.repo.rollout_record(channel, model)

    def publish(self, record: RolloutRecord, *, expected: RolloutRecord | None) -> None:
        self.repo.publish_rollout(record, self._need_signer(), expected=expected)

    def approvals(self, channel: str, model: str) -> list[Approval]:
        found = [a for a in self.repo.approvals() if (a.channel, a.model) == (channel, model)]
        return sorted(found, key=lambda a: a.version)

    def keep_fresh(self, now: float) -> bool:
        md = self.repo.rollouts()
        if md is None:
            return False
        left = md.signed.expires.timestamp() - now
        if left > self.repo.expiry.rollouts.total_seconds() / 2:
            return False
        self.repo.renew_rollouts(self._need_signer())
        return True

    def _need_signer(self) -> Signer:
        if self._signer is None:
            raise RolloutInputError("publishing a rollout record needs the controller's rollouts key (rollouts.key)")
        return self._signer


class StateSource(Protocol):
    """The fleet's current reports. In production: retained MQTT state and availability
    (:mod:`registry.fleet.collect`); in tests and from a file: :class:`StaticStateSource`, :class:`FileStateSource`."""

    def devices(self) -> Sequence[ObservedDevice]: ...


@dataclass
class StaticStateSource:
    """A fixed list of devices (tests, or a caller that collected them itself)."""

    items: list[ObservedDevice] = field(default_factory=list)

    def devices(self) -> Sequence[ObservedDevice]:
        return list(self.items)


class FileStateSource:
    """Device reports from a JSON file: ``{"devices": [{"state": <DeviceState document>, "availability":
    "online"|"offline"}, ...]}`` (the retained ``state`` and ``availability`` messages, as collected).

    Each entry is parsed like a message off the broker (:func:`~edge_runtime.fleet.messages.parse_state`);
    bad entries are skipped and described in ``malformed`` after each read.
    """

    MAX_BYTES = 64 * 1024 * 1024  # ~100,000 devices of ~600 bytes

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.malformed: list[str] = []

    def devices(self) -> Sequence[ObservedDevice]:
        try:
            with open(self.path, "rb") as f:
                data = f.read(self.MAX_BYTES + 1)
        except OSError as exc:
            raise FleetStateError(f"fleet states file {self.path} cannot be read: {exc}") from exc
        if len(data) > self.MAX_BYTES:
            raise FleetStateError(f"fleet states file {self.path} is larger than {self.MAX_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise FleetStateError(f"fleet states file {self.path} is not JSON: {exc}") from exc
        entries = doc.get("devices") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise FleetStateError(f'fleet states file {self.path} has no "devices" list')
        found: list[ObservedDevice] = []
        self.malformed = []
        for index, entry in enumerate(entries):
            try:
                found.append(_entry(entry))
            except MalformedMessage as exc:
                self.malformed.append(f"#{index}: {exc}")
        return found


class SnapshotStateSource:
    """Devices from a fleet snapshot as :func:`registry.fleet.collect.collect` returns it (the broker's retained
    ``state`` and ``availability`` messages): ``fetch`` is called at every :meth:`devices`, e.g.
    ``SnapshotStateSource(lambda: collect(host, port, fleet))``.

    Duck-typed on purpose (``snapshot.devices``: id -> view with ``state`` and ``online``; ``snapshot.rejected``:
    counts by reason), so this module does not import paho. A device whose availability was never seen counts as
    offline; one with no state is skipped; both, and the broker's refused messages, are listed in ``malformed``.
    """

    def __init__(self, fetch: Callable[[], Any]) -> None:
        self._fetch = fetch
        self.malformed: list[str] = []

    def devices(self) -> Sequence[ObservedDevice]:
        snapshot = self._fetch()
        views = getattr(snapshot, "devices", None)
        if not isinstance(views, Mapping):
            raise FleetStateError(f"the fleet snapshot has no device map (got {type(snapshot).__name__})")
        if getattr(snapshot, "complete", True) is False:
            # Judging part of the fleet could halt a good rollout (a device whose availability had not arrived
            # counts as offline) or advance past a failed device whose state had not arrived: judge nobody.
            raise FleetStateError(
                f"the broker was still sending retained messages when the collection timed out ({len(views)} "
                "devices so far); not judging part of the fleet: raise the broker timeout (--broker-timeout)"
            )
        found: list[ObservedDevice] = []
        notes: list[str] = []
        for device_id, view in views.items():
            state = getattr(view, "state", None)
            if not isinstance(state, DeviceState):
                notes.append(f"{str(device_id)[:64]}: no state message")
                continue
            online = getattr(view, "online", None)
            if online is None:
                notes.append(f"{state.device_id}: no availability message (counted offline)")
            found.append(ObservedDevice(state, online is True, getattr(view, "field_summary", None)))
        rejected = getattr(snapshot, "rejected", None)
        if isinstance(rejected, Mapping):
            notes += [f"broker messages refused ({reason}): {count}" for reason, count in sorted(rejected.items())]
        self.malformed = notes
        return found


def _entry(entry: Any) -> ObservedDevice:
    if not isinstance(entry, dict):
        raise MalformedMessage(f"entry is a {type(entry).__name__}, not an object")
    availability = entry.get("availability", "offline")
    if availability not in ("online", "offline"):
        raise MalformedMessage(f"availability {str(availability)[:40]!r} is not 'online' or 'offline'")
    try:
        payload = json.dumps(entry.get("state")).encode()
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"state is not JSON: {exc}") from exc
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"state of {len(payload)} bytes is larger than the {MAX_MESSAGE_BYTES}-byte cap")
    return ObservedDevice(parse_state(payload), availability == "online", entry.get("field"))


# --- the I/O shell ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepResult:
    """One rollout's step: the decision, and whether its record was published (``conflict``: someone else did)."""

    before: RolloutRecord
    decision: Decision
    published: bool
    conflict: str = ""


class RolloutService:
    """Start, pause, resume, abort and step rollouts. Holds no state: each call reads the store and the fleet."""

    def __init__(
        self,
        store: RecordStore,
        states: StateSource | None = None,
        *,
        clock: Callable[[], float] = time.time,
        model_health: ModelHealthLimits | None = None,
    ) -> None:
        self.store = store
        self.states = states
        self._clock = clock
        self.model_health = model_health

    def start(
        self,
        model: str,
        version: int,
        *,
        channel: str,
        waves: Sequence[int],
        max_failure_rate: float = 0.05,
        soak_s: float = 600.0,
        group: Mapping[str, str] | None = None,
    ) -> RolloutRecord:
        """Publish a new rollout of approved ``version``; its stable version is the last completed rollout's (or
        after a halted or aborted one its stable version), or else the version devices run without a record: the
        highest approved version that is not staged. Refused while another rollout of the model is moving."""
        for kind, value in (("channel", channel), ("model", model)):
            if not isinstance(value, str) or not NAME_RE.match(value):
                raise RolloutInputError(f"{kind} {value!r} is not a valid name: letters, digits, '.', '_', '-'")
        current = self.store.get(channel, model)
        if current is not None and current.active:
            raise RolloutInputError(
                f"rollout {current.rollout_id} of {model} v{current.version} on {channel} is {current.state}; "
                f"let it complete, or abort it (otaml rollout abort {model} --channel {channel}) first"
            )
        grouped = current is not None and current.state == "completed" and current.group
        if current is not None and grouped and current.group != dict(group or {}):
            only = ",".join(f"{k}={v}" for k, v in sorted(current.group.items()))
            raise RolloutInputError(
                f"rollout {current.rollout_id} moved only the devices of group {only} to v{current.version}; the "
                f"others run v{current.stable_version}, and one record per model and channel cannot hold both. Roll "
                f"out to the same group (--group {only}), or give device groups that move on their own a channel each"
            )
        approvals = self.store.approvals(channel, model)
        approved = [a.version for a in approvals]
        if version not in approved:
            raise RolloutInputError(
                f"{model} v{version} is not approved for channel {channel!r} (approved: "
                f"{', '.join(f'v{v}' for v in approved) or 'none'}); approve it with the MLOps keys first"
            )
        stable = _stable_version(current, approvals, version)
        if stable >= version:
            raise RolloutInputError(
                f"{model} v{version} is not above the stable v{stable} on {channel}; a rollout only moves forward"
            )
        now = self._clock()
        try:
            record = RolloutRecord(
                rollout_id=_first_wave_id(
                    _rollout_id(model, version, now), waves[0] if waves else 0, self._fleet(model, channel, group)
                ),
                model=model,
                channel=channel,
                version=version,
                stable_version=stable,
                waves=tuple(waves),
                group=dict(group or {}),
                max_failure_rate=max_failure_rate,
                soak_s=soak_s,
                started_at=now,
                wave_started_at=now,
                reason=f"started: v{stable} -> v{version}",
            )
        except RolloutInputError:
            raise
        except InputError as exc:
            raise RolloutInputError(f"rollout of {model} v{version} on {channel}: {exc}") from exc
        self.store.publish(record, expected=current)
        return record

    def _fleet(self, model: str, channel: str, group: Mapping[str, str] | None) -> list[tuple[str, str]]:
        """(device id, hardware class) of the devices a rollout of ``model`` on ``channel`` would move, as the state
        source reports them now; empty without one."""
        if self.states is None:
            return []
        return [
            (s.device_id, s.groups.get(HARDWARE_KEY, ""))
            for s in (d.state for d in self.states.devices())
            if s.model == model and s.groups.get("channel", channel) == channel and matches(s.groups, dict(group or {}))
        ]

    def pause(self, model: str, *, channel: str) -> RolloutRecord:
        """Stop advancing (devices stay where they are; a pause still halts on failures)."""
        current = self._current(model, channel, allowed=("running",), verb="pause")
        return self._publish(replace(current, state="paused", reason="paused by an operator"), current)

    def resume(self, model: str, *, channel: str) -> RolloutRecord:
        """Advance again; the wave's soak restarts now."""
        current = self._current(model, channel, allowed=("paused",), verb="resume")
        updated = replace(current, state="running", wave_started_at=self._clock(), reason="resumed by an operator")
        return self._publish(updated, current)

    def abort(self, model: str, *, channel: str, why: str = "") -> RolloutRecord:
        """Stop the rollout: every device returns to the stable version (a signed act)."""
        current = self._current(model, channel, allowed=("running", "paused"), verb="abort")
        reason = f"aborted by an operator in wave {current.wave + 1}/{len(current.waves)}" + (f": {why}" if why else "")
        return self._publish(replace(current, state="aborted", reason=reason[:500]), current)

    def assess(self, record: RolloutRecord) -> Decision:
        """What a step would decide now, without publishing."""
        return judge(record, self._devices(), self._clock(), self.model_health)

    def step(self) -> list[StepResult]:
        """One judgement per moving rollout; publish advances and halts. Safe to run from several controllers."""
        results: list[StepResult] = []
        records = [r for r in self.store.records() if r.active]
        now = self._clock()
        try:
            devices = self._devices() if records else []
        except FleetStateError:
            self.store.keep_fresh(now)  # nothing judged, but the records stay valid while the fleet cannot be read
            raise
        for record in records:
            decision = judge(record, devices, now, self.model_health)
            if not decision.changed:
                results.append(StepResult(record, decision, published=False))
                continue
            try:
                self.store.publish(decision.record, expected=record)
            except RolloutConflict as exc:
                results.append(StepResult(record, decision, published=False, conflict=str(exc)))
                continue
            results.append(StepResult(record, decision, published=True))
        self.store.keep_fresh(now)
        return results

    def _devices(self) -> Sequence[ObservedDevice]:
        if self.states is None:
            raise RolloutInputError("judging a rollout needs the fleet's states; give a state source (--states)")
        return self.states.devices()

    def _current(self, model: str, channel: str, *, allowed: tuple[str, ...], verb: str) -> RolloutRecord:
        current = self.store.get(channel, model)
        if current is None:
            raise RolloutInputError(f"there is no rollout of {model!r} on channel {channel!r} to {verb}")
        if current.state not in allowed:
            raise RolloutInputError(
                f"rollout {current.rollout_id} of {model} on {channel} is {current.state}; only a "
                f"{' or '.join(allowed)} rollout can be {verb}d"
            )
        return current

    def _publish(self, record: RolloutRecord, expected: RolloutRecord) -> RolloutRecord:
        self.store.publish(record, expected=expected)
        return record


def _stable_version(current: RolloutRecord | None, approvals: Sequence[Approval], version: int) -> int:
    """The version devices run outside the waves: the last rollout's outcome, or else what devices run without a
    record (the highest approved version that is not staged)."""
    if current is not None:
        return current.version if current.state == "completed" else current.stable_version
    running = [a.version for a in approvals if not a.staged]
    if not running:
        raise RolloutInputError(
            f"no approved version for devices to run outside the waves of v{version}; a rollout needs a stable "
            "version that devices return to when it halts (ship the first version by approving it on the channel)"
        )
    return max(running)


def _first_wave_id(base: str, percent: int, devices: Sequence[tuple[str, str]]) -> str:
    """``base``, or with the fleet known the first of ``base-1``, ``base-2``... whose first wave holds a device of
    every hardware class: a wave with no device (or none of the class a fault shows on) would advance after its soak
    and hand a bad version to the next, larger wave. Membership stays each device's own signed bucket rule."""
    if not devices:
        return base
    classes = {hw for _, hw in devices}
    for n in range(FIRST_WAVE_TRIES):
        rollout_id = base if n == 0 else f"{base[:58]}-{n}"
        if {hw for device_id, hw in devices if bucket(device_id, rollout_id) < percent} >= classes:
            return rollout_id
    log.warning(
        "no rollout id in %d tries puts a device of every hardware class (%s) in the first %d%% wave; using %s",
        FIRST_WAVE_TRIES,
        ", ".join(sorted(classes)),
        percent,
        base,
    )
    return base


def _rollout_id(model: str, version: int, now: float) -> str:
    rollout_id = f"{model[:40]}-v{version}-{int(now):x}"[:64]
    if not ROLLOUT_ID_RE.match(rollout_id):  # model names share the id's alphabet; this guards a future change
        raise RolloutInputError(f"cannot make a rollout id from model {model!r}")
    return rollout_id
