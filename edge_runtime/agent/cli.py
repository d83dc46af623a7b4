"""``python -m edge_runtime agent run|status --config FILE`` (``otaml agent ...`` is the same)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge_runtime.agent.config import AgentConfig, load_config
from edge_runtime.agent.state import AgentState, StateStore
from edge_runtime.errors import OtamlError

if TYPE_CHECKING:
    from edge_runtime.agent.reconcile import Reconciler
    from edge_runtime.agent.trust_policy import TrustPolicy

DEFAULT_CONFIG = "/etc/otaml/agent.toml"


def build_reconciler(config: AgentConfig) -> Reconciler:
    """The real agent: registry over HTTP, containerd through ``ctr``, the iptables redirect."""
    from edge_runtime.agent.canary import HttpProber
    from edge_runtime.agent.ctr import CtrRuntime
    from edge_runtime.agent.handover import IptablesRedirect
    from edge_runtime.agent.policy import NoDowngrade
    from edge_runtime.agent.reconcile import Reconciler
    from edge_runtime.agent.source import RegistrySource

    source = RegistrySource.connect(
        config.registry_url, config.repository, config.channel, config.registry_timeout_s, config.token_hosts
    )
    runtime = CtrRuntime(
        config.containerd_socket,
        config.namespace,
        config.ctr_path,
        plain_http=config.plain_http,
        log_dir=config.state_dir / "logs",
    )
    return Reconciler(
        config,
        StateStore(config.state_dir),
        source,
        runtime,
        IptablesRedirect(config.public_port),
        HttpProber("127.0.0.1", config.health_timeout_s),
        NoDowngrade(),
        trust=build_trust(config),
    )


def build_trust(config: AgentConfig) -> TrustPolicy | None:
    """The device's TUF policy, or None (with a loud warning) when ``[trust] insecure = true``."""
    from edge_runtime.agent.trust_policy import TrustPolicy
    from edge_runtime.trust.client import TrustClient, TrustSettings

    if not config.trust_metadata_url:
        logging.getLogger("otaml.agent").warning(
            "INSECURE: [trust] insecure = true — this device runs any image the channel tag %s points at, "
            "approved or not. Configure [trust] metadata_url for production.",
            config.channel_ref,
        )
        return None
    client = TrustClient(
        TrustSettings(
            metadata_url=config.trust_metadata_url,
            trusted_root=config.trusted_root,
            metadata_dir=config.tuf_dir,
        )
    )
    return TrustPolicy(
        client, config.channel, config.model, config.device_id, dict(config.groups), rollout=client.rollout
    )


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="{run,status}")
    run = sub.add_parser("run", help="recover, then poll the channel and update the service forever")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"agent TOML file (default {DEFAULT_CONFIG})")
    run.add_argument("--once", action="store_true", help="recover and run one update step, then exit")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.set_defaults(agent_func=cmd_run)
    status = sub.add_parser("status", help="current/previous/blocked digests, versions, last error, history")
    status.add_argument("--config", default=DEFAULT_CONFIG, help=f"agent TOML file (default {DEFAULT_CONFIG})")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.add_argument("--history", type=int, default=10, metavar="N", help="history entries to show (default 10)")
    status.set_defaults(agent_func=cmd_status)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_runtime.agent.loop import run
    from edge_runtime.jsonlog import configure_logging

    configure_logging(args.log_level)
    config = load_config(args.config)
    reconciler = build_reconciler(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("otaml.agent").info("signal %d: stopping after the current step", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reporter = None
    on_report = None
    if config.fleet is not None:
        from edge_runtime.agent.fleet_link import FleetLink
        from edge_runtime.fleet.reporter import Reporter

        reporter = Reporter(config.fleet).start()
        on_report = FleetLink(
            reconciler,
            reporter,
            device_id=config.fleet.device_id,
            groups=dict(config.fleet.groups),
            model=config.model,
            field_interval_s=config.field_interval_s,
            capture_windows=config.fleet.capture_windows,
        )
        reconciler.on_phase = on_report.phase_changed
    try:
        report = run(reconciler, stop, max_steps=2 if args.once else None, on_report=on_report)
    finally:
        if reporter is not None:
            reporter.close()
    if args.once and report is not None:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    return 0


def _ago(moment: float) -> str:
    if not moment:
        return "never"
    seconds = max(0.0, time.time() - moment)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _trust_line(state: AgentState) -> str:
    if state.trust_status == "insecure":
        return "INSECURE: verification is off ([trust] insecure = true); any image on the channel tag runs"
    if not state.trust_status:
        return "- (no metadata refresh yet)"
    line = f"{state.trust_status} (targets v{state.trust_floor})"
    return line + (f"; wants {state.desired}" if state.desired else "")


def format_status(state: AgentState, history: int = 10) -> str:
    """The human-readable ``agent status``."""

    def dep(label: str, d: Any) -> str:
        if d is None:
            return f"{label:<10} -"
        return f"{label:<10} {d.model or '?'} v{d.version or '?'}  {d.digest}  ({d.container}, port {d.port})"

    lines = [
        dep("current", state.current),
        dep("previous", state.previous),
        f"{'phase':<10} {state.phase}"
        + (f" ({dep('candidate', state.candidate).split(maxsplit=1)[1]})" if state.candidate else ""),
        f"{'channel':<10} {state.channel_digest or '-'}   last check {_ago(state.last_check_at)}",
        f"{'trust':<10} " + _trust_line(state),
        f"{'blocked':<10} " + (", ".join(state.blocked) if state.blocked else "-"),
    ]
    for digest, reason in state.blocked.items():
        lines.append(f"  {digest[:19]}…  {reason[:160]}")
    error = f"{state.last_error} ({_ago(state.last_error_at)})" if state.last_error else "-"
    lines.append(f"{'last error':<10} {error}")
    counters = ", ".join(f"{k} {v}" for k, v in sorted(state.counters.items())) or "-"
    lines.append(f"{'counters':<10} {counters}")
    if history and state.history:
        lines.append("history (newest last):")
        for h in state.history[-history:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(h.get("at", 0))))
            total = h.get("timings", {}).get("total_s", 0.0)
            what = f"{when}Z  {h.get('outcome', '?'):<11} v{h.get('version') or '?':<5} {str(h.get('digest', ''))[:19]}"
            tail = f"  {total:.1f} s" + (f"  {h.get('step')}: {h['error'][:120]}" if h.get("error") else "")
            lines.append("  " + what + tail)
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    state = StateStore(config.state_dir).load()
    if args.json:
        data = state.to_dict()
        data["history"] = data["history"][-args.history :] if args.history else data["history"]
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_status(state, args.history))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime agent", description=__doc__)
    add_agent_arguments(parser)
    args = parser.parse_args(argv)
    if not getattr(args, "agent_func", None):
        parser.print_help()
        return 2
    try:
        return int(args.agent_func(args))
    except OtamlError as exc:
        print(f"agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
