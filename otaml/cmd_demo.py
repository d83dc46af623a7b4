"""``otaml demo``: train, promote, update a device, survive a broken release; then a summary table."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="the whole loop on this machine: train v1/v2, promote, OTA update, a broken v3 refused",
        description=(
            "Synthetic telemetry -> train two versions -> promote v1 -> a device agent serves it -> promote v2 -> "
            "canary and hand-over under load -> a broken v3 forced past the gates -> the agent rolls it back. "
            "Real mode uses a private docker-registry, containerd and iptables (root, Linux); embedded mode an OCI "
            "layout and local processes. The first real run builds the base image (~10-15 min, then cached)."
        ),
    )
    parser.add_argument("--workdir", type=Path, help="an empty directory for everything (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir (logs, MLflow, images)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument(
        "--mode",
        choices=("auto", "real", "embedded"),
        default="auto",
        help="auto (default): real when containerd, docker-registry, buildah and iptables are usable",
    )
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from otaml.demo import DemoOptions, demo_ok, run_demo
    from otaml.demo_summary import format_table

    start = time.monotonic()

    def say(message: str) -> None:
        print(f"[demo {time.monotonic() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    options = DemoOptions(workdir=args.workdir, mode=args.mode, keep=args.keep or args.workdir is not None)
    # Libraries print to stdout (MLflow's "Registered model ..."); keep stdout for the summary alone.
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_demo(options, say)
    problems = demo_ok(summary)
    if args.json:
        print(json.dumps({**summary.to_dict(), "ok": not problems, "problems": problems}, indent=2, sort_keys=True))
    else:
        print(format_table(summary))
        for problem in problems:
            print(f"PROBLEM: {problem}")
    return 0 if not problems else 1
