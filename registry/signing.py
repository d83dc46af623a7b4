"""Fleet signing keys and cosign-compatible image signatures (the signer's half of :mod:`registry.cosign`).

A signature approves one image digest for one model, version and channel, optionally until an expiry, and may
carry an operator's rollback authorisation. It is stored beside the image as cosign's ``sha256-<hex>.sig`` tag:
an OCI image manifest whose layers are simple-signing payloads with the base64 ECDSA-SHA256 signature in the
``dev.cosignproject.cosign/signature`` annotation; signing again appends a layer, as cosign does.

The private key never goes into an image: it stays with whoever promotes (``otaml keys generate``).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_runtime.errors import InputError
from edge_runtime.oci import OCI_CONFIG, OCI_MANIFEST, Reference, RegistryClient, parse_reference, sha256_digest
from registry.cosign import (
    COSIGN_SIGNATURE_TYPE,
    KEY_ID_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    RollbackAuthorisation,
    SignatureLayer,
    fetch_signatures,
    format_time,
    key_id,
    signature_tag,
)

PRIVATE_KEY_FILE = "otaml-signing.key"
PUBLIC_KEY_FILE = "otaml-signing.pub"


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path
    key_id: str


def generate_keys(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> KeyPair:
    """Write a new ECDSA P-256 pair: ``otaml-signing.key`` (PKCS#8 PEM, mode 0600) and ``otaml-signing.pub``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise InputError(
            f"{private_path} or {public_path} already exists; refusing to replace a fleet key "
            "(devices trust the old one). Pick another --out directory."
        )
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created with 0600 from the start, so the key is never readable by others, not even briefly.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    public_path.chmod(0o644)
    return KeyPair(private_path, public_path, key_id(key.public_key()))


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """Read the fleet's private key; refuse one that others can read."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        pem = file.read_bytes()
    except OSError as exc:
        raise InputError(
            f"Cannot read signing key {file}: {exc.strerror}. Create one with `otaml keys generate` "
            "or set OTAML_SIGNING_KEY."
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"Signing key {file} has mode {stat.S_IMODE(mode):04o}; others can read it. Run `chmod 600 {file}`."
        )
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{file} is not an unencrypted PEM private key ({exc}).") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InputError(f"{file} is not an ECDSA P-256 private key; create one with `otaml keys generate`.")
    return key


def build_payload(
    *,
    digest: str,
    reference: str,
    model: str,
    version: str,
    channel: str,
    approver: str = "",
    signed_at: datetime | None = None,
    expires_at: datetime | None = None,
    rollback: RollbackAuthorisation | None = None,
) -> bytes:
    """The simple-signing payload (compact, sorted JSON) that approves ``digest``."""
    signature_tag(digest)  # validates the digest's form
    optional: dict[str, Any] = {
        "model": model,
        "version": str(version),
        "channel": channel,
        "approver": approver,
        "signed_at": format_time(signed_at or datetime.now(UTC)),
        "expires_at": format_time(expires_at) if expires_at else None,
        "rollback": rollback.to_dict() if rollback else None,
    }
    document = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": optional,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> SignatureLayer:
    """ECDSA-SHA256 over the payload bytes, DER, base64: what cosign stores and checks."""
    der = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return SignatureLayer(payload=payload, signature=base64.b64encode(der).decode(), key_id=key_id(key.public_key()))


def signature_manifest(layers: Sequence[SignatureLayer]) -> tuple[bytes, bytes]:
    """``(manifest, config)`` bytes of the ``.sig`` image holding ``layers`` (cosign's layout)."""
    config = {
        "architecture": "",
        "os": "",
        "created": "0001-01-01T00:00:00Z",
        "config": {},
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer.payload) for layer in layers]},
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config_bytes), "digest": sha256_digest(config_bytes)},
        "layers": [
            {
                "mediaType": SIMPLESIGNING_MEDIA_TYPE,
                "size": len(layer.payload),
                "digest": sha256_digest(layer.payload),
                "annotations": {SIGNATURE_ANNOTATION: layer.signature}
                | ({KEY_ID_ANNOTATION: layer.key_id} if layer.key_id else {}),
            }
            for layer in layers
        ],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode(), config_bytes


class SignatureStore(Protocol):
    """Where signatures are read and written: a :class:`registry.oci.store.Store` (``Remote`` for a registry)."""

    def read_manifest(self, ref: str) -> tuple[bytes, str, str]: ...

    def read_blob(self, digest: str) -> bytes: ...

    def write_blob(self, data: bytes, digest: str, *, mount_from: str | None = None) -> int: ...

    def write_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> str: ...


class _Reader:
    """A store seen through the device's read interface, so both sides parse signatures with one function."""

    def __init__(self, store: SignatureStore) -> None:
        self.store = store

    def get_manifest(self, ref: str) -> tuple[bytes, str, str]:
        return self.store.read_manifest(ref)

    def get_blob(self, digest: str) -> bytes:
        return self.store.read_blob(digest)


def read_signatures(store: SignatureStore, digest: str) -> list[SignatureLayer]:
    """The signatures already stored for ``digest`` (empty when unsigned)."""
    return fetch_signatures(_Reader(store), digest)


def push_signature(store: SignatureStore, digest: str, layer: SignatureLayer) -> str:
    """Append ``layer`` to the ``.sig`` image of ``digest`` (creating it) and return the tag it is stored at.

    An identical payload already there is replaced rather than duplicated (re-running a promotion is harmless).
    """
    existing = [s for s in read_signatures(store, digest) if s.payload != layer.payload]
    layers = [*existing, layer]
    manifest, config = signature_manifest(layers)
    for blob in (config, *(item.payload for item in layers)):
        store.write_blob(blob, sha256_digest(blob))
    tag = signature_tag(digest)
    store.write_manifest(manifest, OCI_MANIFEST, tag)
    return tag


def open_signature_store(repository: str, **kwargs: Any) -> Any:
    """The store for ``repository`` (``HOST[:PORT]/REPO`` or ``oci:PATH``), via :func:`registry.oci.refs.open_store`."""
    from registry.oci.refs import open_store, parse_ref

    return open_store(parse_ref(repository), **kwargs)


def client_for(reference: str, **kwargs: Any) -> tuple[RegistryClient, Reference]:
    """A read client for the repository of ``reference`` (``host:port/repo[:tag|@digest]``)."""
    ref = parse_reference(reference)
    return RegistryClient.for_reference(ref, **kwargs), ref
