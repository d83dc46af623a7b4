"""``otaml``: one entry point, one module per command group (``otaml/cmd_*.py``).

Each command module exposes ``register(subparsers)`` and keeps its heavy imports (mlflow,
scikit-learn, onnxruntime) inside the command functions, so ``otaml --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge_runtime.errors import OtamlError

COMMAND_MODULES = (
    "otaml.cmd_data",
    "otaml.cmd_train",
    "otaml.cmd_serve",
    "otaml.cmd_models",
    "otaml.cmd_keys",
    "otaml.cmd_trust",
    "otaml.cmd_bake",
    "otaml.cmd_agent",
    "otaml.cmd_fleet",
    "otaml.cmd_demo",
    "otaml.cmd_rollout",
    "otaml.cmd_field",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otaml",
        description="Anomaly detectors from notebook to edge devices: train, promote, bake, serve, update.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except OtamlError as exc:
        print(f"otaml {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"otaml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
