"""Field metrics' cost: CPU per scored reading and peak memory of ``otaml serve`` with them on vs off.

    .venv/bin/python bench/bench_field.py --json                  # pca, 3 rounds of on/off, ~6 min
    .venv/bin/python bench/bench_field.py --detector iforest_raw --rounds 5
    .venv/bin/python bench/bench_field.py --bundle DIR --fixed-only --rounds 6   # a bundle at hand, 100 req/s only

Models: ``otaml data synth`` + ``otaml train`` with default settings (bench/pipeline_models.py); the shipped
bundle of ``--detector`` (which carries its field reference). Each round serves it twice, field metrics on
(the default) and off (``OTAML_FIELD_METRICS=false``), in alternating order, and measures with
``bench/bench_serve.py``'s loads: single readings and batches of 100 (wrk, 64 streams, CPU seconds of the
server's process tree per 1,000 readings) and 100 single-reading req/s (CPU % of a core). Memory is the peak of
the server's process tree from launch (VmHWM summed). Also timed in-process: ``FieldMetrics.observe`` alone
per request of 1 and of 100 readings (the part field metrics add to the scoring path). Read medians and ratios:
the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from bench_serve import launched, measure, request_bodies  # noqa: E402
from pipeline_models import train_default_models  # noqa: E402

from otaml.ports import free_port  # noqa: E402

_OBSERVE = """
import json, sys, time
import numpy as np
from edge_runtime.bundle import load_bundle
from edge_runtime.field_metrics import FieldMetrics
from edge_runtime.scoring import Scorer
bundle = load_bundle(sys.argv[1])
card = bundle.card
readings = np.array(json.loads(sys.argv[2]))
scorer = Scorer.load(bundle)
out = {}
for n in (1, 100):
    rows = readings[:n]
    scores = scorer.score("s", rows)
    field = FieldMetrics(card.name, card.version, card.threshold, card.field_reference)
    runs = []
    for _ in range(7):
        reps = 20000 // n
        t0 = time.process_time()
        for _ in range(reps):
            field.observe(rows, scores)
        runs.append((time.process_time() - t0) / reps * 1e6)
    score_runs = []
    for _ in range(7):
        reps = 4000 // n
        t0 = time.process_time()
        for _ in range(reps):
            scorer.score("s", rows)
        score_runs.append((time.process_time() - t0) / reps * 1e6)
    out[str(n)] = {"observe_us": statistics.median(runs), "score_us": statistics.median(score_runs)}
print(json.dumps(out))
""".replace("import json, sys, time", "import json, statistics, sys, time")


def log(message: str) -> None:
    print(f"[bench_field] {message}", file=sys.stderr, flush=True)


def serve_once(bundle: Path, field_on: bool, data: dict[str, Any], args: argparse.Namespace, work: Path) -> Any:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OTAML_FIELD_METRICS": "true" if field_on else "false"}
    port = free_port()
    cmd = [sys.executable, "-m", "edge_runtime", "serve", "--bundle", str(bundle), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    label = "on" if field_on else "off"
    with launched(cmd, env, f"http://127.0.0.1:{port}/readyz", work / f"otaml-{label}.log") as monitor:
        single = data["readings"][:1]
        bodies = {
            "single": (json.dumps({"stream": "@STREAM@", "readings": single}), 1),
            "batch": (json.dumps({"stream": "@STREAM@", "readings": data["readings"]}), 100),
        }
        if args.fixed_only:
            bodies = {}
        fixed = ("/v1/score", {"stream": "fixed", "readings": single})
        result = measure(monitor, f"http://127.0.0.1:{port}/v1/score", port, bodies, fixed, args, work)
        import httpx

        field = httpx.get(f"http://127.0.0.1:{port}/v1/field", timeout=5)
        result["v1_field_status"] = field.status_code
        result["v1_field_bytes"] = len(field.content)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", default="pca", help="which default detector's shipped bundle (default pca)")
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs, medians reported (default 3)")
    parser.add_argument("--duration", type=float, default=4, help="seconds per wrk run (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="wrk runs per load per server (default 2)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--fixed-rps", type=float, default=100)
    parser.add_argument("--fixed-seconds", type=float, default=10)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--bundle", type=Path, help="measure this bundle (its golden readings as bodies), no training")
    parser.add_argument("--fixed-only", action="store_true", help="only the 100 req/s load")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="otaml-bench-field-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.bundle is not None:
            bundle = args.bundle
            golden = json.loads((bundle / "model.json").read_text())["golden"]["readings"]
            data = {"readings": (golden * (100 // len(golden) + 1))[:100]}
        else:
            log("training the default models (otaml data synth + otaml train) ...")
            models = train_default_models(work / "models")
            bundle = models.bundles[args.detector]
            data = request_bodies(bundle, work / "models" / "telemetry.csv", env)
        done = subprocess.run([sys.executable, "-c", _OBSERVE, str(bundle), json.dumps(data["readings"])],
                              env=env, capture_output=True, text=True, check=True)  # fmt: skip
        observe = json.loads(done.stdout)
        runs: dict[str, list[Any]] = {"on": [], "off": []}
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            for field_on in order:
                log(f"round {i + 1}: field metrics {'on' if field_on else 'off'}")
                runs["on" if field_on else "off"].append(serve_once(bundle, field_on, data, args, work))
                time.sleep(1)

    def med(mode: str, *path: str) -> float:
        values = []
        for run in runs[mode]:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(float(value))
        return statistics.median(values)

    summary: dict[str, Any] = {"detector": args.detector, "rounds": args.rounds, "in_process_us": observe}
    for kind in () if args.fixed_only else ("single", "batch"):
        on, off = med("on", kind, "cpu_s_per_1k_readings"), med("off", kind, "cpu_s_per_1k_readings")
        summary[kind] = {
            "cpu_ms_per_reading_on": on,
            "cpu_ms_per_reading_off": off,
            "cpu_increase_percent": 100 * (on / off - 1),
            "rps_on": med("on", kind, "rps"),
            "rps_off": med("off", kind, "rps"),
        }
    on, off = med("on", "fixed", "cpu_percent"), med("off", "fixed", "cpu_percent")
    summary["fixed_100rps"] = {
        "cpu_percent_on": on,
        "cpu_percent_off": off,
        "cpu_increase_percent": 100 * (on / off - 1),
    }
    summary["peak_hwm_mb"] = {"on": med("on", "peak_hwm_mb"), "off": med("off", "peak_hwm_mb")}
    summary["v1_field_bytes"] = med("on", "v1_field_bytes")
    loads = () if args.fixed_only else ("single", "batch")
    summary["failed_requests"] = sum(r[k]["failed"] for m in runs.values() for r in m for k in loads) + sum(
        r["fixed"]["failed"] for m in runs.values() for r in m
    )
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs}, indent=2, default=str))
    else:
        for kind in loads:
            s = summary[kind]
            print(f"{kind}: CPU per reading on {s['cpu_ms_per_reading_on']:.4f} ms, off "
                  f"{s['cpu_ms_per_reading_off']:.4f} ms ({s['cpu_increase_percent']:+.1f} %)")  # fmt: skip
        f = summary["fixed_100rps"]
        print(f"100 req/s: CPU {f['cpu_percent_on']:.1f} % on, {f['cpu_percent_off']:.1f} % off")
        print(
            f"peak memory (tree VmHWM): on {summary['peak_hwm_mb']['on']:.1f} MB, "
            f"off {summary['peak_hwm_mb']['off']:.1f} MB"
        )
        for n, v in observe.items():
            print(f"in-process, {n} reading(s)/request: observe {v['observe_us']:.1f} us, score {v['score_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
