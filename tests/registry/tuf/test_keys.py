"""Signing keys: private halves are created 0600, never replaced, and refused when others may read them."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from registry.tuf import keys
from registry.tuf.errors import KeyFileError


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_write_then_load_gives_the_same_signing_key(tmp_path: Path, kind: keys.KeyKind) -> None:
    signer = keys.generate(kind)
    private, public = keys.write(signer, tmp_path, "targets-alice")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    loaded = keys.load_signer(private)
    assert loaded.public_key == signer.public_key == keys.load_public(public)
    signature = loaded.sign(b"payload")
    signer.public_key.verify_signature(signature, b"payload")


def test_an_existing_key_is_never_replaced(tmp_path: Path) -> None:
    private, _ = keys.write(keys.generate(), tmp_path, "k")
    before = private.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to replace"):
        keys.write(keys.generate(), tmp_path, "k")
    assert private.read_bytes() == before


def test_a_private_key_others_may_read_is_refused(tmp_path: Path) -> None:
    private, _ = keys.write(keys.generate(), tmp_path, "k")
    os.chmod(private, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        keys.load_signer(private)


def test_halves_of_different_keys_are_refused(tmp_path: Path) -> None:
    private, _ = keys.write(keys.generate(), tmp_path, "a")
    _, other_public = keys.write(keys.generate(), tmp_path, "b")
    os.replace(other_public, tmp_path / "a.pub.json")
    with pytest.raises(KeyFileError, match="not halves of the same key"):
        keys.load_signer(private)


def test_missing_and_garbage_key_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        keys.load_signer(tmp_path / "none.key")
    garbage = tmp_path / "g.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match=re.escape(str(garbage))):
        keys.load_signer(garbage)
    (tmp_path / "g.pub.json").write_text("[]")
    with pytest.raises(KeyFileError, match="not a TUF public key record"):
        keys.load_public(tmp_path / "g.pub.json")


def test_unknown_key_kind_is_refused() -> None:
    with pytest.raises(KeyFileError, match="use 'ecdsa'"):
        keys.generate("rsa")  # type: ignore[arg-type]
