"""Signing: keys, payloads, cosign's storage layout; end to end against a real docker-registry (integration)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.bundle import Bundle
from edge_runtime.errors import InputError
from edge_runtime.oci import RegistryClient
from registry.cosign import (
    Rejection,
    SignaturePolicy,
    SignatureRejected,
    fetch_signatures,
    key_id,
    load_public_key,
    verify_signatures,
)
from registry.oci.layout import Layout
from registry.signing import (
    build_payload,
    generate_keys,
    load_private_key,
    push_signature,
    read_signatures,
    sign_payload,
)
from tests.conftest import require

DIGEST = "sha256:" + "d" * 64


def test_generate_keys_writes_a_private_0600_p256_pair(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path / "keys")
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
    private = load_private_key(pair.private_key)
    public = load_public_key(pair.public_key)
    assert isinstance(private.curve, ec.SECP256R1)
    assert key_id(private.public_key()) == key_id(public) == pair.key_id
    assert b"PRIVATE" not in pair.public_key.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        generate_keys(tmp_path / "keys")


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    pair = generate_keys(tmp_path)
    pair.private_key.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_private_key(pair.private_key)


def test_a_non_p256_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "p384.key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)
    with pytest.raises(InputError, match="P-256"):
        load_private_key(path)
    with pytest.raises(InputError, match="P-256"):
        load_public_key(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )


def test_pushing_appends_signatures_and_is_idempotent(tmp_path: Path) -> None:
    """Against a real Store (an OCI layout directory): cosign appends each new signature as a layer."""
    key = ec.generate_private_key(ec.SECP256R1())
    store = Layout(tmp_path / "layout", create=True)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    first = sign_payload(
        key, build_payload(digest=DIGEST, reference="r/p", model="m", version="1", channel="staging", signed_at=now)
    )
    second = sign_payload(
        key, build_payload(digest=DIGEST, reference="r/p", model="m", version="1", channel="production", signed_at=now)
    )
    assert read_signatures(store, DIGEST) == []
    tag = push_signature(store, DIGEST, first)
    assert tag == f"sha256-{'d' * 64}.sig"
    push_signature(store, DIGEST, second)
    push_signature(store, DIGEST, second)  # re-running a promotion does not pile up copies
    assert read_signatures(store, DIGEST) == [first, second]
    claims = verify_signatures(read_signatures(store, DIGEST), key.public_key(), DIGEST, channel="production", now=now)
    assert claims.channel == "production"


def test_payload_rejects_a_malformed_digest() -> None:
    with pytest.raises(InputError, match="sha256"):
        build_payload(digest="sha256:abc", reference="r/p", model="m", version="1", channel="staging")


# --- integration: a real docker-registry, real MLflow, real bake ---------------------------------


def skopeo(*args: str) -> str:
    require(shutil.which("skopeo") is not None, "skopeo", "apt-get install -y skopeo")
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True, timeout=300).stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pair = generate_keys(tmp_path_factory.mktemp("fleet-keys"))
    return pair.private_key, pair.public_key


@pytest.fixture(scope="module")
def tiny_base(oci_registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small two-platform base image pushed with skopeo (an independent client), pinned by digest."""
    from registry.oci.refs import pinned
    from tests.registry.oci.fakes import write_fake_base

    layout = tmp_path_factory.mktemp("tiny-base") / "layout"
    write_fake_base(layout)
    ref = f"{oci_registry}/sigtest/base:base"
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{ref}")
    return pinned(ref)


@pytest.fixture
def sqlite_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from tests.registry.mlflow_versions import RELAXED_GATES

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "gates.toml").write_text(RELAXED_GATES)
    monkeypatch.setenv("OTAML_GATES", str(tmp_path / "gates.toml"))
    monkeypatch.chdir(tmp_path)
    return uri


def otaml(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from otaml.cli import main

    capsys.readouterr()  # drop what came before (MLflow's start-up logging)
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.integration
def test_promote_signs_verify_passes_unsigned_is_rejected_signed_rollback_is_accepted(
    oci_registry: str,
    tiny_base: str,
    fleet: tuple[Path, Path],
    model_bundle: Bundle,
    sqlite_tracking: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from registry.promotion import ImageTarget, RegistryPublisher, promote, rollback
    from tests.registry.mlflow_versions import register_version

    private, public = fleet
    repo = f"{oci_registry}/sigtest/pump"
    publisher = RegistryPublisher(
        ImageTarget(base=tiny_base, repository=repo, signing_key=private, expires_in=timedelta(days=30))
    )
    v1 = register_version("pump", model_bundle.path)
    v2 = register_version("pump", model_bundle.path)

    staged = promote("pump", v1, "staging", approver="alice", publisher=publisher)
    first = promote("pump", v1, "production", approver="alice", publisher=publisher)
    assert staged.image is not None
    assert first.image is not None
    assert first.image.digest == staged.image.digest  # production ships exactly what staging ran
    client = RegistryClient(oci_registry, "sigtest/pump")
    head = client.head_manifest("production")
    assert head is not None
    assert head.digest == first.image.digest
    assert client.head_manifest(f"model-v{v1}") is not None
    claims = verify_signatures(fetch_signatures(client, head.digest), load_public_key(public), head.digest)
    assert (claims.model, claims.version, claims.channel, claims.approver) == ("pump", v1, "production", "alice")
    assert claims.expires_at is not None

    # The signature is a cosign simple-signing image that an independent client reads as such.
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{repo}:{first.image.signature_tag}"))
    assert len(raw["layers"]) == 2  # one signature per channel approval, appended as cosign does
    for layer in raw["layers"]:
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        assert "dev.cosignproject.cosign/signature" in layer["annotations"]

    code, out = otaml("verify", f"{repo}:production", "--key", str(public), "--channel", "production", capsys=capsys)
    assert code == 0, out
    assert "VERIFIED" in out

    # Someone pushes an unsigned image straight to the channel tag.
    skopeo(
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://{tiny_base}",
        f"docker://{repo}:production",
    )
    code, out = otaml("verify", f"{repo}:production", "--key", str(public), capsys=capsys)
    assert code == 1
    assert "reason: unsigned" in out

    # Another version bakes to another image (its card, hence its labels, name its version).
    second = promote("pump", v2, "production", approver="alice", publisher=publisher)
    assert second.image is not None
    # A device on v2 refuses v1's image: its signatures approve v1 but not a downgrade to it.
    with pytest.raises(SignatureRejected) as info:
        verify_signatures(
            fetch_signatures(client, first.image.digest),
            load_public_key(public),
            first.image.digest,
            channel="production",
            running_version=v2,
        )
    assert info.value.rejection is Rejection.DOWNGRADE

    back = rollback("pump", v1, "production", approver="bob", reason="v2 false alarms", publisher=publisher)
    assert back.image is not None
    assert back.image.digest == first.image.digest  # the image that shipped before, not a rebake
    head = client.head_manifest("production")
    assert head is not None
    assert head.digest == first.image.digest
    code, out = otaml(
        "verify",
        f"{repo}:production",
        "--key",
        str(public),
        "--channel",
        "production",
        "--running-version",
        v2,
        "--model",  # versions are compared only within a known model
        "pump",
        capsys=capsys,
    )
    assert code == 0, out
    assert "signed rollback" in out

    # The signature policy (what `otaml verify` applies), reading the registry as a device would, agrees.
    from edge_runtime.agent.policy import CandidateImage
    from edge_runtime.agent.source import RegistrySource
    from registry.cosign import make_policy

    source = RegistrySource.connect(f"http://{oci_registry}", "sigtest/pump", "production", 10.0)
    policy = make_policy({"public_key": str(public)}, source=source)
    assert isinstance(policy, SignaturePolicy)
    candidate = CandidateImage(
        repository="sigtest/pump",
        digest=first.image.digest,
        manifest_digest=first.image.digest,
        platform="linux/amd64",
        model="pump",
        version=v1,
        current_version=v2,
        current_digest=second.image.digest,  # the running image's signature pins the model (pump)
    )
    policy.check(candidate)
    assert policy.last_claims is not None
    assert policy.last_claims.rollback is not None
    with pytest.raises(SignatureRejected) as info:
        policy.check(replace(candidate, current_version=str(int(v2) + 1)))
    assert info.value.rejection is Rejection.DOWNGRADE  # the v2 -> v1 authorisation cannot take v3 back to v1
    client.close()
    source.client.close()


@pytest.mark.integration
def test_verify_rejects_a_signature_from_another_key(
    oci_registry: str,
    tiny_base: str,
    model_bundle: Bundle,
    sqlite_tracking: str,
    tmp_path: Path,
    fleet: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from registry.promotion import ImageTarget, RegistryPublisher, promote
    from tests.registry.mlflow_versions import register_version

    rogue = generate_keys(tmp_path / "rogue")
    repo = f"{oci_registry}/sigtest/rogue"
    publisher = RegistryPublisher(ImageTarget(base=tiny_base, repository=repo, signing_key=rogue.private_key))
    promote("pump", register_version("pump", model_bundle.path), "staging", approver="mallory", publisher=publisher)
    code, out = otaml("verify", f"{repo}:staging", "--key", str(fleet[1]), "--json", capsys=capsys)
    assert code == 1
    assert json.loads(out)["reason"] == "wrong-key"
