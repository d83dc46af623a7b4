"""Signing keys of the fleet's TUF roles: generate, write (private key 0600, never world- or group-readable), load.

A key is two files: ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub.json`` (the TUF key id and public key,
what root metadata lists). Private keys stay with whoever holds the role: they are never baked into an image and
never written to the metadata store.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from registry.tuf.errors import KeyFileError

KeyKind = Literal["ecdsa", "ed25519"]
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub.json"


def generate(kind: KeyKind = "ecdsa") -> CryptoSigner:
    """A new in-memory key: ECDSA P-256 (``ecdsa-sha2-nistp256``) by default, or ed25519."""
    if kind == "ecdsa":
        return CryptoSigner.generate_ecdsa()
    if kind == "ed25519":
        return CryptoSigner.generate_ed25519()
    raise KeyFileError(f"key kind {kind!r} is not supported; use 'ecdsa' (P-256) or 'ed25519'")


def write(signer: CryptoSigner, directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``<name>.key`` (created 0600, refusing to replace a key) and ``<name>.pub.json``; return both paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    try:
        # O_EXCL with the mode at creation: the key is never readable by others, not even for an instant.
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{private} already exists; refusing to replace a key devices may trust. Pick another name or directory."
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
    public.write_text(json.dumps(public_key_record(signer.public_key), indent=2, sort_keys=True) + "\n")
    return private, public


def public_key_record(key: Key) -> dict[str, object]:
    """``{"keyid": ..., "key": {...}}``: the public half as root metadata lists it."""
    return {"keyid": key.keyid, "key": key.to_dict()}


def load_public(path: str | os.PathLike[str]) -> SSlibKey:
    """The public key stored by :func:`write` (``<name>.pub.json``)."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
        return SSlibKey.from_dict(str(record["keyid"]), dict(record["key"]))
    except FileNotFoundError:
        raise KeyFileError(f"public key file {p} does not exist; write it with registry.tuf.keys.write") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"public key file {p} is not a TUF public key record: {exc}") from exc


def load_signer(path: str | os.PathLike[str]) -> CryptoSigner:
    """The signer for ``<name>.key``; its public half must match ``<name>.pub.json`` beside it when present.

    Refuses a private key file that group or others may read (``chmod 600`` it).
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"private key file {p} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"private key file {p} has mode {stat.S_IMODE(mode):04o}; others may read it. Run: chmod 600 {p}"
        )
    try:
        private = load_pem_private_key(p.read_bytes(), password=None)
        signer = CryptoSigner(private)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"private key file {p} is not a PKCS#8 PEM ECDSA or ed25519 key: {exc}") from exc
    public_path = p.with_name(p.name.removesuffix(PRIVATE_SUFFIX) + PUBLIC_SUFFIX)
    if public_path.exists():
        public = load_public(public_path)
        if public.keyid != signer.public_key.keyid or public.keyval != signer.public_key.keyval:
            raise KeyFileError(f"{p} and {public_path} are not halves of the same key (key id {public.keyid})")
        signer = CryptoSigner(private, public)
    return signer
