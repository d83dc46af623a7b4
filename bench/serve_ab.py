"""Side by side: several ``python -m edge_runtime serve`` variants on one bundle, launched together, phases alternated.

    .venv/bin/python bench/serve_ab.py BUNDLE_DIR \
        '[{"name": "main", "repo": "/path/to/main-worktree"}, {"name": "branch", "args": ["--loop", "uvloop"]}]'

Each variant is ``{"name", "repo" (its PYTHONPATH, default this checkout), "python" (default this interpreter),
"args" (extra serve flags), "env"}``. Every round runs, for each variant in turn (the order reversed every other
round), ``--fixed-seconds`` of 100 single-reading req/s through the project's load generator (CPU % of a core of the
server's process tree) and ``--wrk-seconds`` of ``wrk -t1 -c4`` with single readings (requests/s); medians over the
rounds, and each tree's peak memory (sum of VmHWM, start-up included). On a shared machine only a side-by-side
comparison like this one says whether a change helps. The readings are the bundle's golden readings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from bench_serve import fixed_rate, launched, wrk  # noqa: E402

from otaml.ports import free_port  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("variants", help="JSON list of variants (see above)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fixed-seconds", type=float, default=15)
    parser.add_argument("--fixed-rps", type=float, default=100)
    parser.add_argument("--wrk-seconds", type=float, default=5)
    args = parser.parse_args(argv)
    variants: list[dict[str, Any]] = json.loads(args.variants)
    readings = json.loads((args.bundle / "model.json").read_text())["golden"]["readings"][:1]
    body = json.dumps({"stream": "@STREAM@", "readings": readings})
    work = Path(tempfile.mkdtemp(prefix="otaml-serve-ab-"))
    results: dict[str, dict[str, Any]] = {v["name"]: {"cpu": [], "rps": []} for v in variants}
    with ExitStack() as stack:
        servers = {}
        for v in variants:
            port = free_port()
            env = {**os.environ, "PYTHONPATH": v.get("repo", str(BENCH.parent)), **v.get("env", {})}
            cmd = [v.get("python", sys.executable), "-m", "edge_runtime", "serve", "--bundle", str(args.bundle),
                   "--port", str(port), "--log-level", "warning", *v.get("args", [])]  # fmt: skip
            ready = f"http://127.0.0.1:{port}/readyz"
            servers[v["name"]] = (port, stack.enter_context(launched(cmd, env, ready, work / f"{v['name']}.log")))
        for port, _ in servers.values():
            wrk(f"http://127.0.0.1:{port}/v1/score", body, 1, 4, work)  # warm-up, not counted
        for r in range(args.rounds):
            order = list(servers.items())
            for name, (port, monitor) in order if r % 2 == 0 else reversed(order):
                cpu0, t0 = monitor.cpu_seconds(), time.monotonic()
                counts = fixed_rate(port, "/v1/score", {"stream": "fixed", "readings": readings}, args.fixed_rps,
                                    args.fixed_seconds)  # fmt: skip
                results[name]["cpu"].append(100 * (monitor.cpu_seconds() - cpu0) / (time.monotonic() - t0))
                run = wrk(f"http://127.0.0.1:{port}/v1/score", body, args.wrk_seconds, 4, work)
                results[name]["rps"].append(run["rps"])
                results[name]["failed"] = results[name].get("failed", 0) + counts["failed"] + run["non_2xx"]
        for name, (_, monitor) in servers.items():
            monitor.sample()
            results[name]["peak_hwm_mb"] = monitor.hwm_mb
    for name, r in results.items():
        print(
            f"{name:<14} CPU {statistics.median(r['cpu']):.2f} % {[round(x, 2) for x in r['cpu']]}  "
            f"single {statistics.median(r['rps']):,.0f} req/s {[round(x) for x in r['rps']]}  "
            f"peak {r['peak_hwm_mb']:.1f} MB  failed {r['failed']}"
        )
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
