"""``otaml rollout``: move an approved version through waves that stop themselves (start, status, pause, resume,
abort), and the controller (``step`` for a systemd timer, ``run`` as a loop).

Where things are (flags, or the environment for a timer unit):

    --dir    / OTAML_TRUST_DIR       the trust site (``otaml trust init``): ``metadata/`` is what devices read,
                                     ``online/`` holds the controller's keys (rollouts, snapshot, timestamp)
    --states / OTAML_FLEET_STATES    the fleet's reported states as JSON (registry.fleet.rollout.FileStateSource)
    --broker / OTAML_BROKER          or the states read live from the MQTT broker's retained messages (host:port;
                                     with --fleet / OTAML_FLEET, --username / OTAML_BROKER_USER,
                                     --password-file / OTAML_BROKER_PASSWORD_FILE, --tls-ca / OTAML_BROKER_TLS_CA,
                                     --known-devices / OTAML_FLEET_DEVICES, as ``otaml fleet status``)

``otaml rollout enable`` adds the rollouts role to a site created without it (a threshold of approver keys).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import InputError, OtamlError
from otaml.cmd_fleet import broker_options as connection_options
from otaml.cmd_fleet import seconds

if TYPE_CHECKING:
    from edge_runtime.fleet.rollout import RolloutRecord
    from registry.fleet.rollout import Decision, RolloutService, StateSource, StepResult

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"duration {text!r} is not a number with an optional unit s, m, h or d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def waves(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"waves {text!r} are not comma-separated percentages, e.g. 1,10,50,100"
        ) from None


def group(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"group {part!r} is not KEY=VALUE, e.g. hw=pi4")
        pairs[key.strip()] = value.strip()
    return pairs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = sub.add_parser("rollout", help="roll an approved version out in waves that halt themselves")
    rsub = rollout.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, states: str = "") -> None:
        p.add_argument("--dir", help="the trust site (default: $OTAML_TRUST_DIR)")
        if states:
            p.add_argument("--states", help=states + " (default: $OTAML_FLEET_STATES)")
            broker_options(p)

    def named(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", metavar="NAME", help="model name")
        p.add_argument("--channel", default="production", help="channel (default: production)")

    start = rsub.add_parser("start", help="start a rollout of an approved VERSION")
    named(start)
    start.add_argument("version", metavar="VERSION", type=int, help="the approved model version to roll out")
    start.add_argument("--waves", type=waves, default=(1, 10, 50, 100), help="cumulative %% (default 1,10,50,100)")
    start.add_argument("--max-failure-rate", type=float, default=0.05, help="halt above this share (default 0.05)")
    start.add_argument(
        "--soak",
        type=duration,
        default=600.0,
        help="least time from a wave's opening to the next wave; every device of the wave must be healthy on the "
        "new version by then (default 10m)",
    )
    start.add_argument("--group", type=group, action="append", default=[], help="only devices with KEY=VALUE")
    common(
        start,
        states="the fleet's reported states (JSON): the rollout id is then chosen so that the first wave holds a "
        "device of every hardware class (group hw)",
    )
    start.set_defaults(func=run_start)

    status = rsub.add_parser("status", help="where a rollout is, and why it halted (devices, reason codes)")
    named(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    common(status, states="the fleet's reported states (JSON): adds the live judgement of the wave")
    status.set_defaults(func=run_status)

    for verb, text in (
        ("pause", "stop advancing (devices stay; failures still halt)"),
        ("resume", "advance again (the wave's soak restarts)"),
        ("abort", "stop it: every device returns to the stable version"),
    ):
        p = rsub.add_parser(verb, help=text)
        named(p)
        if verb == "abort":
            p.add_argument("--reason", default="", help="why (kept in the signed record)")
        common(p)
        p.set_defaults(func=run_change, verb=verb)

    step = rsub.add_parser("step", help="judge every moving rollout once and publish advances and halts")
    step.add_argument("--json", action="store_true", help="print JSON")
    common(step, states="the fleet's reported states (JSON)")
    step.set_defaults(func=run_step)

    loop = rsub.add_parser("run", help="the controller: step every --interval until stopped")
    loop.add_argument("--interval", type=duration, default=30.0, help="time between steps (default 30s)")
    loop.add_argument("--count", type=int, default=0, help="stop after this many steps (default 0: never)")
    loop.add_argument("--json", action="store_true", help="print JSON lines")
    common(loop, states="the fleet's reported states (JSON), read again at every step")
    loop.set_defaults(func=run_loop)

    enable = rsub.add_parser("enable", help="add the rollouts role (the controller's key) to an existing trust site")
    enable.add_argument("--key", action="append", required=True, help="an approver key; repeat up to the threshold")
    common(enable)
    enable.set_defaults(func=run_enable)


def broker_options(p: argparse.ArgumentParser) -> None:
    """Where the fleet's states come from when they are read live from the broker (instead of ``--states``)."""
    env = os.environ.get
    connection_options(p, help="read the states from this MQTT broker (host:port)")
    p.add_argument(
        "--known-devices",
        default=env("OTAML_FLEET_DEVICES", ""),
        help="file of the fleet's device ids: messages from any other device are counted, not judged",
    )
    p.add_argument("--broker-timeout", type=seconds, default=10.0, help="seconds to wait for the broker (default 10)")
    p.add_argument(
        "--gates",
        default=env("OTAML_GATES", ""),
        help="gates file: its [rollout] section limits the candidate model in the field (registry/gates.toml)",
    )
    p.add_argument(
        "--no-model-health",
        action="store_true",
        help="judge waves on the containers only, not on the model's field summaries (anomaly ratio, drift)",
    )


def broker_states(args: argparse.Namespace) -> StateSource:
    """The fleet's states as the broker holds them, read again at every step (``registry.fleet.collect``)."""
    from otaml.cmd_fleet import snapshot_reader
    from registry.fleet.rollout import SnapshotStateSource

    return SnapshotStateSource(snapshot_reader(args))


# --- wiring ------------------------------------------------------------------------------------------------------
def _service(args: argparse.Namespace, *, write: bool) -> RolloutService:
    from otaml.cmd_trust import site_dir
    from registry.fleet.rollout import FileStateSource, RolloutService, TufRecordStore
    from registry.tuf.repository import FleetRepository
    from registry.tuf.site import TrustSite
    from registry.tuf.store import DirectoryStore

    site = TrustSite(site_dir(args))
    if not site.exists():
        raise InputError(
            f"{site.path} is not a trust site (no metadata/1.root.json); create one with `otaml trust init`"
        )
    states_file = getattr(args, "states", None) or os.environ.get("OTAML_FLEET_STATES", "")
    broker = getattr(args, "broker", "")
    if states_file and broker:
        raise InputError(
            f"the fleet's states come from {states_file!r} (--states / OTAML_FLEET_STATES) and from the broker "
            f"{broker!r} (--broker / OTAML_BROKER); give only one"
        )
    states: StateSource | None = FileStateSource(states_file) if states_file else None
    if broker:
        states = broker_states(args)
    health = _model_health(args)
    if not write:
        return RolloutService(
            TufRecordStore(FleetRepository.read_only(DirectoryStore(site.metadata_dir)), None),
            states,
            model_health=health,
        )
    return RolloutService(TufRecordStore(site.open(), site.rollouts_signer()), states, model_health=health)


def _model_health(args: argparse.Namespace) -> Any:
    """The [rollout] limits of the gates file (the model's behaviour in the field), unless turned off."""
    if getattr(args, "no_model_health", False):
        return None
    from registry.fleet.model_health import ModelHealthLimits
    from registry.gates import DEFAULT_GATES_FILE

    return ModelHealthLimits.from_gates(getattr(args, "gates", "") or DEFAULT_GATES_FILE)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _describe(record: RolloutRecord) -> list[str]:
    group = ",".join(f"{k}={v}" for k, v in record.group.items()) or "all devices"
    return [
        f"rollout {record.rollout_id}: {record.model} v{record.stable_version} -> v{record.version} on "
        f"{record.channel}: {record.state.upper()}",
        f"  wave {record.wave + 1}/{len(record.waves)} ({record.waves[record.wave]}%), waves "
        f"{','.join(map(str, record.waves))}; devices on v{record.version} now: {record.percent}% of {group}",
        f"  max failure rate {record.max_failure_rate:.1%}, soak {record.soak_s:.0f} s; started "
        f"{_when(record.started_at)}, this wave since {_when(record.wave_started_at)}",
        f"  reason: {record.reason or '-'}",
    ]


def _decision_lines(decision: Decision) -> list[str]:
    lines = [f"  now: {decision.action}: {decision.reason}"]
    lines.append(
        f"  in wave {len(decision.in_wave)}: healthy {len(decision.healthy)}, failed {len(decision.failures)}, "
        f"waiting {len(decision.waiting)}, offline {len(decision.offline)}"
    )
    for failure in decision.failures:
        lines.append(f"    failed  {failure.device_id}  {failure.code}")
    for device_id in decision.waiting:
        lines.append(f"    waiting {device_id}")
    for device_id in decision.offline:
        lines.append(f"    offline {device_id}")
    if decision.ignored:
        lines.append(f"  ignored reports: {len(decision.ignored)} ({'; '.join(decision.ignored[:5])})")
    return lines


def _malformed(service: RolloutService) -> list[str]:
    return list(getattr(service.states, "malformed", []))


# --- commands ------------------------------------------------------------------------------------------------------
def run_start(args: argparse.Namespace) -> int:
    service = _service(args, write=True)
    selector: dict[str, str] = {}
    for pairs in args.group:
        selector.update(pairs)
    record = service.start(
        args.name,
        args.version,
        channel=args.channel,
        waves=args.waves,
        max_failure_rate=args.max_failure_rate,
        soak_s=args.soak,
        group=selector,
    )
    print("\n".join(_describe(record)))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from registry.fleet.rollout import RolloutInputError

    service = _service(args, write=False)
    record = service.store.get(args.channel, args.name)
    if record is None:
        raise RolloutInputError(f"there is no rollout of {args.name!r} on channel {args.channel!r}")
    decision = service.assess(record) if service.states is not None else None
    if args.json:
        doc: dict[str, Any] = {"record": record.to_dict(), "assessment": decision.to_dict() if decision else None}
        doc["malformed_reports"] = _malformed(service)
        print(json.dumps(doc, indent=2))
        return 0
    lines = _describe(record)
    if decision is not None:
        lines += _decision_lines(decision)
        if malformed := _malformed(service):
            lines.append(f"  malformed reports: {len(malformed)} ({'; '.join(malformed[:5])})")
    print("\n".join(lines))
    return 0


def run_change(args: argparse.Namespace) -> int:
    service = _service(args, write=True)
    if args.verb == "pause":
        record = service.pause(args.name, channel=args.channel)
    elif args.verb == "resume":
        record = service.resume(args.name, channel=args.channel)
    else:
        record = service.abort(args.name, channel=args.channel, why=args.reason)
    print("\n".join(_describe(record)))
    return 0


def _print_step(results: list[StepResult], as_json: bool, malformed: list[str]) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "at": time.time(),
                    "results": [
                        {
                            "rollout_id": r.before.rollout_id,
                            "model": r.before.model,
                            "channel": r.before.channel,
                            "published": r.published,
                            "conflict": r.conflict,
                            "decision": r.decision.to_dict(),
                        }
                        for r in results
                    ],
                    "malformed_reports": malformed,
                }
            ),
            flush=True,
        )
        return
    if not results:
        print("no rollout is running or paused", flush=True)
    for r in results:
        what = "published" if r.published else ("conflict, not published" if r.conflict else "nothing to publish")
        print(f"{r.before.model}@{r.before.channel} {r.before.rollout_id}: {r.decision.action} ({what})")
        print(f"  {r.decision.reason}", flush=True)
    if malformed:
        print(f"malformed reports ignored: {len(malformed)} ({'; '.join(malformed[:5])})", flush=True)


def _controller(args: argparse.Namespace) -> RolloutService:
    service = _service(args, write=True)
    if service.states is None:
        raise InputError(
            "the controller judges waves from the fleet's states: pass --broker HOST:PORT (or set OTAML_BROKER) "
            "to read them from the MQTT broker, or --states FILE (OTAML_FLEET_STATES)"
        )
    return service


def run_step(args: argparse.Namespace) -> int:
    service = _controller(args)
    results = service.step()
    _print_step(results, args.json, _malformed(service))
    return 0


def run_enable(args: argparse.Namespace) -> int:
    from otaml.cmd_trust import site_dir
    from registry.tuf import keys
    from registry.tuf.site import TrustSite

    site = TrustSite(site_dir(args))
    version = site.enable_rollouts([keys.load_signer(path) for path in args.key])
    print(f"rollouts role added (targets v{version}): the controller signs with {site.online_dir}/rollouts.key")
    return 0


def run_loop(args: argparse.Namespace) -> int:
    service = _controller(args)
    steps = 0
    while True:
        try:
            _print_step(service.step(), args.json, _malformed(service))
        except OtamlError as exc:  # a bad states file or a busy repository: report it, try again next time
            print(f"otaml rollout run: step failed: {exc}", file=sys.stderr, flush=True)
        steps += 1
        if args.count and steps >= args.count:
            return 0
        time.sleep(args.interval)
