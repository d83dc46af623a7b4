"""``otaml keys generate`` (the fleet signing key pair) and ``otaml verify`` (a device's checks, from a workstation)."""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass

from edge_runtime.errors import InputError, VerificationFailed


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="fleet signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    gen = keys_sub.add_parser("generate", help="create an ECDSA P-256 key pair (private key mode 0600)")
    gen.add_argument("--out", default=".", help="directory for otaml-signing.key and otaml-signing.pub (default: .)")
    gen.set_defaults(func=run_generate)

    verify = sub.add_parser("verify", help="check an image's signature as a device would; print the verdict")
    verify.add_argument("ref", help="HOST[:PORT]/REPO:TAG or HOST[:PORT]/REPO@sha256:...")
    verify.add_argument("--key", required=True, help="the fleet public key (PEM)")
    verify.add_argument("--channel", help="require the signature to be for this channel")
    verify.add_argument("--model", help="require the signature to be for this model")
    verify.add_argument("--running-version", help="apply rollback protection as a device running this version")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=run_verify)


def run_generate(args: argparse.Namespace) -> int:
    from registry.signing import generate_keys

    pair = generate_keys(args.out)
    print(f"private key: {pair.private_key} (mode 0600; keep it off images and out of git)")
    print(f"public key:  {pair.public_key} (configure devices with [verification] public_key)")
    print(f"key id:      {pair.key_id}")
    return 0


@dataclass(frozen=True)
class _Candidate:
    repository: str
    digest: str
    model: str
    version: str
    current_version: str


def run_verify(args: argparse.Namespace) -> int:
    from edge_runtime.errors import NotFound
    from edge_runtime.oci import LABEL_MODEL_NAME, LABEL_MODEL_VERSION
    from registry.cosign import SignaturePolicy, SignatureRejected, load_public_key
    from registry.signing import client_for

    if args.running_version and not args.model:
        raise InputError(
            "--running-version needs --model NAME: a device compares versions only within the model it runs "
            "(pinned from its running image's signature), so say which model that is."
        )
    key = load_public_key(args.key)
    client, ref = client_for(args.ref)
    with client:
        if ref.digest:
            digest = ref.digest
        else:
            found = client.head_manifest(ref.ref)
            if found is None:
                raise NotFound(f"{args.ref} does not exist in the registry; check the repository and tag.")
            digest = found.digest
        labels: dict[str, str] = {}
        with contextlib.suppress(NotFound):  # an image without an amd64 manifest or config: no labels to compare
            labels = client.image_labels(digest)
        candidate = _Candidate(
            repository=ref.repository,
            digest=digest,
            model=labels.get(LABEL_MODEL_NAME, ""),
            version=labels.get(LABEL_MODEL_VERSION, ""),
            current_version=args.running_version or "",
        )
        # The device's own policy, so the verdict here is the verdict there.
        policy = SignaturePolicy(key, client, channel=args.channel, model=args.model)
        try:
            policy.check(candidate)
        except SignatureRejected as exc:
            if args.json:
                print(
                    json.dumps(
                        {"verified": False, "digest": digest, "reason": exc.rejection.value, "message": str(exc)}
                    )
                )
            else:
                print(f"REJECTED {args.ref} ({digest})\n  reason: {exc.rejection.value}\n  {exc}")
            return 1
    claims = policy.last_claims
    if claims is None:  # check() returned without approving: cannot happen, but never print VERIFIED then
        raise VerificationFailed(f"{args.ref} was not approved by the signing policy.")
    if args.json:
        print(json.dumps({"verified": True, "digest": digest, "claims": claims.to_dict()}))
        return 0
    print(f"VERIFIED {args.ref} ({digest})")
    print(f"  {claims.model} v{claims.version} for {claims.channel}, approved by {claims.approver or '?'}")
    print(f"  signed {claims.signed_at}, expires {claims.to_dict()['expires_at'] or 'never'}")
    if claims.rollback:
        rb = claims.rollback
        print(f"  signed rollback v{rb.from_version} -> v{rb.to_version} by {rb.authorised_by}: {rb.reason}")
    return 0
