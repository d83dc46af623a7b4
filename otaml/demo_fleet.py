"""The demo's fleet: after the single device's story, four more devices on the ``staging`` channel report to a
Mosquitto broker; v2 rolls out in two waves that complete, then the broken v3 rolls out and halts after its first
wave (its canary fails: a platform failure). Then the devices get traffic and v4 rolls out: a healthy container
whose model alarms on every reading; the controller's *model* health halts it from the devices' field
summaries. ``otaml field report`` and ``otaml fleet status`` end it.

The devices are the real agent in threads of the demo (:mod:`otaml.local_fleet`, the light process runtime), two
``hw=pi4`` and two ``hw=x86`` (labels: they all run this machine's platform). The controller is
:class:`registry.fleet.rollout.RolloutService` reading the broker's retained states, as ``otaml rollout run
--broker`` does. An approval and the rollout that holds it back reach the devices in one publication of the
served TUF metadata (``publish``), so no device sees the new version approved without its rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otaml.demo_device import DemoFailed

FLEET = "demo"
CHANNEL = "staging"
DEVICES = (("pi4-1", "pi4"), ("pi4-2", "pi4"), ("x86-1", "x86"), ("x86-2", "x86"))
WAVES = (50, 100)
SOAK_S = 3.0
# v4's waves soak longer: model health needs each device's field window to hold min_readings readings
# (200 by default: 5 s of load) after its update (poll, pull, canary, probation) and a field summary published
# since (every FIELD_INTERVAL_S). The halt comes as soon as they are in; the soak only bounds a slow machine.
MODEL_SOAK_S = 45.0
FIELD_INTERVAL_S = 2.0
LOAD_BATCH = 10  # readings a request, LOAD_INTERVAL_S apart, to each device: 40 readings/s a device
LOAD_INTERVAL_S = 0.25
STEP_S = 1.0
TIMEOUT_S = 180.0


@dataclass(frozen=True)
class FleetContext:
    """What the fleet stage needs from the demo: its promotion, publication and where the devices read."""

    workdir: Path
    stack: ExitStack
    say: Callable[[str], None]
    model: str
    registry_url: str
    repository: str
    trust_dir: Path
    trust_url: str
    trusted_root: Path
    promote: Callable[[str, str], str]  # (version, channel) -> digest, approved (not yet published)
    publish: Callable[[], None]  # the site's metadata to the served directory, timestamp last
    readings: Any  # (n, sensors) normal telemetry the devices are sent once v4 rolls out
    gates: Path  # the promotion gates file, whose [rollout] section limits model health
    client_factory: Callable[[], Any] | None = None  # embedded: the OCI layout instead of a registry


def run_fleet(ctx: FleetContext, versions: tuple[str, str, str, str]) -> dict[str, Any]:
    """Play the fleet's story with ``versions`` (good v1, good v2, broken v3, alarming v4); returns what the
    summary shows.

    With four devices a 50 % wave can by chance hold none of them (1 time in 16): the broken version then halts in
    the second wave, and the summary says so."""
    from otaml.loadgen import LoadGenerator
    from otaml.local_fleet import DeviceOptions, DeviceSpec, LocalFleet, quiet_agent_logs
    from otaml.localstack import LocalBroker, missing_tools
    from registry.field import aggregate, render_text, snapshot_summaries
    from registry.fleet.collect import collect
    from registry.fleet.model_health import ModelHealthLimits
    from registry.fleet.rollout import RolloutService, SnapshotStateSource, TufRecordStore
    from registry.fleet.status import render
    from registry.tuf.site import TrustSite

    say = ctx.say
    if missing := missing_tools(LocalBroker.TOOLS):
        say(f"fleet: skipped ({', '.join(missing)} not installed: apt-get install -y mosquitto)")
        return {"skipped": f"{', '.join(missing)} not installed"}
    ids = [d for d, _ in DEVICES]
    broker = LocalBroker(ctx.workdir / "mqtt", devices=ids)
    instance = ctx.stack.enter_context(broker)
    ctx.stack.callback(quiet_agent_logs(ctx.workdir / "fleet-agents.log"))
    say(f"fleet: Mosquitto on {instance.host}:{instance.port}, one user per device, each writes only its own topics")
    v1, v2, v3, v4 = versions
    ctx.promote(v1, CHANNEL)
    ctx.publish()
    options = DeviceOptions(
        registry_url=ctx.registry_url,
        repository=ctx.repository,
        trust_url=ctx.trust_url,
        trusted_root=ctx.trusted_root,
        model=ctx.model,
        broker_host=instance.host,
        broker_port=instance.port,
        password_file=broker.password_file,
        fleet=FLEET,
        channel=CHANNEL,
        poll_interval_s=1.0,
        probation_s=2.0,
        heartbeat_s=60.0,
        field_interval_s=FIELD_INTERVAL_S,
    )
    fleet = LocalFleet(ctx.workdir / "fleet", options, client_factory=ctx.client_factory)
    ctx.stack.callback(fleet.stop)
    for device_id, hw in DEVICES:
        fleet.add(DeviceSpec(device_id, {"hw": hw}))
    say(f"fleet: {len(DEVICES)} devices ({', '.join(ids)}) follow {CHANNEL}; waiting for v{v1} on each")
    _wait(fleet, lambda v: all(x == v1 for x in v.values()), f"v{v1} on every fleet device")

    password = broker.password(broker.controller)
    site = TrustSite(ctx.trust_dir)
    snapshots = LastSnapshot(lambda: collect(instance.host, instance.port, FLEET, password=password))
    limits = ModelHealthLimits.from_gates(ctx.gates)
    service = RolloutService(
        TufRecordStore(site.open(), site.rollouts_signer()), SnapshotStateSource(snapshots), model_health=limits
    )

    first_waves: dict[str, list[str]] = {}

    def rollout(version: str, what: str, soak_s: float = SOAK_S) -> Any:
        ctx.promote(version, CHANNEL)
        if service.store.get(CHANNEL, ctx.model) is None:  # the model's first rollout: show the approval is staged
            ctx.publish()
            _hold_on_staged(fleet, site.open().targets().signed.version, version)
            say(f"fleet: v{version} approved and published, staged: every device read it and stays where it is")
        record = service.start(ctx.model, int(version), channel=CHANNEL, waves=WAVES, soak_s=soak_s)
        ctx.publish()
        first_waves[version] = [d for d, hw in DEVICES if record.in_wave(d, {"hw": hw})]
        say(f"fleet: rollout {record.rollout_id} of {what}: waves {','.join(map(str, WAVES))} %, soak {soak_s:g} s")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for result in service.step():
                if result.published:
                    say(f"  controller: {result.decision.action}: {result.decision.reason}")
            ctx.publish()
            current = service.store.get(CHANNEL, ctx.model)
            if current is not None and current.state in ("completed", "halted", "aborted"):
                return current
            if problems := fleet.problems():
                raise DemoFailed(f"a fleet device failed: {problems[0]}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"the rollout of {what} did not finish within {TIMEOUT_S:.0f} s")
            time.sleep(STEP_S)

    good = rollout(v2, f"v{v2}")
    _wait(fleet, lambda v: all(x == v2 for x in v.values()), f"v{v2} on every fleet device")
    bad = rollout(v3, f"the broken v{v3}")
    _wait(fleet, lambda v: all(x == v2 for x in v.values()), f"every fleet device back on v{v2}")
    tried = sorted(d.spec.device_id for d in fleet.devices if any(h.get("version") == v3 for h in d.state().history))

    rows = ctx.readings.tolist()
    # One worker each: one stream whose readings follow each other, like a sensor's (several workers would each
    # get every n-th batch, and the gaps between them look like anomalies to a windowed model).
    loads = [
        LoadGenerator(d.public_port, rows, rate=1 / LOAD_INTERVAL_S, workers=1, batch=LOAD_BATCH, timeout_s=2.0)
        for d in fleet.devices
    ]
    for load in loads:
        ctx.stack.callback(load.stop)
        load.start()
    say(
        f"fleet: traffic to every device ({LOAD_BATCH} readings every {LOAD_INTERVAL_S:g} s each); field summaries "
        f"every {FIELD_INTERVAL_S:g} s; a wave's model is judged once its devices scored {limits.min_readings} readings"
    )
    alarming = rollout(v4, f"v{v4}, whose model alarms on every reading (healthy container)", soak_s=MODEL_SOAK_S)
    field_report = render_text(aggregate(snapshot_summaries(snapshots.last), model=ctx.model))
    _wait(fleet, lambda v: all(x == v2 for x in v.values()), f"every fleet device back on v{v2}")
    totals = [load.stop().total for load in loads]
    say(f"$ otaml field report {ctx.model} --broker {instance.host}:{instance.port}   (as the controller halted)")
    for line in field_report.splitlines():
        say("  " + line)
    # A device serves v2 again before its step ends (probation) and reports at the end of the step.
    snapshot = _wait_reported(snapshots, v2)
    table = render(snapshot, time.time())
    say("$ otaml fleet status --fleet demo")
    for line in table.splitlines():
        say("  " + line)
    return {
        "devices": len(DEVICES),
        "good_rollout": good.state,
        "good_waves": len(good.waves),
        "bad_rollout": bad.state,
        "bad_halted_in_wave": bad.wave + 1,
        "bad_reason": bad.reason,
        "bad_tried_by": tried,
        "bad_first_wave": first_waves[v3],
        "model_rollout": alarming.state,
        "model_halted_in_wave": alarming.wave + 1,
        "model_reason": alarming.reason,
        "model_first_wave": first_waves[v4],
        "load_requests": sum(t.slots for t in totals),
        "load_failed": sum(t.failed for t in totals),
        "field_report": field_report,
        "versions": fleet.versions(),
        "status": table,
    }


class LastSnapshot:
    """Reads the fleet from the broker and keeps the last snapshot read (what the controller judged)."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read
        self.last: Any = None

    def __call__(self) -> Any:
        self.last = self._read()
        return self.last


def _wait_reported(read: Callable[[], Any], version: str) -> Any:
    """The broker's snapshot once every device reports serving ``version``."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        snapshot = read()
        reported = {d: (v.state.version, v.state.phase) if v.state else None for d, v in snapshot.devices.items()}
        if len(reported) == len(DEVICES) and all(r == (int(version), "serving") for r in reported.values()):
            return snapshot
        if time.monotonic() > deadline:
            raise DemoFailed(f"the devices did not report v{version} within {TIMEOUT_S:.0f} s: {reported}")
        time.sleep(0.5)


def _hold_on_staged(fleet: Any, targets_version: int, version: str) -> None:
    """Once every device has read targets ``targets_version`` (the staged approval of ``version``), none may want
    ``version``: a staged approval alone moves nobody."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        states = {d.spec.device_id: d.state() for d in fleet.devices}
        if all(s.trust_floor >= targets_version for s in states.values()):
            break
        if time.monotonic() > deadline:
            raise DemoFailed(f"the devices did not read targets v{targets_version} within {TIMEOUT_S:.0f} s")
        time.sleep(0.5)
    moving = {d: s.desired for d, s in states.items() if f"v{version} staged" not in s.desired}
    if moving:
        raise DemoFailed(f"the staged approval of v{version} reached devices before any rollout: {moving}")


def _wait(fleet: Any, done: Callable[[dict[str, str]], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done(fleet.versions()):
        if problems := fleet.problems():
            raise DemoFailed(f"while waiting for {what}: {problems[0]}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: not within {TIMEOUT_S:.0f} s (versions now: {fleet.versions()})")
        time.sleep(0.5)
