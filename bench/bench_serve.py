"""Serving benchmark: otaml's edge runtime vs ``mlflow models serve`` on the SAME trained IsolationForest.

    .venv/bin/python bench/bench_serve.py                     # a few minutes, both servers, medians of 3 runs
    .venv/bin/python bench/bench_serve.py --soak-seconds 600 --soak-rps 200

One model is trained once; MLflow serves it from a temporary sqlite store (``mlflow.sklearn``, pyfunc
``predict``: mlflow's sklearn flavour cannot expose ``score_samples``, and ``predict`` walks the same trees),
otaml serves the bundle exported from it (ONNX). The servers run one after the other under the same load:
``wrk`` (Lua script for POST bodies, 4 connections) for throughput and latency, a paced asyncio client for
the fixed-rate CPU figure and the soak. MLflow receives precomputed feature rows (it has no stream windows),
otaml raw readings that it windows itself, so otaml does strictly more work per request.

Memory and CPU come from /proc for the serving process tree (server and all its descendants):
peak VmRSS with its RssAnon/RssFile split, and utime+stime. Other engineers share this machine's cores:
figures are medians and the load average is printed with them. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]

CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1024 * 1024


# --------------------------------------------------------------------------- /proc process-tree sampling


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(root: int) -> list[int]:
    children, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory_of(pids: list[int]) -> dict[str, int]:
    total = {"rss": 0, "anon": 0, "file": 0}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if parts and parts[0] in keys:
                        total[keys[parts[0]]] += int(parts[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(root: int) -> float:
    """utime+stime of the live tree, plus what the root already reaped from dead children."""
    total = 0.0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
        total += ticks / CLK_TCK
    return total


@dataclass
class MemorySampler:
    """Samples the tree's memory every ``interval`` seconds in a thread; keeps the peak and a time series."""

    root: int
    interval: float = 0.2
    peak: dict[str, int] = field(default_factory=lambda: {"rss": 0, "anon": 0, "file": 0})
    series: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, int]:
        memory = memory_of(tree(self.root))
        if memory["rss"] > self.peak["rss"]:
            self.peak = memory
        self.series.append((time.monotonic(), memory["rss"]))
        return memory

    def __enter__(self) -> MemorySampler:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    score_path: str
    proc: subprocess.Popen[bytes]
    single_body: str
    batch_body: str
    readings_per_batch: int


@contextmanager
def running(cmd: list[str], env: dict[str, str], ready_url: str, log: Path, timeout: float = 180) -> Iterator[int]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready_url} not ready after {timeout}s; see {log}")
            time.sleep(0.25)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------- load


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
    script = workdir / f"wrk-{abs(hash(body))}.lua"
    script.write_text(_WRK_LUA.replace("{template}", body))
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": 1 if errors else 0,
    }


async def _paced(
    url: str, body: str, rps: float, seconds: float, connections: int = 4, streams: int = 64
) -> dict[str, float]:
    """Open-loop load: request ``i`` is due at ``i / rps``; ``connections`` keep-alive connections take them in turn.

    Raw HTTP/1.1 over asyncio streams: httpx costs ~1 ms of client CPU per request, too much on a shared box.
    """
    parts = httpx.URL(url)
    due: asyncio.Queue[int | None] = asyncio.Queue()
    done = failed = 0

    async def worker() -> None:
        nonlocal done, failed
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        try:
            while (i := await due.get()) is not None:
                payload = body.replace("@STREAM@", f"s{i % streams}").encode()
                head = (
                    f"POST {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                )
                writer.write(head.encode() + payload)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                done += 1
                failed += not status_line.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic() - start) < seconds:
        while sent < int(now * rps) + 1:
            due.put_nowait(sent)
            sent += 1
        await asyncio.sleep(max(0.0, sent / rps - (time.monotonic() - start)))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.monotonic() - start
    return {"sent": sent, "done": done, "failed": failed, "achieved_rps": done / elapsed}


def paced(url: str, body: str, rps: float, seconds: float, streams: int = 64) -> dict[str, float]:
    return asyncio.run(_paced(url, body, rps, seconds, streams=streams))


# --------------------------------------------------------------------------- one server's run


def measure(
    server_name: str, pid: int, url: str, bodies: dict[str, tuple[str, int]], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"name": server_name}
    with MemorySampler(pid) as sampler:
        result["idle_memory"] = sampler.sample()
        for kind, (body, readings) in bodies.items():
            wrk(url, body, 1, args.connections, workdir)  # warm-up
            runs = []
            for _ in range(args.repeats):
                cpu0 = cpu_seconds(pid)
                run = wrk(url, body, args.duration, args.connections, workdir)
                run["cpu_s"] = cpu_seconds(pid) - cpu0
                run["cpu_s_per_1k_readings"] = 1000 * run["cpu_s"] / max(1, run["requests"] * readings)
                runs.append(run)
            result[kind] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            result[kind]["readings_per_s"] = result[kind]["rps"] * readings
            result[kind]["non_2xx_total"] = sum(r["non_2xx"] for r in runs)
        body = bodies["single"][0]
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        fixed = paced(url, body, args.fixed_rps, args.fixed_seconds)
        result["fixed"] = {**fixed, "cpu_percent": 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)}
        if args.soak_seconds and server_name == "otaml":
            # warm-up before the baseline, over the same stream ids, so the LRU table is already full
            paced(url, body, args.soak_rps, min(10.0, args.soak_seconds / 10), streams=args.soak_streams)
            start_rss = sampler.sample()["rss"]
            t_start = time.monotonic()
            soak = paced(url, body, args.soak_rps, args.soak_seconds, streams=args.soak_streams)
            end_rss = sampler.sample()["rss"]
            during = [rss for t, rss in sampler.series if t >= t_start]
            result["soak"] = {
                **soak,
                "start_rss": start_rss,
                "end_rss": end_rss,
                "max_rss": max(during),
                "growth_mb": (end_rss - start_rss) / MB,
            }
        result["peak_memory"] = sampler.peak
    return result


# --------------------------------------------------------------------------- the machine's floor

_TRIVIAL_APP = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
uvicorn.run(app, port=int(sys.argv[1]), http=sys.argv[2], loop="asyncio", lifespan="off", log_level="warning")
"""


def floor_cpu_percent(python: str, env: dict[str, str], rps: float, seconds: float, workdir: Path) -> float:
    """CPU % of an ASGI app that does nothing, under the same paced load: what uvicorn costs on this box now."""
    port = free_port()
    http = (
        "httptools"
        if subprocess.run([python, "-c", "import httptools"], capture_output=True).returncode == 0
        else "h11"
    )
    cmd = [python, "-c", _TRIVIAL_APP, str(port), http]
    with running(cmd, env, f"http://127.0.0.1:{port}/", workdir / "floor.log") as pid:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        paced(f"http://127.0.0.1:{port}/", "{}", rps, seconds)
        return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


# --------------------------------------------------------------------------- main


def prepare(workdir: Path, exporter: str) -> dict[str, Any]:
    """Train once, export the bundle, log the same model to MLflow, build request bodies (run in a child process).

    The measuring parent never imports numpy, onnxruntime or scikit-learn: their shared-library pages would
    otherwise be shared with the servers, and shared pages cannot be paged out of a server's resident set.
    """
    sys.path.insert(0, str(REPO))  # a script, not a package: reach edge_runtime and the bundle fixture
    import numpy as np

    from edge_runtime.features import FeatureSpec, batch_features
    from tests.fixtures.bundles import SENSORS, build_bundle, fit_iforest, synthetic_readings

    spec = FeatureSpec(sensors=SENSORS, window=8)
    features = batch_features(spec, synthetic_readings(600, seed=0, spikes=False))
    model = fit_iforest(features)
    bundle = build_bundle(workdir / "bundle", model=model, exporter=exporter)
    tracking, model_uri = log_to_mlflow(model, workdir)
    rows = features[np.random.default_rng(1).integers(0, len(features), 100)]
    return {
        "bundle": str(bundle.path),
        "tracking_uri": tracking,
        "model_uri": model_uri,
        "single_reading": synthetic_readings(1, seed=2)[0].round(4).tolist(),
        "batch_readings": synthetic_readings(100, seed=3).round(4).tolist(),
        "feature_rows": rows.round(5).tolist(),
    }


def log_to_mlflow(model: Any, workdir: Path) -> tuple[str, str]:
    import mlflow
    import mlflow.sklearn

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-serve")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            # MLflow 3 saves with skops, which refuses tree types on load unless trusted.
            skops_trusted_types=["sklearn.tree._tree.Tree", "sklearn.tree._classes.ExtraTreeRegressor"],
        )
    return uri, str(info.model_uri)


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:,.1f}×" if b else "n/a"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    o, m = results["otaml"], results.get("mlflow")
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, key: tuple[str, ...], digits: int = 1, higher_better: bool = True) -> None:
        def get(r: dict[str, Any]) -> float:
            value: Any = r
            for k in key:
                value = value[k]
            return float(value)

        ov = get(o)
        mv = get(m) if m else float("nan")
        better = (ratio(ov, mv) if higher_better else ratio(mv, ov)) if m else "n/a"
        rows.append((label, fmt(mv, digits) if m else "-", fmt(ov, digits), better))

    row("single reading: requests/s", ("single", "rps"))
    row("single reading: p50 latency ms", ("single", "p50_ms"), 2, higher_better=False)
    row("single reading: p99 latency ms", ("single", "p99_ms"), 2, higher_better=False)
    row("single reading: CPU-s per 1k readings", ("single", "cpu_s_per_1k_readings"), 3, higher_better=False)
    row("batch of 100: requests/s", ("batch", "rps"))
    row("batch of 100: readings/s", ("batch", "readings_per_s"), 0)
    row("batch of 100: p50 latency ms", ("batch", "p50_ms"), 2, higher_better=False)
    row("batch of 100: p99 latency ms", ("batch", "p99_ms"), 2, higher_better=False)
    row("batch of 100: CPU-s per 1k readings", ("batch", "cpu_s_per_1k_readings"), 4, higher_better=False)
    row(f"CPU % of one core at {args.fixed_rps:g} req/s", ("fixed", "cpu_percent"), 1, higher_better=False)
    for kind in ("rss", "anon", "file"):
        key = ("peak_memory", kind)
        for r in (o, m):
            if r:
                r["peak_memory"][f"{kind}_mb"] = r["peak_memory"][kind] / MB
        row(f"peak {kind.upper() if kind == 'rss' else kind} of serving tree, MB", (key[0], f"{kind}_mb"), 1, False)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'mlflow':>12}  {'otaml':>12}  {'otaml better by':>15}")
    print("-" * (width + 47))
    for label, mv, ov, better in rows:
        print(f"{label:<{width}}  {mv:>12}  {ov:>12}  {better:>15}")
    print(
        f"\n{args.repeats} runs of {args.duration:g}s per workload, {args.connections} connections (wrk), medians; "
        f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores shared "
        "with other work: absolute figures are pessimistic, ratios are what to read."
    )
    for r in (m, o):
        if r:
            bad = r["single"]["non_2xx_total"] + r["batch"]["non_2xx_total"] + r["fixed"]["failed"]
            print(f"{r['name']}: fixed-rate run achieved {r['fixed']['achieved_rps']:.1f} req/s")
            print(
                f"{r['name']}: non-2xx/failed responses across the run: {bad}; "
                f"idle RSS {r['idle_memory']['rss'] / MB:.1f} MB (anon {r['idle_memory']['anon'] / MB:.1f}, "
                f"file {r['idle_memory']['file'] / MB:.1f})"
            )
    if "soak" in o:
        s = o["soak"]
        print(
            f"otaml soak: {s['sent']} requests at {args.soak_rps:g} req/s over {args.soak_seconds:g}s "
            f"({s['failed']} failed): RSS {s['start_rss'] / MB:.1f} -> {s['end_rss'] / MB:.1f} MB, "
            f"growth {s['growth_mb']:+.2f} MB, max {s['max_rss'] / MB:.1f} MB; {args.soak_streams} stream ids"
        )
    print(
        "targets: >= 20x mlflow single-reading throughput; 100 req/s at <= 10 % of one core; soak growth < 5 MB; "
        "peak RSS < 100 MB (goal <= 80 MB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="wrk runs per workload, medians reported (default 3)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--fixed-rps", type=float, default=100)
    parser.add_argument("--fixed-seconds", type=float, default=10)
    parser.add_argument("--soak-seconds", type=float, default=0, help="otaml soak length (0 = no soak)")
    parser.add_argument("--soak-rps", type=float, default=200)
    parser.add_argument(
        "--soak-streams", type=int, default=4096, help="distinct stream ids in the soak (above --max-streams: evicts)"
    )
    parser.add_argument("--skip-mlflow", action="store_true", help="measure otaml only")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (bundle, mlflow store, logs)")
    parser.add_argument(
        "--export",
        choices=("compact", "skl2onnx"),
        default="compact",
        help="ONNX export of the model: compact (one TreeEnsemble, like pipeline/) or skl2onnx's stock graph",
    )
    parser.add_argument(
        "--otaml-python",
        default=sys.executable,
        help="interpreter that runs otaml serve, e.g. an edge-only venv's (its libraries are then not shared)",
    )
    parser.add_argument(
        "--serve-args", default="", help="extra flags for otaml serve, e.g. '--release-startup-pages false'"
    )
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: the child that trains
    args = parser.parse_args(argv)
    if args.prepare:
        (args.prepare / "prepared.json").write_text(json.dumps(prepare(args.prepare, args.export)))
        return 0
    if not shutil.which("wrk"):
        print("bench_serve: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="otaml-bench-serve-"))
    venv_bin = str(Path(sys.executable).parent)
    base_env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    try:
        print(f"training and exporting ({args.export}) in {workdir} ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--prepare", str(workdir), "--export", args.export],
            env=base_env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        prepared = json.loads((workdir / "prepared.json").read_text())
        results: dict[str, dict[str, Any]] = {}

        if not args.skip_mlflow:
            port = free_port()
            cmd = ["mlflow", "models", "serve", "-m", prepared["model_uri"], "-p", str(port), "-h", "127.0.0.1",
                   "--env-manager", "local", "-w", "1"]  # fmt: skip
            env = {**base_env, "MLFLOW_TRACKING_URI": prepared["tracking_uri"]}
            print("measuring mlflow models serve ...", flush=True)
            with running(cmd, env, f"http://127.0.0.1:{port}/ping", workdir / "mlflow.log") as pid:
                url = f"http://127.0.0.1:{port}/invocations"
                bodies = {
                    "single": (json.dumps({"inputs": prepared["feature_rows"][:1]}), 1),
                    "batch": (json.dumps({"inputs": prepared["feature_rows"]}), 100),
                }
                results["mlflow"] = measure("mlflow", pid, url, bodies, args, workdir)

        port = free_port()
        cmd = [args.otaml_python, "-m", "edge_runtime", "serve", "--bundle", prepared["bundle"], "--port", str(port),
               *args.serve_args.split()]  # fmt: skip
        print("measuring otaml serve ...", flush=True)
        with running(cmd, base_env, f"http://127.0.0.1:{port}/readyz", workdir / "otaml.log") as pid:
            url = f"http://127.0.0.1:{port}/v1/score"
            bodies = {
                "single": (json.dumps({"stream": "@STREAM@", "readings": [prepared["single_reading"]]}), 1),
                "batch": (json.dumps({"stream": "@STREAM@", "readings": prepared["batch_readings"]}), 100),
            }
            results["otaml"] = measure("otaml", pid, url, bodies, args, workdir)

        floor = floor_cpu_percent(args.otaml_python, base_env, args.fixed_rps, args.fixed_seconds, workdir)
        report(results, args)
        print(
            f"floor: uvicorn with an empty ASGI app uses {floor:.1f} % of one core at {args.fixed_rps:g} req/s "
            "under the same client right now (the part of the CPU figure that is not otaml's code)"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
