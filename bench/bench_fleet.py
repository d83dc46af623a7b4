"""A fleet on one machine: N device agents, a good rollout in waves and a bad one that halts itself.

Everything is real except the devices' hardware: the model is trained by the pipeline with its defaults
(bench/pipeline_models.py) and baked as v1, v2 and v3; a real OCI registry (docker-registry) behind a counting
proxy; a real Mosquitto broker with one user per device and the fleet ACL; a real TUF trust site (approvals need
2 of 3 approver keys), its metadata served over HTTP. The N devices are the real agent (otaml/local_fleet.py:
threads of this process, each with its own state, id, groups, platform, broker user, TUF client and registry
client) on the light process runtime: each serves its model as a real ``python -m edge_runtime serve`` process
behind a TCP forwarder. Half of them are ``hw=pi4`` (platform linux/arm64), half ``hw=x86`` (linux/amd64).
``--containerd-devices`` more (3 by default; root) are the whole device as deployed: ``otaml agent run`` processes
on a private real containerd (a namespace each), serving in confined containers behind an iptables redirect, with
the load on them; the versions are then baked on the real runtime image (images/build-runtime.sh), so every device
runs the same approved digests.

1. v1 is approved; every device installs it.
2. The good rollout: v2 approved and started with ``--waves`` and ``--soak``; the controller
   (``RolloutService.step`` over the broker's retained states, every ``--step`` s) advances it; load runs against
   the containerd devices' public ports (or, without them, ``--load-devices`` light devices') throughout,
   counting failed requests.
3. The bad rollout: v3 is baked onto a base with no linux/arm64 image, so pi4 devices refuse it while x86 ones
   take it. It must halt after its first wave, and the wave's devices must return to v2. The default first wave is
   5 %: a 1 % wave of 200 devices holds about 2, often no pi4 at all (then the halt comes one wave later).
4. Idle: ``--idle`` s with nothing to do, to measure what an idle device costs (MQTT bytes, registry requests).
   The window is one heartbeat long by default (``--heartbeat``, the agent's 900 s): a device re-publishes its
   unchanged state once per heartbeat (checked every min(heartbeat / 4, 60) s, so 900–960 s apart), so a window
   of that length holds about one of each device's (a device may fall just outside: a slight undercount). The MQTT
   figure is the payload the devices' reporters publish (states, events, heartbeats), without MQTT and TCP framing
   (``bench/bench_reporter.py`` measures one device's idle bytes on the wire); with ``--idle`` shorter than the
   heartbeat it is not measured (null).

The TUF metadata is published to the served directory the way a CDN upload is done: changed files first,
``timestamp.json`` last, so a device never sees half a publication (an approval and the rollout that holds it
back are one publication).

Usage: ``sudo .venv/bin/python bench/bench_fleet.py --devices 200 [--json]`` (``--containerd-devices 0``: no root
needed). JSON keys: devices, waves,
good_rollout_seconds, good_rollout_reached, bad_rollout_halted, bad_rollout_devices_affected, failed_requests,
broker_bytes_per_device_hour (null when ``--idle`` is shorter than ``--heartbeat``), heartbeat_s, containerd_devices,
registry_requests_per_device_hour. Details (CPU, memory, per-phase counts) go to
stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_models import train_default_models
from proctree import TreeMonitor

from otaml.ports import block, start_at

MODEL = "bench"
REPO = "otaml/bench"
CHANNEL = "production"
FLEET = "bench"


# ── counting servers ────────────────────────────────────────────────────────────────────────────────────────
class Counts:
    """Requests seen by a counting server, by method and kind; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: Counter[str] = Counter()
        self.bytes_out = 0

    def add(self, kind: str, size: int) -> None:
        with self.lock:
            self.by_kind[kind] += 1
            self.bytes_out += size

    def total(self) -> int:
        with self.lock:
            return sum(self.by_kind.values())

    def snapshot(self) -> tuple[Counter[str], int]:
        with self.lock:
            return Counter(self.by_kind), self.bytes_out


def _kind(method: str, path: str) -> str:
    for part in ("manifests", "blobs", "tags"):
        if f"/{part}/" in path:
            return f"{method} {part}"
    return f"{method} other"


class RegistryProxy:
    """An HTTP proxy in front of the registry that counts every request the devices make."""

    def __init__(self, upstream: str) -> None:
        self.counts = Counts()
        host, port = upstream.rsplit(":", 1)
        counts = self.counts

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                counts.add(_kind(self.command, self.path), len(data))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", response.getheader("Content-Length") or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MetadataServer:
    """Serves the published TUF metadata directory, counting requests and bytes (the metadata traffic)."""

    def __init__(self, directory: Path) -> None:
        self.counts = Counts()
        counts = self.counts

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def send_head(self) -> Any:
                f = super().send_head()
                name = self.path.rsplit("/", 1)[-1]
                size = os.fstat(f.fileno()).st_size if f is not None and hasattr(f, "fileno") else 0
                counts.add(name.split(".")[-2] if name.count(".") >= 1 else name, size)
                return f

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ── shards: the devices run in worker processes of --shard-size devices each ───────────────────────────────
# paho's network loop uses select(), which fails for file descriptors above 1023: a few hundred devices' sockets in
# one process cross that line, so the devices are spread over worker processes and the controller runs here.
class Shard:
    """A worker process running some devices (``--worker``); it reports through a stats file every 2 s."""

    def __init__(self, work: Path, index: int, config: dict[str, Any]) -> None:
        self.dir = work / "fleet" / f"shard-{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(config))
        self.stats_file = self.dir / "stats.json"
        self.log = open(self.dir / "worker.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(self.dir)], stdout=self.log, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
        )  # fmt: skip
        self.ids = [s["device_id"] for s in config["specs"]]

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class ShardedFleet:
    """The parent's view of the devices: versions and histories from their state files, the rest from the stats."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = shards

    def _state(self, shard: Shard, device_id: str) -> dict[str, Any]:
        try:
            path = shard.dir / "devices" / device_id / "state" / "state.json"
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}

    def states(self) -> dict[str, dict[str, Any]]:
        return {d: self._state(shard, d) for shard in self.shards for d in shard.ids}

    def versions(self) -> dict[str, str]:
        return {d: str((s.get("current") or {}).get("version") or "") for d, s in self.states().items()}

    def problems(self) -> list[str]:
        found = []
        for shard in self.shards:
            if shard.process.poll() is not None:
                found.append(f"{shard.dir.name}: the worker exited with {shard.process.returncode}")
            found += shard.stats().get("problems", [])
        return found

    def broker_bytes(self) -> int:
        return sum(int(shard.stats().get("broker_bytes", 0)) for shard in self.shards)

    def ports(self) -> list[int]:
        return [int(p) for shard in self.shards for p in shard.stats().get("ports", {}).values()]

    def cache(self) -> tuple[int, int]:
        return (
            sum(int(shard.stats().get("cache_fetched", 0)) for shard in self.shards),
            sum(int(shard.stats().get("cache_hits", 0)) for shard in self.shards),
        )

    def stop(self) -> None:
        for shard in self.shards:
            if shard.process.poll() is None:
                shard.process.send_signal(signal.SIGTERM)
        for shard in self.shards:
            shard.stop()


def worker(directory: Path) -> int:
    """Run the devices of ``directory/config.json`` until SIGTERM; write ``stats.json`` every 2 s."""
    from otaml.local_fleet import DeviceOptions, DeviceSpec, LocalFleet, quiet_agent_logs

    config = json.loads((directory / "config.json").read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    passwords = {k: Path(v) for k, v in config["passwords"].items()}
    o = config["options"]
    options = DeviceOptions(
        registry_url=o["registry_url"], repository=o["repository"], trust_url=o["trust_url"],
        trusted_root=Path(o["trusted_root"]), model=o["model"], broker_host=o["broker_host"],
        broker_port=int(o["broker_port"]), password_file=passwords.__getitem__, fleet=o["fleet"],
        channel=o["channel"], poll_interval_s=float(o["poll_interval_s"]), probation_s=float(o["probation_s"]),
    )  # fmt: skip
    quiet_agent_logs(directory / "agents.log")
    start_at(int(config["ports_from"]))  # a block of its own: the other workers pick ports too
    fleet = LocalFleet(directory, options, cache_dir=Path(config["cache"]))

    def write_stats() -> None:
        stats = {
            "broker_bytes": fleet.broker_bytes(),
            "problems": fleet.problems(),
            "ports": {d.spec.device_id: d.public_port for d in fleet.devices},
            "cache_fetched": fleet.cache.fetched,
            "cache_hits": fleet.cache.hits,
        }
        partial = directory / "stats.json.partial"
        partial.write_text(json.dumps(stats))
        partial.rename(directory / "stats.json")

    try:
        for spec in config["specs"]:
            if stop.is_set():
                break
            fleet.add(DeviceSpec(spec["device_id"], spec["groups"], spec["platform"]))
            write_stats()
            stop.wait(float(config["start_interval_s"]))
        while not stop.wait(2.0):
            write_stats()
    finally:
        fleet.stop()
    return 0


# ── the bench ──────────────────────────────────────────────────────────────────────────────────────────────
def platform_only(ref: str, platform: str, tag: str) -> str:
    """A copy of the index ``ref`` (pinned) holding only ``platform``'s image, tagged ``tag`` in the same repository;
    returns it pinned. The same layers: a version baked on it fails only on the devices of the other platforms."""
    from registry.oci.image import canonical_json
    from registry.oci.refs import close_store, open_store, parse_ref, pinned

    parsed = parse_ref(ref)
    store = open_store(parsed)
    try:
        data, media_type, _ = store.read_manifest(parsed.digest or parsed.tag or "latest")
        index = json.loads(data)
        keep = [
            m
            for m in index["manifests"]
            if "/".join(m.get("platform", {}).get(k, "") for k in ("os", "architecture")) == platform
        ]
        store.write_manifest(canonical_json({**index, "manifests": keep}), media_type, tag)
    finally:
        close_store(store)
    return pinned(f"{parsed.location()}:{tag}")


class ContainerdDevice:
    """One device as deployed: ``python -m edge_runtime agent run`` with its own state, containerd namespace, ports
    (public one behind an iptables redirect), broker user and ``[fleet]`` reporting; hw=x86 (this machine)."""

    def __init__(self, device_id: str, root: Path, public_port: int, agent: Any, containerd: Any) -> None:
        self.device_id = device_id
        self.root = root
        self.public_port = public_port
        self.agent = agent
        self.containerd = containerd  # the daemon, in this device's namespace

    @classmethod
    def start(
        cls, root: Path, device_id: str, options: Any, ctrd: Any, *, namespace: str, password_file: Path
    ) -> ContainerdDevice:
        from otaml.demo_device import AgentProcess, AgentSettings
        from otaml.ports import free_port

        root.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(3)]
        settings = AgentSettings(
            registry_url=options.registry_url,
            repository=options.repository,
            state_dir=root / "state",
            public_port=ports[0],
            private_ports=(ports[1], ports[2]),
            containerd_socket=ctrd.socket,
            namespace=namespace,
            channel=options.channel,
            trust_url=options.trust_url,
            trusted_root=options.trusted_root,
            model=options.model,
            poll_interval_s=options.poll_interval_s,
            probation_s=options.probation_s,
            extra={
                "device": {"id": device_id, "groups": {"hw": "x86"}},
                "fleet": {
                    "fleet": options.fleet,
                    "broker_host": options.broker_host,
                    "broker_port": options.broker_port,
                    "password_file": str(password_file),
                    "heartbeat_s": options.heartbeat_s,
                },
                "poll": {"jitter": options.poll_jitter},
            },
        )
        config = root / "agent.toml"
        config.write_text(settings.toml())
        agent = AgentProcess(config, settings.state_dir, root / "agent.log").start()
        return cls(device_id, root, ports[0], agent, ctrd._replace(namespace=namespace))

    def _state(self) -> Any:
        from otaml.demo_device import load_state

        return load_state(self.root / "state")

    def version(self) -> str:
        current = self._state().current
        return current.version if current is not None else ""

    def history(self) -> list[dict[str, Any]]:
        return list(self._state().history)

    def problem(self) -> str | None:
        return self.agent.problem()

    def stop(self) -> None:
        from edge_runtime.agent.handover import HandoverError, IptablesRedirect

        self.agent.stop()  # the service outlives its agent by design: remove it, and the redirect, here
        try:
            self.containerd.remove_all()
        except (subprocess.SubprocessError, OSError) as exc:
            print(f"bench_fleet: {self.device_id}: containers: {exc}", file=sys.stderr)
        try:
            IptablesRedirect(self.public_port).remove()
        except HandoverError as exc:
            print(f"bench_fleet: {self.device_id}: redirect: {exc}", file=sys.stderr)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, fleet: Any, step: float = 1.0) -> float:
    t0 = time.monotonic()
    while not predicate():
        if problems := fleet.problems():
            raise RuntimeError(f"while waiting for {what}: {problems[:3]}")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(step)
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20, help="device agents (default 20)")
    parser.add_argument("--waves", default="5,20,50,100", help="rollout waves, cumulative %% (default 5,20,50,100)")
    parser.add_argument(
        "--soak", type=float, default=60.0, help="soak of each wave, s (default 60; otaml rollout start's is 600)"
    )
    parser.add_argument("--poll", type=float, default=15.0, help="device poll interval, s (±20%% jitter; default 15)")
    parser.add_argument("--probation", type=float, default=3.0, help="device probation, s (default 3)")
    parser.add_argument("--step", type=float, default=3.0, help="controller interval, s (default 3)")
    parser.add_argument(
        "--containerd-devices", type=int, default=3, help="devices on real containerd, under load (root; default 3)"
    )
    parser.add_argument("--load-devices", type=int, default=3, help="light devices under load without containerd")
    parser.add_argument("--rate", type=float, default=10.0, help="load per device under load, req/s (default 10)")
    parser.add_argument(
        "--heartbeat", type=float, default=900.0, help="devices' heartbeat, s (default 900, the agent's default)"
    )
    parser.add_argument(
        "--idle", type=float, default=None, help="idle window measured at the end, s (default: one heartbeat)"
    )
    parser.add_argument("--start-rate", type=float, default=4.0, help="devices started per second (default 4)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    parser.add_argument("--shard-size", type=int, default=50, help="devices per worker process (default 50)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    if not 1 <= args.heartbeat < 86_400:
        parser.error(f"--heartbeat {args.heartbeat:g}: give seconds from 1 to 86399 (the agent's default is 900)")
    if args.idle is not None and args.idle < args.heartbeat:
        print(
            f"bench_fleet: --idle {args.idle:g} is shorter than the heartbeat ({args.heartbeat:g} s): the idle MQTT "
            "figure would miss the heartbeats and is not measured (broker_bytes_per_device_hour: null)",
            file=sys.stderr,
        )

    def interrupted(_signum: int, _frame: object) -> None:  # SIGTERM cleans up like Ctrl-C: no orphan services
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    waves = tuple(int(w) for w in args.waves.split(","))
    say: Callable[[str], None] = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731

    from edge_runtime.trust.approval import Approval
    from otaml.loadgen import LoadGenerator
    from otaml.local_fleet import (
        PI4,
        X86,
        DeviceOptions,
        fleet_specs,
        minimal_base,
        publish_metadata,
        quiet_agent_logs,
    )
    from otaml.localstack import LocalBroker, LocalContainerd, LocalRegistry, build_runtime_image, missing_tools
    from registry.bake import bake
    from registry.fleet.collect import collect
    from registry.fleet.rollout import RolloutService, SnapshotStateSource, TufRecordStore
    from registry.oci.refs import parse_ref, pinned
    from registry.tuf import keys
    from registry.tuf.site import TrustSite, init

    if args.containerd_devices and (os.geteuid() != 0 or missing_tools((*LocalContainerd.TOOLS, "iptables"))):
        print(
            "bench_fleet: --containerd-devices needs root with containerd, runc and iptables "
            "(sudo scripts/host-deps.sh); run as root, or pass --containerd-devices 0",
            file=sys.stderr,
        )
        return 2
    # Each process hands out service ports from a block of its own (3 per device; the workers start in parallel).
    port_block = max(1000, 4 * args.shard_size)
    start_at(block(0, port_block))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-fleet-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    monitor = TreeMonitor(os.getpid(), interval=0.5).__enter__()
    specs = fleet_specs(args.devices)
    ctr_ids = [f"ctr-{i}" for i in range(args.containerd_devices)]
    registry = LocalRegistry(work / "registry")
    broker = LocalBroker(work / "mqtt", devices=[s.device_id for s in specs] + ctr_ids)
    containerd = LocalContainerd(work / "containerd", "bench") if ctr_ids else None
    ctr_devices: list[ContainerdDevice] = []
    undo_logs = quiet_agent_logs(work / "agents.log")
    proxy: RegistryProxy | None = None
    meta: MetadataServer | None = None
    fleet: ShardedFleet | None = None
    loads: list[Any] = []
    try:
        upstream = registry.start()
        proxy = RegistryProxy(upstream)
        instance = broker.start()
        say(
            f"registry {upstream} (devices use the counting proxy {proxy.address}), "
            f"broker {instance.host}:{instance.port}"
        )
        say("training the default models with the pipeline …")
        models = train_default_models(work / "trained", model_name=MODEL)
        bundle = models.bundles[models.chosen]
        readings = json.loads((bundle / "model.json").read_text())["golden"]["readings"]
        if containerd is None:
            base_all = pinned(minimal_base(work / "base-all", (X86, PI4)))
            base_x86 = pinned(minimal_base(work / "base-x86", (X86,)))
        else:
            ctrd = containerd.start()
            say(f"containerd {ctrd.socket}; building/pushing the real runtime image (cached under ~/.cache/otaml) …")
            build_runtime_image(push=f"{upstream}/otaml/runtime:base", log=work / "build-runtime.log")
            base_all = pinned(f"{upstream}/otaml/runtime:base")
            base_x86 = platform_only(base_all, X86, "base-amd64")

        trust = init(work / "trust", work / "keys")
        site = TrustSite(trust.site.path)
        served = work / "served-metadata"
        publish_metadata(site.metadata_dir, served)
        meta = MetadataServer(served)
        first, second = (keys.load_signer(p) for p in trust.approver_keys[:2])

        def bake_and_approve(version: int, base: str) -> str:
            version_dir = work / "bundles" / f"v{version}"
            shutil.copytree(bundle, version_dir)
            card = json.loads((version_dir / "model.json").read_text())
            card["version"] = str(version)
            (version_dir / "model.json").write_text(json.dumps(card))
            baked = bake(base, version_dir, f"{upstream}/{REPO}", tag=f"model-v{version}")
            with site.locked() as repo:
                repo.propose(
                    Approval(
                        channel=CHANNEL,
                        model=MODEL,
                        version=version,
                        digest=baked.digest,
                        length=baked.index_size,
                        base_digest=parse_ref(base).digest or "",
                        staged=repo.stages(CHANNEL, MODEL, version),  # as `otaml promote` approves it
                    ),
                    first,
                )
                repo.approve_pending(second)
            return baked.digest

        say("v1: baked, approved by 2 of 3 approvers, published")
        bake_and_approve(1, base_all)
        publish_metadata(site.metadata_dir, served)

        options = DeviceOptions(
            registry_url=f"http://{proxy.address}",
            repository=REPO,
            trust_url=meta.url,
            trusted_root=trust.trusted_root,
            model=MODEL,
            broker_host=instance.host,
            broker_port=instance.port,
            password_file=broker.password_file,
            fleet=FLEET,
            channel=CHANNEL,
            poll_interval_s=args.poll,
            probation_s=args.probation,
            heartbeat_s=args.heartbeat,
        )
        t0 = time.monotonic()
        shards = []
        count = -(-len(specs) // args.shard_size)
        for index in range(count):
            part = specs[index::count]
            shards.append(
                Shard(
                    work,
                    index,
                    {
                        "options": {
                            k: str(v) if isinstance(v, Path) else v
                            for k, v in vars(options).items()
                            if k != "password_file"
                        },
                        "passwords": {s.device_id: str(broker.password_file(s.device_id)) for s in part},
                        "specs": [
                            {"device_id": s.device_id, "groups": dict(s.groups), "platform": s.platform} for s in part
                        ],
                        "cache": str(work / "fleet" / "blob-cache"),
                        "start_interval_s": count / args.start_rate,
                        "ports_from": block(index + 1, port_block),
                    },
                )
            )
        fleet = ShardedFleet(shards)
        say(f"{len(specs)} devices starting in {count} worker processes; waiting for v1 everywhere …")
        for i, device_id in enumerate(ctr_ids):
            ctr_devices.append(
                ContainerdDevice.start(
                    work / "ctr-devices" / device_id,
                    device_id,
                    options,
                    ctrd,
                    namespace=f"bench-{i}",
                    password_file=broker.password_file(device_id),
                )
            )
        if ctr_devices:
            say(f"{len(ctr_devices)} devices on real containerd: {', '.join(ctr_ids)}")

        def versions() -> dict[str, str]:
            return {**fleet.versions(), **{d.device_id: d.version() for d in ctr_devices}}

        def problems() -> list[str]:
            return fleet.problems() + [p for d in ctr_devices if (p := d.problem()) is not None]

        install_s = wait_until(
            lambda: all(v == "1" for v in versions().values()), 60 + 3 * len(specs) + 120 * len(ctr_ids), "v1", fleet
        )
        say(f"v1 serves on every device ({time.monotonic() - t0:.0f} s after the first start)")

        password = broker.password("controller")

        def snapshot() -> Any:
            return collect(instance.host, instance.port, FLEET, password=password, timeout_s=30)

        service = RolloutService(TufRecordStore(site.open(), site.rollouts_signer()), SnapshotStateSource(snapshot))

        def drive(what: str, timeout_s: float) -> str:
            """Step the controller until the rollout completes or halts; returns its final state."""
            deadline = time.monotonic() + timeout_s
            while True:
                for result in service.step():
                    if result.published:
                        say(f"  {what}: {result.decision.action}: {result.decision.reason[:160]}")
                publish_metadata(site.metadata_dir, served)
                record = service.store.get(CHANNEL, MODEL)
                if record is not None and record.state in ("completed", "halted", "aborted"):
                    return record.state
                if found := problems():
                    raise RuntimeError(f"{what}: {found[:3]}")
                if time.monotonic() > deadline:
                    return record.state if record is not None else "none"
                time.sleep(args.step)

        load_ports = [d.public_port for d in ctr_devices] or fleet.ports()[: args.load_devices]
        for port in load_ports:
            load = LoadGenerator(port, readings, rate=args.rate, workers=2)
            loads.append(load.start())
        on = "containerd" if ctr_devices else "light"
        say(f"load: {args.rate:g} req/s on each of {len(loads)} {on} devices")

        # ── the good rollout ──
        bake_and_approve(2, base_all)
        service.start(MODEL, 2, channel=CHANNEL, waves=waves, max_failure_rate=0.05, soak_s=args.soak)
        publish_metadata(site.metadata_dir, served)  # the (staged) approval and its rollout
        good_t0 = time.monotonic()
        say(f"good rollout of v2 started: waves {waves}, soak {args.soak:g} s")
        good_state = drive("v2", timeout_s=len(waves) * (args.soak + 4 * args.poll) + 300)
        budget = len(waves) * args.soak + 60
        try:
            wait_until(lambda: all(v == "2" for v in versions().values()), 120, "v2 everywhere", fleet)
        except TimeoutError as exc:
            say(f"  {exc}")
        good_s = time.monotonic() - good_t0
        now = versions()
        reached = sum(v == "2" for v in now.values()) / len(now)
        say(
            f"good rollout: {good_state}, {reached:.1%} on v2 after {good_s:.0f} s "
            f"(goal: soak×waves + 60 = {budget:.0f} s)"
        )

        # ── the bad rollout ──
        v3 = bake_and_approve(3, base_x86)
        record = service.start(MODEL, 3, channel=CHANNEL, waves=waves, max_failure_rate=0.05, soak_s=args.soak)
        publish_metadata(site.metadata_dir, served)
        say(f"bad rollout of v3 (no linux/arm64 image) started: {record.rollout_id}")
        bad_state = drive("v3", timeout_s=len(waves) * (args.soak + 4 * args.poll) + 300)
        final = service.store.get(CHANNEL, MODEL)
        halted_wave = final.wave if final is not None else -1
        say(f"bad rollout: {bad_state} in wave {halted_wave + 1}: {final.reason if final else ''}"[:400])
        groups = {s.device_id: dict(s.groups) for s in specs} | {d: {"hw": "x86"} for d in ctr_ids}
        in_first_wave = {d for d, g in groups.items() if record.version_for(d, g) == 3}
        try:
            wait_until(lambda: all(v == "2" for v in versions().values()), 120, "v2 back everywhere", fleet)
        except TimeoutError as exc:
            say(f"  {exc}")
        histories = {d: state.get("history", []) for d, state in fleet.states().items()}
        histories |= {d.device_id: d.history() for d in ctr_devices}
        affected = sorted(d for d, history in histories.items() if any(h.get("digest") == v3 for h in history))
        say(
            f"  devices that tried v3: {len(affected)} ({', '.join(affected[:10])}); "
            f"its first wave held {len(in_first_wave)}"
        )
        failed = 0
        requests = 0
        for load in loads:
            load.stop()
            outcomes = load.outcomes()
            requests += len(outcomes)
            failed += sum(not o.ok for o in outcomes)
        say(f"load: {failed} failed of {requests} requests ({on} devices)")

        # ── idle ──
        idle = args.heartbeat if args.idle is None else args.idle
        time.sleep(min(30.0, idle / 4))  # the last steps' states and events reach the broker first
        say(f"idle window: {idle:g} s (heartbeat {args.heartbeat:g} s)")
        reg0, meta0, mqtt0 = proxy.counts.snapshot(), meta.counts.snapshot(), fleet.broker_bytes()
        time.sleep(idle)
        reg1, meta1, mqtt1 = proxy.counts.snapshot(), meta.counts.snapshot(), fleet.broker_bytes()
        hours = idle / 3600
        n = len(specs) + len(ctr_devices)
        reg_requests = sum((reg1[0] - reg0[0]).values())
        say(
            f"  registry requests: {dict(reg1[0] - reg0[0])}; TUF metadata requests: {dict(meta1[0] - meta0[0])}, "
            f"{meta1[1] - meta0[1]} bytes; MQTT payload bytes {mqtt1 - mqtt0}"
        )
        say(
            f"  whole run: registry {dict(reg1[0])}; metadata {dict(meta1[0])} ({meta1[1]} bytes); "
            f"MQTT payload {mqtt1} bytes"
        )
        say(
            f"  this process tree: peak RSS {monitor.peak_mb:.0f} MB, CPU {monitor.cpu_seconds():.0f} s; "
            f"blob cache (fetched, hits): {fleet.cache()}; v1 install took {install_s:.0f} s"
        )
        figures = {
            "devices": n,
            "waves": list(waves),
            "good_rollout_seconds": round(good_s, 1),
            "good_rollout_reached": round(reached, 4),
            "bad_rollout_halted": bad_state == "halted" and halted_wave == 0,
            "bad_rollout_devices_affected": len(affected),
            "failed_requests": failed,
            # The light devices' published payload; a window shorter than a heartbeat would miss the heartbeats.
            "broker_bytes_per_device_hour": round((mqtt1 - mqtt0) / max(len(specs), 1) / hours)
            if idle >= args.heartbeat
            else None,
            "heartbeat_s": args.heartbeat,
            "containerd_devices": len(ctr_devices),
            "registry_requests_per_device_hour": round(reg_requests / n / hours, 1),
        }
        if args.json:
            print(json.dumps(figures))
        else:
            for key, value in figures.items():
                print(f"{key:36} {value}")
        return 0
    finally:
        for load in loads:
            load.stop()
        if fleet is not None:
            fleet.stop()
        for device in ctr_devices:
            device.stop()
        if containerd is not None:
            containerd.stop()
        for server in (proxy, meta):
            if server is not None:
                server.stop()
        broker.stop()
        registry.stop()
        monitor.__exit__(None, None, None)
        undo_logs()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
