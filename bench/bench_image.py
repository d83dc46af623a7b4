"""Runtime image figures: size per platform (compressed and uncompressed) and where the bytes go, model layers,
bytes a device pulls per update, bake time.

    .venv/bin/python bench/bench_image.py [--registry HOST:PORT] [--repeat 3] [--json]

Without ``--registry`` it starts a private docker-registry on a free loopback port. The base image comes from
``images/build-runtime.sh`` (cached under ~/.cache/otaml; the first run on a machine takes minutes). The models are
what a user gets (bench/pipeline_models.py): ``otaml data synth`` then ``otaml train`` with their defaults, twice
(data seeds 0 and 1, for versions 1 and 2), the shipped bundle of every detector.
"Uncompressed" is the sum of the layers' tar streams (what a device unpacks); "compressed" is what a fresh device
pulls (index, manifest, config and gzip layers). Limits for the arm64 image: 500 MB hard, 150 MB required,
120 MB goal. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import statistics
import sys
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from edge_runtime.oci import RegistryClient, select_platform  # noqa: E402
from registry.bake import bake  # noqa: E402
from registry.oci.image import parse_manifest  # noqa: E402

HARD_LIMIT = 500 * 1000 * 1000
REQUIRED = 150 * 1000 * 1000
GOAL = 120 * 1000 * 1000
ARCHES = ("arm64", "amd64")


def gunzipped_size(data: bytes) -> int:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    size = 0
    for start in range(0, len(data), 1 << 20):
        size += len(inflater.decompress(data[start : start + (1 << 20)]))
    return size + len(inflater.flush())


def platform_manifest(client: RegistryClient, ref: str, arch: str) -> tuple[bytes, bytes, Any]:
    index, _, _ = client.get_manifest(ref)
    desc = select_platform(index, "linux", arch)
    data, _, _ = client.get_manifest(desc.digest)
    return index, data, parse_manifest(data)


def image_sizes(client: RegistryClient, ref: str, arch: str) -> dict[str, int]:
    """Bytes a fresh device pulls (compressed), bytes of the layers' tar streams (uncompressed), layer count."""
    index, data, manifest = platform_manifest(client, ref, arch)
    compressed = len(index) + len(data) + manifest.config.size + sum(layer.size for layer in manifest.layers)
    uncompressed = sum(gunzipped_size(client.get_blob(layer.digest)) for layer in manifest.layers)
    return {"compressed_bytes": compressed, "uncompressed_bytes": uncompressed, "layers": len(manifest.layers)}


def breakdown(client: RegistryClient, ref: str, arch: str) -> dict[str, int]:
    """File bytes per directory of the image's root filesystem (site-packages per package), largest first."""
    _, _, manifest = platform_manifest(client, ref, arch)
    sizes: Counter[str] = Counter()
    for layer in manifest.layers:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(client.get_blob(layer.digest)))) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name.lstrip("./")).parts
                depth = 4 if parts[:3] == ("opt", "otaml", "lib") else 3 if parts[:2] == ("usr", "lib") else 2
                sizes["/".join(parts[: min(depth, len(parts) - 1)]) or parts[0]] += member.size
    return dict(sizes.most_common())


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


def trained_bundles(work: Path) -> dict[str, list[Path]]:
    """``{detector: [v1 bundle, v2 bundle]}``: ``otaml data synth`` + ``otaml train`` defaults, data seeds 0 and 1."""
    from pipeline_models import train_default_models

    v1 = train_default_models(work / "models-v1", seed=0)
    v2 = train_default_models(work / "models-v2", seed=1)
    return {name: [v1.bundles[name], v2.bundles[name]] for name in v1.bundles}


def measure(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    from otaml.localstack import LocalRegistry, build_runtime_image

    address = args.registry or stack.enter_context(LocalRegistry(work / "registry"))
    base = f"{address}/otaml/runtime:base"
    t0 = time.monotonic()
    build_runtime_image(push=base, log=work / "build.log")
    result: dict[str, Any] = {"build_runtime_seconds": round(time.monotonic() - t0, 1), "base": {}, "models": {}}
    with RegistryClient(address, "otaml/runtime") as client:
        for arch in ARCHES:
            sizes: dict[str, Any] = dict(image_sizes(client, "base", arch))
            uncompressed = sizes["uncompressed_bytes"]
            sizes["verdict"] = (
                "goal met"
                if uncompressed <= GOAL
                else "required met"
                if uncompressed <= REQUIRED
                else "over required"
                if uncompressed <= HARD_LIMIT
                else "OVER HARD LIMIT"
            )
            sizes["breakdown_bytes"] = breakdown(client, "base", arch)
            result["base"][arch] = sizes

    for detector, (v1, v2) in trained_bundles(work).items():
        repo = f"{address}/bench/{detector}"
        first, noop = [], []
        baked = None
        for i in range(args.repeat):
            t = time.monotonic()
            baked = bake(base, v1, f"{repo}-run{i}", "model-v1")
            first.append(time.monotonic() - t)
            t = time.monotonic()
            bake(base, v1, f"{repo}-run{i}", "model-v1")
            noop.append(time.monotonic() - t)
        assert baked is not None
        bake(base, v1, repo, "model-v1")
        v2_baked = bake(base, v2, repo, "model-v2")
        with RegistryClient(address, f"bench/{detector}") as client:
            layer = client.get_blob(baked.layer_digest)
            result["models"][detector] = {
                "model_layer_compressed_bytes": baked.layer_size,
                "model_layer_uncompressed_bytes": gunzipped_size(layer),
                "model_v1_image": {arch: image_sizes(client, "model-v1", arch) for arch in ARCHES},
                "update_v1_to_v2_pulled_bytes": {
                    arch: update_bytes(client, "model-v1", "model-v2", arch) for arch in ARCHES
                },
                "bake_v2_uploaded_bytes": v2_baked.bytes_uploaded,
                "bake_new_repo_seconds_median": round(statistics.median(first), 3),
                "bake_noop_seconds_median": round(statistics.median(noop), 3),
            }
    return result


def mb(n: float) -> str:
    return f"{n / 1e6:8.1f} MB"


def print_table(result: dict[str, Any], top: int) -> None:
    rows: list[tuple[str, str]] = []
    for arch, sizes in result["base"].items():
        rows.append((f"base {arch} uncompressed [{sizes['verdict']}]", mb(sizes["uncompressed_bytes"])))
        rows.append((f"base {arch} compressed (fresh pull, {sizes['layers']} layers)", mb(sizes["compressed_bytes"])))
    for arch, sizes in result["base"].items():
        for path, size in list(sizes["breakdown_bytes"].items())[:top]:
            rows.append((f"  {arch} /{path}", mb(size)))
    for detector, figures in result["models"].items():
        rows.append((f"{detector}: model layer compressed / uncompressed", ""))
        rows[-1] = (
            rows[-1][0],
            f"{figures['model_layer_compressed_bytes']:8d} B / {figures['model_layer_uncompressed_bytes']} B",
        )
        for arch in ARCHES:
            image = figures["model_v1_image"][arch]
            rows.append(
                (
                    f"{detector}: model-v1 {arch} uncompressed / compressed",
                    f"{mb(image['uncompressed_bytes'])} / {image['compressed_bytes'] / 1e6:.1f} MB",
                )
            )
        rows.append(
            (f"{detector}: update v1 -> v2 pulled (arm64)", f"{figures['update_v1_to_v2_pulled_bytes']['arm64']:8d} B")
        )
        rows.append(
            (
                f"{detector}: bake, new repo / no-op (medians)",
                f"{figures['bake_new_repo_seconds_median']:8.2f} s / {figures['bake_noop_seconds_median']:.2f} s",
            )
        )
    rows.append(("build-runtime.sh (this run, cached or not)", f"{result['build_runtime_seconds']:8.1f} s"))
    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  value")
    print(f"{'-' * width}  -----------")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", help="HOST:PORT of a running registry (default: start one)")
    parser.add_argument("--repeat", type=int, default=3, help="bakes to time per detector (median reported)")
    parser.add_argument("--top", type=int, default=12, help="directories of the breakdown to print per arch")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="otaml-bench-") as tmp, contextlib.ExitStack() as stack:
        result = measure(args, Path(tmp), stack)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
