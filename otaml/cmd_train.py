"""``otaml train``: train detectors on a telemetry file, export ONNX (+int8), check parity, log and register in MLflow.

Progress goes to stderr; the result is a table on stdout, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

# pipeline.detectors.DETECTORS, spelled out so `otaml --help` does not import scikit-learn (a test keeps them equal).
DETECTOR_CHOICES = (
    "iforest",
    "pca",
    "autoencoder",
    "iforest_raw",
    "iforest_lag",
    "pca_lag",
    "kmeans_lag",
    "pca_robust",
    "all",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "train",
        help="train anomaly detectors, export ONNX bundles, log and register them in MLflow",
        description=(
            "Train on a telemetry file (.csv or .parquet), pick a threshold, evaluate, export ONNX (fp32 and int8 "
            "where it applies), check parity, log to MLflow (MLFLOW_TRACKING_URI, default sqlite mlflow.db here) "
            "and register a Model Registry version per detector with its bundle."
        ),
    )
    parser.add_argument("--data", required=True, help="telemetry file (.csv with , ; or tab, or .parquet)")
    parser.add_argument("--label-column", help="0/1 label column (default: auto-detect; none = unsupervised)")
    parser.add_argument("--timestamp-column", help="timestamp column (default: auto-detect)")
    parser.add_argument("--stream-column", help="device/stream id column (default: auto-detect)")
    parser.add_argument("--sensors", help="comma-separated sensor columns (default: every other numeric column)")
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default="all", help="detector to train (default all)")
    parser.add_argument("--model-name", default="otaml-anomaly", help="Model Registry name (default otaml-anomaly)")
    parser.add_argument("--out", default="bundles", help="directory for the bundles (default ./bundles)")
    parser.add_argument("--window", type=int, default=16, help="feature window in readings (default 16)")
    parser.add_argument(
        "--max-train-rows", type=int, default=20_000, help="subsample training rows to this (default 20000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.set_defaults(func=run_train)


def _positive(value: int, flag: str) -> None:
    from edge_runtime.errors import InputError

    if value < 1:
        raise InputError(f"{flag} must be a positive integer, got {value}.")


def run_train(args: argparse.Namespace) -> int:
    from pipeline.telemetry import load_telemetry
    from pipeline.training import TrainConfig, train

    _positive(args.window, "--window")
    _positive(args.max_train_rows, "--max-train-rows")
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    sensors = [s.strip() for s in args.sensors.split(",") if s.strip()] if args.sensors else None
    progress(f"loading {args.data}")
    telemetry = load_telemetry(
        args.data,
        timestamp_column=args.timestamp_column,
        stream_column=args.stream_column,
        label_column=args.label_column,
        sensors=sensors,
    )
    for note in telemetry.notes:
        progress(f"note: {note}")
    config = TrainConfig(window=args.window, max_train_rows=args.max_train_rows, seed=args.seed)
    # MLflow prints to stdout here and there; keep stdout for the result.
    with contextlib.redirect_stdout(sys.stderr):
        report = train(
            telemetry,
            detectors=args.detector,
            model_name=args.model_name,
            out_dir=args.out,
            config=config,
            progress=progress,
        )
    progress("done")
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(format_table(report.to_dict()))
    return 0


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The human summary: one row per detector, then the chosen one and the raw-IsolationForest baseline."""
    header = (
        "detector",
        "prec",
        "recall",
        "f1",
        "roc_auc",
        "pr_auc",
        "parity fp32/int8",
        "onnx KB fp32/int8",
        "ship",
        "version",
        "bundle",
    )
    rows = [header]
    for d in report["detectors"]:
        m = d["metrics"]
        parity = d["parity"]
        int8 = parity["int8"]
        sizes = d["onnx_sizes"]
        rows.append(
            (
                d["detector"] + (" *" if d["chosen"] else ""),
                _fmt(m.get("precision")),
                _fmt(m.get("recall")),
                _fmt(m.get("f1")),
                _fmt(m.get("roc_auc")),
                _fmt(m.get("pr_auc")),
                f"{parity['fp32']['agreement']:.4f}/{'-' if int8 is None else format(int8['agreement'], '.4f')}"
                + ("" if d["parity_status"] == "pass" else " BELOW TARGET"),
                f"{sizes['fp32'] / 1024:.1f}/{'-' if 'int8' not in sizes else format(sizes['int8'] / 1024, '.1f')}",
                d["shipped"],
                d["version"],
                d["bundle_path"],
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines.append(f"chosen: {report['chosen']} ({report['selection_rule']}); model {report['model_name']}")
    baseline = report["baseline_iforest_raw"]
    if baseline:
        lines.append(
            f"baseline IsolationForest on raw values (test): roc_auc {_fmt(baseline.get('roc_auc'))} "
            f"pr_auc {_fmt(baseline.get('pr_auc'))}"
        )
    lines.append(f"tracking: {report['tracking_uri']}  parent run {report['parent_run_id']}")
    return "\n".join(lines)
