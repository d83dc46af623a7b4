"""The demo's F1 gate over seeds: how much of ``otaml demo``'s margin is the data, how much the seed.

``otaml demo`` trains v1 and v2 on small synthetic sets (:data:`otaml.demo.V1_DATA`, :data:`otaml.demo.V2_DATA`:
2 pumps, 2 and 3 days, seed 1). This bench draws the same shapes with other seeds and fits, calibrates and
evaluates the demo's detector exactly as ``otaml train`` does (:func:`pipeline.training.fit_detector`;
``--detector all`` also chooses as train does, :func:`pipeline.training.choose`), without MLflow or ONNX (train
checks that the ONNX model scores alike). It prints, per version, every seed's test F1, the labelled events in
the validation and test splits, the threshold rule, and the median, minimum and share of seeds that reach the
production gate's ``test_f1`` minimum (``registry/gates.toml``).

    .venv/bin/python bench/bench_demo_f1.py [--seeds 20] [--detector pca|all|NAME] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from otaml.demo import DETECTOR, V1_DATA, V2_DATA
from pipeline.splits import Split
from pipeline.synth import synth_telemetry
from pipeline.telemetry import telemetry_from_frame
from pipeline.training import TrainConfig, choose, fit_detector, prepare_all, resolve_detectors
from registry.gates import load_gate_config


def events(split: Split) -> int:
    """Labelled events (runs of anomalous rows within a stream) in ``split``."""
    if split.labels is None:
        return 0
    y = split.labels > 0
    starts = y & np.r_[True, ~y[:-1] | (split.streams[1:] != split.streams[:-1])]
    return int(starts.sum())


def one_seed(shape: dict[str, Any], seed: int, detectors: tuple[str, ...], config: TrainConfig) -> dict[str, Any]:
    telemetry = telemetry_from_frame(synth_telemetry(**{**shape, "seed": seed}), source=f"synth {shape} seed {seed}")
    prepared = prepare_all(telemetry, config, detectors)
    fitted = [fit_detector(name, *prepared[name], config) for name in detectors]
    chosen, rule = choose(fitted, None, config.quantile)
    f = next(f for f in fitted if f.name == chosen)
    splits = prepared[chosen][0]
    return {
        "seed": seed,
        "chosen": chosen,
        "selection_rule": rule,
        "test_f1": round(f.metrics["f1"], 4),
        "threshold_method": f.threshold.method,
        "validation_events": events(splits.validation),
        "test_events": events(splits.test),
    }


def summarize(rows: list[dict[str, Any]], gate: float) -> dict[str, Any]:
    f1 = np.array([r["test_f1"] for r in rows])
    return {
        "median_test_f1": round(float(np.median(f1)), 3),
        "mean_test_f1": round(float(f1.mean()), 3),
        "min_test_f1": round(float(f1.min()), 3),
        "max_test_f1": round(float(f1.max()), 3),
        "seeds_passing_gate": int((f1 >= gate).sum()),
        "seeds": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 (default 20)")
    parser.add_argument(
        "--detector", default=DETECTOR, help=f"as otaml train --detector (default: the demo's, {DETECTOR})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    detectors = resolve_detectors(args.detector)
    gate = float(load_gate_config("production").min_metrics.get("test_f1", 0.0))
    config = TrainConfig()
    started = time.perf_counter()
    versions: dict[str, Any] = {}
    for label, data in (("v1", V1_DATA), ("v2", V2_DATA)):
        shape = {k: v for k, v in data.items() if k != "seed"}
        rows = [one_seed(shape, seed, detectors, config) for seed in range(args.seeds)]
        demo = one_seed(shape, int(data["seed"]), detectors, config)
        versions[label] = {"shape": shape, "demo_seed": demo, "summary": summarize(rows, gate), "per_seed": rows}
    out = {
        "cpus": os.cpu_count(),
        "detector": args.detector,
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
            f"seeds 0-{args.seeds - 1}: median {s['median_test_f1']:.3f}, min {s['min_test_f1']:.3f}, "
            f"max {s['max_test_f1']:.3f}, {s['seeds_passing_gate']}/{s['seeds']} reach the gate {gate:g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
