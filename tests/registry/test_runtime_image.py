"""The real runtime image: bake a real bundle onto the base built by images/build-runtime.sh, pull it with
containerd and run it the way a device does (read-only root, tmpfs /tmp, 100 MB, uid 10001)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_runtime.bundle import Bundle
from edge_runtime.oci import LABEL_BUNDLE_DIGEST, RegistryClient, select_platform
from otaml.ports import free_port
from registry.bake import BakeResult, bake
from registry.oci.image import parse_index, parse_manifest
from tests.conftest import require
from tests.fixtures.containerd import Containerd

MEMORY_LIMIT = 100 * 1024 * 1024


@pytest.fixture(scope="module")
def model_v1(runtime_base_ref: str, oci_registry: str, model_bundle: Bundle) -> BakeResult:
    return bake(runtime_base_ref, model_bundle.path, f"{oci_registry}/otaml/runtime", "model-v1")


def pull(containerd: Containerd, ref: str, platform: str) -> None:
    containerd.ctr("image", "pull", "--plain-http", "--platform", platform, ref)


@contextlib.contextmanager
def running(containerd: Containerd, ref: str, name: str, *extra: str, env: dict[str, str]) -> Iterator[None]:
    args = ["run", "-d", "--net-host", "--read-only"]
    args += ["--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:size=67108864"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    containerd.ctr(*args, *extra, ref, name)
    try:
        yield
    finally:
        containerd.ctr("task", "kill", "--signal", "SIGKILL", name, check=False)
        for _ in range(100):
            if containerd.ctr("task", "delete", name, check=False).returncode == 0:
                break
            time.sleep(0.1)
        containerd.ctr("container", "delete", name, check=False)


def wait_ready(port: int, timeout: float, containerd: Containerd, name: str) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if response.status_code == 200:
                return response
            last = response.text
        except httpx.TransportError as exc:
            last = exc
        tasks = containerd.ctr("task", "list", check=False).stdout
        if name in tasks and "STOPPED" in next(line for line in tasks.splitlines() if name in line):
            pytest.fail(f"container {name} stopped before /readyz answered 200 (last: {last})")
        time.sleep(0.5)
    pytest.fail(f"/readyz of {name} did not answer 200 within {timeout} s (last: {last})")


def task_pid(containerd: Containerd, name: str) -> int:
    line = next(x for x in containerd.ctr("task", "list").stdout.splitlines() if x.startswith(name + " "))
    return int(line.split()[1])


def score_golden(port: int, bundle: Bundle) -> None:
    golden = bundle.card.golden
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/score", json={"stream": "golden", "readings": golden.readings}, timeout=60
    )
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert scores == pytest.approx(golden.scores, abs=golden.tolerance)


@pytest.mark.containerd
def test_amd64_model_image_serves_read_only_as_uid_10001(
    containerd: Containerd, model_v1: BakeResult, oci_registry: str, model_bundle: Bundle
) -> None:
    ref = f"{oci_registry}/otaml/runtime:model-v1"
    pull(containerd, ref, "linux/amd64")
    port = free_port()
    name = "otaml-amd64"
    with running(containerd, ref, name, "--memory-limit", str(MEMORY_LIMIT), env={"OTAML_PORT": str(port)}):
        wait_ready(port, 90, containerd, name)
        status = Path(f"/proc/{task_pid(containerd, name)}/status").read_text()
        assert "\nUid:\t10001\t10001" in status
        score_golden(port, model_bundle)
        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
        assert json.dumps(model).count("pump-anomaly") >= 1
        metrics = containerd.ctr("task", "metrics", name).stdout
        print(f"\ncontainer memory (ctr task metrics):\n{metrics}")


@pytest.mark.arm64
@pytest.mark.containerd
def test_arm64_model_image_is_ready_under_qemu_cortex_a72(
    containerd: Containerd, model_v1: BakeResult, oci_registry: str, model_bundle: Bundle
) -> None:
    require(
        Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_file(),
        "qemu-aarch64 binfmt handler",
        "apt-get install -y qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc "
        "/proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64",
    )
    ref = f"{oci_registry}/otaml/runtime:model-v1"
    pull(containerd, ref, "linux/arm64")
    port = free_port()
    name = "otaml-arm64"
    # onnxruntime's cpuinfo probe reads the x86 host's CPU files under qemu-user: mask them (ENVIRONMENT.md).
    mask = "type=tmpfs,src=tmpfs,dst=/sys/devices/system/cpu,options=ro"
    env = {"OTAML_PORT": str(port), "QEMU_CPU": "cortex-a72"}
    with running(containerd, ref, name, "--platform", "linux/arm64", "--mount", mask, env=env):
        wait_ready(port, 600, containerd, name)  # emulated start-up: golden replay under qemu is slow
        score_golden(port, model_bundle)


@pytest.mark.containerd
def test_model_update_pulls_only_the_model_layer(
    containerd: Containerd, model_v1: BakeResult, runtime_base_ref: str, oci_registry: str, tmp_path: Path
) -> None:
    from tests.fixtures.bundles import build_bundle

    v2_bundle = build_bundle(tmp_path / "v2", version="2", seed=5)
    v2 = bake(runtime_base_ref, v2_bundle.path, f"{oci_registry}/otaml/runtime", "model-v2")
    assert v2.bytes_uploaded < 3 * v2.layer_size + 100_000  # model layer + 2 configs + manifests, no base layers
    # What a device pulls going from v1 to v2, measured in containerd's content store.
    pull(containerd, f"{oci_registry}/otaml/runtime:model-v1", "linux/arm64")
    before = content(containerd)
    pull(containerd, f"{oci_registry}/otaml/runtime:model-v2", "linux/arm64")
    fetched = content(containerd) - before
    with RegistryClient(oci_registry, "otaml/runtime") as client:
        index_data, _, _ = client.get_manifest("model-v2")
        arm = select_platform(index_data, "linux", "arm64")
        manifest = parse_manifest(client.get_manifest(arm.digest)[0])
        labels = client.image_labels("model-v2", "linux", "arm64")
    assert labels[LABEL_BUNDLE_DIGEST] == v2.bundle_digest
    sizes = {
        v2.index_digest: v2.index_size,
        arm.digest: arm.size,
        manifest.config.digest: manifest.config.size,
        v2.layer_digest: v2.layer_size,
    }
    assert fetched == set(sizes)
    assert len(parse_index(index_data).manifests) == 2
    print(f"\nv1 -> v2 update pulled {sum(sizes.values())} bytes in {len(sizes)} blobs; model layer {v2.layer_size}")


def content(containerd: Containerd) -> set[str]:
    """Digests in containerd's content store."""
    return set(containerd.ctr("content", "ls", "--quiet").stdout.split())
