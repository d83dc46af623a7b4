"""``otaml data``: make synthetic telemetry (``synth``) and check a telemetry file (``check``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("data", help="synthesise or check telemetry files")
    data_sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    synth = data_sub.add_parser("synth", help="write synthetic multi-device telemetry with labelled anomalies")
    synth.add_argument("--out", required=True, help="output file, .csv or .parquet")
    synth.add_argument("--devices", type=int, default=4, help="number of devices (default 4)")
    synth.add_argument("--days", type=float, default=7, help="days of data per device (default 7)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same file")
    synth.add_argument("--interval-s", type=int, default=60, help="seconds between readings (default 60)")
    synth.set_defaults(func=run_synth)

    check = data_sub.add_parser("check", help="load and validate a telemetry file and summarise it")
    check.add_argument("path", help="a .csv (delimiter , ; or tab) or .parquet file")
    check.add_argument("--timestamp-column", help="name of the timestamp column (default: auto-detect)")
    check.add_argument("--stream-column", help="name of the device/stream id column (default: auto-detect)")
    check.add_argument("--label-column", help="name of the 0/1 label column (default: auto-detect)")
    check.add_argument("--sensors", help="comma-separated sensor columns (default: every other numeric column)")
    check.add_argument("--min-rows", type=int, default=2, help="minimum rows per stream (default 2)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import anomaly_summary, synth_telemetry, write_telemetry

    frame = synth_telemetry(devices=args.devices, days=args.days, seed=args.seed, interval_s=args.interval_s)
    path = write_telemetry(frame, args.out)
    n_anomalous = int(frame["label"].sum())
    print(
        f"wrote {len(frame)} rows to {path}: {args.devices} devices, {args.days:g} days at {args.interval_s} s, "
        f"seed {args.seed}"
    )
    print(f"anomalous rows: {n_anomalous} ({n_anomalous / len(frame):.2%})")
    for kind, (events, rows) in anomaly_summary(frame).items():
        print(f"  {kind:<20} {events:>4} events {rows:>7} rows")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from pipeline.telemetry import load_telemetry

    sensors = [s.strip() for s in args.sensors.split(",") if s.strip()] if args.sensors else None
    telemetry = load_telemetry(
        args.path,
        timestamp_column=args.timestamp_column,
        stream_column=args.stream_column,
        label_column=args.label_column,
        sensors=sensors,
        min_rows=args.min_rows,
    )
    frame = telemetry.frame
    stream_rows = {name: len(rows) for name, rows in telemetry.streams()}
    n_labelled = int(frame["label"].sum()) if telemetry.has_labels else None
    summary: dict[str, Any] = {
        "source": telemetry.source,
        "rows": telemetry.n_rows,
        "streams": stream_rows,
        "sensors": list(telemetry.sensors),
        "has_labels": telemetry.has_labels,
        "label_column": telemetry.label_column,
        "anomalous_rows": n_labelled,
        "label_rate": telemetry.label_rate,
        "start": _iso(frame["timestamp"].min()),
        "end": _iso(frame["timestamp"].max()),
        "timestamp_column": telemetry.timestamp_column,
        "stream_column": telemetry.stream_column,
        "fingerprint": telemetry.fingerprint,
        "notes": list(telemetry.notes),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{telemetry.source}: {telemetry.n_rows} rows, {len(stream_rows)} streams, {len(telemetry.sensors)} sensors")
    print(f"  sensors:     {', '.join(telemetry.sensors)}")
    shown = [f"{name} ({rows})" for name, rows in list(stream_rows.items())[:10]]
    more = f", and {len(stream_rows) - 10} more" if len(stream_rows) > 10 else ""
    print(
        f"  streams:     {', '.join(shown)}{more}"
        + (f"  [from {telemetry.stream_column!r}]" if telemetry.stream_column else "")
    )
    if telemetry.has_labels:
        print(
            f"  labels:      {n_labelled} anomalous rows ({telemetry.label_rate:.2%}) [from {telemetry.label_column!r}]"
        )
    else:
        print("  labels:      none")
    print(f"  time range:  {summary['start']} .. {summary['end']}")
    print(f"  fingerprint: {telemetry.fingerprint}")
    print("  notes:" + ("" if telemetry.notes else " none"))
    for note in telemetry.notes:
        print(f"    - {note}")
    return 0


def _iso(value: Any) -> str:
    text: str = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return text.replace(".000000Z", "Z")
