"""The agent against a hostile registry, at the HTTP seam: a real HTTP server in a thread answers as the test
programs it (huge bodies, wrong digests, arrays where objects belong, redirects, a slow drip, 403/500 storms,
a flapping tag). The device side is the real :class:`RegistrySource` over the real registry client — the
device's :class:`Urllib3RegistryClient` and the MLOps side's httpx :class:`RegistryClient`, every case for both;
containerd, the redirect and the probes are the agent's fakes (the device is already serving v1).

Each case asserts: the update step returns a report (no exception escapes it) whose reason is the error
tree's code for the attack, the serving container and the redirect are untouched, nothing was pulled, and
the agent process's peak memory (VmHWM, reset before the step) grew by no more than the cap that applies.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.agent.reconcile import Reconciler, UpdateReport
from edge_runtime.agent.source import RegistrySource, ResolvedImage
from edge_runtime.oci import (
    MAX_MANIFEST_BYTES,
    MAX_REDIRECTS,
    MAX_SMALL_BLOB_BYTES,
    MAX_TOKEN_BYTES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    RegistryClient,
    RegistryReader,
    Urllib3RegistryClient,
)

from .fakes import World, bundle_layer

REPO = "pump"
CHANNEL = "production"
MiB = 1024 * 1024
HUGE = 64 * MiB  # far above every cap: without one, a read of it grows the process by this much
SLACK = 8 * MiB  # the interpreter's own churn around one step
DEADLINE_S = 2.0  # the client's total deadline per capped read, short for the slow-drip case


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class Reply:
    """One programmed answer. ``body`` may be an iterable of chunks (streamed without a Content-Length until
    the client hangs up); ``drip_s`` sends the body one byte at a time with that pause."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    drip_s: float = 0.0


def endless(total: int = HUGE) -> Iterator[bytes]:
    """``total`` bytes of JSON-looking text from one 64 KiB buffer (the server's memory stays flat)."""
    chunk = b'{"pad": "' + b"x" * (64 * 1024 - 9)
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


Route = Callable[["_Handler"], Reply]


class HostileRegistry:
    """An OCI distribution API whose every answer is programmable: ``routes[(method, path)]``."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Reply | Route] = {("GET", "/v2/"): Reply(body=b"{}")}
        self.hits: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        registry = self

        class Handler(_Handler):
            owner = registry

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def alias(self) -> str:
        """The same server under another host name (a CDN or token service elsewhere, to the client)."""
        return f"localhost:{self.server.server_address[1]}"

    def put(self, method: str, path: str, reply: Reply | Route) -> None:
        self.routes[(method, path)] = reply

    def manifest(self, ref: str, data: bytes, media_type: str = OCI_MANIFEST, **kwargs: Any) -> None:
        """Serve ``data`` as manifest ``ref`` (HEAD and GET), with the digest header a registry sends."""
        headers = {"Content-Type": media_type, "Docker-Content-Digest": _digest(data), **kwargs.pop("headers", {})}
        self.put("GET", f"/v2/{REPO}/manifests/{ref}", Reply(body=data, headers=headers, **kwargs))
        self.put("HEAD", f"/v2/{REPO}/manifests/{ref}", Reply(headers={**headers, "Content-Length": str(len(data))}))

    def blob(self, digest: str, reply: Reply) -> None:
        self.put("GET", f"/v2/{REPO}/blobs/{digest}", reply)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: HostileRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.owner.hits.append((method, self.path))
        route = self.owner.routes.get((method, path))
        reply = (route(self) if callable(route) else route) if route is not None else Reply(404, _json({}))
        self.send_response(reply.status)
        streamed = not isinstance(reply.body, bytes)
        headers = dict(reply.headers)
        if streamed:
            headers["Connection"] = "close"
        elif "Content-Length" not in headers:
            headers["Content-Length"] = str(len(reply.body))  # type: ignore[arg-type]
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "HEAD":
            return
        try:
            if reply.drip_s:
                for byte in bytes(reply.body):  # type: ignore[arg-type]
                    if self.owner.stopping.wait(reply.drip_s):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            elif streamed:
                for chunk in reply.body:
                    self.wfile.write(chunk)
                self.close_connection = True
            else:
                self.wfile.write(reply.body)  # type: ignore[arg-type]
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up: what a capped read does

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")


@dataclass
class Image:
    """A well-formed model image (index for linux/arm64 + linux/amd64) as the registry holds it."""

    index: bytes
    manifest: bytes
    config: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return _digest(self.index)


def make_image(version: str, *, arch: str = "arm64") -> Image:
    layer = bundle_layer(version)
    labels = {"io.otaml.model.name": "pump", "io.otaml.model.version": version}
    config = _json({"os": "linux", "architecture": arch, "config": {"Labels": labels}})
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _digest(layer), "size": len(layer)}],
        }
    )
    entry = {"mediaType": OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest)}
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{**entry, "platform": {"os": "linux", "architecture": arch}}],
        }
    )
    return Image(index, manifest, config, layer)


def publish(registry: HostileRegistry, world: World, image: Image, *, tag: bool = True) -> None:
    """Serve ``image`` well-formed (and move the channel to it); the fake containerd can pull it."""
    registry.manifest(image.digest, image.index, OCI_INDEX)
    registry.manifest(_digest(image.manifest), image.manifest)
    registry.blob(_digest(image.config), Reply(body=image.config))
    registry.blob(_digest(image.layer), Reply(body=image.layer))
    if tag:
        registry.manifest(CHANNEL, image.index, OCI_INDEX)
    world.registry[image.digest] = ResolvedImage(image.digest, _digest(image.manifest), "linux/arm64")
    world.blobs[_digest(image.layer)] = image.layer  # what the canary reads the golden vectors from


@dataclass
class Device:
    world: World
    agent: Reconciler
    registry: HostileRegistry
    serving: tuple[str, int | None]  # (container, redirect target) when the case starts
    client: type[RegistryReader[Any]] = Urllib3RegistryClient

    def connect(self, **client: Any) -> None:
        """Point the agent at the hostile registry from now on."""
        http = self.client(self.registry.host, REPO, timeout=10, deadline=DEADLINE_S, **client)
        self.agent.source = RegistrySource(http, REPO, CHANNEL)

    def step(self) -> tuple[UpdateReport, int]:
        """One update step (it must return, never raise) and the growth of the process's peak RSS during it."""
        base = _reset_peak_rss()
        report = self.agent.reconcile()
        return report, _vm_kib("VmHWM") * 1024 - base

    def assert_untouched(self) -> None:
        running = [c.spec.name for c in self.world.runtime.running()]
        assert running == [self.serving[0]]
        assert self.world.switch.target() == self.serving[1]
        assert self.agent.state.current is not None
        assert self.agent.state.current.version == "1"


def _vm_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0) and return that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _vm_kib("VmHWM") * 1024


@pytest.fixture(params=[Urllib3RegistryClient, RegistryClient], ids=["urllib3", "httpx"])
def device(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Device]:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    assert agent.recover().outcome == "recovered"
    assert agent.reconcile().outcome == "updated"
    registry = HostileRegistry()
    serving = (world.runtime.running()[0].spec.name, world.switch.target())
    dev = Device(world, agent, registry, serving, request.param)
    dev.connect()
    try:
        yield dev
    finally:
        registry.close()
        agent.source.client.close()  # type: ignore[attr-defined]


def refused(device: Device, reason: str, cap: int = 0) -> UpdateReport:
    """Run one step; assert it failed with ``reason``, left the device alone and stayed within ``cap`` bytes."""
    pulls = device.world.runtime.calls.count("pull")
    report, growth = device.step()
    assert report.outcome in ("error", "refused"), report.to_dict()
    assert report.reason == reason, report.to_dict()
    device.assert_untouched()
    assert device.world.runtime.calls.count("pull") == pulls
    assert growth <= cap + SLACK, f"peak RSS grew by {growth / MiB:.1f} MiB (cap {cap / MiB:.1f} MiB)"
    return report


# ── huge bodies ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("declared", [False, True], ids=["streamed", "content-length"])
def test_a_huge_index_is_refused_within_the_manifest_cap(device: Device, declared: bool) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    headers = {"Content-Type": OCI_INDEX}
    if declared:
        headers["Content-Length"] = str(HUGE)
    device.registry.put("GET", f"/v2/{REPO}/manifests/{good.digest}", Reply(body=endless(), headers=headers))
    report = refused(device, "oversized", MAX_MANIFEST_BYTES)
    assert f"{MAX_MANIFEST_BYTES}-byte limit" in report.error


def test_a_huge_platform_manifest_is_refused_within_the_manifest_cap(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    device.registry.put("GET", f"/v2/{REPO}/manifests/{_digest(good.manifest)}", Reply(body=endless()))
    refused(device, "oversized", MAX_MANIFEST_BYTES)


def test_a_huge_config_blob_is_refused_within_the_blob_cap(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    device.registry.blob(_digest(good.config), Reply(body=endless()))
    report = refused(device, "oversized", MAX_SMALL_BLOB_BYTES)
    assert f"{MAX_SMALL_BLOB_BYTES}-byte limit" in report.error


def test_a_huge_token_response_is_refused_within_the_token_cap(device: Device) -> None:
    challenge = f'Bearer realm="http://{device.registry.host}/token",service="reg",scope="repository:{REPO}:pull"'
    device.registry.put("HEAD", f"/v2/{REPO}/manifests/{CHANNEL}", Reply(401, headers={"WWW-Authenticate": challenge}))
    device.registry.put("GET", "/token", Reply(body=endless()))
    report = refused(device, "oversized", MAX_TOKEN_BYTES)
    assert "token response" in report.error


def test_a_huge_error_body_is_read_only_in_part(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    device.registry.put("GET", f"/v2/{REPO}/manifests/{good.digest}", Reply(500, body=endless()))
    refused(device, "registry-unavailable", 0)


# ── wrong digests, malformed documents ────────────────────────────────────────────────────────────


def test_an_index_that_is_not_the_digest_it_was_asked_for_is_refused(device: Device) -> None:
    good, other = make_image("2"), make_image("3")
    publish(device.registry, device.world, good)
    device.registry.manifest(good.digest, other.index, OCI_INDEX)
    refused(device, "not-verified")


def test_a_config_blob_that_is_not_its_digest_is_refused(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    device.registry.blob(_digest(good.config), Reply(body=make_image("3").config))
    refused(device, "not-verified")


def test_a_malformed_digest_header_is_refused(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    bad = {"Content-Type": OCI_INDEX, "Docker-Content-Digest": "sha256:../../etc/passwd", "Content-Length": "1"}
    device.registry.put("HEAD", f"/v2/{REPO}/manifests/{CHANNEL}", Reply(headers=bad))
    refused(device, "malformed-image")


def _index_with(manifests: Any) -> bytes:
    return _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def _manifest_with(good: Image, **fields: Any) -> bytes:
    return _json({**json.loads(good.manifest), **fields})


# (what breaks, which document: "index" | "manifest" | "config", its bytes from a good image)
MALFORMED: list[tuple[str, str, Callable[[Image], bytes]]] = [
    ("index is an array", "index", lambda g: _json([json.loads(g.index)])),
    ("index is not JSON", "index", lambda g: b"\x89PNG\r\n\x1a\n"),
    ("manifests is an object", "index", lambda g: _index_with({"linux/arm64": json.loads(g.index)["manifests"][0]})),
    ("manifests holds strings", "index", lambda g: _index_with([_digest(g.manifest)])),
    ("platform is a string", "index", lambda g: _index_with([{"digest": _digest(g.manifest), "platform": "arm"}])),
    ("entry size is a string", "index", lambda g: _index_with([{**json.loads(g.index)["manifests"][0], "size": "x"}])),
    ("manifest is an array", "manifest", lambda g: _json([json.loads(g.manifest)])),
    ("config is an array", "manifest", lambda g: _manifest_with(g, config=[json.loads(g.manifest)["config"]])),
    ("config has no digest", "manifest", lambda g: _manifest_with(g, config={"mediaType": OCI_CONFIG, "size": 2})),
    ("layers is an object", "manifest", lambda g: _manifest_with(g, layers={"a": 1})),
    ("a layer is a number", "manifest", lambda g: _manifest_with(g, layers=[7])),
    (
        "a layer size is negative",
        "manifest",
        lambda g: _manifest_with(g, layers=[{**json.loads(g.manifest)["layers"][0], "size": -1}]),
    ),
    ("config blob is an array", "config", lambda g: _json([json.loads(g.config)])),
    ("config blob is not JSON", "config", lambda g: b"not json"),
    (
        "labels is a list",
        "config",
        lambda g: _json({"os": "linux", "architecture": "arm64", "config": {"Labels": ["a"]}}),
    ),
    ("config.config is a string", "config", lambda g: _json({"os": "linux", "architecture": "arm64", "config": "x"})),
]


@pytest.mark.parametrize(("what", "document", "spoil"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_documents_are_refused_as_malformed(
    device: Device, what: str, document: str, spoil: Callable[[Image], bytes]
) -> None:
    good = make_image("2")
    bad = spoil(good)
    if document == "index":
        image = Image(bad, good.manifest, good.config, good.layer)
        publish(device.registry, device.world, image)
    elif document == "manifest":
        entry = {"mediaType": OCI_MANIFEST, "digest": _digest(bad), "size": len(bad)}
        index = _index_with([{**entry, "platform": {"os": "linux", "architecture": "arm64"}}])
        publish(device.registry, device.world, Image(index, bad, good.config, good.layer))
    else:
        manifest = _manifest_with(good, config={"mediaType": OCI_CONFIG, "digest": _digest(bad), "size": len(bad)})
        entry = {"mediaType": OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest)}
        index = _index_with([{**entry, "platform": {"os": "linux", "architecture": "arm64"}}])
        publish(device.registry, device.world, Image(index, manifest, bad, good.layer))
    report = refused(device, "malformed-image")
    assert report.step == "resolve"


# ── redirects ─────────────────────────────────────────────────────────────────────────────────────


def test_a_blob_redirect_to_a_cdn_host_is_followed(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    config = _digest(good.config)
    cdn = f"http://{device.registry.alias}/cdn/{config}"
    device.registry.blob(config, Reply(307, headers={"Location": cdn}))
    device.registry.put("GET", f"/cdn/{config}", Reply(body=good.config))
    report, _ = device.step()
    assert report.outcome == "updated", report.to_dict()
    assert report.version == "2"
    assert ("GET", f"/cdn/{config}") in device.registry.hits


def test_endless_redirects_are_cut_off(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    config = _digest(good.config)

    def loop(handler: _Handler) -> Reply:
        hop = int(handler.path.rsplit("/", 1)[-1]) if handler.path.startswith("/hop/") else 0
        return Reply(302, headers={"Location": f"http://{device.registry.alias}/hop/{hop + 1}"})

    device.registry.blob(config, Reply(302, headers={"Location": f"http://{device.registry.alias}/hop/1"}))
    for hop in range(1, 50):
        device.registry.put("GET", f"/hop/{hop}", loop)
    report = refused(device, "registry-unavailable")
    assert f"more than {MAX_REDIRECTS} redirects" in report.error
    assert sum(1 for _, path in device.registry.hits if path.startswith("/hop/")) <= MAX_REDIRECTS


def _bearer_registry(device: Device, realm_host: str) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    challenge = f'Bearer realm="http://{realm_host}/token",service="reg",scope="repository:{REPO}:pull"'

    def guarded(reply: Reply) -> Route:
        def route(handler: _Handler) -> Reply:
            if handler.headers.get("Authorization") == "Bearer T0K":
                return reply
            return Reply(401, _json({}), headers={"WWW-Authenticate": challenge})

        return route

    for key, route in list(device.registry.routes.items()):
        if key[1].startswith(f"/v2/{REPO}/") and isinstance(route, Reply):
            device.registry.put(*key, guarded(route))
    device.registry.put("GET", "/token", Reply(body=_json({"token": "T0K"})))


def test_a_token_realm_on_another_host_gets_no_credentials(device: Device) -> None:
    _bearer_registry(device, device.registry.alias)
    device.connect(auth=("device-7", "secret"))
    report = refused(device, "forbidden-host")
    assert device.registry.alias.split(":")[0] in report.error
    assert not any(path.startswith("/token") for _, path in device.registry.hits)


def test_a_token_realm_on_an_allowed_host_is_used(device: Device) -> None:
    _bearer_registry(device, device.registry.alias)
    device.connect(auth=("device-7", "secret"), token_hosts=("localhost",))
    report, _ = device.step()
    assert report.outcome == "updated", report.to_dict()
    assert any(path.startswith("/token?") for _, path in device.registry.hits)


# ── slow drip, storms ─────────────────────────────────────────────────────────────────────────────


def test_a_manifest_dripping_a_byte_a_second_is_cut_by_the_deadline(device: Device) -> None:
    good = make_image("2")
    publish(device.registry, device.world, good)
    path = f"/v2/{REPO}/manifests/{good.digest}"
    device.registry.put("GET", path, Reply(body=good.index, headers={"Content-Type": OCI_INDEX}, drip_s=1.0))
    report = refused(device, "registry-unavailable")
    assert f"{DEADLINE_S:g} s deadline" in report.error


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "registry-auth"), (500, "registry-unavailable"), (429, "registry-unavailable")]
)
def test_a_storm_of_errors_keeps_the_device_serving_and_backs_off(device: Device, status: int, reason: str) -> None:
    publish(device.registry, device.world, make_image("2"))

    def storm(handler: _Handler) -> Reply:
        return Reply(status, _json({"errors": [{"code": "DENIED" if status == 403 else "UNAVAILABLE"}]}))

    for key in list(device.registry.routes):
        device.registry.put(*key, storm)
    failures = []
    for _ in range(5):
        report = refused(device, reason)
        failures.append(device.agent.state.consecutive_failures)
        assert report.temporary
    assert failures == [1, 2, 3, 4, 5]  # each one counts towards the back-off


# ── tag flapping ──────────────────────────────────────────────────────────────────────────────────


def test_a_tag_flapping_between_a_good_and_a_refused_digest_never_runs_the_refused_one(device: Device) -> None:
    good, bad = make_image("2"), make_image("3", arch="amd64")  # bad: no image for this device's platform
    publish(device.registry, device.world, good, tag=False)
    publish(device.registry, device.world, bad, tag=False)
    flips = iter([good, bad] * 3)
    device.registry.put("HEAD", f"/v2/{REPO}/manifests/{CHANNEL}", lambda h: _head(next(flips)))
    outcomes = []
    for _ in range(6):
        report, _ = device.step()
        outcomes.append((report.outcome, report.reason))
        assert report.digest in (good.digest, bad.digest)
    assert outcomes[0] == ("updated", "")
    for outcome in outcomes[1::2]:  # every time the tag points at the bad digest
        assert outcome in (("refused", "no-platform"), ("skipped", "blocked"))
    assert all(outcome == ("unchanged", "") for outcome in outcomes[2::2])
    assert device.agent.state.current is not None
    assert device.agent.state.current.digest == good.digest
    assert bad.digest in device.agent.state.blocked or outcomes[-1] == ("refused", "no-platform")
    pulled = [ref for ref in device.world.runtime.images if bad.digest in ref]
    assert pulled == []


def _head(image: Image) -> Reply:
    headers = {
        "Content-Type": OCI_INDEX,
        "Docker-Content-Digest": image.digest,
        "Content-Length": str(len(image.index)),
    }
    return Reply(headers=headers)
