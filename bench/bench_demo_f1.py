"""The demo's F1 gate over seeds: how much of ``otaml demo``'s margin is the data, how much the seed.

``otaml demo`` trains v1 and v2 on small synthetic sets (:data:`otaml.demo.V1_DATA`, :data:`otaml.demo.V2_DATA`:
2 pumps, 2 and 3 days, seed 1). This bench draws the same shapes with other seeds and fits, calibrates and
evaluates the demo's detector exactly as ``otaml train`` does (:func:`pipeline.training.fit_detector`;
``--detector all`` also chooses as train does, :func:`pipeline.training.choose`), without MLflow or ONNX (train
checks that the ONNX model scores alike). It prints, per version, every seed's test F1, the labelled events in
the validation and test splits, the threshold rule, and the median, minimum and share of seeds that reach the
production gate's ``test_f1`` minimum (``registry/gates.toml``).

Where the F1 is lost, over all seeds of a version (diagnostics, not metrics of the model):

* recall by anomaly kind: the share of each kind's labelled test rows (:data:`pipeline.synth.ANOMALY_KINDS`)
  at or above the calibrated threshold;
* the window's echo: the share of false alarms that lie in the ``window - 1`` readings after a labelled event
  of the same stream (their feature window still holds the event, their label says normal);
* the ranking's ceiling: the median of the best F1 any threshold reaches on the test split (a threshold that
  no training can know; if it stays low, the scores rank anomalies badly, whatever the threshold rule).

    .venv/bin/python bench/bench_demo_f1.py [--seeds 20] [--first-seed 0] [--detector NAME|all] [--json]

``--first-seed 20`` draws seeds 20 .. 39: sets that played no part in choosing the demo's detector.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from otaml.demo import DETECTOR, V1_DATA, V2_DATA
from pipeline.evaluation import detection_metrics
from pipeline.splits import Split
from pipeline.synth import ANOMALY_KINDS, NORMAL_KIND, synth_telemetry
from pipeline.telemetry import Telemetry, telemetry_from_frame
from pipeline.thresholds import best_f1_threshold
from pipeline.training import TrainConfig, choose, fit_detector, prepare_all, resolve_detectors
from registry.gates import load_gate_config


def events(split: Split) -> int:
    """Labelled events (runs of anomalous rows within a stream) in ``split``."""
    if split.labels is None:
        return 0
    y = split.labels > 0
    starts = y & np.r_[True, ~y[:-1] | (split.streams[1:] != split.streams[:-1])]
    return int(starts.sum())


def after_events(labels: npt.NDArray[np.int8], streams: npt.NDArray[np.str_], width: int) -> npt.NDArray[np.bool_]:
    """Normal rows among the ``width`` readings that follow a labelled event in the same stream (rows in time order).

    A detector on ``width + 1``-reading windows still sees the event there: the window's echo.
    """
    y = labels > 0
    out = np.zeros(y.size, dtype=bool)
    same = np.r_[streams[1:] == streams[:-1], False]
    ends = np.flatnonzero(y & ~np.r_[y[1:] & same[:-1], False])  # last row of each event
    for end in ends:
        stop = end + 1
        while stop < y.size and stop - end <= width and streams[stop] == streams[end]:
            stop += 1
        out[end + 1 : stop] = True
    return out & ~y


def kinds_of_test_rows(frame: pd.DataFrame, telemetry: Telemetry, config: TrainConfig) -> npt.NDArray[np.str_]:
    """The synthetic ``anomaly_kind`` of every test-split row, in the split's order (cut as time_splits cuts)."""
    kinds = frame["anomaly_kind"].to_numpy().astype(str)
    parts = []
    for _, rows in telemetry.streams():
        n = len(rows)
        cut = int(np.floor(n * (config.fractions[0] + config.fractions[1])))
        parts.append(kinds[rows.index.to_numpy()[cut:]])
    return np.concatenate(parts)


def one_seed(shape: dict[str, Any], seed: int, detectors: tuple[str, ...], config: TrainConfig) -> dict[str, Any]:
    frame = synth_telemetry(**{**shape, "seed": seed})
    telemetry = telemetry_from_frame(frame, source=f"synth {shape} seed {seed}")
    prepared = prepare_all(telemetry, config, detectors)
    fitted = [fit_detector(name, *prepared[name], config) for name in detectors]
    chosen, rule = choose(fitted, None, config.quantile)
    f = next(f for f in fitted if f.name == chosen)
    splits = prepared[chosen][0]
    test = splits.test
    if test.labels is None:
        raise RuntimeError("synthetic telemetry lost its labels; the bench needs them")
    kinds = kinds_of_test_rows(frame, telemetry, config)
    if not np.array_equal(kinds != NORMAL_KIND, test.labels > 0):
        raise RuntimeError(f"seed {seed}: anomaly kinds and test labels disagree; the split order changed")
    alarm = f.test_scores >= f.threshold.value
    false_alarm = alarm & (test.labels == 0)
    echo = after_events(test.labels, test.streams, splits.spec.window - 1)
    best = best_f1_threshold(f.test_scores, test.labels) if test.has_both_classes else None
    return {
        "seed": seed,
        "chosen": chosen,
        "selection_rule": rule,
        "test_f1": round(f.metrics["f1"], 4),
        "test_best_f1": round(detection_metrics(test.labels, f.test_scores, best.value)["f1"], 4) if best else 0.0,
        "threshold_method": f.threshold.method,
        "validation_events": events(splits.validation),
        "test_events": events(test),
        # {kind: [rows at or above the threshold, rows]}
        "test_recall_by_kind": {
            k: [int(alarm[kinds == k].sum()), int((kinds == k).sum())] for k in ANOMALY_KINDS if (kinds == k).any()
        },
        "false_alarms": int(false_alarm.sum()),
        "false_alarms_in_echo": int((false_alarm & echo).sum()),
    }


def summarize(rows: list[dict[str, Any]], gate: float) -> dict[str, Any]:
    f1 = np.array([r["test_f1"] for r in rows])
    by_kind = {}
    for k in ANOMALY_KINDS:
        hit = sum(r["test_recall_by_kind"].get(k, [0, 0])[0] for r in rows)
        total = sum(r["test_recall_by_kind"].get(k, [0, 0])[1] for r in rows)
        if total:
            by_kind[k] = {"recall": round(hit / total, 3), "rows": total}
    false_alarms = sum(r["false_alarms"] for r in rows)
    return {
        "median_test_f1": round(float(np.median(f1)), 3),
        "median_best_f1_on_test": round(float(np.median([r["test_best_f1"] for r in rows])), 3),
        "test_recall_by_kind": by_kind,
        "false_alarms": false_alarms,
        "echo_share_of_false_alarms": round(sum(r["false_alarms_in_echo"] for r in rows) / max(false_alarms, 1), 3),
        "mean_test_f1": round(float(f1.mean()), 3),
        "min_test_f1": round(float(f1.min()), 3),
        "max_test_f1": round(float(f1.max()), 3),
        "seeds_passing_gate": int((f1 >= gate).sum()),
        "seeds": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--detector", default=DETECTOR, help=f"as otaml train --detector (default: the demo's, {DETECTOR})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed must be at least 0, got {args.first_seed}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    detectors = resolve_detectors(args.detector)
    gate = float(load_gate_config("production").min_metrics.get("test_f1", 0.0))
    config = TrainConfig()
    started = time.perf_counter()
    versions: dict[str, Any] = {}
    for label, data in (("v1", V1_DATA), ("v2", V2_DATA)):
        shape = {k: v for k, v in data.items() if k != "seed"}
        rows = [one_seed(shape, seed, detectors, config) for seed in seeds]
        demo = one_seed(shape, int(data["seed"]), detectors, config)
        versions[label] = {"shape": shape, "demo_seed": demo, "summary": summarize(rows, gate), "per_seed": rows}
    out = {
        "cpus": os.cpu_count(),
        "detector": args.detector,
        "first_seed": args.first_seed,
        "production_gate_test_f1": gate,
        "versions": versions,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    for label, v in versions.items():
        s, d = v["summary"], v["demo_seed"]
        plural = "" if d["test_events"] == 1 else "s"
        print(
            f"{label} {v['shape']}: demo seed {d['seed']} F1 {d['test_f1']:.3f} "
            f"({d['test_events']} test event{plural}); "
            f"seeds {seeds[0]}-{seeds[-1]}: median {s['median_test_f1']:.3f}, min {s['min_test_f1']:.3f}, "
            f"max {s['max_test_f1']:.3f}, {s['seeds_passing_gate']}/{s['seeds']} reach the gate {gate:g}"
        )
        recall = ", ".join(f"{k} {r['recall']:.2f} ({r['rows']} rows)" for k, r in s["test_recall_by_kind"].items())
        print(
            f"   recall by kind: {recall}; {s['false_alarms']} false alarms, "
            f"{s['echo_share_of_false_alarms']:.0%} in the window's echo; best threshold on test: median F1 "
            f"{s['median_best_f1_on_test']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
