"""Cosign-layout image signatures, checked from a workstation (`otaml verify`): signed by the fleet key?

Devices no longer use this: they follow the fleet's TUF repository (:mod:`edge_runtime.trust`). The signature is still
published by promotion so that people and tooling (cosign) can check an image.

Signatures use cosign's "simple signing" layout, so cosign can check them too. They carry no Rekor
transparency-log bundle, so cosign 2.x needs ``cosign verify --key fleet.pub --insecure-ignore-tlog=true IMAGE``
(without the flag it fails looking for a tlog entry). The tag ``sha256-<hex>.sig`` in the image's repository
holds an OCI image manifest whose every layer is one signature. A layer's blob is the payload (media type
:data:`SIMPLESIGNING_MEDIA_TYPE`)::

    {"critical": {"identity": {"docker-reference": "127.0.0.1:5000/pump"},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": {"model": "pump-anomaly", "version": "7", "channel": "production",
                  "signed_at": "2026-11-26T23:00:00Z", "expires_at": "2027-02-24T23:00:00Z" | null,
                  "approver": "alice", "rollback": null | {"from_version": "8", "to_version": "7", ...}}}

and its annotation :data:`SIGNATURE_ANNOTATION` holds the base64 ECDSA-P256/SHA-256 DER signature over the
payload bytes. :data:`KEY_ID_ANNOTATION` (ours, ignored by cosign) names the signing key's fingerprint so a
device can tell "signed by another key" from "payload tampered with".

Rejections (:class:`Rejection`, carried by :class:`SignatureRejected`, a ``VerificationFailed``): an unsigned
image, a signature from another key, a tampered payload, a payload for another digest / repository / model /
channel, an expired signature, and a version lower than the running one without a signed rollback authorisation
for exactly that step, running version -> this version (TUF/Uptane-style rollback protection).

The repository check compares the repository *path* of the signed ``docker-reference`` with the one the device
pulls from, ignoring the registry host: devices may legitimately pull through a mirror or another host name for
the same registry, while a signed image copied into another repository (another model's) keeps its old path.
Only cryptography and the stdlib are used: this runs on the device.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.errors import InputError, NotFound, VerificationFailed

log = logging.getLogger(__name__)

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
KEY_ID_ANNOTATION = "dev.otaml.signature/key-id"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"


class Rejection(StrEnum):
    """Why an image is not approved; stable codes the agent shows in its status."""

    UNSIGNED = "unsigned"
    WRONG_KEY = "wrong-key"
    TAMPERED = "tampered"
    MALFORMED = "malformed"
    DIGEST_MISMATCH = "digest-mismatch"
    WRONG_REPOSITORY = "wrong-repository"
    WRONG_MODEL = "wrong-model"
    WRONG_CHANNEL = "wrong-channel"
    EXPIRED = "expired"
    DOWNGRADE = "downgrade"


# When several signatures fail, report the one that got furthest through the checks: "expired" says more
# than "another key signed something too".
_PROGRESS = {
    Rejection.UNSIGNED: 0,
    Rejection.WRONG_KEY: 1,
    Rejection.TAMPERED: 2,
    Rejection.MALFORMED: 3,
    Rejection.DIGEST_MISMATCH: 4,
    Rejection.WRONG_REPOSITORY: 5,
    Rejection.WRONG_MODEL: 6,
    Rejection.WRONG_CHANNEL: 7,
    Rejection.EXPIRED: 8,
    Rejection.DOWNGRADE: 9,
}


class SignatureRejected(VerificationFailed):
    """An image's approval does not hold; ``reason`` says which check failed (branch on it, not on text)."""

    def __init__(self, reason: Rejection, message: str, digest: str = "") -> None:
        super().__init__(message)
        self.rejection = reason
        self.digest = digest


@dataclass(frozen=True)
class SignatureLayer:
    """One signature as stored: the payload bytes, the base64 DER signature and the signer's key id."""

    payload: bytes
    signature: str
    key_id: str = ""


@dataclass(frozen=True)
class RollbackAuthorisation:
    """An operator's signed permission to go back to ``to_version`` (from ``from_version``)."""

    from_version: str
    to_version: str
    authorised_by: str
    reason: str
    at: str

    def to_dict(self) -> dict[str, str]:
        return {
            "from_version": self.from_version,
            "to_version": self.to_version,
            "authorised_by": self.authorised_by,
            "reason": self.reason,
            "at": self.at,
        }


@dataclass(frozen=True)
class Claims:
    """What a verified payload says about an image digest."""

    digest: str
    reference: str
    model: str
    version: str
    channel: str
    signed_at: str = ""
    expires_at: datetime | None = None
    approver: str = ""
    rollback: RollbackAuthorisation | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "reference": self.reference,
            "model": self.model,
            "version": self.version,
            "channel": self.channel,
            "signed_at": self.signed_at,
            "expires_at": format_time(self.expires_at) if self.expires_at else None,
            "approver": self.approver,
            "rollback": self.rollback.to_dict() if self.rollback else None,
        }


# --- keys -----------------------------------------------------------------------------------------


def load_public_key(source: str | os.PathLike[str] | bytes) -> ec.EllipticCurvePublicKey:
    """Read an ECDSA P-256 public key from PEM bytes or a PEM file."""
    where = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        pem = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise InputError(
            f"Cannot read public key {where}: {exc.strerror}. Pass the fleet key made by `otaml keys generate`."
        ) from exc
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise InputError(
            f"{where} is not a PEM public key ({exc}). Pass the .pub file of `otaml keys generate`."
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InputError(f"{where} is not an ECDSA P-256 public key; otaml signs with P-256 only.")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo: names a key without revealing anything."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


# --- payloads -------------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_payload(payload: bytes, digest: str = "") -> Claims:
    """Decode a simple-signing payload into :class:`Claims`; :data:`Rejection.MALFORMED` if it is not one."""
    try:
        data = json.loads(payload)
        critical = data["critical"]
        if critical["type"] != COSIGN_SIGNATURE_TYPE:
            raise ValueError(f"critical.type is {critical['type']!r}, not {COSIGN_SIGNATURE_TYPE!r}")
        optional = data.get("optional") or {}
        rollback = optional.get("rollback")
        expires = optional.get("expires_at")
        return Claims(
            digest=str(critical["image"]["docker-manifest-digest"]),
            reference=str(critical["identity"]["docker-reference"]),
            model=str(optional["model"]),
            version=str(optional["version"]),
            channel=str(optional["channel"]),
            signed_at=str(optional.get("signed_at", "")),
            expires_at=parse_time(str(expires), "expires_at") if expires else None,
            approver=str(optional.get("approver", "")),
            rollback=RollbackAuthorisation(**{k: str(rollback[k]) for k in _ROLLBACK_FIELDS}) if rollback else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureRejected(
            Rejection.MALFORMED,
            f"The signature payload for {digest or 'this image'} is not an otaml simple-signing payload ({exc!r}). "
            "Re-sign the image with `otaml promote`.",
            digest,
        ) from exc


_ROLLBACK_FIELDS = ("from_version", "to_version", "authorised_by", "reason", "at")


def _version_number(version: str, digest: str) -> int:
    try:
        return int(version)
    except ValueError as exc:
        raise SignatureRejected(
            Rejection.MALFORMED,
            f"Signed version {version!r} of {digest} is not an MLflow version number; re-sign it with `otaml promote`.",
            digest,
        ) from exc


def repository_path(reference: str) -> str:
    """``HOST[:PORT]/a/b[:tag][@digest]`` -> ``a/b``: the repository without registry host, tag or digest."""
    name = reference.split("@", 1)[0]
    head, sep, tail = name.rpartition("/")
    if ":" in tail:
        tail = tail.split(":", 1)[0]
    name = f"{head}{sep}{tail}"
    first, sep, rest = name.partition("/")
    # Docker's rule: the first component is a registry host if it has a dot or a port, or is localhost.
    if sep and ("." in first or ":" in first or first == "localhost"):
        return rest
    return name


# --- the checks -----------------------------------------------------------------------------------


def check_layer(
    layer: SignatureLayer,
    key: ec.EllipticCurvePublicKey,
    digest: str,
    *,
    repository: str | None = None,
    model: str | None = None,
    channel: str | None = None,
    running_version: str | None = None,
    now: datetime | None = None,
) -> Claims:
    """Verify one signature against the fleet key and every claim; raise :class:`SignatureRejected` if any fails.

    ``repository``: the repository the device pulls from (host ignored, see the module docstring).
    """
    expected_id = key_id(key)
    try:
        der = base64.b64decode(layer.signature, validate=True)
        key.verify(der, layer.payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        # The key-id annotation is unsigned, so it only explains a failure, never excuses one: another id means
        # another key; our id means the payload changed after signing; none (e.g. cosign's own) cannot tell.
        if layer.key_id and layer.key_id != expected_id:
            reason, why = (
                Rejection.WRONG_KEY,
                f"it is signed by key {layer.key_id}. Sign with the fleet's private key (otaml promote "
                "--signing-key) or configure the devices with the right public key.",
            )
        elif layer.key_id:
            reason, why = Rejection.TAMPERED, "the payload was changed after signing. Do not deploy it; re-promote."
        else:
            reason, why = Rejection.WRONG_KEY, "another key made it or the payload was changed. Re-sign it."
        raise SignatureRejected(
            reason, f"The signature on {digest} does not verify with the fleet key {expected_id}: {why}", digest
        ) from exc
    claims = parse_payload(layer.payload, digest)
    if claims.digest != digest:
        raise SignatureRejected(
            Rejection.DIGEST_MISMATCH,
            f"The signature stored for {digest} approves another image, {claims.digest}. "
            "Someone copied a signature; do not deploy it. Re-promote the version to sign the right digest.",
            digest,
        )
    if repository is not None and repository_path(claims.reference) != repository_path(repository):
        raise SignatureRejected(
            Rejection.WRONG_REPOSITORY,
            f"{digest} is signed for repository {claims.reference!r}, but this device pulls from {repository!r}. "
            "A signed image was copied between repositories; do not deploy it. Promote the model to this repository.",
            digest,
        )
    if model is not None and claims.model != model:
        raise SignatureRejected(
            Rejection.WRONG_MODEL,
            f"{digest} is signed for model {claims.model!r}, but this device runs {model!r}. "
            "Point the device at the right repository or promote the right model.",
            digest,
        )
    if channel is not None and claims.channel != channel:
        raise SignatureRejected(
            Rejection.WRONG_CHANNEL,
            f"{digest} is signed for channel {claims.channel!r}, but this device follows {channel!r}. "
            f"Promote the version to {channel!r} with `otaml promote --to {channel}`.",
            digest,
        )
    moment = now or datetime.now(UTC)
    if claims.expires_at is not None and moment >= claims.expires_at:
        raise SignatureRejected(
            Rejection.EXPIRED,
            f"The signature on {digest} ({claims.model} v{claims.version}) expired at "
            f"{format_time(claims.expires_at)}. Re-promote the version to renew its approval.",
            digest,
        )
    if running_version is not None:
        wanted = _version_number(claims.version, digest)
        current = _version_number(running_version, digest)
        # An authorisation allows exactly one step, from the running version to this one: an old "8 -> 7"
        # cannot be replayed to take a device on v9 (or one still on v10 after v9 was skipped) back to v7.
        rb = claims.rollback
        authorised = (
            rb is not None
            and rb.to_version == claims.version
            and rb.from_version.isdigit()
            and int(rb.from_version) == current
        )
        if wanted < current and not authorised:
            raise SignatureRejected(
                Rejection.DOWNGRADE,
                f"{digest} holds {claims.model} v{claims.version}, older than the running v{running_version}, and no "
                "signed rollback authorisation names it. Use `otaml rollback NAME --to-version "
                f"{claims.version} --reason TEXT` while the channel is on v{running_version} to authorise that step.",
                digest,
            )
    return claims


def verify_signatures(
    layers: Sequence[SignatureLayer],
    key: ec.EllipticCurvePublicKey,
    digest: str,
    *,
    repository: str | None = None,
    model: str | None = None,
    channel: str | None = None,
    running_version: str | None = None,
    now: datetime | None = None,
) -> Claims:
    """Accept ``digest`` if any of its signatures passes :func:`check_layer`; else raise the most telling rejection.

    Among passing signatures the newest wins, so a later rollback authorisation is what the claims show.
    """
    if not layers:
        raise SignatureRejected(
            Rejection.UNSIGNED,
            f"{digest} has no signature (no sha256-<hex>.sig tag beside it). Only promoted images run here: "
            "`otaml promote NAME VERSION --to CHANNEL` signs them.",
            digest,
        )
    passed: list[Claims] = []
    failures: list[SignatureRejected] = []
    for layer in layers:
        try:
            passed.append(
                check_layer(
                    layer,
                    key,
                    digest,
                    repository=repository,
                    model=model,
                    channel=channel,
                    running_version=running_version,
                    now=now,
                )
            )
        except SignatureRejected as exc:
            failures.append(exc)
    if passed:
        # signed_at has one-second resolution; on a tie the later layer (appended later, so newer) wins.
        return max(enumerate(passed), key=lambda item: (item[1].signed_at, item[0]))[1]
    worst = max(failures, key=lambda e: _PROGRESS[e.rejection])
    raise worst


# --- reading signatures from a registry -----------------------------------------------------------


def signature_tag(digest: str) -> str:
    """cosign's tag-based discovery: ``sha256:abc`` -> ``sha256-abc.sig``."""
    algorithm, sep, hexpart = digest.partition(":")
    if not sep or algorithm != "sha256" or len(hexpart) != 64:
        raise InputError(f"Image digest {digest!r} is not of the form sha256:<64 hex digits>.")
    return f"{algorithm}-{hexpart}.sig"


def parse_signature_manifest(manifest: dict[str, Any], get_blob: Callable[[str], bytes]) -> list[SignatureLayer]:
    """The simple-signing layers of a ``.sig`` manifest, each with its payload fetched via ``get_blob``."""
    layers = []
    for descriptor in manifest.get("layers") or []:
        if descriptor.get("mediaType") != SIMPLESIGNING_MEDIA_TYPE:
            continue
        annotations = descriptor.get("annotations") or {}
        signature = annotations.get(SIGNATURE_ANNOTATION)
        if not signature:
            continue
        payload = get_blob(str(descriptor["digest"]))
        # The registry checks digests on upload, but a device must not trust the transport to have done so.
        if "sha256:" + hashlib.sha256(payload).hexdigest() != descriptor["digest"]:
            raise SignatureRejected(
                Rejection.TAMPERED,
                f"Signature payload blob {descriptor['digest']} does not hash to its digest; the registry "
                "served altered content. Do not deploy; check the registry.",
            )
        layers.append(
            SignatureLayer(
                payload=payload, signature=str(signature), key_id=str(annotations.get(KEY_ID_ANNOTATION, ""))
            )
        )
    return layers


class SignatureSource(Protocol):
    """Reads one repository: :class:`edge_runtime.oci.RegistryClient` fits; a fake in tests."""

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]: ...

    def get_blob(self, digest: str) -> bytes: ...


def _manifest_json(result: Any, digest: str) -> dict[str, Any]:
    # RegistryClient returns (bytes, media type, digest); fakes may return bytes or the decoded JSON.
    data = result[0] if isinstance(result, tuple) else result
    if isinstance(data, dict):
        return data
    try:
        manifest = json.loads(data)
    except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureRejected(
            Rejection.MALFORMED,
            f"The signature manifest of {digest} is not JSON ({exc}); re-promote the version.",
            digest,
        ) from exc
    if not isinstance(manifest, dict):
        raise SignatureRejected(
            Rejection.MALFORMED, f"The signature manifest of {digest} is not a JSON object.", digest
        )
    return manifest


def fetch_signatures(source: SignatureSource, digest: str) -> list[SignatureLayer]:
    """Every signature stored for ``digest`` in the source's repository; an empty list when there is none."""
    try:
        manifest = _manifest_json(source.get_manifest(signature_tag(digest)), digest)
    except NotFound:
        return []
    try:
        return parse_signature_manifest(manifest, source.get_blob)
    except SignatureRejected:
        raise
    except VerificationFailed as exc:  # the client's own digest check on a blob
        raise SignatureRejected(Rejection.TAMPERED, f"A signature blob of {digest} was altered: {exc}", digest) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise SignatureRejected(
            Rejection.MALFORMED, f"The signature manifest of {digest} is malformed ({exc!r}); re-promote.", digest
        ) from exc


# --- the agent's policy ---------------------------------------------------------------------------


class CandidateLike(Protocol):
    """What the policy reads of ``edge_runtime.agent.policy.CandidateImage``."""

    @property
    def repository(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def current_version(self) -> str: ...

    # Optional ``current_digest: str``, the running image's digest (the agent's CandidateImage has it), read with
    # getattr so that callers without a running image (``otaml verify``) still fit.


class SignaturePolicy:
    """The agent's ``VerificationPolicy`` when ``[verification] public_key`` is set.

    Approves an image only if its digest carries a valid fleet signature for the repository the device pulls
    from, this model, this channel and a version not lower than the running one (unless a signed rollback
    authorisation names exactly that step). Every refusal is logged with its :class:`Rejection` code and raised
    as :class:`SignatureRejected`.

    The model is pinned, never read from the candidate's own (unsigned) labels: ``[verification] model`` if
    set, else the model the fleet signed for the running image (``current_digest``); on a first install
    (nothing running) the repository check alone binds the image. A running version without a verifiable
    running model is refused: versions of different models are never compared.
    """

    def __init__(
        self,
        public_key: ec.EllipticCurvePublicKey,
        source: SignatureSource,
        *,
        channel: str | None = None,
        model: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.public_key = public_key
        self.source = source
        self.channel = channel
        self.model = model
        self.clock = clock
        self.last_claims: Claims | None = None
        self._running_models: dict[str, str] = {}

    def _running_model(self, image: CandidateLike) -> str | None:
        """The model this device runs, from config or the running image's verified signature; None if nothing runs."""
        if self.model:
            return self.model
        current_digest = str(getattr(image, "current_digest", "") or "")
        if not current_digest:
            if image.current_version:
                raise SignatureRejected(
                    Rejection.WRONG_MODEL,
                    f"The device runs v{image.current_version} but its image digest is unknown, so its model cannot "
                    "be verified and versions cannot be compared. Set [verification] model in the agent config "
                    "(otaml verify: --model).",
                    image.digest,
                )
            return None
        model = self._running_models.get(current_digest)
        if model is None:
            try:
                # Only the running image's identity is wanted: its approval may have expired since it was installed.
                claims = verify_signatures(
                    fetch_signatures(self.source, current_digest),
                    self.public_key,
                    current_digest,
                    repository=image.repository,
                    now=datetime.min.replace(tzinfo=UTC),
                )
            except SignatureRejected as exc:
                raise SignatureRejected(
                    Rejection.WRONG_MODEL,
                    f"The running image {current_digest} has no valid fleet signature ({exc.rejection.value}: "
                    f"{exc}), so the model this device runs is unknown. Set [verification] model in the agent "
                    "config to the model this device serves.",
                    image.digest,
                ) from exc
            model = self._running_models[current_digest] = claims.model
        return model

    def check(self, image: CandidateLike) -> None:
        try:
            claims = verify_signatures(
                fetch_signatures(self.source, image.digest),
                self.public_key,
                image.digest,
                repository=image.repository,
                model=self._running_model(image),
                channel=self.channel,
                running_version=image.current_version or None,
                now=self.clock(),
            )
            if image.version and claims.version != image.version:
                raise SignatureRejected(
                    Rejection.MALFORMED,
                    f"{image.digest} is labelled {image.model} v{image.version} but its signature approves "
                    f"v{claims.version}. Re-promote the version so label and signature agree.",
                    image.digest,
                )
        except SignatureRejected as exc:
            log.warning(
                "image %s@%s rejected: %s: %s",
                image.repository,
                image.digest,
                exc.rejection.value,
                exc,
                extra={"event": "verification_rejected", "reason": exc.rejection.value, "digest": image.digest},
            )
            raise
        self.last_claims = claims
        log.info(
            "image %s@%s approved: %s v%s for %s%s",
            image.repository,
            image.digest,
            claims.model,
            claims.version,
            claims.channel,
            " (signed rollback)" if claims.rollback else "",
            extra={"event": "verification_passed", "digest": image.digest, "version": claims.version},
        )


def make_policy(section: Mapping[str, Any], **context: Any) -> SignaturePolicy:
    """Build the policy from ``[verification]`` (``public_key`` path, optional ``channel`` and ``model``).

    ``context``: ``source`` (the agent's ImageSource; its ``.client`` reads signatures) or ``client`` (a
    RegistryClient for the repository), and optionally ``channel`` (default: the source's channel).
    """
    key = load_public_key(str(section["public_key"]))
    image_source = context.get("source")
    source = context.get("client")
    if source is None:
        source = getattr(image_source, "client", image_source)
    if source is None or not hasattr(source, "get_manifest") or not hasattr(source, "get_blob"):
        raise InputError(
            f"The signing policy needs a registry client to read signatures (pass source= or client=); got {source!r}."
        )
    # The channel the device follows: a staging-approved image moved onto the production tag must not pass.
    channel = section.get("channel") or context.get("channel") or getattr(image_source, "channel", None)
    model = section.get("model") or None
    return SignaturePolicy(key, source, channel=str(channel) if channel else None, model=model)
