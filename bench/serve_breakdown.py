"""Where a single-reading request's time goes inside the running service: a breakdown, not a comparison.

    .venv/bin/python bench/serve_breakdown.py                        # pca, iforest, autoencoder, pca_robust
    .venv/bin/python bench/serve_breakdown.py --detectors pca --json

Models: ``otaml data synth`` + ``otaml train`` with default settings (bench/pipeline_models.py), the fp32 bundles
(the graph ``mlflow models serve`` runs in bench_serve.py). Load: bench_serve.py's single-reading load (``wrk``,
one thread, 4 keep-alive connections, one reading per request, flat out). Per detector, three launches of
``python -m edge_runtime serve``:

1. **floor**: the same service and HTTP protocol, its score route answering a fixed body: nothing parsed,
   windowed or scored. What the HTTP path, the event loop and the kernel cost per request.
2. **service**: as shipped. Requests/s and CPU µs per request (user and system, from ``/proc/<pid>/stat``).
3. **stages**: the service with a timer around each stage of a score request: the whole answer, parsing, the
   stream's features, the model call and the field metrics (each timer adds ~0.3 µs; the run is not used for
   the throughput figures).

And **hot**: the same stages timed in a tight loop in one process, the same request over and over (what a
microbenchmark says; under load each stage runs on caches the HTTP path and the kernel have just used).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_serve import launched, request_bodies, require_wrk, trained_detectors, wrk  # noqa: E402

from otaml.ports import free_port  # noqa: E402

DEFAULT_DETECTORS = "pca,iforest,autoencoder,pca_robust"

# Runs in the service's process: patches by mode, then the service's own main (or the hot loop).
_LAUNCH = r"""
import json, os, signal, sys, time
mode, bundle, port, out = sys.argv[1:5]
from edge_runtime import features, field_metrics, score_endpoint, scoring

stages = {}

def timed(owner, name, key):
    inner = getattr(owner, name)
    total = stages.setdefault(key, [0.0, 0])
    clock = time.perf_counter
    def wrapper(*args, **kwargs):
        t = clock()
        try:
            return inner(*args, **kwargs)
        finally:
            total[0] += clock() - t
            total[1] += 1
    setattr(owner, name, wrapper)

def dump(*_):
    with open(out + ".tmp", "w") as f:
        json.dump({k: {"us": 1e6 * t / n, "calls": n} for k, (t, n) in stages.items() if n}, f)
    os.replace(out + ".tmp", out)

if mode == "floor":
    fixed = (200, b'{"model":"m","version":"1","stream":"s","threshold":1.0,"scores":[0.5],"anomalies":[false]}')
    score_endpoint.ScoreEndpoint.answer = lambda self, body: fixed
elif mode in ("stages", "hot"):
    timed(score_endpoint, "parse_score_request", "parse")
    timed(features.StreamWindow, "push", "features")
    timed(scoring.Scorer, "model_scores", "model")
    timed(field_metrics.FieldMetrics, "observe", "field_metrics")
    timed(score_endpoint.ScoreEndpoint, "answer", "answer")
signal.signal(signal.SIGUSR1, dump)

if mode == "hot":
    from pathlib import Path
    from edge_runtime.server import build_service
    from edge_runtime.settings import ServeSettings
    service, _, _ = build_service(ServeSettings(bundle=Path(bundle)))
    reading = json.loads(os.environ["BREAKDOWN_READING"])
    body = json.dumps({"stream": "s1", "readings": [reading]}).encode()
    for _ in range(2000):
        service.endpoint.answer(body)
    for total in stages.values():  # the warm-up is not counted
        total[:] = [0.0, 0]
    for _ in range(20000):
        service.endpoint.answer(body)
    dump()
else:
    from edge_runtime.__main__ import main
    sys.argv = ["edge_runtime", "serve", "--bundle", bundle, "--port", port, "--log-level", "warning"]
    sys.exit(main())
"""


def log(message: str) -> None:
    print(f"[serve_breakdown {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def run_mode(mode: str, bundle: Path, body: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One launch of the service in ``mode`` under the single-reading load: req/s, CPU µs per request, stages."""
    port, out = free_port(), workdir / f"{bundle.parent.name}-{mode}.json"
    cmd = [args.otaml_python, "-c", _LAUNCH, mode, str(bundle), str(port), str(out)]
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    server_log = workdir / f"{bundle.parent.name}-{mode}.log"
    with launched(cmd, env, f"http://127.0.0.1:{port}/readyz", server_log) as monitor:
        url = f"http://127.0.0.1:{port}/v1/score"
        wrk(url, body, 1, args.connections, workdir)  # warm-up, not counted
        runs = []
        for _ in range(args.repeats):
            (user0, sys0), t0 = _ticks(monitor.root), time.monotonic()
            run = wrk(url, body, args.duration, args.connections, workdir)
            user1, sys1 = _ticks(monitor.root)
            requests = max(1, run["requests"])
            tick = 1e6 / os.sysconf("SC_CLK_TCK")
            runs.append({
                "rps": run["rps"],
                "user_us": (user1 - user0) * tick / requests,
                "system_us": (sys1 - sys0) * tick / requests,
                "cpu_us": (user1 - user0 + sys1 - sys0) * tick / requests,
                "failed": run["non_2xx"] + run["socket_errors"],
                "cpu_share": ((user1 - user0) + (sys1 - sys0)) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0),
            })  # fmt: skip
        result: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "failed"}
        result["failed"] = sum(r["failed"] for r in runs)
        if result["failed"]:  # a breakdown of refusals or errors would say nothing about scoring
            raise RuntimeError(f"{mode}: {result['failed']} requests failed under load; see {server_log}")
        if mode == "stages":
            os.kill(monitor.root, signal.SIGUSR1)
            for _ in range(50):
                if out.exists():
                    break
                time.sleep(0.1)
            if not out.exists():
                raise RuntimeError(f"{mode}: the service wrote no stage timings to {out}; see {server_log}")
            result["stages"] = json.loads(out.read_text())
    return result


def hot(bundle: Path, reading: list[float], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The stages in a tight loop in one process: the same single-reading request 20,000 times."""
    out = workdir / f"{bundle.parent.name}-hot.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent), "BREAKDOWN_READING": json.dumps(reading)}
    subprocess.run([args.otaml_python, "-c", _LAUNCH, "hot", str(bundle), "0", str(out)], env=env, check=True)
    return dict(json.loads(out.read_text()))


def breakdown(name: str, bundle: Path, telemetry: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    reading = request_bodies(bundle, telemetry, env)["readings"][0]
    body = json.dumps({"stream": "@STREAM@", "readings": [reading]})
    result = {}
    for mode in ("floor", "service", "stages"):
        log(f"{name}: {mode} ...")
        result[mode] = run_mode(mode, bundle, body, args, workdir)
    result["hot"] = hot(bundle, reading, args, workdir)
    return result


def table(results: dict[str, Any]) -> str:
    lines = [f"{'detector':<12} {'run':<8} {'req/s':>8} {'CPU µs/req':>11} {'user':>6} {'system':>7}   stages (µs)"]
    for name, res in results["detectors"].items():
        for mode in ("floor", "service", "stages"):
            r = res[mode]
            stages = " ".join(f"{k} {v['us']:.0f}" for k, v in r.get("stages", {}).items())
            lines.append(
                f"{name:<12} {mode:<8} {r['rps']:>8,.0f} {r['cpu_us']:>11.0f} {r['user_us']:>6.0f} "
                f"{r['system_us']:>7.0f}   {stages}"
            )
        hot_stages = " ".join(f"{k} {v['us']:.0f}" for k, v in res["hot"].items())
        lines.append(f"{name:<12} {'hot':<8} {'':>8} {'':>11} {'':>6} {'':>7}   {hot_stages}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", default=DEFAULT_DETECTORS, help=f"default {DEFAULT_DETECTORS}")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per launch, medians reported (default 3)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--otaml-python", default=sys.executable, help="interpreter for the service")
    args = parser.parse_args(argv)
    require_wrk("serve_breakdown")
    workdir = Path(tempfile.mkdtemp(prefix="otaml-serve-breakdown-"))
    try:
        models, names = trained_detectors("serve_breakdown", workdir, args.detectors)
        telemetry = workdir / "models" / "telemetry.csv"
        results: dict[str, Any] = {
            "detectors": {n: breakdown(n, models.fp32_bundles[n], telemetry, args, workdir) for n in names},
            "load_average": os.getloadavg(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
        }
        print(table(results), file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
