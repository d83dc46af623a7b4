"""``otaml serve``: the device's scoring service, the same as ``python -m edge_runtime serve``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edge_runtime.serve_cli import add_serve_arguments, run_serve

    parser = sub.add_parser("serve", help="serve a model bundle over HTTP (uvicorn + onnxruntime)")
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
