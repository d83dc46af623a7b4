"""``otaml agent run|status``: the OTA agent, the same as ``python -m edge_runtime agent``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from edge_runtime.agent.cli import add_agent_arguments

    parser = sub.add_parser("agent", help="the OTA update agent: run it, or show its status")
    add_agent_arguments(parser)
    parser.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    func = getattr(args, "agent_func", None)
    if func is None:
        print("usage: otaml agent {run,status} --config FILE")
        return 2
    return int(func(args))
