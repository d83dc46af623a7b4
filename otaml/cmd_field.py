"""``otaml field report NAME``: what a model's versions do on the devices, per version and device group.

Summaries come from the fleet's broker (``--broker``: every device's retained ``field`` message, with its groups
from its retained ``state``) or from ``--from-file`` (JSONL: ``{"device_id", "groups", "summary"}`` per line);
:func:`report` takes any iterable of ``(device_id, groups, summary)``. Each reported version is logged to MLflow
against its registered model version unless ``--no-log``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from otaml.cmd_fleet import broker_options

SummarySource = Iterable[tuple[Any, Any, Any]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    field = sub.add_parser("field", help="field feedback: what each model version does on the devices")
    field_sub = field.add_subparsers(dest="field_command", metavar="SUBCOMMAND", required=True)
    rep = field_sub.add_parser("report", help="per version and device group: devices, readings, anomalies, drift")
    rep.add_argument("name", help="registered model name")
    rep.add_argument("--version", help="only this version (default: every version reported)")
    rep.add_argument("--from-file", metavar="JSONL", help="device summaries, one JSON object per line")
    broker_options(rep)
    rep.add_argument("--json", action="store_true", help="print JSON instead of text")
    rep.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    rep.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    rep.set_defaults(func=run_report)
    cap = field_sub.add_parser(
        "capture", help="save the readings around anomalies that devices with capture on send (JSONL, for labelling)"
    )
    cap.add_argument("--out", required=True, metavar="JSONL", help="append the captured windows here")
    cap.add_argument("--duration", type=float, default=600.0, help="stop after this many seconds (default 600)")
    cap.add_argument("--max-windows", type=int, default=10_000, help="stop after this many windows (default 10000)")
    broker_options(cap, default="127.0.0.1:1883")
    cap.set_defaults(func=run_capture)


def report(
    name: str,
    source: SummarySource,
    *,
    version: str | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
    as_json: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Aggregate ``source``, print the report, log each version to MLflow; the exit status."""
    from registry.field import FieldLogError, aggregate, log_to_mlflow, render_text

    result = aggregate(source, model=name)
    if version is not None:
        result = type(result)(
            result.model,
            [g for g in result.groups if g.version == version],
            result.summaries,
            result.malformed,
            result.other_models,
            result.superseded,
        )
    logged: dict[str, str] = {}
    failures: dict[str, str] = {}
    if log and result.groups:
        from pipeline.tracking import resolve_tracking_uri

        uri = tracking_uri or resolve_tracking_uri()
        for v in result.versions:
            try:
                logged[v] = log_to_mlflow(result, name, v, uri)
            except FieldLogError as exc:
                failures[v] = str(exc)
    if as_json:
        out(json.dumps({**result.to_dict(), "mlflow_runs": logged, "mlflow_errors": failures}, indent=2))
    else:
        out(render_text(result))
        for v, run_id in logged.items():
            out(f"logged to MLflow: {name} v{v}, run {run_id}")
        for message in failures.values():
            out(f"not logged: {message}")
    return 1 if failures else 0


def broker_summaries(args: argparse.Namespace) -> list[tuple[str, list[str], Any]]:
    """Every device's retained field summary from the broker, with the groups of its retained state."""
    from otaml.cmd_fleet import snapshot_reader
    from registry.field import snapshot_summaries

    return snapshot_summaries(snapshot_reader(args)())


def run_report(args: argparse.Namespace) -> int:
    if args.from_file:
        from registry.field import read_jsonl

        try:
            source = list(read_jsonl(args.from_file))
        except OSError as exc:
            raise InputError(f"cannot read --from-file {args.from_file}: {exc.strerror or exc}.") from exc
    elif args.broker:
        source = broker_summaries(args)
    else:
        raise InputError(
            "no summaries to report on: pass --broker HOST:PORT (the fleet's MQTT broker; OTAML_BROKER) or "
            '--from-file FILE.jsonl (lines of {"device_id", "groups", "summary"}).'
        )
    return report(
        args.name,
        source,
        version=args.version,
        tracking_uri=args.tracking_uri,
        log=not args.no_log,
        as_json=args.json,
    )


def run_capture(args: argparse.Namespace) -> int:
    """Listen on the fleet's event topics and append every captured window to ``--out`` until ``--duration`` or
    ``--max-windows``; progress on stderr every 10 s, and a last line saying what was kept and skipped."""
    import sys
    import threading
    import time

    from edge_runtime.fleet.messages import fleet_filter
    from otaml.cmd_fleet import parse_broker, read_password
    from registry.field.capture import CaptureWriter
    from registry.fleet.collect import subscription

    if args.duration <= 0 or args.max_windows <= 0:
        raise InputError("--duration and --max-windows must be positive.")
    host, port = parse_broker(args.broker)
    password = read_password(args.password_file)
    try:
        out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (closed below, after the subscription)
    except OSError as exc:
        raise InputError(f"cannot write --out {args.out}: {exc.strerror or exc}.") from exc
    writer = CaptureWriter(args.fleet, out)
    lock, done = threading.Lock(), threading.Event()
    failed: list[str] = []

    def on_message(topic: str, payload: bytes) -> None:
        with lock:
            if done.is_set():
                return
            try:
                if writer.feed(topic, payload) and writer.stats.windows >= args.max_windows:
                    done.set()
            except OSError as exc:  # the output, not the message: stop, keeping what was written
                failed.append(f"cannot write {args.out}: {exc.strerror or exc}")
                done.set()

    print(
        f"capturing anomaly windows of fleet {args.fleet!r} from {host}:{port} into {args.out} "
        f"(up to {args.duration:g} s or {args.max_windows} windows; Ctrl-C stops, keeping what was written)",
        file=sys.stderr,
    )
    deadline = time.monotonic() + args.duration
    try:
        with subscription(
            host,
            port,
            fleet_filter(args.fleet, "events"),
            on_message,
            username=args.username,
            password=password,
            tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        ):
            while not done.wait(min(10.0, max(deadline - time.monotonic(), 0.0))):
                if time.monotonic() >= deadline:
                    break
                with lock:
                    print(f"  {writer.stats.line()}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        with lock:
            done.set()
            out.close()
    print(f"captured {writer.stats.line()} into {args.out}", file=sys.stderr)
    if failed:
        print(f"error: {failed[0]}; the capture stopped there.", file=sys.stderr)
        return 1
    if writer.stats.skipped["no-window"] and not writer.stats.windows:
        print(
            "anomaly events came without windows: turn capture on where it is wanted ([fleet] capture_windows = true "
            "in the device's agent config; the service captures from its next start — the next update, or a restart "
            "of its container; docs/field.md says what then leaves the device).",
            file=sys.stderr,
        )
    return 0
