"""Serving benchmark: ``otaml serve`` vs ``mlflow models serve``, per default detector, side by side in one run.

    .venv/bin/python bench/bench_serve.py                       # every detector `otaml train` makes, ~8 min
    .venv/bin/python bench/bench_serve.py --detectors pca --json
    .venv/bin/python bench/bench_serve.py --soak-seconds 600    # + a 10-minute soak of otaml at 200 req/s

Models: ``otaml data synth`` + ``otaml train`` with default settings (bench/pipeline_models.py). For each
detector, MLflow serves the registered model (the fp32 ONNX graph, pyfunc) and otaml serves the same fp32 graph
(``--variant shipped``: the bundle ``otaml train`` ships, int8 where parity passed). MLflow receives precomputed
feature rows (it keeps no stream windows); otaml receives raw readings and windows them itself, so otaml does
strictly more work per request.

Loads (the README names which figure comes from which):
- **single reading**: ``wrk`` (one thread), 4 keep-alive connections, one reading per request, flat out;
- **batch of 100**: the same with 100 readings per request;
- **100 req/s**: the project's load generator (otaml/loadgen.py), open loop, single readings, keep-alive;
  CPU % of one core over that phase; a slot that could not be sent counts as a failure.

Event loops: ``otaml serve`` runs on uvloop where it is installed (the ``serve`` extra has it; ``OTAML_LOOP``), and
so does ``mlflow models serve`` in the same environment (uvicorn's default loop is uvloop when installed): both
sides get the same loop. The floor (uvicorn with an ASGI app that does nothing) is measured on asyncio and on uvloop.

Every request of a phase is counted (wrk's non-2xx and socket errors; the load generator's failed and missed
slots). Memory is the peak of the server's whole process tree from the moment it is launched (start-up
included): each process's VmHWM, summed over the tree, beside the largest sampled tree VmRSS; MLflow's
launcher and worker are listed separately. These machines are shared: read medians and ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from pipeline_models import TrainedModels, train_default_models  # noqa: E402
from proctree import MB, TreeMonitor  # noqa: E402

from otaml.loadgen import LoadGenerator  # noqa: E402
from otaml.ports import free_port  # noqa: E402

# --------------------------------------------------------------------------- servers


@contextmanager
def launched(cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout: float = 240) -> Iterator[Any]:
    """Start ``cmd``, monitor its tree from launch, wait for ``ready_url`` to answer 200; yield the monitor."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    monitor = TreeMonitor(proc.pid)
    started = time.monotonic()
    try:
        with monitor:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"{ready_url} not ready after {timeout}s; see {log}")
                time.sleep(0.1)
            monitor.startup_s = time.monotonic() - started  # type: ignore[attr-defined]
            yield monitor
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------- loads

_WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local template = [==[{template}]==]
local counter = 0
request = function()
  counter = counter + 1
  local body = string.gsub(template, "@STREAM@", "s" .. (counter % 64))
  return wrk.format(nil, nil, nil, body)
end
"""


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, body: str, seconds: float, connections: int, workdir: Path) -> dict[str, float]:
    """One wrk run; every request counted: 2xx, non-2xx and socket errors (connect, read, write, timeout)."""
    script = workdir / "wrk.lua"
    script.write_text(_WRK_LUA.replace("{template}", body))
    # One client thread: on a 2-core box a second one would take the core the server needs.
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-s", str(script), url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
        "socket_errors": sum(int(x) for x in found.groups()) if found else 0,
    }


def fixed_rate(port: int, path: str, body: dict[str, Any], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load at ``rate`` req/s (single readings, keep-alive) through the project's load generator."""
    with LoadGenerator(port, [], rate=rate, keep_alive=True, path=path, body=body, workers=4) as load:
        load.mark("measured")
        time.sleep(seconds)
    return dataclasses.asdict(load.report().phase("measured"))


# --------------------------------------------------------------------------- one server


def measure(
    monitor: Any, url: str, port: int, bodies: dict[str, tuple[str, int]], fixed: tuple[str, dict[str, Any]],
    args: argparse.Namespace, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    result: dict[str, Any] = {"startup_s": round(monitor.startup_s, 2), "idle_rss_mb": monitor.sample()["rss"] / MB}
    for kind, (body, readings) in bodies.items():
        wrk(url, body, 1, args.connections, workdir)  # warm-up, not counted
        runs = []
        for _ in range(args.repeats):
            cpu0 = monitor.cpu_seconds()
            run = wrk(url, body, args.duration, args.connections, workdir)
            run["cpu_s_per_1k_readings"] = 1000 * (monitor.cpu_seconds() - cpu0) / max(1, run["requests"] * readings)
            runs.append(run)
        result[kind] = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        result[kind]["cpu_s_per_1k_readings"] = statistics.median(r["cpu_s_per_1k_readings"] for r in runs)
        result[kind]["readings_per_s"] = result[kind]["rps"] * readings
        result[kind]["requests"] = sum(int(r["requests"]) for r in runs)
        result[kind]["failed"] = sum(int(r["non_2xx"] + r["socket_errors"]) for r in runs)
    path, body = fixed
    cpu0, t0 = monitor.cpu_seconds(), time.monotonic()
    counts = fixed_rate(port, path, body, args.fixed_rps, args.fixed_seconds)
    result["fixed"] = {**counts, "cpu_percent": 100 * (monitor.cpu_seconds() - cpu0) / (time.monotonic() - t0)}
    monitor.sample()
    result["peak_rss_mb"] = monitor.peak_mb
    result["peak_hwm_mb"] = monitor.hwm_mb
    result["largest_process_hwm_mb"] = max(p["hwm_mb"] for p in monitor.processes())
    result["processes"] = monitor.processes()
    return result


_PREPARE = """
import csv, json, sys
import numpy as np
from edge_runtime.bundle import load_bundle
from edge_runtime.features import batch_features
bundle = load_bundle(sys.argv[1])
spec = bundle.card.features
with open(sys.argv[2], newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["device"] == "dev-01" and all(r[s] for s in spec.sensors)][:600]
readings = np.array([[float(r[s]) for s in spec.sensors] for r in rows])
features = batch_features(spec, readings)[100:200].astype(np.float32)
print(json.dumps({"readings": readings[100:200].round(4).tolist(), "features": features.tolist()}))
"""


def request_bodies(bundle: Path, telemetry: Path, env: dict[str, str]) -> dict[str, Any]:
    """Readings (for otaml) and their feature rows (for MLflow) from the training data, in a child process."""
    cmd = [sys.executable, "-c", _PREPARE, str(bundle), str(telemetry)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"preparing request bodies failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


def bench_detector(name: str, models: TrainedModels, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    # fp32: the very ONNX graph MLflow serves; shipped: what `otaml train` ships (int8 where parity passed).
    bundle = models.fp32_bundles[name] if args.variant == "fp32" else models.bundles[name]
    data = request_bodies(bundle, workdir / "models" / "telemetry.csv", env)
    out: dict[str, Any] = {"bundle": str(bundle), "model_uri": models.model_uris[name]}

    if not args.skip_mlflow:
        port = free_port()
        cmd = ["mlflow", "models", "serve", "-m", models.model_uris[name], "-p", str(port), "-h", "127.0.0.1",
               "--env-manager", "local", "-w", "1"]  # fmt: skip
        log(f"{name}: mlflow models serve {models.model_uris[name]} ...")
        with launched(cmd, {**env, "MLFLOW_TRACKING_URI": models.tracking_uri}, f"http://127.0.0.1:{port}/ping",
                      workdir / f"mlflow-{name}.log") as monitor:  # fmt: skip
            bodies = {
                "single": (json.dumps({"inputs": data["features"][:1]}), 1),
                "batch": (json.dumps({"inputs": data["features"]}), 100),
            }
            fixed = ("/invocations", {"inputs": data["features"][:1]})
            url = f"http://127.0.0.1:{port}/invocations"
            out["mlflow"] = measure(monitor, url, port, bodies, fixed, args, workdir)

    port = free_port()
    cmd = [args.otaml_python, "-m", "edge_runtime", "serve", "--bundle", str(bundle),
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    log(f"{name}: otaml serve {bundle.relative_to(workdir)} ...")
    with launched(cmd, env, f"http://127.0.0.1:{port}/readyz", workdir / f"otaml-{name}.log") as monitor:
        single = data["readings"][:1]
        bodies = {
            "single": (json.dumps({"stream": "@STREAM@", "readings": single}), 1),
            "batch": (json.dumps({"stream": "@STREAM@", "readings": data["readings"]}), 100),
        }
        fixed = ("/v1/score", {"stream": "fixed", "readings": single})
        url = f"http://127.0.0.1:{port}/v1/score"
        out["otaml"] = measure(monitor, url, port, bodies, fixed, args, workdir)
        if args.soak_seconds:
            out["otaml"]["soak"] = soak(monitor, port, data["readings"], args)
    return out


def soak(monitor: Any, port: int, readings: list[list[float]], args: argparse.Namespace) -> dict[str, Any]:
    """A long run at ``--soak-rps`` over many stream ids (beyond --max-streams: evictions): RSS growth."""
    start = monitor.sample()["rss"]
    with LoadGenerator(port, readings, rate=args.soak_rps, batch=1, keep_alive=True, streams=args.soak_streams) as ld:
        ld.mark("soak")
        time.sleep(args.soak_seconds)
    end = monitor.sample()["rss"]
    counts = dataclasses.asdict(ld.report().phase("soak"))
    return {**counts, "start_rss_mb": start / MB, "end_rss_mb": end / MB, "growth_mb": (end - start) / MB}


# --------------------------------------------------------------------------- the machine's floor

_NOOP_APP = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
uvicorn.run(app, port=int(sys.argv[1]), http="httptools", loop=sys.argv[2], lifespan="off", log_level="warning")
"""


def floor(args: argparse.Namespace, workdir: Path, loop: str = "asyncio") -> dict[str, Any]:
    """uvicorn with an ASGI app that does nothing, under the same loads: what the HTTP server alone costs."""
    port = free_port()
    cmd = [args.otaml_python, "-c", _NOOP_APP, str(port), loop]
    with launched(cmd, dict(os.environ), f"http://127.0.0.1:{port}/", workdir / f"floor-{loop}.log") as monitor:
        url = f"http://127.0.0.1:{port}/"
        body = json.dumps({"stream": "@STREAM@", "readings": [[1.0]]})
        wrk(url, body, 1, args.connections, workdir)
        rps = statistics.median(wrk(url, body, args.duration, args.connections, workdir)["rps"] for _ in range(3))
        cpu0, t0 = monitor.cpu_seconds(), time.monotonic()
        fixed_rate(port, "/", {"stream": "x", "readings": [[1.0]]}, args.fixed_rps, args.fixed_seconds)
        cpu = 100 * (monitor.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        return {"single_rps": rps, "cpu_percent_at_fixed_rps": cpu, "peak_hwm_mb": monitor.hwm_mb}


def require_wrk(tool: str) -> None:
    """Exit 2, saying how to install it, when ``wrk`` (the single-reading and batch load) is missing."""
    if not shutil.which("wrk"):
        print(f"{tool}: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        raise SystemExit(2)


def trained_detectors(tool: str, workdir: Path, detectors: str | None) -> tuple[TrainedModels, list[str]]:
    """The default detectors trained into ``workdir``, and the names asked for (``None``: all); exit 2 on a typo."""
    print(f"[{tool} {time.strftime('%H:%M:%S')}] training the default detectors with the pipeline in {workdir} ...",
          file=sys.stderr, flush=True)  # fmt: skip
    models = train_default_models(workdir / "models")
    names = detectors.split(",") if detectors else list(models.bundles)
    unknown = sorted(set(names) - set(models.bundles))
    if unknown:
        print(f"{tool}: unknown detector(s) {unknown}; trained: {sorted(models.bundles)}", file=sys.stderr)
        raise SystemExit(2)
    return models, names


# --------------------------------------------------------------------------- report


def log(message: str) -> None:
    print(f"[bench_serve {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = []
    head = f"{'detector':<12} {'figure':<44} {'mlflow':>10} {'otaml':>10} {'otaml better':>13}"
    lines += [head, "-" * len(head)]
    rows: list[tuple[str, tuple[str, ...], bool, int]] = [
        ("single reading: requests/s (wrk, 4 conns)", ("single", "rps"), True, 0),
        ("single reading: p99 latency ms", ("single", "p99_ms"), False, 2),
        ("single reading: CPU-s per 1k readings", ("single", "cpu_s_per_1k_readings"), False, 3),
        ("batch of 100: readings/s", ("batch", "readings_per_s"), True, 0),
        ("batch of 100: CPU-s per 1k readings", ("batch", "cpu_s_per_1k_readings"), False, 4),
        (f"{args.fixed_rps:g} req/s single readings: CPU % of a core", ("fixed", "cpu_percent"), False, 1),
        ("peak memory incl. start-up, MB (sum of VmHWM)", ("peak_hwm_mb",), False, 1),
        ("  of which the largest process, MB (mlflow: its launcher)", ("largest_process_hwm_mb",), False, 1),
        ("start-up to ready, s", ("startup_s",), False, 1),
    ]
    for detector, res in results["detectors"].items():
        for label, key, higher, digits in rows:
            vals = []
            for side in ("mlflow", "otaml"):
                v: Any = res.get(side)
                for k in key:
                    v = v[k] if v is not None else None
                vals.append(v)
            m, o = vals
            better = "" if m is None or not o else (f"{m and o / m:.1f}x" if higher else f"{m / o:.1f}x")
            ms = "-" if m is None else f"{m:,.{digits}f}"
            lines.append(f"{detector:<12} {label:<44} {ms:>10} {o:>10,.{digits}f} {better:>13}")
        failed = {s: res[s]["single"]["failed"] + res[s]["batch"]["failed"] + res[s]["fixed"]["failed"]
                  for s in ("mlflow", "otaml") if s in res}  # fmt: skip
        lines.append(f"{detector:<12} failed requests across all phases: {failed}")
        for side in ("mlflow", "otaml"):
            if side in res and len(res[side]["processes"]) > 1:
                procs = "; ".join(f"{p['hwm_mb']} MB {p['cmd'][:60]}" for p in res[side]["processes"])
                lines.append(f"{detector:<12} {side} processes: {procs}")
    for key, loop in (("floor", "asyncio"), ("floor_uvloop", "uvloop")):
        if (f := results.get(key)) is not None:
            lines.append(
                f"floor (uvicorn on {loop}, no-op ASGI app): {f['single_rps']:,.0f} req/s single; "
                f"{f['cpu_percent_at_fixed_rps']:.1f} % CPU at {args.fixed_rps:g} req/s; {f['peak_hwm_mb']:.1f} MB"
            )
    lines.append(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", help="comma-separated subset of the trained detectors (default all)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per load, medians reported (default 3)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--fixed-rps", type=float, default=100)
    parser.add_argument("--fixed-seconds", type=float, default=20)
    parser.add_argument("--soak-seconds", type=float, default=0, help="otaml soak length (0 = no soak)")
    parser.add_argument("--soak-rps", type=float, default=200)
    parser.add_argument("--soak-streams", type=int, default=4096, help="distinct stream ids in the soak")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure otaml only")
    parser.add_argument(
        "--variant",
        choices=("fp32", "shipped"),
        default="fp32",
        help="bundle otaml serves: fp32, the ONNX graph MLflow serves (default), or shipped (int8 where it passed)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (models, logs)")
    parser.add_argument(
        "--otaml-python", default=sys.executable, help="interpreter for otaml serve, e.g. a serve-only venv's"
    )
    args = parser.parse_args(argv)
    require_wrk("bench_serve")
    workdir = Path(tempfile.mkdtemp(prefix="otaml-bench-serve-"))
    try:
        models, names = trained_detectors("bench_serve", workdir, args.detectors)
        results: dict[str, Any] = {"detectors": {n: bench_detector(n, models, args, workdir) for n in names}}
        results["floor"] = floor(args, workdir)
        # The service runs on uvloop where it is installed (OTAML_LOOP=auto): its floor is uvicorn on uvloop.
        if subprocess.run([args.otaml_python, "-c", "import uvloop"], capture_output=True).returncode == 0:
            results["floor_uvloop"] = floor(args, workdir, "uvloop")
        results["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
        results["load_average"] = os.getloadavg()
        print(table(results, args), file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(results, indent=2, default=str))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
