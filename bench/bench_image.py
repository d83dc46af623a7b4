"""Runtime image figures: size per platform (compressed/uncompressed), model layer, update bytes, bake time.

    .venv/bin/python bench/bench_image.py [--registry HOST:PORT] [--repeat 5]

Without ``--registry`` it starts a private docker-registry on a free loopback port. The base image comes
from ``images/build-runtime.sh`` (cached under ~/.cache/otaml; the first run on a machine takes minutes),
the bundles from the test fixture's real IsolationForest exporter. Prints a table; asserts nothing.
Limits: the arm64 image must stay under 500 MB (hard), the goal is 150 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.oci import RegistryClient, select_platform  # noqa: E402
from registry.bake import bake  # noqa: E402
from registry.oci.image import parse_manifest  # noqa: E402

HARD_LIMIT = 500 * 1000 * 1000
GOAL = 150 * 1000 * 1000


def gunzipped_size(data: bytes) -> int:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size = 0
    for start in range(0, len(data), 1 << 20):
        size += len(inflater.decompress(data[start : start + (1 << 20)]))
    return size + len(inflater.flush())


def image_sizes(client: RegistryClient, ref: str, arch: str) -> tuple[int, int, int]:
    """(compressed bytes a fresh device pulls, uncompressed layer bytes, layer count) for one platform."""
    index, _, _ = client.get_manifest(ref)
    desc = select_platform(index, "linux", arch)
    data, _, _ = client.get_manifest(desc.digest)
    manifest = parse_manifest(data)
    compressed = len(index) + len(data) + manifest.config.size + sum(layer.size for layer in manifest.layers)
    uncompressed = sum(gunzipped_size(client.get_blob(layer.digest)) for layer in manifest.layers)
    return compressed, uncompressed, len(manifest.layers)


def update_bytes(client: RegistryClient, old: str, new: str, arch: str) -> int:
    """Bytes of blobs in ``new``'s platform image that ``old``'s does not have (what a device pulls)."""

    def closure(ref: str) -> dict[str, int]:
        index, _, index_digest = client.get_manifest(ref)
        desc = select_platform(index, "linux", arch)
        manifest = parse_manifest(client.get_manifest(desc.digest)[0])
        blobs = {index_digest: len(index), desc.digest: desc.size, manifest.config.digest: manifest.config.size}
        blobs.update({layer.digest: layer.size for layer in manifest.layers})
        return blobs

    have = closure(old)
    return sum(size for digest, size in closure(new).items() if digest not in have)


def mb(n: float) -> str:
    return f"{n / 1e6:8.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="HOST:PORT of a running registry (default: start one)")
    parser.add_argument("--repeat", type=int, default=5, help="bakes to time (median reported)")
    args = parser.parse_args()

    from otaml.localstack import LocalRegistry, build_runtime_image
    from tests.fixtures.bundles import build_bundle

    with tempfile.TemporaryDirectory(prefix="otaml-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        address = args.registry or stack.enter_context(LocalRegistry(work / "registry"))
        base = f"{address}/otaml/runtime:base"
        t0 = time.monotonic()
        build_runtime_image(push=base, log=work / "build.log")
        build_seconds = time.monotonic() - t0
        v1 = build_bundle(work / "v1", version="1", seed=0)
        v2 = build_bundle(work / "v2", version="2", seed=5)

        repo = f"{address}/bench/runtime"
        first_times, noop_times = [], []
        result = None
        for i in range(args.repeat):
            t = time.monotonic()
            result = bake(base, v1.path, f"{address}/bench/run{i}", "model-v1")
            first_times.append(time.monotonic() - t)
            t = time.monotonic()
            bake(base, v1.path, f"{address}/bench/run{i}", "model-v1")
            noop_times.append(time.monotonic() - t)
        assert result is not None
        bake(base, v1.path, repo, "model-v1")
        v2_result = bake(base, v2.path, repo, "model-v2")

        rows: list[tuple[str, str]] = []
        with RegistryClient(address, "otaml/runtime") as client:
            for arch in ("arm64", "amd64"):
                compressed, uncompressed, layers = image_sizes(client, "base", arch)
                verdict = (
                    "OK" if uncompressed <= GOAL else ("over goal" if uncompressed <= HARD_LIMIT else "OVER LIMIT")
                )
                rows.append((f"base {arch} compressed (pull, {layers} layers)", mb(compressed)))
                rows.append((f"base {arch} uncompressed [{verdict}]", mb(uncompressed)))
        with RegistryClient(address, "bench/runtime") as client:
            for arch in ("arm64",):
                compressed, uncompressed, _ = image_sizes(client, "model-v1", arch)
                rows.append((f"model-v1 {arch} compressed", mb(compressed)))
                rows.append((f"model-v1 {arch} uncompressed", mb(uncompressed)))
                rows.append(
                    (
                        f"update v1 -> v2 pulled ({arch})",
                        f"{update_bytes(client, 'model-v1', 'model-v2', arch):8d} B",
                    )
                )
            layer = client.get_blob(result.layer_digest)
        rows.append(("model layer compressed", f"{result.layer_size:8d} B"))
        rows.append(("model layer uncompressed", f"{gunzipped_size(layer):8d} B"))
        rows.append(("bake v2 uploaded (same repo)", f"{v2_result.bytes_uploaded:8d} B"))
        rows.append((f"bake, new repo (median of {args.repeat})", f"{statistics.median(first_times):8.2f} s"))
        rows.append((f"bake, no-op re-bake (median of {args.repeat})", f"{statistics.median(noop_times):8.2f} s"))
        rows.append(("build-runtime.sh (this run, cached or not)", f"{build_seconds:8.1f} s"))

    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  value")
    print(f"{'-' * width}  -----------")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
