"""Figures for the OTA agent on real containerd + docker-registry + the real runtime image, as deployed.

The model is trained the way a user does it, with the defaults (``otaml data synth`` then ``otaml train``, every
detector, the chosen one; bench/pipeline_models.py); its bundle is baked as versions 1..N+3 (the same model,
relabelled). The device follows the fleet's TUF repository (a trust site from ``registry.tuf.site.init``, served
over HTTP, approvals signed by two of three approver keys): "an update" is an approval published, and the agent
runs the highest approved version. It reports to a real Mosquitto (``[fleet]``), so its memory includes the MQTT
client. The agent runs as its own process (``python -m edge_runtime agent run``) with the default configuration
except the poll interval and the probation length of the consecutive updates (``--poll``, ``--probation``). One
open-loop load generator (otaml/loadgen.py) scores against the public port at ``--rate`` req/s throughout; every
figure counts only the requests of its own phase, and missed slots count as failures.

Phases and figures:

- ``update-vN`` (vN approved → vN out of probation): time to vN answering, failed requests
- ``failed-canary`` (a golden-mismatch version approved → its digest blocked): failed requests
- ``probation-failure`` (the new container SIGKILLed in probation → previous version serving, agent idle): time
  to the previous version answering, failed requests, and the RAM the warm previous container held meanwhile
  (``warm_rollback = "auto"``, the default, keeps it when MemAvailable ≥ 256 MB; ``--warm-rollback off``: cold)
- agent memory: the peak of the agent's whole process tree (the ``ctr`` children included), sampled every
  10 ms from start-up on, as PSS (shared pages counted once) and as RSS, and the agent's own VmHWM

Usage: ``sudo .venv/bin/python bench/bench_agent.py --updates 10 [--json] [--warm-rollback off] [--keep-alive]``
(root: containerd + iptables). The first run builds the base runtime image (minutes, cached under ~/.cache/otaml).
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from pipeline_models import train_default_models  # noqa: E402
from proctree import tree  # noqa: E402

from otaml.loadgen import LoadGenerator  # noqa: E402
from otaml.ports import free_port  # noqa: E402

REPO = "otaml/agent-bench"
MODEL = "pump-anomaly"
CHANNEL = "bench"
MB = 1024 * 1024


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ── process-tree memory ────────────────────────────────────────────────────────────────────────────


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them (no double counting)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


class TreeSampler:
    """Peaks of ``root``'s whole process tree, every ``interval_s``: summed PSS, and summed VmRSS of the root plus
    its children that exec'd something else (a child between fork and exec shares the parent's pages)."""

    def __init__(self, root: int, interval_s: float = 0.01) -> None:
        self.root, self.interval_s = root, interval_s
        self.peak_pss_kb = 0
        self.peak_rss_kb = 0
        self.child_peak_kb = 0
        self.samples = 0
        self._exe = exe(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.root)
            children = [p for p in pids[1:] if exe(p) not in ("", self._exe)]
            rss = [status_kb(p, "VmRSS") for p in [self.root, *children]]
            self.peak_rss_kb = max(self.peak_rss_kb, sum(rss))
            self.peak_pss_kb = max(self.peak_pss_kb, sum(pss_kb(p) for p in pids))
            self.child_peak_kb = max([self.child_peak_kb, *rss[1:]])
            self.samples += 1
            self._stop.wait(self.interval_s)


def container_cgroup_memory(socket: str, namespace: str, name: str) -> dict[str, float]:
    """The memory cgroup of a container's task, in MB: its peak since creation, now, the limit, and OOM kills.

    cgroup v2 (``memory.peak``) or v1 (``memory.max_usage_in_bytes``). The cgroup counts the page cache of the
    files the container read (the image's libraries) as well as its processes' memory: under the limit the
    kernel reclaims that cache before anything is killed, so the peak can sit near the limit harmlessly;
    ``oom_kills`` says whether the limit ever bit.
    """
    out = subprocess.run(
        ["ctr", "--address", socket, "-n", namespace, "task", "ls"], capture_output=True, text=True, check=True
    ).stdout
    pid = next((p[1] for p in (line.split() for line in out.splitlines()[1:]) if p and p[0] == name), "")
    if not pid.isdigit():
        return {}
    root, paths = Path("/sys/fs/cgroup"), {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")

    def read(path: Path) -> int:
        text = path.read_text().strip()
        return 0 if text == "max" else int(text)

    def stat(path: Path) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}

    mb = 1024 * 1024
    if "memory" in paths:  # v1
        d = root / "memory" / paths["memory"]
        st = stat(d / "memory.stat")
        return {
            "peak_mb": read(d / "memory.max_usage_in_bytes") / mb,
            "now_mb": read(d / "memory.usage_in_bytes") / mb,
            "limit_mb": read(d / "memory.limit_in_bytes") / mb,
            "now_rss_mb": st.get("total_rss", 0) / mb,
            "now_cache_mb": st.get("total_cache", 0) / mb,
            "oom_kills": stat(d / "memory.oom_control").get("oom_kill", 0),
        }
    d = root / paths[""]
    st = stat(d / "memory.stat")
    peak = d / "memory.peak"
    return {
        "peak_mb": read(peak) / mb if peak.exists() else float("nan"),
        "now_mb": read(d / "memory.current") / mb,
        "limit_mb": read(d / "memory.max") / mb,
        "now_rss_mb": st.get("anon", 0) / mb,
        "now_cache_mb": st.get("file", 0) / mb,
        "oom_kills": stat(d / "memory.events").get("oom_kill", 0),
    }


def container_rss_kb(socket: str, namespace: str, name: str) -> int:
    """VmRSS of a container's process tree (from its task's pid on the host)."""
    out = subprocess.run(
        ["ctr", "--address", socket, "-n", namespace, "task", "ls"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == name and parts[1].isdigit():
            return sum(status_kb(p, "VmRSS") for p in tree(int(parts[1])))
    return 0


# ── models, images, signatures ─────────────────────────────────────────────────────────────────────


def train_default_bundle(work: Path) -> tuple[Path, str]:
    """``otaml data synth`` then ``otaml train`` with their defaults (bench/pipeline_models.py): the chosen bundle."""
    models = train_default_models(work / "trained", model_name=MODEL)
    return models.bundles[models.chosen], models.chosen


def relabelled(bundle: Path, out: Path, version: str, golden_shift: float = 0.0) -> Path:
    shutil.copytree(bundle, out)
    card = json.loads((out / "model.json").read_text())
    card["version"] = version
    if golden_shift:
        card["golden"]["scores"] = [s + golden_shift for s in card["golden"]["scores"]]
    (out / "model.json").write_text(json.dumps(card))
    return out


def approve(site: Path, approvers: list[Any], digest: str, length: int, version: str, base_digest: str) -> None:
    """Publish the approval of ``version`` with two approver keys, as `otaml promote` + `otaml trust approve` do."""
    from edge_runtime.trust.approval import Approval
    from registry.tuf.site import TrustSite

    approval = Approval(CHANNEL, MODEL, int(version), digest, length, base_digest)
    with TrustSite(site).locked() as repo:
        repo.propose(approval, approvers[0])
        repo.approve_pending(approvers[1])


# ── the bench ──────────────────────────────────────────────────────────────────────────────────────


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=10, help="consecutive updates (default 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="load, requests per second (default 50)")
    parser.add_argument("--poll", type=float, default=5.0, help="agent poll interval in seconds (default 5)")
    parser.add_argument("--probation", type=float, default=5.0, help="probation of the updates, s (default 5)")
    parser.add_argument("--warm-rollback", choices=("auto", "on", "off"), default="auto", help="[update] warm_rollback")
    parser.add_argument("--keep-alive", action="store_true", help="the load generator reuses connections")
    parser.add_argument("--base-image", default="", help="prebuilt base (skopeo ref, e.g. oci:DIR:base)")
    parser.add_argument(
        "--agent-python",
        default=sys.executable,
        help="the interpreter that runs the agent (default: this one). A device installs only the edge extra: "
        "python3 -m venv /tmp/edge && /tmp/edge/bin/pip install '.[edge]' -c constraints.txt, then "
        "--agent-python /tmp/edge/bin/python measures what a device holds (no development packages imported)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_agent needs root (containerd, iptables)", file=sys.stderr)
        return 2
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print

    from edge_runtime.agent.handover import IptablesRedirect
    from otaml.localstack import LocalBroker, LocalContainerd, LocalRegistry, build_runtime_image
    from otaml.static_http import StaticServer
    from registry.bake import bake
    from registry.tuf import keys as tuf_keys
    from registry.tuf.site import init

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-agent-"))
    work.mkdir(parents=True, exist_ok=True)
    agent_proc: subprocess.Popen[bytes] | None = None
    sampler: TreeSampler | None = None
    load: LoadGenerator | None = None
    public = 0
    namespace = "agent-bench"
    registry = LocalRegistry(work / "registry")
    containerd = LocalContainerd(tempfile.mkdtemp(prefix="ctrd-"), namespace)  # short: socket path limit
    broker = LocalBroker(work / "mqtt", devices=("bench-device",))
    trust = init(work / "trust", work / "approver-keys", approvers=3, threshold=2)
    approvers = [tuf_keys.load_signer(p) for p in trust.approver_keys]
    metadata = StaticServer(trust.site.metadata_dir).start()
    try:
        mqtt_host, mqtt_port = broker.start()
        address = registry.start()
        socket = containerd.start().socket
        base = f"{address}/otaml/runtime:base"
        if args.base_image:
            subprocess.run(
                ["skopeo", "copy", "--all", "--dest-tls-verify=false", args.base_image, f"docker://{base}"],
                check=True,
                capture_output=True,
            )
        else:
            say("building/pushing the base runtime image (cached) …")
            build_runtime_image(push=base, log=work / "build.log")
        say("training the default model with the pipeline …")
        bundle, detector = train_default_bundle(work)
        readings = json.loads((bundle / "model.json").read_text())["golden"]["readings"]
        n = args.updates
        say(f"baking {n + 3} images of the {detector} model …")
        # Versions 1..n+1 update in turn; n+2 fails its canary (golden mismatch); n+3 dies in probation.
        baked: dict[str, Any] = {}
        for v in range(1, n + 4):
            shift = 0.5 if v == n + 2 else 0.0
            result = bake(
                base, relabelled(bundle, work / "bundles" / f"v{v}", str(v), golden_shift=shift), f"{address}/{REPO}"
            )
            baked[str(v)] = result

        def approve_version(version: str) -> str:
            result = baked[version]
            base_digest = result.manifests[0].base_manifest_digest
            approve(trust.site.path, approvers, result.index_digest, result.index_size, version, base_digest)
            return str(result.index_digest)

        bad_version = str(n + 2)

        public, a, b = free_port(), free_port(), free_port()
        state_dir = work / "state"
        config = work / "agent.toml"
        config.write_text(
            f'[registry]\nurl = "http://{address}"\nrepository = "{REPO}"\nchannel = "{CHANNEL}"\n'
            f"[poll]\ninterval_s = {args.poll}\n"
            f'[containerd]\nsocket = "{socket}"\nnamespace = "{namespace}"\n'
            f'[service]\npublic_port = {public}\nprivate_ports = [{a}, {b}]\nhost = "127.0.0.1"\n'
            f'[update]\nprobation_s = {args.probation}\nwarm_rollback = "{args.warm_rollback}"\n'
            f'[agent]\nstate_dir = "{state_dir}"\n'
            f'[trust]\nmetadata_url = "{metadata.url}"\ntrusted_root = "{trust.trusted_root}"\nmodel = "{MODEL}"\n'
            '[device]\nid = "bench-device"\n'
            f'[fleet]\nbroker_host = "{mqtt_host}"\nbroker_port = {mqtt_port}\n'
            f'password_file = "{broker.password_file("bench-device")}"\n'
        )
        approve_version("1")
        with open(work / "agent.log", "wb") as log:
            agent_proc = subprocess.Popen(
                [args.agent_python, "-m", "edge_runtime", "agent", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        agent = agent_proc
        sampler = TreeSampler(agent.pid).start()

        def serving() -> str:
            state = read_state(state_dir)
            return str((state.get("current") or {}).get("version", "")) if state.get("phase") == "idle" else ""

        wait_until(lambda: serving() == "1", 300, "v1 serving")
        say("v1 serving")
        load = LoadGenerator(public, readings, rate=args.rate, workers=4, keep_alive=args.keep_alive, phase="warm-up")
        load.start()
        time.sleep(2)
        delays: list[float] = []
        for v in range(2, n + 2):
            load.mark(f"update-v{v}")
            moved = time.monotonic()
            approve_version(str(v))
            wait_until(lambda v=v, t=moved: load.first_answer(str(v), t) is not None, 300, f"v{v} answering")
            delays.append((load.first_answer(str(v), moved) or moved) - moved)
            wait_until(lambda v=v: serving() == str(v), 300, f"v{v} out of probation")
            say(
                f"  v{v}: answering {delays[-1]:.2f} s after the move; "
                f"{load.report().phase(f'update-v{v}').failed} failed"
            )
        load.mark("between")
        time.sleep(1)

        # A failed canary: an approved image whose golden replay fails.
        previous = str(n + 1)
        load.mark("failed-canary")
        moved = time.monotonic()
        bad_digest = approve_version(bad_version)
        wait_until(lambda: bad_digest in read_state(state_dir).get("blocked", {}), 300, "bad digest blocked")
        canary_blocked_s = time.monotonic() - moved
        wait_until(lambda: serving() == previous, 60, "agent idle again")
        load.mark("between")
        time.sleep(1)

        # A probation failure: a good image whose container is SIGKILLed once it serves, in probation.
        good = str(n + 3)
        load.mark(f"update-v{good}")
        approve_version(good)

        def in_probation() -> bool:
            state = read_state(state_dir)
            return state.get("phase") == "probation" and (state.get("current") or {}).get("version") == good

        wait_until(in_probation, 300, f"v{good} in probation")
        wait_until(lambda: load.first_answer(good) is not None, 60, f"v{good} answering")
        time.sleep(1.0)
        state = read_state(state_dir)
        warm_kb = container_rss_kb(socket, namespace, state["previous"]["container"]) if state.get("previous") else 0
        # The serving container's cgroup: canary, golden replay, hand-over and a second of load behind it.
        service_cgroup = container_cgroup_memory(socket, namespace, state["current"]["container"])
        load.mark("probation-failure")
        killed = time.monotonic()
        subprocess.run(
            [
                "ctr",
                "--address",
                socket,
                "-n",
                namespace,
                "task",
                "kill",
                "-s",
                "SIGKILL",
                state["current"]["container"],
            ],
            check=True,
        )
        wait_until(lambda: load.first_answer(previous, killed) is not None, 300, f"v{previous} answering again")
        back_s = (load.first_answer(previous, killed) or killed) - killed
        wait_until(lambda: serving() == previous, 300, f"v{previous} serving again")
        load.mark("after")
        time.sleep(1)
        report = load.stop()
        sampler.stop()
        history = read_state(state_dir).get("history", [])
        rollback = next((h for h in reversed(history) if h.get("outcome") == "rolled_back"), {})
        warm = any(str(x).startswith("switch → ") and "(warm " in str(x) for x in rollback.get("actions", []))
        pulled = [h["bytes_pulled"] for h in history if h.get("outcome") == "updated" and h.get("bytes_pulled")]
        updates = [report.phase(f"update-v{v}") for v in range(2, n + 2)]
        figures: dict[str, Any] = {
            "model": {"detector": detector, "trained_by": "otaml data synth + otaml train, defaults (chosen detector)"},
            "settings": {
                "updates": n,
                "rate": args.rate,
                "poll_s": args.poll,
                "probation_s": args.probation,
                "warm_rollback": args.warm_rollback,
                "keep_alive": args.keep_alive,
                "approvals": "TUF, 2 of 3 keys",
                "fleet_reporting": "MQTT (Mosquitto)",
            },
            "update": {
                "move_to_answering_s": {
                    "median": statistics.median(delays),
                    "min": min(delays),
                    "max": max(delays),
                },
                "requests": sum(p.slots for p in updates),
                "failed": sum(p.failed for p in updates),
                "missed": sum(p.missed for p in updates),
            },
            "failed_canary": {
                "blocked_after_s": canary_blocked_s,
                "requests": report.phase("failed-canary").slots,
                "failed": report.phase("failed-canary").failed,
            },
            "probation_failure": {
                "warm": warm,
                "previous_answering_after_s": back_s,
                "requests": report.phase("probation-failure").slots,
                "failed": report.phase("probation-failure").failed,
                "missed": report.phase("probation-failure").missed,
                "warm_previous_container_rss_mb": warm_kb / 1024 if warm else 0.0,
                "service_cgroup_memory": service_cgroup,
                "agent_error": rollback.get("error", ""),
            },
            "bytes_pulled": {
                "median_update": statistics.median(pulled[1:]) if len(pulled) > 1 else None,
                "first_install": pulled[0] if pulled else None,
            },
            "agent_memory_mb": {
                "tree_peak_pss": sampler.peak_pss_kb / 1024,
                "tree_peak_rss": sampler.peak_rss_kb / 1024,
                "agent_vmhwm": status_kb(agent.pid, "VmHWM") / 1024,
                "largest_ctr_child_rss": sampler.child_peak_kb / 1024,
                "samples": sampler.samples,
            },
            "load": report.to_dict(),
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            u, c, p, m = (
                figures["update"],
                figures["failed_canary"],
                figures["probation_failure"],
                figures["agent_memory_mb"],
            )
            print()
            print(
                f"agent bench: {detector} model (pipeline defaults), {n} updates at {args.rate:g} req/s, poll "
                f"{args.poll:g} s, probation {args.probation:g} s, warm_rollback {args.warm_rollback}, TUF approvals, "
                "MQTT reporting"
            )
            d = u["move_to_answering_s"]
            print(
                f"  approval published → new version answering: median {d['median']:.2f} s "
                f"(min {d['min']:.2f}, max {d['max']:.2f})"
            )
            print(f"  failed requests during the {n} updates: {u['failed']} of {u['requests']} ({u['missed']} missed)")
            print(
                f"  failed canary: digest blocked {c['blocked_after_s']:.2f} s after its approval, "
                f"{c['failed']} of {c['requests']} failed"
            )
            print(
                f"  probation failure ({'warm' if p['warm'] else 'cold'} rollback): previous version answering "
                f"{p['previous_answering_after_s']:.3f} s after the kill, {p['failed']} of {p['requests']} failed "
                f"({p['missed']} missed); warm previous container RSS {p['warm_previous_container_rss_mb']:.1f} MB; "
                f"serving container's cgroup (MB): {p['service_cgroup_memory']}"
            )
            print(
                f"  agent memory, peak of the process tree (ctr children included, {m['samples']} samples): "
                f"PSS {m['tree_peak_pss']:.1f} MB, RSS {m['tree_peak_rss']:.1f} MB; agent VmHWM "
                f"{m['agent_vmhwm']:.1f} MB, largest ctr child RSS {m['largest_ctr_child_rss']:.1f} MB"
            )
            if report.errors:
                print("  first errors:", *report.errors[:5], sep="\n    ")
        return 0
    finally:
        if load is not None:
            load.stop()
        if sampler is not None:
            sampler.stop()
        if agent_proc is not None:
            agent_proc.terminate()
            agent_proc.wait(timeout=130)
        if public:
            IptablesRedirect(public).remove()
        containerd.stop()  # removes every container left in the namespace first
        registry.stop()
        broker.stop()
        metadata.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
