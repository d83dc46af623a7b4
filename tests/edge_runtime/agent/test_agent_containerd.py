"""The agent for real: containerd + runc, docker-registry, images baked by registry/bake.py on the real base
runtime image, the iptables redirect, and a load generator scoring against the public port throughout.

Failure images are made here: a bundle whose golden scores are wrong (the service's self-test refuses it),
and one whose model file is not ONNX (the service exits at start).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
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
from edge_runtime.agent.reconcile import Reconciler
from edge_runtime.agent.source import RegistrySource
from edge_runtime.agent.state import StateStore
from otaml.loadgen import LoadGenerator
from tests.conftest import free_port, require

pytestmark = pytest.mark.containerd

REPO = "otaml/agent-e2e"
# Readings in the fixture bundles' sensor order (three sensors).
READINGS = [[60.0, 0.5, 3.0], [61.0, 0.52, 3.01]]
# Image name -> model version (tag model-v<N>): two good ones, then the failure images.
VERSIONS = {"v1": 1, "v2": 2, "golden-bad": 3, "crash": 4, "too-big": 5, "unpulled": 6}


@dataclass(frozen=True)
class Images:
    registry: str
    digests: dict[str, str]  # name -> index digest

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
        ["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false", prebuilt, f"docker://{ref}"],
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
    for name, version, seed, spoil in (
        ("v1", "1", 0, None),
        ("v2", "2", 1, None),
        ("golden-bad", "2", 2, _bad_golden),
        ("crash", "2", 3, _not_onnx),
        ("too-big", "2", 4, _too_big),
        ("unpulled", "6", 5, None),  # pulled by no other test: containerd shares blobs across namespaces
    ):
        bundle = build_bundle(root / name, version=version, seed=seed)
        if spoil is not None:
            spoil(bundle.path)
        result = bake(agent_base_ref, bundle.path, f"{oci_registry}/{REPO}", force=True)
        digests[name] = result.index_digest
    return Images(oci_registry, digests)


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

    def load(self) -> LoadGenerator:
        return LoadGenerator(self.config.public_port, READINGS, rate=50, workers=4)


@pytest.fixture
def device(
    containerd: object, images: Images, iptables: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Device]:
    socket = containerd.socket  # type: ignore[attr-defined]
    name = "e2e-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    a, b = free_port(), free_port()
    while b == a:
        b = free_port()
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
    report = device.agent.reconcile()
    assert report.outcome == "updated", report.to_dict()
    assert len(device.running()) == 1


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


def test_update_v1_to_v2_fails_no_request(device: Device) -> None:
    install_v1(device)
    with device.load() as load:
        time.sleep(1)
        device.move_channel("v2")
        report = device.agent.reconcile()
        time.sleep(1.5)
    result = load.report()
    assert report.outcome == "updated", report.to_dict()
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
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid != "0"
    assert "NoNewPrivs:\t1" in status
    with pytest.raises(OSError, match="Read-only file system"):  # even root cannot write the image's root
        Path(f"/proc/{pid}/root/opt/model/x").write_text("x")


@pytest.mark.parametrize(("image", "words"), [("golden-bad", "golden"), ("crash", "exited"), ("too-big", "OOM-killed")])
def test_failed_canary_rolls_back_without_a_failed_request(device: Device, image: str, words: str) -> None:
    install_v1(device)
    with device.load() as load:
        time.sleep(1)
        bad = device.move_channel(image)
        report = device.agent.reconcile()
        time.sleep(1)
    result = load.report()
    assert (report.outcome, report.step) == ("rolled_back", "canary"), report.to_dict()
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


def test_death_inside_probation_rolls_back_to_the_previous_image(device: Device) -> None:
    install_v1(device)
    killed: list[str] = []

    def kill_the_new_container() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = device.agent.state
            if state.phase == "probation" and state.current is not None and state.current.version == "2":
                time.sleep(1.5)
                device.runtime._run(["task", "kill", "--signal", "SIGKILL", state.current.container], check=False)
                killed.append(state.current.container)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_new_container, daemon=True)
    killer.start()
    with device.load() as load:
        bad = device.move_channel("v2")
        report = device.agent.reconcile()
        time.sleep(1)
    killer.join()
    assert killed
    assert (report.outcome, report.step) == ("rolled_back", "probation"), report.to_dict()
    assert bad in device.agent.state.blocked
    assert_serving(device, "1", load)
    # Requests in flight on the killed container fail: the figure is reported by bench/bench_agent.py.


def test_restart_after_a_crash_mid_update_converges(device: Device) -> None:
    """A fresh agent process over a device left with a canary running and the state in phase 'canary'."""
    install_v1(device)
    device.move_channel("v2")
    agent = device.agent
    state = agent.state
    # Simulate being SIGKILLed right after starting the canary: do the steps by hand, persist, stop.
    digest = agent.source.channel_digest()
    image = agent.source.resolve(digest, device.config.platform)
    assert state.current is not None
    port = (
        device.config.private_ports[1]
        if state.current.port == device.config.private_ports[0]
        else device.config.private_ports[0]
    )
    from edge_runtime.agent.state import Deployment

    cand = Deployment(digest, device.config.image_ref(digest), image.model, image.version, "otaml-svc-crashed", port)
    device.runtime.pull(cand.ref, device.config.platform)
    device.runtime.start(agent.spec_for(cand))
    state.candidate, state.phase = cand, "canary"
    agent.save()
    with device.load() as load:
        fresh = Reconciler(
            device.config,
            StateStore(device.config.state_dir),
            agent.source,
            device.runtime,
            IptablesRedirect(device.config.public_port),
            HttpProber(timeout_s=2),
            NoDowngrade(),
        )
        assert fresh.recover().outcome == "recovered"
        time.sleep(1)
    assert load.report().total.failed == 0, load.report().errors[:5]
    device.agent = fresh
    assert_serving(device, "1", load)
    assert fresh.state.attempts == {digest: 1}
    assert fresh.reconcile().outcome == "updated"


class CorruptingProxy:
    """A registry front that flips one byte of one blob on its way to the device (same length, wrong digest),
    or answers every request with a 500 while ``failing`` is set."""

    def __init__(self, upstream: str) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.corrupt: set[str] = set()
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
                digest = self.path.rsplit("/", 1)[-1]
                if self.command == "GET" and "/blobs/" in self.path and digest in proxy.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                    proxy.served.append(digest)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _through_proxy(device: Device, proxy: CorruptingProxy) -> AgentConfig:
    """The device talks to the registry through the proxy, so image names carry the proxy's address."""
    from dataclasses import replace

    config = replace(device.config, registry_url=f"http://{proxy.address}")
    device.agent.config = config
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
        assert (report.outcome, report.step) == ("error", "pull"), report.to_dict()
        assert proxy.served == [layer]
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


# ── Approval: only images signed by the fleet key run; versions go down only with a signed rollback ─────────────


@dataclass
class Fleet:
    key: Any  # the fleet's private key (an operator's workstation holds it, never a device)
    public_key_path: Path

    def sign(self, device: Device, name: str, rollback: Any = None, key: Any = None) -> None:
        """Approve image ``name`` for the device's channel, as `otaml promote` / `otaml rollback` do."""
        from registry.signing import build_payload, open_signature_store, push_signature, sign_payload

        digest = device.images.digests[name]
        payload = build_payload(
            digest=digest,
            reference=f"{device.images.registry}/{REPO}",
            model="pump-anomaly",
            version=str(VERSIONS[name]),
            channel=device.config.channel,
            approver="e2e",
            rollback=rollback,
        )
        store = open_signature_store(f"{device.images.registry}/{REPO}")
        push_signature(store, digest, sign_payload(key or self.key, payload))


@pytest.fixture
def fleet(device: Device, tmp_path: Path) -> Fleet:
    """The device trusts only the fleet key: the agent's real policy from ``[verification] public_key``."""
    from edge_runtime.verify import make_policy
    from registry.signing import generate_keys, load_private_key

    keys = generate_keys(tmp_path / "keys")
    device.agent.policy = make_policy({"public_key": str(keys.public_key)}, source=device.agent.source)
    return Fleet(load_private_key(keys.private_key), keys.public_key)


def skopeo_push(device: Device, name: str) -> None:
    """Someone without the key points the channel at an image with a standard tool."""
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    src = f"docker://{device.images.tag(name)}"
    dest = f"docker://{device.images.registry}/{REPO}:{device.config.channel}"
    subprocess.run(
        ["skopeo", "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false", src, dest],
        check=True,
        capture_output=True,
    )


def test_only_signed_images_run_and_versions_go_down_only_with_a_signed_rollback(device: Device, fleet: Fleet) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from edge_runtime.verify import RollbackAuthorisation

    fleet.sign(device, "v1")
    install_v1(device)
    with device.load() as load:
        # An unsigned image pushed to the channel with skopeo is never pulled or run.
        skopeo_push(device, "unpulled")
        unsigned = device.agent.reconcile()
        # Nor is one signed by another key.
        fleet.sign(device, "v2", key=ec.generate_private_key(ec.SECP256R1()))
        device.move_channel("v2")
        rogue = device.agent.reconcile()
        # The fleet's signature gets v2 through.
        fleet.sign(device, "v2")
        device.move_channel("golden-bad")  # move away and back: a re-signed digest gets a fresh chance
        device.agent.reconcile()
        device.move_channel("v2")
        approved = device.agent.reconcile()
        # Moving the channel back to v1 (validly signed, but older) is a downgrade...
        device.move_channel("v1")
        downgrade = device.agent.reconcile()
        # ...until an operator signs an explicit rollback authorisation, as `otaml rollback` does.
        device.move_channel("v2")
        device.agent.reconcile()
        fleet.sign(device, "v1", rollback=RollbackAuthorisation("2", "1", "e2e", "v2 misfires", "2026-11-26T00:00:00Z"))
        device.move_channel("v1")
        rolled_back = device.agent.reconcile()
        time.sleep(1)
    result = load.report()
    assert (unsigned.outcome, unsigned.step) == ("refused", "verify"), unsigned.to_dict()
    assert "unsigned" in unsigned.error
    assert (rogue.outcome, rogue.step) == ("refused", "verify"), rogue.to_dict()
    assert "wrong-key" in rogue.error
    assert approved.outcome == "updated", approved.to_dict()
    assert (downgrade.outcome, downgrade.step) == ("refused", "verify"), downgrade.to_dict()
    assert "downgrade" in downgrade.error
    assert rolled_back.outcome == "updated", rolled_back.to_dict()
    assert device.config.image_ref(device.images.digests["unpulled"]) not in device.runtime.list_images()
    assert result.total.failed == 0, result.errors[:5]
    assert set(result.versions) == {"1", "2"}
    assert_serving(device, "1", load)


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
    assert reports[-1].outcome == "updated", [r.to_dict() for r in reports]
    assert load.report().total.failed == 0, load.report().errors[:5]
    assert_serving(device, "2", load)
