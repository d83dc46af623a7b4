"""``otaml bake``: add a model bundle to every platform of the runtime image and push it."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bake",
        help="bake a model bundle into the multi-arch runtime image (one layer at /opt/model) and push it",
        description="REF is HOST:PORT/REPO[:TAG] (a registry; plain HTTP for loopback) or oci:PATH[:TAG] (a layout).",
    )
    parser.add_argument(
        "--base", required=True, metavar="REF", help="the runtime base image, e.g. HOST/otaml/runtime:base"
    )
    parser.add_argument(
        "--bundle", required=True, metavar="DIR", help="model bundle directory (model.json + model.onnx)"
    )
    parser.add_argument(
        "--to", required=True, metavar="REF", help="where to write the model image, e.g. HOST/otaml/runtime"
    )
    parser.add_argument(
        "--tag", help="tag to write (default: model-v<version> from the bundle); model-v<N> is immutable"
    )
    parser.add_argument(
        "--force", action="store_true", help="overwrite an existing model-v<N> tag that names other content"
    )
    parser.add_argument("--user", help="registry user (the password is read from stdin with --password-stdin)")
    parser.add_argument("--password-stdin", action="store_true", help="read the registry password from stdin")
    parser.set_defaults(func=run_bake)


def read_auth(args: argparse.Namespace) -> tuple[str, str] | None:
    from edge_runtime.errors import InputError

    if args.password_stdin and not args.user:
        raise InputError("--password-stdin needs --user: pass the registry user name")
    if not args.user:
        return None
    if not args.password_stdin:
        raise InputError(
            "--user needs --password-stdin: pipe the password in, e.g. `cat pw | otaml bake ... --password-stdin`"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise InputError("--password-stdin read an empty password from stdin")
    return args.user, password


def run_bake(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from registry.bake import bake

    def progress(line: str) -> None:
        print(f"bake: {line}", file=sys.stderr, flush=True)

    started = time.monotonic()
    result = bake(
        args.base, Path(args.bundle), args.to, args.tag, force=args.force, progress=progress, auth=read_auth(args)
    )
    seconds = time.monotonic() - started
    print(f"baked {result.labels.get('io.otaml.model.name')} v{result.labels.get('io.otaml.model.version')}")
    print(f"  image     {result.reference}")
    print(f"  tags      {', '.join(result.tags)}")
    for image in result.manifests:
        print(f"  {image.platform:<14}{image.manifest_digest}")
    print(f"  layer     {result.layer_digest} ({result.layer_size} bytes)")
    print(f"  bundle    {result.bundle_digest}")
    print(f"  uploaded  {result.bytes_uploaded} bytes in {seconds:.1f} s")
    return 0
