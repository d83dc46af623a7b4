"""Time synth → load → train → export → parity → register for 100,000 rows × 4 sensors, and compare with a baseline.

Each repetition synthesises telemetry (4 devices, 25,000 readings each), writes and reloads it as CSV, and runs
:func:`pipeline.training.train` with ``--detector all`` against a sqlite MLflow store in a scratch directory
(the first repetition creates the store, which costs a few seconds once). Prints per-stage timings of every
repetition, the median total, the machine load, and the chosen detector's test PR-AUC / ROC-AUC next to a
plain IsolationForest on the raw values.

    .venv/bin/python bench/bench_train.py [--rows 100000] [--repeat 3] [--seed 0] [--json]

With ``--json`` the figures go to stdout as JSON and the progress lines to stderr.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="total rows (default 100000)")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repetition (then +1, +2, ...)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    args = parser.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    print = functools.partial(builtins.print, file=out)  # progress goes to stderr under --json
    runs: list[dict[str, object]] = []

    start = time.perf_counter()
    from pipeline.synth import synth_telemetry, write_telemetry
    from pipeline.telemetry import load_telemetry
    from pipeline.training import train

    import_s = time.perf_counter() - start
    days = args.rows / args.devices / (24 * 60)
    totals: list[float] = []
    gains: list[tuple[str, float, float, float, float]] = []
    print(f"bench_train: {args.rows} rows, {args.devices} devices, {args.repeat} repetitions; imports {import_s:.1f} s")
    print(f"cpus {os.cpu_count()}, load average at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="otaml-bench-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        os.chdir(work)  # anything MLflow writes relative to the working directory stays in the scratch dir
        for rep in range(args.repeat):
            seed = args.seed + rep
            stages: dict[str, float] = {}
            t0 = time.perf_counter()
            frame = synth_telemetry(devices=args.devices, days=days, seed=seed)
            stages["synth"] = time.perf_counter() - t0
            t = time.perf_counter()
            path = write_telemetry(frame, work / f"telemetry-{seed}.csv")
            telemetry = load_telemetry(path)
            stages["write+load"] = time.perf_counter() - t
            t = time.perf_counter()
            report = train(telemetry, detectors="all", out_dir=work / f"bundles-{seed}")
            stages["train (all)"] = time.perf_counter() - t
            total = time.perf_counter() - t0
            totals.append(total)
            print(f"\nrepetition {rep + 1} (seed {seed}, {telemetry.n_rows} rows): total {total:.1f} s")
            for name, seconds in stages.items():
                print(f"  {name:<24} {seconds:7.2f} s")
            print("  inside train:")
            for name, seconds in report.timings.items():
                print(f"    {name:<22} {seconds:7.2f} s")
            nan = float("nan")
            for d in report.detectors:
                m = d.metrics
                int8 = d.parity["int8"]
                print(
                    f"  {d.detector:<12}{' *' if d.chosen else '  '} v{d.version}  "
                    f"pr_auc {m.get('pr_auc', nan):.3f} roc_auc {m.get('roc_auc', nan):.3f} f1 {m.get('f1', nan):.3f}  "
                    f"parity fp32 {d.parity['fp32']['agreement']:.4f} int8 "
                    f"{'-' if int8 is None else format(int8['agreement'], '.4f')}  ship {d.shipped} "
                    f"onnx {d.onnx_sizes}"
                )
            chosen = report.chosen_report
            base = report.baseline
            gains.append(
                (chosen.detector, chosen.metrics["pr_auc"], base["pr_auc"], chosen.metrics["roc_auc"], base["roc_auc"])
            )
            print(
                f"  chosen {chosen.detector}: test pr_auc {chosen.metrics['pr_auc']:.3f} vs raw IsolationForest "
                f"{base['pr_auc']:.3f}; roc_auc {chosen.metrics['roc_auc']:.3f} vs {base['roc_auc']:.3f}"
            )
            print(f"  load average now {os.getloadavg()}")
            runs.append(
                {
                    "seed": seed,
                    "rows": telemetry.n_rows,
                    "total_s": total,
                    "stages_s": stages,
                    "train_s": dict(report.timings),
                    "chosen": chosen.detector,
                    "chosen_test": {k: chosen.metrics[k] for k in ("pr_auc", "roc_auc")},
                    "baseline_test": {k: base[k] for k in ("pr_auc", "roc_auc")},
                    "load_average": os.getloadavg(),
                }
            )
    print(
        f"\nmedian total {statistics.median(totals):.1f} s over {len(totals)} "
        f"(runs: {', '.join(f'{t:.1f}' for t in totals)})"
    )
    print("chosen vs raw IsolationForest (test PR-AUC / ROC-AUC):")
    for detector, pr, base_pr, roc, base_roc in gains:
        print(
            f"  {detector:<12} pr_auc {pr:.3f} vs {base_pr:.3f} ({pr / base_pr:.1f}x)  "
            f"roc_auc {roc:.3f} vs {base_roc:.3f}"
        )
    if args.json:
        builtins.print(json.dumps({"median_total_s": statistics.median(totals), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
