"""``otaml field report NAME``: what a model's versions do on the devices, per version and device group.

Summaries come from ``--from-file`` (JSONL: ``{"device_id", "groups", "summary"}`` per line, what the fleet
agent publishes); :func:`report` takes any iterable of ``(device_id, groups, summary)``, so another source
(the fleet's MQTT topics) plugs in without touching the rest. Each reported version is logged to MLflow
against its registered model version unless ``--no-log``.
"""

from __future__ import annotations

import argparse
import json
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


def run_report(args: argparse.Namespace) -> int:
    if not args.from_file:
        raise InputError(
            'no summaries to report on: pass --from-file FILE.jsonl (lines of {"device_id", "groups", '
            '"summary"}, as the fleet agent publishes them).'
        )
    from registry.field import read_jsonl

    try:
        source = list(read_jsonl(args.from_file))
    except OSError as exc:
        raise InputError(f"cannot read --from-file {args.from_file}: {exc.strerror or exc}.") from exc
    return report(
        args.name,
        source,
        version=args.version,
        tracking_uri=args.tracking_uri,
        log=not args.no_log,
        as_json=args.json,
    )
