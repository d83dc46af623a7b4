"""``otaml trust``: the fleet's approvals on TUF — create the trust site, see it, approve, keep it fresh.

    otaml trust init --dir /srv/otaml-trust --keys-out ~/otaml-keys [--approvers 3 --threshold 2]
    otaml trust status --dir DIR [--json]              approvals, the pending one, expiry of each role
    otaml trust approve --dir DIR --key approver-2.key complete a pending approval (the second pair of eyes)
    otaml trust retry NAME VERSION --key K             a signed "try again": devices lift their block on it
    otaml trust discard --dir DIR                      drop a pending approval
    otaml trust refresh --dir DIR                      re-sign the timestamp (run it on a timer, e.g. hourly)

Devices read ``DIR/metadata`` over HTTP(S) (``[trust] metadata_url``) and are provisioned with
``DIR/metadata/1.root.json`` (``[trust] trusted_root``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trust = sub.add_parser("trust", help="the fleet's approvals (TUF): init, status, approve, refresh")
    tsub = trust.add_subparsers(dest="trust_command", metavar="SUBCOMMAND", required=True)

    init = tsub.add_parser("init", help="create the trust site and every key (the key ceremony)")
    _dir(init)
    init.add_argument("--keys-out", required=True, help="directory for the offline keys (root-N, approver-N)")
    init.add_argument("--approvers", type=int, default=3, help="approver (targets) keys (default 3)")
    init.add_argument("--threshold", type=int, default=2, help="approvers needed per approval (default 2)")
    init.add_argument("--root-keys", type=int, default=1, help="root keys (default 1)")
    init.add_argument("--root-threshold", type=int, default=1, help="root keys needed (default 1)")
    init.set_defaults(func=run_init)

    status = tsub.add_parser("status", help="approvals, the pending one, and when each role expires")
    _dir(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=run_status)

    approve = tsub.add_parser("approve", help="add your signature to the pending approval")
    _dir(approve)
    approve.add_argument("--key", required=True, help="your approver key (approver-N.key)")
    approve.set_defaults(func=run_approve)

    retry = tsub.add_parser("retry", help="a signed 'try again': devices lift their block on this version's digest")
    _dir(retry)
    retry.add_argument("name", help="registered model name")
    retry.add_argument("version", type=int)
    retry.add_argument("--channel", default="production")
    retry.add_argument("--key", required=True, help="your approver key (approver-N.key)")
    retry.set_defaults(func=run_retry)

    discard = tsub.add_parser("discard", help="drop the pending approval")
    _dir(discard)
    discard.set_defaults(func=run_discard)

    refresh = tsub.add_parser("refresh", help="re-sign the timestamp (and the snapshot when due); run on a timer")
    _dir(refresh)
    refresh.set_defaults(func=run_refresh)


def _dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", help="the trust site (default: $OTAML_TRUST_DIR)")


def site_dir(args: argparse.Namespace) -> str:
    """``--dir``, else ``$OTAML_TRUST_DIR``; a clear error when neither is set."""
    import os

    from edge_runtime.errors import InputError

    chosen = args.dir or os.environ.get("OTAML_TRUST_DIR", "")
    if not chosen:
        raise InputError("No trust site given: pass --dir DIR or set OTAML_TRUST_DIR (`otaml trust init` creates one).")
    return str(chosen)


def run_init(args: argparse.Namespace) -> int:
    from registry.tuf.site import init

    result = init(
        site_dir(args),
        args.keys_out,
        approvers=args.approvers,
        threshold=args.threshold,
        root_keys=args.root_keys,
        root_threshold=args.root_threshold,
    )
    print(f"trust site {result.site.path}: serve {result.site.metadata_dir} to devices over HTTP(S)")
    print(f"  provision devices with {result.trusted_root} ([trust] trusted_root)")
    print(f"  approvals need {result.approver_threshold} of {len(result.approver_keys)} approver keys:")
    for path in result.approver_keys:
        print(f"    {path}")
    print("  root keys (keep offline): " + ", ".join(str(p) for p in result.root_keys))
    print(f"  online keys (snapshot, timestamp): {result.site.online_dir}; run `otaml trust refresh` on a timer")
    return 0


def status_dict(site_dir: str) -> dict[str, Any]:
    from registry.tuf.site import TrustSite

    repo = TrustSite(site_dir).open()
    root = repo.root().signed
    pending = repo.pending()
    return {
        "site": site_dir,
        "root_version": root.version,
        "approver_threshold": root.roles["targets"].threshold,
        "approvers": sorted(root.roles["targets"].keyids),
        "expires": {
            "root": root.expires.isoformat(),
            "targets": repo.targets().signed.expires.isoformat(),
            "snapshot": repo.snapshot().signed.expires.isoformat(),
            "timestamp": repo.timestamp().signed.expires.isoformat(),
        },
        "approvals": [
            {
                "channel": a.channel,
                "model": a.model,
                "version": a.version,
                "digest": a.digest,
                "base": a.base_digest,
                "staged": a.staged,
            }
            for a in repo.approvals()
        ],
        "pending": None
        if pending is None
        else {
            "target": pending.approval.target_path,
            "digest": pending.approval.digest,
            "staged": pending.approval.staged,
            "signed_by": list(pending.signed_by),
            "missing": pending.missing,
        },
    }


def run_status(args: argparse.Namespace) -> int:
    data = status_dict(site_dir(args))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"trust site {data['site']} (root v{data['root_version']}, approvals need {data['approver_threshold']})")
    for role, when in data["expires"].items():
        print(f"  {role:<9} expires {when}")
    print("approved:" if data["approvals"] else "approved: nothing yet")
    for a in data["approvals"]:
        staged = "  (staged: devices move to it with a rollout)" if a["staged"] else ""
        print(f"  {a['channel']}/{a['model']}/{a['version']}  {a['digest']}{staged}")
    p = data["pending"]
    if p:
        how = "staged: devices move with a rollout" if p["staged"] else "not staged: devices may run it at once"
        print(
            f"pending: {p['target']} {p['digest']} ({how}) — {p['missing']} more signature(s): "
            "`otaml trust approve --key ...`"
        )
    return 0


def run_approve(args: argparse.Namespace) -> int:
    from registry.tuf import keys
    from registry.tuf.site import TrustSite

    signer = keys.load_signer(args.key)
    with TrustSite(site_dir(args)).locked() as repo:
        status = repo.approve_pending(signer)
    if status.state == "approved" and status.approval.staged:
        a = status.approval
        print(
            f"approved {a.target_path} ({a.digest}), staged: devices move when a rollout opens a wave: "
            f"`otaml rollout start {a.model} {a.version} --channel {a.channel} ...`"
        )
    elif status.state == "approved":
        print(f"approved {status.approval.target_path} ({status.approval.digest}): devices will run it")
    else:
        print(f"signed {status.approval.target_path}: {status.missing} more signature(s) needed")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from registry.tuf import keys
    from registry.tuf.site import TrustSite

    signer = keys.load_signer(args.key)
    with TrustSite(site_dir(args)).locked() as repo:
        status = repo.retry(args.channel, args.name, args.version, signer=signer)
    what = f"{status.approval.target_path} retry {status.approval.retry}"
    if status.state == "approved":
        print(f"published {what}: devices that blocked {status.approval.digest} will try it again")
    else:
        print(f"signed {what}: {status.missing} more signature(s) needed (`otaml trust approve`)")
    return 0


def run_discard(args: argparse.Namespace) -> int:
    from registry.tuf.site import TrustSite

    with TrustSite(site_dir(args)).locked() as repo:
        pending = repo.pending()
        repo.discard_pending()
    print(f"discarded {pending.approval.target_path}" if pending else "nothing was pending")
    return 0


def run_refresh(args: argparse.Namespace) -> int:
    from registry.tuf.site import TrustSite

    with TrustSite(site_dir(args)).locked() as repo:
        expires = repo.refresh()
    print(f"timestamp re-signed; valid until {expires.isoformat()}")
    return 0
