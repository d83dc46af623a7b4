"""``otaml models list|history``, ``otaml promote`` and ``otaml rollback``: the MLflow Model Registry side.

The MLflow tracking/registry URI comes from ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` (MLflow's default
otherwise). An image registry is used when ``--base-image``, ``--image-repo`` and ``--signing-key`` (or
``OTAML_BASE_IMAGE``, ``OTAML_IMAGE_REPO``, ``OTAML_SIGNING_KEY``) are set; without them only MLflow moves.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from edge_runtime.errors import InputError

CHANNELS = ("staging", "production")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="list registered model versions and their promotion history")
    models_sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    ls = models_sub.add_parser("list", help="versions, aliases, gate results and approvals")
    ls.add_argument("name", nargs="?", help="one registered model (default: all)")
    _common(ls)
    ls.set_defaults(func=run_list)
    hist = models_sub.add_parser("history", help="every promotion and rollback: who, when, why, gates")
    hist.add_argument("name")
    _common(hist)
    hist.set_defaults(func=run_history)

    promote = sub.add_parser("promote", help="gate a model version and move a channel (MLflow alias, image, signature)")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--to", dest="channel", required=True, choices=CHANNELS)
    promote.add_argument("--approver", help="who approves (default: $OTAML_APPROVER or the login name)")
    promote.add_argument("--force", action="store_true", help="promote despite failed gates (needs --reason)")
    promote.add_argument("--reason", default="", help="why: required with --force, recorded either way")
    promote.add_argument("--gates", help="gates file (default: $OTAML_GATES or registry/gates.toml)")
    promote.add_argument(
        "--all-at-once",
        action="store_true",
        help="approve it for every device of the channel at once, no waves (default: when an earlier version runs, "
        "the approval is staged and devices move when `otaml rollout start` opens a wave)",
    )
    _image_options(promote)
    _common(promote)
    promote.set_defaults(func=run_promote)

    rollback = sub.add_parser("rollback", help="move a channel back to an older version with a signed authorisation")
    rollback.add_argument("name")
    rollback.add_argument("--to-version", required=True)
    rollback.add_argument("--channel", default="production", choices=CHANNELS)
    rollback.add_argument("--approver", help="who authorises (default: $OTAML_APPROVER or the login name)")
    rollback.add_argument("--reason", required=True, help="why (signed into the authorisation and recorded)")
    _image_options(rollback)
    _common(rollback)
    rollback.set_defaults(func=run_rollback)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _image_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("image registry (all three, or none for MLflow only)")
    group.add_argument("--base-image", help="runtime base image ref ($OTAML_BASE_IMAGE)")
    group.add_argument("--image-repo", help="target repository HOST[:PORT]/REPO ($OTAML_IMAGE_REPO)")
    group.add_argument("--signing-key", help="fleet private key PEM ($OTAML_SIGNING_KEY)")
    group.add_argument(
        "--expires-in-days", type=float, help="signature lifetime in days ($OTAML_SIGNATURE_DAYS; default: none)"
    )
    trust = parser.add_argument_group("approval (devices run only approved images)")
    trust.add_argument("--trust-dir", help="the fleet's trust site from `otaml trust init` ($OTAML_TRUST_DIR)")
    trust.add_argument("--approval-key", help="your approver key, approver-N.key ($OTAML_APPROVAL_KEY)")


def _approver(args: argparse.Namespace) -> str:
    return str(args.approver or os.environ.get("OTAML_APPROVER") or getpass.getuser())


def _publisher(args: argparse.Namespace) -> Any:
    from registry.promotion import ImageTarget, RegistryPublisher, TrustTarget

    trust = TrustTarget.from_options(args.trust_dir, args.approval_key)
    if getattr(args, "all_at_once", False):
        if trust is None:
            raise InputError("--all-at-once is about the approval: give --trust-dir and --approval-key too.")
        trust = replace(trust, all_at_once=True)
    target = ImageTarget.from_options(
        args.base_image, args.image_repo, args.signing_key, args.expires_in_days, trust=trust
    )
    if target is None and trust is not None:
        raise InputError("--trust-dir/--approval-key approve an image: give the image registry options too.")
    return RegistryPublisher(target) if target else None


def run_promote(args: argparse.Namespace) -> int:
    from registry.promotion import PromotionRefused, promote

    try:
        report = promote(
            args.name,
            args.version,
            args.channel,
            approver=_approver(args),
            force=args.force,
            reason=args.reason,
            gates_file=args.gates,
            publisher=_publisher(args),
            tracking_uri=args.tracking_uri,
        )
    except PromotionRefused as exc:
        if args.json:
            print(json.dumps({"promoted": False, "error": str(exc), "gates": exc.report.to_dict()}, indent=2))
        else:
            _print_gates(exc.report)
        raise
    if args.json:
        print(json.dumps(_report_dict(report), indent=2))
        return 0
    _print_gates(report.gates)
    _print_outcome(report, all_at_once=args.all_at_once)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from registry.promotion import rollback

    report = rollback(
        args.name,
        args.to_version,
        args.channel,
        approver=_approver(args),
        reason=args.reason,
        publisher=_publisher(args),
        tracking_uri=args.tracking_uri,
    )
    if args.json:
        print(json.dumps(_report_dict(report), indent=2))
        return 0
    _print_outcome(report)
    return 0


def _report_dict(report: Any) -> dict[str, Any]:
    data = report.event()
    data["name"] = report.name
    data["gates"] = report.gates.to_dict() if report.gates else None
    data["image"] = report.image.to_dict() if report.image else None
    data["notes"] = list(report.notes)
    return data


def _print_gates(gates: Any) -> None:
    if gates is None:
        return
    print(f"gates for {gates.channel}:")
    for r in gates.results:
        print(f"  {r.status.upper():7} {r.name:14} {r.detail}")


def _print_outcome(report: Any, *, all_at_once: bool = False) -> None:
    what = "rolled back" if report.action == "rollback" else "promoted"
    previous = f" (was v{report.previous_version})" if report.previous_version else ""
    print(
        f"{what} {report.name} v{report.version} to {report.channel}{previous}: models:/{report.name}@{report.channel}"
    )
    print(f"  approver {report.approver} at {report.at}" + (f", FORCED: {report.reason}" if report.forced else ""))
    if report.reason and not report.forced:
        print(f"  reason: {report.reason}")
    if report.image:
        img = report.image
        print(f"  image {img.repository}:{img.version_tag} = {img.digest}")
        print(f"  signed ({img.signature_tag}); channel tag {img.channel_tag} moved")
        if img.approval == "approved" and img.staged:
            print(
                "  approved in the trust site, staged: devices stay on the version they run until a rollout opens a "
                f"wave: `otaml rollout start {report.name} {report.version} --channel {report.channel} ...`"
            )
        elif img.approval == "approved":
            who = "every device of the channel moves at once (--all-at-once)" if all_at_once else "devices will run it"
            print(f"  approved in the trust site: {who}")
        elif img.approval == "pending":
            then = "; staged: then `otaml rollout start` moves devices in waves" if img.staged else ""
            print(
                f"  approval PENDING: {img.approvals_missing} more approver signature(s) needed before devices run "
                f"it: `otaml trust approve --dir TRUST_DIR --key approver-N.key`{then}"
            )
        else:
            print("  note: no trust site given (--trust-dir): devices, which run only approved images, will not run it")
    for note in report.notes:
        print(f"  note: {note}")


def run_list(args: argparse.Namespace) -> int:
    from registry.promotion import list_versions

    rows = list_versions(args.name, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps([_version_dict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no registered models" if args.name is None else f"{args.name} has no versions")
        return 0
    header = ("NAME", "VERSION", "ALIASES", "CREATED", "DETECTOR", "QUANT", "STAGING", "PRODUCTION")
    table = [header] + [
        (
            r.name,
            r.version,
            ",".join(r.aliases) or "-",
            r.created_at,
            r.tags.get("detector", "-"),
            r.tags.get("quantization", "-"),
            _approval_cell(r, "staging"),
            _approval_cell(r, "production"),
        )
        for r in rows
    ]
    _print_table(table)
    return 0


def _approval_cell(row: Any, channel: str) -> str:
    approval = row.approval(channel)
    if not approval:
        return "-"
    forced = " FORCED" if approval.get("forced") == "true" else ""
    gates = row.gate_summary(channel) or approval.get("action", "")
    return f"{approval.get('approved_by', '?')} {approval.get('approved_at', '')[:19]}Z {gates}{forced}"


def _version_dict(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "aliases": list(row.aliases),
        "created_at": row.created_at,
        "run_id": row.run_id,
        "tags": dict(row.tags),
        "approvals": {c: row.approval(c) for c in CHANNELS if row.approval(c)},
    }


def run_history(args: argparse.Namespace) -> int:
    from registry.promotion import history

    events = history(args.name, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    if not events:
        print(f"{args.name} was never promoted")
        return 0
    table = [("AT", "ACTION", "CHANNEL", "VERSION", "FROM", "APPROVER", "GATES", "REASON", "IMAGE")]
    for e in events:
        gates = e.get("gates") or {}
        failed = [k for k, v in gates.items() if v == "fail"]
        gate_text = "-" if not gates else ("pass" if not failed else "FAIL " + ",".join(failed))
        table.append(
            (
                str(e.get("at", ""))[:19] + "Z",
                str(e.get("action", "")) + (" (forced)" if e.get("forced") else ""),
                str(e.get("channel", "")),
                str(e.get("version", "")),
                str(e.get("previous_version") or "-"),
                str(e.get("approver", "")),
                gate_text,
                str(e.get("reason") or "-"),
                str(e.get("image") or "-"),
            )
        )
    _print_table(table)
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
