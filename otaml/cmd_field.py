"""``otaml field report NAME``: what a model's versions do on the devices, per version and device group.

Summaries come from the fleet's broker (``--broker``: every device's retained ``field`` message, with its groups
from its retained ``state``) or from ``--from-file`` (JSONL: ``{"device_id", "groups", "summary"}`` per line);
:func:`report` takes any iterable of ``(device_id, groups, summary)``. Each reported version is logged to MLflow
against its registered model version unless ``--no-log``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from edge_runtime.errors import InputError

SummarySource = Iterable[tuple[Any, Any, Any]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    field = sub.add_parser("field", help="field feedback: what each model version does on the devices")
    field_sub = field.add_subparsers(dest="field_command", metavar="SUBCOMMAND", required=True)
    rep = field_sub.add_parser("report", help="per version and device group: devices, readings, anomalies, drift")
    rep.add_argument("name", help="registered model name")
    rep.add_argument("--version", help="only this version (default: every version reported)")
    rep.add_argument("--from-file", metavar="JSONL", help="device summaries, one JSON object per line")
    rep.add_argument("--broker", default=os.environ.get("OTAML_BROKER", ""), help="MQTT broker host:port")
    rep.add_argument("--fleet", default=os.environ.get("OTAML_FLEET", "default"), help="fleet name")
    rep.add_argument("--username", default=os.environ.get("OTAML_BROKER_USER", "controller"))
    rep.add_argument(
        "--password-file",
        default=os.environ.get("OTAML_BROKER_PASSWORD_FILE", ""),
        help="file whose first line is the controller's broker password",
    )
    rep.add_argument("--tls-ca", default=os.environ.get("OTAML_BROKER_TLS_CA", ""), help="CA file: TLS to the broker")
    rep.add_argument("--json", action="store_true", help="print JSON instead of text")
    rep.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    rep.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    rep.set_defaults(func=run_report)


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
    """Every device's retained field summary from the broker, with the groups of its retained state
    (``hw=pi4``, ``site=plant-3``: one report group per key and value)."""
    from otaml.cmd_fleet import snapshot_reader

    snapshot = snapshot_reader(args)()
    return [
        (
            device_id,
            [f"{k}={v}" for k, v in sorted(view.state.groups.items())] if view.state is not None else [],
            view.field_summary,
        )
        for device_id, view in sorted(snapshot.devices.items())
        if view.field_summary is not None
    ]


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
