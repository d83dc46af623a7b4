"""Figures for the OTA agent, measured on real containerd + docker-registry + the real runtime image.

The agent runs as its own process (``python -m edge_runtime agent run``), as on a device; a load generator
scores against the public port at ``--rate`` req/s throughout. Printed:

- time from channel move to the new version answering on the public port (poll ``--poll`` s), median/max
- failed requests across ``--updates`` consecutive updates
- rollback after a failed canary (channel move → digest blocked; the old container never stopped serving)
- rollback after a probation failure (new container killed → previous version answering again) and the
  requests that failed meanwhile
- bytes pulled per update, agent RSS (VmRSS now, VmHWM peak)

Usage: ``sudo .venv/bin/python bench/bench_agent.py --updates 20`` (root: containerd + iptables).
First run builds the base runtime image (minutes, cached under ~/.cache/otaml).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otaml.loadgen import LoadGenerator  # noqa: E402
from tests.conftest import free_port  # noqa: E402

REPO = "otaml/agent-bench"


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(predicate, timeout: float, what: str, step: float = 0.05) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def read_state(state_dir: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=20, help="consecutive updates (default 20)")
    parser.add_argument("--rate", type=float, default=50.0, help="load, requests per second (default 50)")
    parser.add_argument("--poll", type=float, default=5.0, help="agent poll interval in seconds (default 5)")
    parser.add_argument("--probation", type=float, default=5.0, help="probation seconds (default 5)")
    parser.add_argument("--warm-rollback", action="store_true", help="keep the previous container up in probation")
    parser.add_argument("--keep-alive", action="store_true", help="load generator reuses connections")
    parser.add_argument("--base-image", default="", help="prebuilt base (skopeo ref, e.g. docker://HOST/REPO:TAG)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_agent needs root (containerd, iptables)", file=sys.stderr)
        return 2

    from otaml.localstack import LocalContainerd, LocalRegistry, build_runtime_image
    from registry.bake import bake, tag
    from tests.fixtures.bundles import build_bundle

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-agent-"))
    work.mkdir(parents=True, exist_ok=True)
    agent_proc: subprocess.Popen[bytes] | None = None
    socket, public = "", 0
    registry = LocalRegistry(work / "registry")
    containerd = LocalContainerd(tempfile.mkdtemp(prefix="ctrd-"), "agent-bench")  # short: socket path limit
    try:
        address = registry.start()
        socket = containerd.start().socket

        base = f"{address}/otaml/runtime:base"
        if args.base_image:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    args.base_image,
                    f"docker://{base}",
                ],
                check=True,
                capture_output=True,
            )
        else:
            print("building/pushing the base runtime image (cached) …", flush=True)
            build_runtime_image(push=base, log=work / "build.log")
        n = args.updates
        print(f"baking {n + 3} model images …", flush=True)
        for v in range(1, n + 3):
            bundle = build_bundle(work / "bundles" / f"v{v}", version=str(v), seed=v)
            bake(base, bundle.path, f"{address}/{REPO}")
        bad = build_bundle(work / "bundles" / "bad", version=str(n + 10), seed=99)
        card = json.loads((bad.path / "model.json").read_text())
        card["golden"]["scores"] = [s + 0.5 for s in card["golden"]["scores"]]
        (bad.path / "model.json").write_text(json.dumps(card))
        bake(base, bad.path, f"{address}/{REPO}")

        public, a, b = free_port(), free_port(), free_port()
        state_dir = work / "state"
        config = work / "agent.toml"
        config.write_text(
            f'[registry]\nurl = "http://{address}"\nrepository = "{REPO}"\nchannel = "bench"\n'
            f"[poll]\ninterval_s = {args.poll}\njitter = 0.2\nbackoff_base_s = 1\nbackoff_max_s = 10\n"
            f'[containerd]\nsocket = "{socket}"\nnamespace = "agent-bench"\n'
            f'[service]\npublic_port = {public}\nprivate_ports = [{a}, {b}]\nhost = "127.0.0.1"\n'
            f"drain_s = 2\nstop_timeout_s = 10\nswitch_grace_s = 1\n"
            f"[update]\nprobation_s = {args.probation}\nready_timeout_s = 90\nhealth_interval_s = 0.5\n"
            f"unhealthy_after = 2\nwarm_rollback = {'true' if args.warm_rollback else 'false'}\n"
            f'[agent]\nstate_dir = "{state_dir}"\n'
        )
        tag(f"{address}/{REPO}:model-v1", "bench", force=True)
        agent = agent_proc = start(
            [sys.executable, "-m", "edge_runtime", "agent", "run", "--config", str(config)], work / "agent.log"
        )

        def serving() -> str:
            cur = read_state(state_dir).get("current") or {}
            return str(cur.get("version", "")) if read_state(state_dir).get("phase") == "idle" else ""

        wait_until(lambda: serving() == "1", 180, "v1 serving")
        print(f"v1 serving; agent RSS {rss_kb(agent.pid)} kB", flush=True)

        readings = [[60.0, 0.5, 3.0], [61.0, 0.52, 3.01]]
        load = LoadGenerator(public, readings, rate=args.rate, workers=4, keep_alive=args.keep_alive, phase="warm-up")
        load.start()
        time.sleep(2)
        delays: list[float] = []
        for v in range(2, n + 2):
            load.mark(f"update-v{v}")
            moved = time.monotonic()
            tag(f"{address}/{REPO}:model-v{v}", "bench", force=True)
            wait_until(lambda v=v: load.last_version() == str(v), 180, f"v{v} answering")
            first = load.first_answer(str(v), moved)
            delays.append((first or moved) - moved)
            wait_until(lambda v=v: serving() == str(v), 180, f"v{v} out of probation")
            failed = load.report().phase(f"update-v{v}").failed
            print(f"  update to v{v}: serving after {delays[-1]:.2f} s; {failed} failed requests", flush=True)
        updates = [load.report().phase(f"update-v{v}") for v in range(2, n + 2)]
        failed_updates = sum(p.failed for p in updates)
        requests_updates = sum(p.slots for p in updates)
        rss_after_updates = rss_kb(agent.pid)

        # A failed canary: the channel moves to an image whose golden replay fails.
        current = str(n + 1)
        load.mark("failed-canary")
        moved = time.monotonic()
        bad_digest = tag(f"{address}/{REPO}:model-v{n + 10}", "bench", force=True)
        wait_until(lambda: bad_digest in read_state(state_dir).get("blocked", {}), 180, "bad digest blocked")
        canary_rollback = time.monotonic() - moved

        # A probation failure: a good image whose container dies once it serves.
        load.mark("update-before-probation-failure")
        good = str(n + 2)
        tag(f"{address}/{REPO}:model-v{good}", "bench", force=True)
        wait_until(lambda: load.last_version() == good, 180, f"v{good} answering")
        name = read_state(state_dir)["current"]["container"]
        load.mark("probation-failure")
        killed = time.monotonic()
        subprocess.run(
            ["ctr", "--address", socket, "-n", "agent-bench", "task", "kill", "-s", "SIGKILL", name], check=True
        )
        wait_until(lambda: load.first_answer(current, killed) is not None, 180, "previous back")
        probation_rollback = (load.first_answer(current, killed) or killed) - killed
        wait_until(lambda: serving() == current, 180, f"v{current} serving again")
        time.sleep(1)
        result = load.stop()
        canary_failed = result.phase("failed-canary").failed
        probation_failed = result.phase("probation-failure").failed
        history = read_state(state_dir).get("history", [])
        pulled = [h["bytes_pulled"] for h in history if h.get("outcome") == "updated" and h.get("bytes_pulled")]

        print()
        print(
            f"agent bench: {n} updates at {args.rate:g} req/s, "
            f"poll {args.poll:g} s ± 20 %, probation {args.probation:g} s, "
            f"warm rollback {'on' if args.warm_rollback else 'off'}"
        )
        print(
            f"  channel move → new version answering: median {statistics.median(delays):.2f} s, "
            f"max {max(delays):.2f} s, min {min(delays):.2f} s"
        )
        print(
            f"  failed requests across {n} updates: {failed_updates} of {requests_updates} "
            f"({'keep-alive' if args.keep_alive else 'one connection per request'})"
        )
        print(
            f"  failed canary (golden mismatch): blocked {canary_rollback:.2f} s after the channel move, "
            f"{canary_failed} failed requests"
        )
        print(
            f"  probation failure (container killed): previous version answering {probation_rollback:.2f} s later, "
            f"{probation_failed} failed requests"
        )
        if len(pulled) > 1:
            print(
                f"  bytes pulled per update: median {statistics.median(pulled[1:]) / 1024:.1f} KiB "
                f"(first install: {pulled[0] / 1e6:.1f} MB, the base layers included)"
            )
        print(
            f"  agent RSS: {rss_after_updates['VmRSS'] / 1024:.1f} MB now, "
            f"peak {rss_after_updates['VmHWM'] / 1024:.1f} MB"
        )
        if result.errors:
            print("  first errors:", *result.errors[:5], sep="\n    ")
        return 0
    finally:
        if agent_proc is not None:
            agent_proc.terminate()
            agent_proc.wait(timeout=130)
        if public:
            from edge_runtime.agent.handover import IptablesRedirect

            IptablesRedirect(public).remove()
        containerd.stop()  # removes every container left in the namespace first
        registry.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
