"""The agent for real: containerd + runc, docker-registry, images baked by registry/bake.py on the real base
runtime image, the iptables redirect, and a load generator scoring against the public port throughout.

Failure images are made here: a bundle whose golden scores are wrong (the service's self-test refuses it, and
with ``OTAML_ON_GOLDEN_FAILURE=unready`` stays up but never ready), one whose model file is not ONNX (the
service exits at start), one too big for the memory limit. The fault matrix: canary failures, a canary that
never becomes ready, an image without the device's platform, a death and an OOM kill inside probation, the
registry answering 500, vanishing mid-pull or corrupting a blob, containerd restarted mid-update, and the
agent process itself SIGKILLed at each persisted phase and restarted. Every case runs under load and ends
with one healthy serving container of the expected version, the right digests blocked, and the failed
requests of its own phase counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.agent.canary import HttpProber
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.ctr import CtrRuntime
from edge_runtime.agent.handover import IptablesRedirect
from edge_runtime.agent.policy import NoDowngrade
from edge_runtime.agent.reconcile import Reconciler, UpdateReport
from edge_runtime.agent.source import RegistrySource
from edge_runtime.agent.state import StateStore
from otaml.loadgen import LoadGenerator
from otaml.ports import free_port
from tests.conftest import require

pytestmark = pytest.mark.containerd

REPO = "otaml/agent-e2e"
# Readings in the fixture bundles' sensor order (three sensors).
READINGS = [[60.0, 0.5, 3.0], [61.0, 0.52, 3.01]]
# Image name -> model version (tag model-v<N>): two good ones, then the failure images.
VERSIONS = {
    "v1": 1,
    "v2": 2,
    "golden-bad": 3,
    "crash": 4,
    "too-big": 5,
    "unpulled": 6,
    "k7": 7,
    "k8": 8,
    "k9": 9,
    "vanish": 11,
}


@dataclass(frozen=True)
class Images:
    registry: str
    digests: dict[str, str]  # name -> index digest
    sizes: dict[str, int]  # name -> index size (what an approval signs with the digest)
    base_digest: str

    def tag(self, name: str) -> str:
        return f"{self.registry}/{REPO}:model-v{VERSIONS[name]}"


def _bad_golden(bundle_dir: Path) -> None:
    card_path = bundle_dir / "model.json"
    card = json.loads(card_path.read_text())
    card["version"] = "3"
    card["golden"]["scores"] = [s + 0.5 for s in card["golden"]["scores"]]
    card_path.write_text(json.dumps(card))


def _not_onnx(bundle_dir: Path) -> None:
    junk = b"this is not an ONNX model" * 10
    (bundle_dir / "model.onnx").write_bytes(junk)
    card_path = bundle_dir / "model.json"
    card = json.loads(card_path.read_text())
    card["version"] = "4"
    card["onnx"]["sha256"] = hashlib.sha256(junk).hexdigest()
    card_path.write_text(json.dumps(card))


def _too_big(bundle_dir: Path) -> None:
    """Add 192 MB of (zero) weights the graph really uses: loading them cannot fit a 100 MB container."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(bundle_dir / "model.onnx")
    graph = model.graph
    producer = next(node for node in graph.node if "score" in node.output)
    producer.output[list(producer.output).index("score")] = "otaml_score_raw"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros(48 * 1024 * 1024, np.float32), "otaml_ballast"),
            numpy_helper.from_array(np.zeros((), np.float32), "otaml_zero"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["otaml_ballast"], ["otaml_ballast_sum"], keepdims=0),
            helper.make_node("Mul", ["otaml_ballast_sum", "otaml_zero"], ["otaml_nothing"]),
            helper.make_node("Add", ["otaml_score_raw", "otaml_nothing"], ["score"]),
        ]
    )
    data = model.SerializeToString()
    (bundle_dir / "model.onnx").write_bytes(data)
    card_path = bundle_dir / "model.json"
    card = json.loads(card_path.read_text())
    card["onnx"]["sha256"] = hashlib.sha256(data).hexdigest()
    card["version"] = "5"
    card_path.write_text(json.dumps(card))


@pytest.fixture(scope="module")
def agent_base_ref(oci_registry: str, request: pytest.FixtureRequest) -> str:
    """The base runtime image: ``runtime_base_ref``, or a prebuilt one named by OTAML_AGENT_BASE_IMAGE
    (``docker://HOST/REPO:TAG``, copied into the fixture registry) to skip the image build locally."""
    prebuilt = os.environ.get("OTAML_AGENT_BASE_IMAGE", "")
    if not prebuilt:
        return str(request.getfixturevalue("runtime_base_ref"))
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    ref = f"{oci_registry}/otaml/agent-base:prebuilt"
    subprocess.run(
        ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", prebuilt, f"docker://{ref}"],
        check=True,
        capture_output=True,
    )
    return ref


@pytest.fixture(scope="module")
def images(oci_registry: str, agent_base_ref: str, tmp_path_factory: pytest.TempPathFactory) -> Images:
    from registry.bake import bake
    from tests.fixtures.bundles import build_bundle

    root = tmp_path_factory.mktemp("agent-bundles")
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for name, version, seed, spoil in (
        ("v1", "1", 0, None),
        ("v2", "2", 1, None),
        ("golden-bad", "2", 2, _bad_golden),
        ("crash", "2", 3, _not_onnx),
        ("too-big", "2", 4, _too_big),
        ("unpulled", "6", 5, None),  # pulled by no other test: containerd shares blobs across namespaces
        ("k7", "7", 6, None),
        ("k8", "8", 7, None),
        ("k9", "9", 8, None),
        ("vanish", "11", 9, None),  # pulled only by the registry-vanishing test (its layer is fetched for real)
    ):
        bundle = build_bundle(root / name, version=version, seed=seed)
        if spoil is not None:
            spoil(bundle.path)
        result = bake(agent_base_ref, bundle.path, f"{oci_registry}/{REPO}", force=True)
        digests[name] = result.index_digest
        sizes[name] = result.index_size
    return Images(oci_registry, digests, sizes, result.manifests[0].base_manifest_digest)


@pytest.fixture(scope="module")
def iptables() -> None:
    require(os.geteuid() == 0, "root", "the agent's redirect needs CAP_NET_ADMIN")
    require(shutil.which("iptables") is not None, "iptables", "apt-get install -y iptables")
    probe = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "OUTPUT"], capture_output=True, check=False)
    require(probe.returncode == 0, "iptables nat table", probe.stderr.decode(errors="replace"))


@dataclass
class Device:
    agent: Reconciler
    runtime: CtrRuntime
    switch: IptablesRedirect
    config: AgentConfig
    images: Images

    def move_channel(self, name: str) -> str:
        from registry.bake import tag

        return tag(self.images.tag(name), self.config.channel, force=True)

    def running(self) -> list[str]:
        return [c.name for c in self.runtime.list_containers() if c.running]

    def reconfigure(self, **changes: Any) -> AgentConfig:
        """Change the agent's settings from now on (as an edited agent.toml and a restart would)."""
        from dataclasses import replace

        self.config = replace(self.config, **changes)
        self.agent.config = self.config
        return self.config

    def fresh_agent(self) -> Reconciler:
        """A new agent over the same device (state file, containerd, redirect): what a restart builds."""
        self.agent = Reconciler(
            self.config,
            StateStore(self.config.state_dir),
            self.agent.source,
            self.runtime,
            IptablesRedirect(self.config.public_port),
            HttpProber(timeout_s=2),
            NoDowngrade(),
        )
        return self.agent

    def load(self) -> LoadGenerator:
        return LoadGenerator(self.config.public_port, READINGS, rate=50, workers=4)


@pytest.fixture
def device(
    containerd: object, images: Images, iptables: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Device]:
    socket = containerd.socket  # type: ignore[attr-defined]
    name = "e2e-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    a, b = free_port(), free_port()
    config = AgentConfig(
        registry_url=f"http://{images.registry}",
        repository=REPO,
        channel=f"chan-{name}",
        containerd_socket=socket,
        namespace=f"agent-{name}",
        public_port=free_port(),
        private_ports=(a, b),
        service_host="127.0.0.1",
        drain_s=2,
        stop_timeout_s=10,
        switch_grace_s=1,
        probation_s=6,
        ready_timeout_s=90,
        health_interval_s=0.5,
        health_timeout_s=2,
        unhealthy_after=2,
        state_dir=tmp_path / "state",
    )
    runtime = CtrRuntime(socket, config.namespace, plain_http=True, log_dir=tmp_path / "logs")
    switch = IptablesRedirect(config.public_port)
    source = RegistrySource.connect(config.registry_url, REPO, config.channel, 10)
    agent = Reconciler(
        config, StateStore(config.state_dir), source, runtime, switch, HttpProber(timeout_s=2), NoDowngrade()
    )
    device = Device(agent, runtime, switch, config, images)
    try:
        yield device
    finally:
        for c in runtime.list_containers():
            runtime.stop(c.name, 0)
        switch.remove()
        source.client.close()


def install_v1(device: Device) -> None:
    device.move_channel("v1")
    assert device.agent.recover().outcome == "recovered"
    # A first install has nothing to roll back to: skip its probation (set-up time of every case here).
    probation = device.config.probation_s
    device.reconfigure(probation_s=0)
    report = device.agent.reconcile()
    device.reconfigure(probation_s=probation)
    assert report.outcome == "updated", said(report)
    assert len(device.running()) == 1


def said(report: UpdateReport) -> str:
    """A report as an assertion message, why first (pytest cuts long messages short)."""
    r = report
    return f"{r.outcome} at {r.step} ({r.reason}): {r.error}; version {r.version} {r.digest}; {r.actions}"


def assert_serving(device: Device, version: str, load: LoadGenerator) -> None:
    assert len(device.running()) == 1, device.running()
    assert len(device.runtime.list_containers()) == 1
    state = device.agent.state
    assert state.current is not None
    assert state.current.version == version
    assert state.phase == "idle"
    assert device.switch.target() == state.current.port
    assert load.last_version() == version
    assert load.report().total.ok > 0


def cgroup_limits(pid: int) -> tuple[int, float]:
    """(memory limit in bytes, CPUs) of the cgroup ``pid`` runs in, cgroup v1 or v2."""
    root = Path("/sys/fs/cgroup")
    paths: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    if "memory" in paths:  # v1: one hierarchy per controller (cpu may be mounted as cpu or cpu,cpuacct)
        memory = int((root / "memory" / paths["memory"] / "memory.limit_in_bytes").read_text())
        cpu_dir = next(d / paths["cpu"] for d in (root / "cpu", root / "cpu,cpuacct") if (d / paths["cpu"]).exists())
        quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
        period = int((cpu_dir / "cpu.cfs_period_us").read_text())
    else:  # v2: one unified hierarchy
        unified = root / paths[""]
        memory = int((unified / "memory.max").read_text())
        quota_text, period_text = (unified / "cpu.max").read_text().split()
        quota, period = int(quota_text), int(period_text)
    return memory, quota / period


def task_pid(device: Device, name: str) -> int:
    return int(next(line.split()[1] for line in device.runtime._lines(["task", "ls"])[1:] if line.split()[0] == name))


def test_update_v1_to_v2_fails_no_request(device: Device) -> None:
    install_v1(device)
    with device.load() as load:
        time.sleep(1)
        device.move_channel("v2")
        report = device.agent.reconcile()
        time.sleep(1.5)
    result = load.report()
    assert report.outcome == "updated", said(report)
    assert result.total.failed == 0, result.errors[:5]
    assert set(result.versions) == {"1", "2"}
    assert_serving(device, "2", load)
    # The new container runs as the image's non-root user, with no new privileges and the memory limit.
    state = device.agent.state
    assert state.current is not None
    pid = next(
        line.split()[1]
        for line in device.runtime._lines(["task", "ls"])[1:]
        if line.split()[0] == state.current.container
    )
    status = Path(f"/proc/{pid}/status").read_text()
    # The limits the agent asked for are the ones the kernel enforces on the service's cgroup.
    assert cgroup_limits(int(pid)) == (device.config.memory_mb * 1024 * 1024, device.config.cpus)
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid != "0"
    assert "NoNewPrivs:\t1" in status
    with pytest.raises(OSError, match="Read-only file system"):  # even root cannot write the image's root
        Path(f"/proc/{pid}/root/opt/model/x").write_text("x")


# Run inside the serving container (``ctr task exec`` gives it the container's own process settings and cgroup):
# its confinement as the kernel reports it, and how many threads it may start before the pids limit says no.
CONFINEMENT_PROBE = """
import json, threading
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
started, stop = 0, threading.Event()
try:
    for _ in range(500):
        threading.Thread(target=stop.wait, daemon=True).start()
        started += 1
except RuntimeError:
    pass
stop.set()
keys = ("CapEff", "CapPrm", "CapBnd", "Seccomp", "NoNewPrivs", "Uid")
print(json.dumps({k: status[k].strip() for k in keys} | {"threads": started}))
"""


def test_the_service_container_is_confined(device: Device) -> None:
    install_v1(device)
    state = device.agent.state
    assert state.current is not None
    name = state.current.container
    group = device.runtime.pids_cgroup(name)
    assert int((group / "pids.max").read_text()) == device.runtime.pids_limit
    service_tasks = int((group / "pids.current").read_text())
    done = device.runtime._run(["task", "exec", "--exec-id", "probe", name, "python3", "-c", CONFINEMENT_PROBE])
    seen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert seen["CapEff"] == seen["CapPrm"] == seen["CapBnd"] == "0000000000000000"  # every capability dropped
    assert seen["Seccomp"] == "2"  # a seccomp filter is installed (containerd's default profile)
    assert seen["NoNewPrivs"] == "1"
    assert seen["Uid"].split()[0] != "0"
    # The probe's main thread and the service's tasks share the limit: it stops exactly where the cgroup says.
    assert seen["threads"] == device.runtime.pids_limit - service_tasks - 1
    assert service_tasks < device.runtime.pids_limit // 2  # the service itself has headroom under the limit
    # The service, in the same cgroup, still answers after the probe ran into the limit.
    assert HttpProber(timeout_s=2).ready(state.current.port)


@pytest.mark.parametrize(
    ("image", "words", "env"),
    [
        ("golden-bad", "golden", {}),
        ("crash", "exited", {}),
        ("too-big", "OOM-killed", {}),
        # Stays up, never ready (the service's self-test fails and it waits unready instead of exiting).
        ("golden-bad", "not ready on port", {"OTAML_ON_GOLDEN_FAILURE": "unready"}),
    ],
    ids=["golden-mismatch", "crash-at-start", "oom-at-start", "never-ready"],
)
def test_failed_canary_rolls_back_without_a_failed_request(
    device: Device, image: str, words: str, env: dict[str, str]
) -> None:
    install_v1(device)
    if env:
        device.reconfigure(service_env=env, ready_timeout_s=8)
    with device.load() as load:
        time.sleep(1)
        bad = device.move_channel(image)
        report = device.agent.reconcile()
        time.sleep(1)
    result = load.report()
    assert (report.outcome, report.step) == ("rolled_back", "canary"), said(report)
    assert words in report.error
    assert result.total.failed == 0, result.errors[:5]
    assert bad in device.agent.state.blocked
    assert set(result.versions) == {"1"}
    assert_serving(device, "1", load)
    assert device.config.image_ref(bad) not in device.runtime.list_images()
    assert device.agent.reconcile().outcome == "skipped"


def test_registry_down_keeps_serving_and_reports(device: Device) -> None:
    install_v1(device)
    working = device.agent.source
    device.agent.source = RegistrySource.connect(f"http://127.0.0.1:{free_port()}", REPO, device.config.channel, 2)
    with device.load() as load:
        device.move_channel("v2")
        reports = [device.agent.reconcile() for _ in range(2)]
        time.sleep(1)
    assert [(r.outcome, r.temporary) for r in reports] == [("error", True), ("error", True)]
    assert device.agent.state.consecutive_failures == 2
    assert "poll" in device.agent.state.last_error
    assert load.report().total.failed == 0, load.report().errors[:5]
    assert_serving(device, "1", load)
    device.agent.source = working
    assert device.agent.reconcile().outcome == "updated"


# A second process in the service's cgroup that allocates past the memory limit: with the service's
# oom_score_adj raised to 1000 the kernel's cgroup OOM killer picks the service.
HOG = "b = b'x' * (400 * 2**20)\nimport time\ntime.sleep(60)\n"


@pytest.mark.parametrize("blow", ["sigkill", "oom"])
def test_death_inside_probation_switches_back_to_the_warm_previous_container(device: Device, blow: str) -> None:
    install_v1(device)
    assert device.config.warm_rollback == "auto"  # the default: this machine has the memory, so it is warm
    struck: list[str] = []
    load = device.load()

    def strike() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = device.agent.state
            if state.phase == "probation" and state.current is not None and state.current.version == "2":
                time.sleep(1.0)
                name = state.current.container
                load.mark("probation-failure")
                if blow == "sigkill":
                    device.runtime._run(["task", "kill", "--signal", "SIGKILL", name], check=False)
                else:
                    Path(f"/proc/{task_pid(device, name)}/oom_score_adj").write_text("1000")
                    device.runtime._run(
                        ["task", "exec", "--exec-id", "hog", name, "python3", "-c", HOG], check=False, timeout=120
                    )
                struck.append(name)
                return
            time.sleep(0.02)

    with load:
        load.mark("update")
        striker = threading.Thread(target=strike, daemon=True)
        striker.start()
        bad = device.move_channel("v2")
        report = device.agent.reconcile()
        load.mark("after")
        time.sleep(1)
    striker.join()
    assert struck
    assert (report.outcome, report.step) == ("rolled_back", "probation"), said(report)
    assert ("was OOM-killed" if blow == "oom" else "exited") in report.error
    assert any("(warm " in action for action in report.actions), report.actions  # a redirect change, no restart
    assert bad in device.agent.state.blocked
    assert_serving(device, "1", load)
    counts = load.report()
    assert counts.phase("update").failed == 0, counts.errors
    assert counts.phase("after").failed == 0, counts.errors
    # Requests in flight on the dead container and those sent before the redirect moved back fail:
    # required at most 1 s of them (50 at 50 req/s); bench/bench_agent.py measures the figure.
    assert counts.phase("probation-failure").failed <= 50, counts.errors


def test_an_image_without_the_devices_platform_is_refused_and_never_pulled(device: Device) -> None:
    install_v1(device)
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    with device.load() as load:
        # Only the arm64 image of v2's index, pushed to the channel: a single-platform image for another platform.
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--override-arch",
                "arm64",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{device.images.tag('v2')}",
                f"docker://{device.images.registry}/{REPO}:{device.config.channel}",
            ],
            check=True,
            capture_output=True,
        )
        digest = device.agent.source.channel_digest()
        report = device.agent.reconcile()
        again = device.agent.reconcile()
        time.sleep(1)
    assert (report.outcome, report.step) == ("refused", "resolve"), said(report)
    assert "linux/arm64" in report.error
    assert device.config.platform in report.error
    assert again.outcome == "skipped"
    assert digest in device.agent.state.blocked
    assert device.config.image_ref(digest) not in device.runtime.list_images()
    assert load.report().total.failed == 0, load.report().errors
    assert_serving(device, "1", load)


class CorruptingProxy:
    """A registry front that flips one byte of a blob in ``corrupt`` on its way to the device (same length,
    wrong digest), answers every request with a 500 while ``failing`` is set, and vanishes in the middle of
    sending a blob in ``vanish`` (half the body, then the connection and the listener are gone) until
    :meth:`come_back`."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import socket
        from http.server import BaseHTTPRequestHandler

        proxy = self
        self.corrupt: set[str] = set()
        self.vanish: set[str] = set()
        self.served: list[str] = []
        self.failing = False

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                if proxy.failing:
                    body = b'{"errors": [{"code": "UNKNOWN", "message": "internal server error"}]}'
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                host, port = upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
                conn.request(self.command, self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                conn.close()
                digest = self.path.rsplit("/", 1)[-1]
                is_blob = self.command == "GET" and "/blobs/" in self.path and bool(body)
                if is_blob and digest in proxy.corrupt:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                    proxy.served.append(digest)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.end_headers()
                if is_blob and digest in proxy.vanish:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    proxy.served.append(digest)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    threading.Thread(target=proxy.close, daemon=True).start()
                    return
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = _forward

        self.handler = Handler
        self.port = 0
        self._serve()
        self.address = f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        from http.server import ThreadingHTTPServer

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def come_back(self) -> None:
        """Listen again on the same address (the registry is back)."""
        self.vanish.clear()
        self._serve()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _through_proxy(device: Device, proxy: CorruptingProxy) -> AgentConfig:
    """The device talks to the registry through the proxy, so image names carry the proxy's address."""
    config = device.reconfigure(registry_url=f"http://{proxy.address}")
    device.agent.source = RegistrySource.connect(config.registry_url, REPO, config.channel, 10)
    return config


def test_a_registry_answering_500_keeps_serving_backs_off_and_recovers(device: Device) -> None:
    proxy = CorruptingProxy(device.images.registry)
    try:
        _through_proxy(device, proxy)
        install_v1(device)
        device.move_channel("v2")
        proxy.failing = True
        with device.load() as load:
            reports = [device.agent.reconcile() for _ in range(2)]
            time.sleep(1)
        assert [(r.outcome, r.step, r.temporary) for r in reports] == [("error", "poll", True)] * 2
        assert device.agent.state.consecutive_failures == 2
        assert "500" in device.agent.state.last_error
        assert load.report().total.failed == 0, load.report().errors[:5]
        assert_serving(device, "1", load)
        proxy.failing = False
        assert device.agent.reconcile().outcome == "updated"
        assert device.agent.state.consecutive_failures == 0
    finally:
        device.agent.source.client.close()  # type: ignore[attr-defined]
        proxy.close()


def test_a_corrupt_blob_fails_the_pull_and_changes_nothing(device: Device) -> None:
    proxy = CorruptingProxy(device.images.registry)
    try:
        config = _through_proxy(device, proxy)
        install_v1(device)
        new = device.move_channel("unpulled")
        layer = device.agent.source.resolve(new, config.platform).layers[-1]
        proxy.corrupt.add(layer)
        with device.load() as load:
            report = device.agent.reconcile()
            time.sleep(1)
        assert (report.outcome, report.step) == ("error", "pull"), said(report)
        assert set(proxy.served) == {layer}  # it vanished mid-blob (ctr may have asked for the blob twice)
        assert "digest" in report.error
        assert new not in device.agent.state.blocked
        assert config.image_ref(new) not in device.runtime.list_images()
        assert load.report().total.failed == 0, load.report().errors[:5]
        assert_serving(device, "1", load)
        proxy.corrupt.clear()
        assert device.agent.reconcile().outcome == "updated"
    finally:
        device.agent.source.client.close()  # type: ignore[attr-defined]
        proxy.close()


def test_the_registry_vanishing_mid_pull_keeps_serving_and_retries_later(device: Device) -> None:
    proxy = CorruptingProxy(device.images.registry)
    try:
        config = _through_proxy(device, proxy)
        install_v1(device)
        new = device.move_channel("vanish")
        layer = device.agent.source.resolve(new, config.platform).layers[-1]
        proxy.vanish.add(layer)
        with device.load() as load:
            report = device.agent.reconcile()
            unreachable = device.agent.reconcile()  # the registry is still gone: the next poll fails too
            time.sleep(1)
        assert (report.outcome, report.step, report.temporary) == ("error", "pull", True), said(report)
        assert set(proxy.served) == {layer}  # it vanished mid-blob (ctr may have asked for the blob twice)
        assert (unreachable.outcome, unreachable.step, unreachable.temporary) == ("error", "poll", True)
        assert new not in device.agent.state.blocked  # the registry's fault, not the image's
        assert device.agent.state.attempts == {new: 1}
        assert config.image_ref(new) not in device.runtime.list_images()
        assert load.report().total.failed == 0, load.report().errors
        assert_serving(device, "1", load)
        proxy.come_back()
        assert device.agent.reconcile().outcome == "updated"
        assert device.agent.state.attempts == {}
    finally:
        device.agent.source.client.close()  # type: ignore[attr-defined]
        proxy.close()


# ── Approval (TUF): only images the fleet approved run; key rotation keeps devices updating ────────────────────


@dataclass
class TrustedFleet:
    """The fleet's trust site (``otaml trust init``: approvals need 2 of 3 keys), served over real HTTP."""

    site: Any
    keys: list[Any]  # the approvers' signers
    root_key: Any
    url: str

    def approve(self, device: Device, name: str, signers: list[Any] | None = None) -> str:
        """Approve image ``name`` with ``signers`` (default: the first two approvers); returns the state."""
        from edge_runtime.trust.approval import Approval
        from registry.tuf.site import TrustSite

        approval = Approval(
            channel=device.config.channel,
            model="pump-anomaly",
            version=VERSIONS[name],
            digest=device.images.digests[name],
            length=device.images.sizes[name],
            base_digest=device.images.base_digest,
        )
        first, *rest = signers or self.keys[:2]
        with TrustSite(self.site.path).locked() as repo:
            status = repo.propose(approval, first)
            for signer in rest:
                status = repo.approve_pending(signer)
        return str(status.state)


@pytest.fixture
def trusted(device: Device, tmp_path: Path) -> Iterator[TrustedFleet]:
    """The device follows the fleet's TUF repository through the real client (urllib3) and a real HTTP server."""
    from edge_runtime.agent.trust_policy import TrustPolicy
    from edge_runtime.trust.client import TrustClient, TrustSettings
    from otaml.static_http import StaticServer
    from registry.tuf import keys
    from registry.tuf.site import init

    made = init(tmp_path / "trust", tmp_path / "offline", approvers=3, threshold=2)
    with StaticServer(made.site.metadata_dir) as server:
        client = TrustClient(
            TrustSettings(metadata_url=server.url, trusted_root=made.trusted_root, metadata_dir=tmp_path / "tuf")
        )
        policy = TrustPolicy(client, device.config.channel, "pump-anomaly", "e2e-device", rollout=client.rollout)
        device.agent.trust = policy
        device.agent.policy = policy
        yield TrustedFleet(
            made.site,
            [keys.load_signer(p) for p in made.approver_keys],
            keys.load_signer(made.root_keys[0]),
            server.url,
        )


def skopeo_push(device: Device, name: str) -> None:
    """Someone without the keys points the channel at an image with a standard tool."""
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    src = f"docker://{device.images.tag(name)}"
    dest = f"docker://{device.images.registry}/{REPO}:{device.config.channel}"
    subprocess.run(
        ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        check=True,
        capture_output=True,
    )


def test_only_approved_images_run_and_a_rotated_key_keeps_the_fleet_updating(
    device: Device, trusted: TrustedFleet
) -> None:
    import copy

    from tuf.api.metadata import Metadata

    from registry.tuf import keys
    from registry.tuf.site import TrustSite

    assert trusted.approve(device, "v1") == "approved"
    device.agent.recover()
    first = device.agent.reconcile()
    assert first.outcome == "updated", said(first)
    with device.load() as load:
        # An image pushed onto the channel tag with skopeo is never pulled or run.
        skopeo_push(device, "unpulled")
        pushed = device.agent.reconcile()
        # One approver alone (below the threshold) approves nothing.
        assert trusted.approve(device, "v2", signers=trusted.keys[:1]) == "pending"
        pending = device.agent.reconcile()
        # The second pair of eyes completes it.
        with TrustSite(trusted.site.path).locked() as repo:
            repo.approve_pending(trusted.keys[1])
        approved = device.agent.reconcile()
        # Approver 1's key leaks: root rotates it out and a new key joins; approvals keep flowing.
        new_key = keys.generate()
        with TrustSite(trusted.site.path).locked() as repo:
            repo.rotate(
                "targets",
                add=[new_key.public_key],
                remove=[trusted.keys[0].public_key.keyid],
                root_signers=[trusted.root_key],
                role_signers=[new_key, trusted.keys[1]],
            )
        assert trusted.approve(device, "k7", signers=[new_key, trusted.keys[2]]) == "approved"
        rotated = device.agent.reconcile()
        # The leaked key plus one valid key no longer make a threshold: a forged publication is refused.
        with TrustSite(trusted.site.path).locked() as repo:
            forged = Metadata(copy.deepcopy(repo.targets().signed))
            forged.signed.version += 1
            forged.signed.targets.pop(next(iter(forged.signed.targets)))
            forged.sign(trusted.keys[0], append=True)
            forged.sign(trusted.keys[2], append=True)
            repo._publish(forged, previous_snapshot=repo.snapshot())
        refused = device.agent.reconcile()
        time.sleep(1)
    result = load.report()
    assert (pushed.outcome, pushed.digest) == ("unchanged", device.images.digests["v1"]), said(pushed)
    assert pending.outcome == "unchanged", said(pending)
    assert approved.outcome == "updated", said(approved)
    assert (rotated.outcome, rotated.version) == ("updated", "7"), said(rotated)
    assert (refused.outcome, refused.reason) == ("error", "bad-signature"), said(refused)
    assert device.config.image_ref(device.images.digests["unpulled"]) not in device.runtime.list_images()
    assert result.total.failed == 0, result.errors[:5]
    assert_serving(device, "7", load)


def test_prefetch_pulls_a_rollouts_candidate_before_the_devices_wave_and_the_wave_pulls_nothing(
    device: Device, trusted: TrustedFleet
) -> None:
    from edge_runtime.fleet.rollout import RolloutRecord, bucket
    from registry.tuf.site import TrustSite

    device.reconfigure(prefetch=True)
    rollout_id = next(f"r{i}" for i in range(1000) if bucket("e2e-device", f"r{i}") >= 10)  # outside wave 1
    assert trusted.approve(device, "v1") == "approved"
    device.agent.recover()
    assert device.agent.reconcile().outcome == "updated"
    assert trusted.approve(device, "v2") == "approved"
    record = RolloutRecord(
        rollout_id=rollout_id,
        model="pump-anomaly",
        channel=device.config.channel,
        version=VERSIONS["v2"],
        stable_version=VERSIONS["v1"],
        waves=(10, 100),
        wave=0,
    )
    site = TrustSite(trusted.site.path)
    with site.locked() as repo:
        repo.publish_rollout(record, site.rollouts_signer(), expected=None)
    v2 = device.config.image_ref(device.images.digests["v2"])
    with device.load() as load:
        ahead = device.agent.reconcile()
        fetched = v2 in device.runtime.list_images()
        serving_then = device.running()
        with site.locked() as repo:
            repo.publish_rollout(dataclasses.replace(record, wave=1), site.rollouts_signer(), expected=record)
        wave = device.agent.reconcile()
        time.sleep(1)
    assert ahead.outcome == "unchanged", said(ahead)
    assert any("pre-fetched v2" in a for a in ahead.actions), ahead.actions
    assert fetched
    assert len(serving_then) == 1, "fetched, not started"
    assert (wave.outcome, wave.version) == ("updated", "2"), said(wave)
    assert wave.bytes_pulled == 0, "the wave found every blob already in containerd's store"
    assert load.report().total.failed == 0
    assert_serving(device, "2", load)


def test_containerd_restarted_mid_update_converges_without_a_failed_request(
    device: Device, containerd_daemon: Any
) -> None:
    """containerd restarts while the agent pulls or starts the canary: the step fails or completes, the next
    one converges, and v1 keeps answering meanwhile (running containers survive a containerd restart)."""
    install_v1(device)
    reports = []
    with device.load() as load:
        device.move_channel("v2")
        restart = threading.Timer(0.3, containerd_daemon.restart)
        restart.start()
        reports.append(device.agent.reconcile())
        restart.join()
        while reports[-1].outcome != "updated" and len(reports) < 4:
            reports.append(device.agent.reconcile())
        time.sleep(1)
    assert reports[-1].outcome == "updated", [said(r) for r in reports]
    assert load.report().total.failed == 0, load.report().errors[:5]
    assert_serving(device, "2", load)


# ── The agent process itself: `kill -9` at each persisted phase, then a restart ────────────────────────────────


def agent_toml(config: AgentConfig, path: Path) -> Path:
    """The device's settings as the agent.toml that `otaml agent run` reads (polling every 0.5 s)."""
    a, b = config.private_ports
    path.write_text(
        f'[registry]\nurl = "{config.registry_url}"\nrepository = "{config.repository}"\nchannel = "{config.channel}"\n'
        "[poll]\ninterval_s = 0.5\njitter = 0\nbackoff_base_s = 0.5\nbackoff_max_s = 2\n"
        f'[containerd]\nsocket = "{config.containerd_socket}"\nnamespace = "{config.namespace}"\n'
        f'[service]\npublic_port = {config.public_port}\nprivate_ports = [{a}, {b}]\nhost = "{config.service_host}"\n'
        f"drain_s = {config.drain_s:g}\nstop_timeout_s = {config.stop_timeout_s:g}\n"
        f"switch_grace_s = {config.switch_grace_s:g}\n"
        f"[update]\nprobation_s = 3\nready_timeout_s = {config.ready_timeout_s:g}\n"
        f"health_interval_s = {config.health_interval_s:g}\nunhealthy_after = {config.unhealthy_after}\n"
        f'[agent]\nstate_dir = "{config.state_dir}"\n'
        "[trust]\ninsecure = true\n"  # this test drives the channel tag; the TUF path has its own test
    )
    return path


def start_agent(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "agent", "run", "--config", str(config_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kill_at_phase(agent: subprocess.Popen[bytes], state_dir: Path, phase: str, digest: str) -> dict[str, Any]:
    """SIGKILL ``agent`` as soon as its state file says it is in ``phase`` of the update to ``digest``."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and agent.poll() is None:
        state = read_state(state_dir)
        moving = (state.get("current") if phase == "probation" else state.get("candidate")) or {}
        if state.get("phase") == phase and moving.get("digest") == digest:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
            return state
        time.sleep(0.002)  # the shortest phase (handover: a few iptables calls) lasts tens of ms
    raise AssertionError(f"the agent never reached phase {phase!r} of {digest} (exit code {agent.poll()})")


KILL_PHASES = {"pulling": "v2", "canary": "k7", "handover": "k8", "probation": "k9"}


def test_the_agent_process_killed_at_each_persisted_phase_converges_after_a_restart(
    device: Device, tmp_path: Path
) -> None:
    """A real `kill -9` of `otaml agent run` in each phase an update persists; the restarted agent recovers to
    exactly one healthy container (the previous version), counts the interrupted attempt, then updates."""
    install_v1(device)
    config_file = agent_toml(device.config, tmp_path / "agent.toml")
    state_dir = device.config.state_dir
    agents: list[subprocess.Popen[bytes]] = []
    try:
        with device.load() as load:
            for phase, name in KILL_PHASES.items():
                version = str(VERSIONS[name])
                load.mark(f"kill-at-{phase}")
                agents.append(start_agent(config_file, tmp_path / "agent.log"))
                digest = device.move_channel(name)
                at_kill = kill_at_phase(agents[-1], state_dir, phase, digest)
                agents.append(start_agent(config_file, tmp_path / "agent.log"))

                def converged(version: str = version) -> bool:
                    state = read_state(state_dir)
                    return state.get("phase") == "idle" and (state.get("current") or {}).get("version") == version

                deadline = time.monotonic() + 240
                while not converged() and time.monotonic() < deadline:
                    time.sleep(0.1)
                agents[-1].send_signal(signal.SIGTERM)  # stops after the current step
                assert agents[-1].wait(timeout=120) == 0
                assert converged(), (phase, read_state(state_dir))
                assert at_kill["phase"] == phase
                agent = device.fresh_agent()
                recovered = [h for h in agent.state.history if h.get("outcome") == "recovered"]
                assert any(f"abandon {digest} ({phase})" in a for a in recovered[-1]["actions"]), recovered[-1]
                assert digest not in agent.state.blocked
                assert agent.state.attempts == {}  # the update went through: the interrupted attempt is forgotten
                assert len(device.running()) == 1, (phase, device.running())
            load.mark("after")
            time.sleep(1)
        counts = load.report()
        for phase in KILL_PHASES:
            assert counts.phase(f"kill-at-{phase}").failed == 0, (phase, counts.errors)
            assert counts.phase(f"kill-at-{phase}").ok > 0
        assert_serving(device, str(VERSIONS["k9"]), load)
    finally:
        for agent_process in agents:
            if agent_process.poll() is None:
                agent_process.kill()
                agent_process.wait()
