"""An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/...``) as a :class:`Store`.

Tags are ``org.opencontainers.image.ref.name`` annotations on ``index.json`` entries, as skopeo, buildah
and umoci write them. Writes are atomic (temp file + rename), so a crash never leaves a torn blob.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edge_runtime.errors import NotFound, OtamlError, VerificationFailed
from edge_runtime.oci import (
    OCI_INDEX,
    Descriptor,
    check_digest,
    check_tag,
    load_json,
    sha256_digest,
)

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Layout:
    """One OCI layout directory. ``create=True`` makes an empty layout if ``root`` has none."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        marker = self.root / LAYOUT_FILE
        if not marker.is_file():
            if not create:
                raise NotFound(f"{self.root} is not an OCI image layout (no {LAYOUT_FILE} file); check the path")
            _atomic_write(marker, json.dumps(LAYOUT_VERSION).encode())
        if not (self.root / "index.json").is_file():
            if not create:
                raise OtamlError(f"OCI layout {self.root} has no index.json; it is incomplete, re-create it")
            self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    def describe(self) -> str:
        return f"oci:{self.root}"

    # -- index.json ------------------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        return load_json((self.root / "index.json").read_bytes(), f"{self.root}/index.json")

    def _write_index(self, index: dict[str, Any]) -> None:
        _atomic_write(self.root / "index.json", json.dumps(index, indent=2, sort_keys=True).encode())

    def tags(self) -> list[str]:
        return sorted(
            {
                str(m["annotations"][REF_NAME])
                for m in self._index().get("manifests", [])
                if REF_NAME in (m.get("annotations") or {})
            }
        )

    # -- blobs ---------------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = check_digest(digest).partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in {self.describe()}") from None
        if sha256_digest(data) != digest:
            raise VerificationFailed(f"blob {path} does not match its digest {digest}: the layout is corrupt")
        return data

    def write_blob(self, data: bytes, digest: str, *, mount_from: str | None = None) -> int:
        if sha256_digest(data) != digest:
            raise OtamlError(f"refusing to write blob {digest}: its bytes hash to {sha256_digest(data)}")
        path = self._blob_path(digest)
        if path.is_file():
            return 0
        _atomic_write(path, data)
        return len(data)

    # -- manifests -----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Descriptor | None:
        if ref.startswith("sha256:"):
            if not self.has_blob(ref):
                return None
            data = self.read_blob(ref)
            media_type = str(load_json(data, f"manifest {ref}").get("mediaType", ""))
            return Descriptor(media_type, ref, len(data))
        for entry in self._index().get("manifests", []):
            if (entry.get("annotations") or {}).get(REF_NAME) == ref:
                return Descriptor.from_json(entry)
        return None

    def read_manifest(self, ref: str) -> tuple[bytes, str, str]:
        desc = self.resolve(ref)
        if desc is None:
            have = ", ".join(self.tags()) or "none"
            raise NotFound(f"{self.describe()} has no manifest {ref!r} (tags: {have})")
        data = self.read_blob(desc.digest)
        media_type = desc.media_type or str(load_json(data, f"manifest {ref}").get("mediaType", ""))
        return data, media_type, desc.digest

    def write_manifest(self, data: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256_digest(data)
        self.write_blob(data, digest)
        if tag is not None:
            check_tag(tag)
            index = self._index()
            kept = [m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) != tag]
            entry = Descriptor(media_type, digest, len(data), annotations={REF_NAME: tag}).to_json()
            index["manifests"] = [*kept, entry]
            self._write_index(index)
        return digest
