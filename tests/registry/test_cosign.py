"""Device-side verification: every rejection, on real keys and real payloads; a fake registry at the I/O seam."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.errors import NotFound, VerificationFailed
from registry.cosign import (
    KEY_ID_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    Rejection,
    RollbackAuthorisation,
    SignatureLayer,
    SignaturePolicy,
    SignatureRejected,
    fetch_signatures,
    key_id,
    load_public_key,
    make_policy,
    parse_payload,
    signature_tag,
    verify_signatures,
)
from registry.signing import build_payload, sign_payload, signature_manifest

DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64
RUNNING_DIGEST = "sha256:" + "c" * 64
NOW = datetime(2026, 11, 26, 23, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def fleet_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signed(
    key: ec.EllipticCurvePrivateKey,
    *,
    digest: str = DIGEST,
    version: str = "5",
    channel: str = "production",
    model: str = "pump-anomaly",
    expires_at: datetime | None = None,
    rollback: RollbackAuthorisation | None = None,
    signed_at: datetime = NOW - timedelta(hours=1),
    reference: str = "127.0.0.1:5000/pump",
) -> SignatureLayer:
    payload = build_payload(
        digest=digest,
        reference=reference,
        model=model,
        version=version,
        channel=channel,
        approver="alice",
        signed_at=signed_at,
        expires_at=expires_at,
        rollback=rollback,
    )
    return sign_payload(key, payload)


def check(layers: list[SignatureLayer], key: ec.EllipticCurvePrivateKey, **kwargs: Any) -> Any:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("channel", "production")
    kwargs.setdefault("model", "pump-anomaly")
    return verify_signatures(layers, key.public_key(), DIGEST, **kwargs)


def rejection(layers: list[SignatureLayer], key: ec.EllipticCurvePrivateKey, **kwargs: Any) -> Rejection:
    with pytest.raises(SignatureRejected) as info:
        check(layers, key, **kwargs)
    assert isinstance(info.value, VerificationFailed)  # the agent branches on the shared type
    assert str(info.value)  # every rejection says what to do
    return info.value.rejection


def test_a_valid_signature_is_accepted_with_its_claims(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    claims = check([signed(fleet_key)], fleet_key, running_version="4")
    assert (claims.digest, claims.model, claims.version, claims.channel) == (DIGEST, "pump-anomaly", "5", "production")
    assert claims.approver == "alice"


def test_unsigned_image_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    assert rejection([], fleet_key) is Rejection.UNSIGNED


def test_signature_from_another_key_is_rejected(
    fleet_key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    assert rejection([signed(other_key)], fleet_key) is Rejection.WRONG_KEY


def test_another_key_without_key_id_is_still_rejected(
    fleet_key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    layer = signed(other_key)
    bare = SignatureLayer(payload=layer.payload, signature=layer.signature)  # e.g. made by cosign itself
    assert rejection([bare], fleet_key) is Rejection.WRONG_KEY


def test_key_id_annotation_never_excuses_or_blocks_a_valid_signature(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key)
    relabelled = SignatureLayer(payload=layer.payload, signature=layer.signature, key_id="sha256:" + "0" * 64)
    assert check([relabelled], fleet_key).version == "5"  # the annotation is unsigned: only the signature counts


def test_tampered_payload_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key, version="5")
    forged = layer.payload.replace(b'"version":"5"', b'"version":"9"')
    assert forged != layer.payload
    tampered = SignatureLayer(payload=forged, signature=layer.signature, key_id=layer.key_id)
    assert rejection([tampered], fleet_key) is Rejection.TAMPERED


def test_garbage_signature_is_rejected_not_crashing(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key)
    broken = SignatureLayer(payload=layer.payload, signature="!!not base64!!", key_id=layer.key_id)
    assert rejection([broken], fleet_key) is Rejection.TAMPERED


def test_payload_for_another_digest_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    assert rejection([signed(fleet_key, digest=OTHER_DIGEST)], fleet_key) is Rejection.DIGEST_MISMATCH


def test_payload_for_another_channel_or_model_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    assert rejection([signed(fleet_key, channel="staging")], fleet_key) is Rejection.WRONG_CHANNEL
    assert rejection([signed(fleet_key, model="fan-anomaly")], fleet_key) is Rejection.WRONG_MODEL


def test_expired_signature_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key, expires_at=NOW - timedelta(seconds=1))
    assert rejection([layer], fleet_key) is Rejection.EXPIRED
    assert check([signed(fleet_key, expires_at=NOW + timedelta(days=1))], fleet_key).expires_at is not None


def test_lower_version_is_rejected_without_rollback_authorisation(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    assert rejection([signed(fleet_key, version="3")], fleet_key, running_version="5") is Rejection.DOWNGRADE
    # Version numbers compare as numbers, not text: "10" > "9".
    assert check([signed(fleet_key, version="10")], fleet_key, running_version="9").version == "10"


def test_signed_rollback_authorisation_allows_the_named_version(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    auth = RollbackAuthorisation(from_version="5", to_version="3", authorised_by="bob", reason="f1 regression", at="t")
    layers = [signed(fleet_key, version="3"), signed(fleet_key, version="3", rollback=auth, signed_at=NOW)]
    claims = check(layers, fleet_key, running_version="5")
    assert claims.rollback == auth


def test_rollback_authorisation_for_another_version_or_stale_start_is_rejected(
    fleet_key: ec.EllipticCurvePrivateKey,
) -> None:
    other = RollbackAuthorisation(from_version="5", to_version="2", authorised_by="bob", reason="r", at="t")
    assert rejection([signed(fleet_key, version="3", rollback=other)], fleet_key, running_version="5") is (
        Rejection.DOWNGRADE
    )
    # An old "4 -> 3" authorisation cannot take a device that now runs v6 back to v3 (replay).
    stale = RollbackAuthorisation(from_version="4", to_version="3", authorised_by="bob", reason="r", at="t")
    assert rejection([signed(fleet_key, version="3", rollback=stale)], fleet_key, running_version="6") is (
        Rejection.DOWNGRADE
    )


def test_rollback_authorisation_must_be_signed_by_the_fleet_key(
    fleet_key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = RollbackAuthorisation(from_version="5", to_version="3", authorised_by="eve", reason="r", at="t")
    layers = [signed(fleet_key, version="3"), signed(other_key, version="3", rollback=auth)]
    # The most telling failure is reported: the fleet signature got furthest (a downgrade).
    assert rejection(layers, fleet_key, running_version="5") is Rejection.DOWNGRADE


def test_malformed_payload_is_rejected(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = sign_payload(fleet_key, b'{"critical": {"type": "something else"}}')
    assert rejection([layer], fleet_key) is Rejection.MALFORMED
    with pytest.raises(SignatureRejected) as info:
        parse_payload(b"not json")
    assert info.value.rejection is Rejection.MALFORMED


def test_payload_has_cosign_simple_signing_shape(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key, expires_at=NOW + timedelta(days=30))
    data = json.loads(layer.payload)
    assert data["critical"] == {
        "identity": {"docker-reference": "127.0.0.1:5000/pump"},
        "image": {"docker-manifest-digest": DIGEST},
        "type": "cosign container image signature",
    }
    assert data["optional"]["expires_at"] == "2026-12-26T23:00:00Z"
    # The signature is plain ECDSA-SHA256 DER over the payload bytes, as cosign verifies it.
    der = base64.b64decode(layer.signature)
    from cryptography.hazmat.primitives import hashes

    fleet_key.public_key().verify(der, layer.payload, ec.ECDSA(hashes.SHA256()))


# --- fetching from a registry (fake at the I/O seam) ----------------------------------------------


class FakeRepository:
    """``get_manifest``/``get_blob`` of one repository, from dicts; NotFound like the real client."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}

    def store(self, digest: str, layers: list[SignatureLayer]) -> None:
        manifest, config = signature_manifest(layers)
        for blob in [config, *(layer.payload for layer in layers)]:
            self.blobs["sha256:" + hashlib.sha256(blob).hexdigest()] = blob
        self.manifests[signature_tag(digest)] = manifest

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        if ref not in self.manifests:
            raise NotFound(f"manifest {ref} not found")
        data = self.manifests[ref]
        return data, "application/vnd.oci.image.manifest.v1+json", "sha256:" + hashlib.sha256(data).hexdigest()

    def get_blob(self, digest: str) -> bytes:
        if digest not in self.blobs:
            raise NotFound(f"blob {digest} not found")
        return self.blobs[digest]


def test_fetch_reads_every_signature_layer(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    repo = FakeRepository()
    layers = [signed(fleet_key, version="5"), signed(fleet_key, version="5", channel="staging")]
    repo.store(DIGEST, layers)
    assert fetch_signatures(repo, DIGEST) == layers
    assert fetch_signatures(repo, OTHER_DIGEST) == []


def test_fetch_rejects_a_payload_blob_that_does_not_match_its_digest(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    repo = FakeRepository()
    layer = signed(fleet_key)
    repo.store(DIGEST, [layer])
    digest = "sha256:" + hashlib.sha256(layer.payload).hexdigest()
    repo.blobs[digest] = layer.payload.replace(b"alice", b"mallory")
    with pytest.raises(SignatureRejected) as info:
        fetch_signatures(repo, DIGEST)
    assert info.value.rejection is Rejection.TAMPERED


def test_signature_manifest_uses_the_cosign_layout(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    layer = signed(fleet_key)
    manifest = json.loads(signature_manifest([layer])[0])
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    (descriptor,) = manifest["layers"]
    assert descriptor["mediaType"] == SIMPLESIGNING_MEDIA_TYPE
    assert descriptor["digest"] == "sha256:" + hashlib.sha256(layer.payload).hexdigest()
    assert descriptor["annotations"][SIGNATURE_ANNOTATION] == layer.signature
    assert descriptor["annotations"][KEY_ID_ANNOTATION] == key_id(fleet_key.public_key())
    assert signature_tag(DIGEST) == f"sha256-{'a' * 64}.sig"


def test_an_authorisation_allows_exactly_one_step_from_the_running_version(
    fleet_key: ec.EllipticCurvePrivateKey,
) -> None:
    # A "9 -> 7" authorisation (the channel was on v9) is not one for a device still on v8: only from v9 it passes.
    auth = RollbackAuthorisation(from_version="9", to_version="7", authorised_by="bob", reason="r", at="t")
    layer = signed(fleet_key, version="7", rollback=auth)
    assert rejection([layer], fleet_key, running_version="8") is Rejection.DOWNGRADE
    assert check([layer], fleet_key, running_version="9").version == "7"


def test_repository_path_ignores_host_tag_and_digest() -> None:
    from registry.cosign import repository_path

    assert repository_path("127.0.0.1:5000/fleet/pump") == "fleet/pump"
    assert repository_path("mirror.example.com/fleet/pump:production") == "fleet/pump"
    assert repository_path(f"localhost/pump@{DIGEST}") == "pump"
    assert repository_path("fleet/pump") == "fleet/pump"


def test_a_signature_for_another_repository_is_rejected_whatever_the_host(
    fleet_key: ec.EllipticCurvePrivateKey,
) -> None:
    fan = signed(fleet_key, reference="127.0.0.1:5000/fan", model="pump-anomaly")
    assert rejection([fan], fleet_key, repository="pump") is Rejection.WRONG_REPOSITORY
    mirrored = signed(fleet_key, reference="mirror.example.com:443/pump")
    assert check([mirrored], fleet_key, repository="pump").version == "5"


# --- the agent's policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    repository: str = "pump"
    digest: str = DIGEST
    model: str = "pump-anomaly"
    version: str = "5"
    current_version: str = "4"
    current_digest: str = RUNNING_DIGEST


def running_pump(key: ec.EllipticCurvePrivateKey) -> FakeRepository:
    """A repository whose running image (v4 of pump-anomaly) carries its fleet signature."""
    repo = FakeRepository()
    repo.store(RUNNING_DIGEST, [signed(key, digest=RUNNING_DIGEST, version="4")])
    return repo


def test_policy_approves_signed_image_and_rejects_unsigned_with_a_logged_reason(
    fleet_key: ec.EllipticCurvePrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    repo = running_pump(fleet_key)
    policy = SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger="registry.cosign"), pytest.raises(SignatureRejected) as info:
        policy.check(Candidate())
    assert info.value.rejection is Rejection.UNSIGNED
    assert any(getattr(r, "reason", None) == "unsigned" for r in caplog.records)
    repo.store(DIGEST, [signed(fleet_key)])
    policy.check(Candidate())
    assert policy.last_claims is not None
    assert policy.last_claims.version == "5"


def test_policy_rejects_a_label_that_disagrees_with_the_signed_version(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    repo = running_pump(fleet_key)
    repo.store(DIGEST, [signed(fleet_key, version="5")])
    policy = SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW)
    with pytest.raises(SignatureRejected) as info:
        policy.check(Candidate(version="6"))
    assert info.value.rejection is Rejection.MALFORMED


def test_policy_pins_the_model_to_the_running_images_signature_not_the_candidates_label(
    fleet_key: ec.EllipticCurvePrivateKey,
) -> None:
    # A legitimately signed fan v99, copied with its .sig into the pump repository and labelled as it likes.
    fan = signed(fleet_key, version="99", model="fan", reference="127.0.0.1:5000/pump")
    repo = running_pump(fleet_key)
    repo.store(DIGEST, [fan])
    policy = SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW)
    with pytest.raises(SignatureRejected) as info:
        policy.check(Candidate(model="fan", version="99"))
    assert info.value.rejection is Rejection.WRONG_MODEL
    # Configured model wins over the running image.
    configured = SignaturePolicy(fleet_key.public_key(), repo, channel="production", model="fan", clock=lambda: NOW)
    configured.check(Candidate(model="fan", version="99"))


def test_policy_rejects_a_signed_image_copied_from_another_repository(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    repo = running_pump(fleet_key)
    repo.store(DIGEST, [signed(fleet_key, version="99", reference="127.0.0.1:5000/fan")])
    policy = SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW)
    with pytest.raises(SignatureRejected) as info:
        policy.check(Candidate(version="99"))
    assert info.value.rejection is Rejection.WRONG_REPOSITORY


def test_policy_without_a_verifiable_running_model_refuses_rather_than_compare_versions(
    fleet_key: ec.EllipticCurvePrivateKey,
) -> None:
    repo = FakeRepository()  # the running image has no signature (installed before signing was configured)
    repo.store(DIGEST, [signed(fleet_key, version="5")])
    policy = SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW)
    with pytest.raises(SignatureRejected, match=r"\[verification\] model") as info:
        policy.check(Candidate())
    assert info.value.rejection is Rejection.WRONG_MODEL
    with pytest.raises(SignatureRejected, match=r"\[verification\] model"):
        policy.check(Candidate(current_digest=""))
    # First install: nothing runs, so nothing to pin or compare; the repository binds the image.
    policy.check(Candidate(current_version="", current_digest=""))
    assert policy.last_claims is not None
    assert policy.last_claims.model == "pump-anomaly"


def test_policy_reads_the_running_model_even_after_its_approval_expired(fleet_key: ec.EllipticCurvePrivateKey) -> None:
    repo = FakeRepository()
    repo.store(RUNNING_DIGEST, [signed(fleet_key, digest=RUNNING_DIGEST, version="4", expires_at=NOW - timedelta(1))])
    repo.store(DIGEST, [signed(fleet_key, version="5")])
    SignaturePolicy(fleet_key.public_key(), repo, channel="production", clock=lambda: NOW).check(Candidate())


def test_make_policy_reads_the_verification_section(fleet_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pub = tmp_path / "fleet.pub"
    pub.write_bytes(
        fleet_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    class Source:  # the agent's RegistrySource exposes its RegistryClient as .client, and its channel
        client = FakeRepository()
        channel = "staging"

    policy = make_policy({"public_key": str(pub)}, source=Source())
    assert policy.channel == "staging"
    assert make_policy({"public_key": str(pub), "channel": "production"}, source=Source()).channel == "production"
    assert key_id(policy.public_key) == key_id(load_public_key(pub))
    with pytest.raises(SignatureRejected):
        policy.check(Candidate())
