"""``python -m edge_runtime serve ...`` or ``python -m edge_runtime agent ...`` (no ``otaml`` CLI on a device)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m edge_runtime {serve,agent} [options]   (add --help after the command for its options)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    command, rest = args[0], args[1:]
    # Each command imports only what it needs: the agent does not load onnxruntime, serve not the agent.
    if command == "serve":
        from edge_runtime.serve_cli import main as serve_main

        return serve_main(rest)
    if command == "agent":
        from edge_runtime.agent.cli import main as agent_main

        return int(agent_main(rest))
    print(f"{USAGE}\nerror: unknown command {command!r}; choose serve or agent.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
