"""A reproducible image layer holding files at a fixed path (the model bundle at ``/opt/model``).

Same files in, same bytes out: entries sorted, owner root 0:0, files 0444 and directories 0555
(the model is read-only even to root-less processes that own nothing), a fixed mtime, and gzip
with mtime 0 and no file name. The gzip bytes depend on zlib's version, the tar bytes do not.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass

from edge_runtime.errors import InputError

LAYER_MTIME = 0
FILE_MODE = 0o444
DIR_MODE = 0o555
PARENT_MODE = 0o755  # parents such as /opt keep the usual mode of the base image


@dataclass(frozen=True)
class Layer:
    """A gzip layer: ``data`` is what is stored, ``diff_id`` the digest of the uncompressed tar."""

    data: bytes
    digest: str
    diff_id: str
    uncompressed_size: int

    @property
    def size(self) -> int:
        return len(self.data)


def _info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = LAYER_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def build_layer(files: Mapping[str, bytes], prefix: str = "opt/model") -> Layer:
    """A layer with ``files`` (name relative to ``prefix`` -> content) under ``/prefix``.

    Names may contain ``/`` for sub-directories; ``..`` and absolute names are refused.
    """
    prefix = prefix.strip("/")
    if not prefix:
        raise InputError("layer prefix is empty: files must live under a directory such as opt/model")
    dirs: set[str] = set()
    for name in files:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"file name {name!r} in a layer must be relative and must not contain '..'")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = prefix.split("/")
        for i in range(1, len(top)):
            tar.addfile(_info("/".join(top[:i]) + "/", tarfile.DIRTYPE, PARENT_MODE))
        tar.addfile(_info(prefix + "/", tarfile.DIRTYPE, DIR_MODE))
        # Sorted full paths give parents before children and a stable order.
        entries = sorted([(d, None) for d in dirs] + [(n, files[n]) for n in files], key=lambda e: e[0])
        for name, content in entries:
            path = f"{prefix}/{name}"
            if content is None:
                tar.addfile(_info(path + "/", tarfile.DIRTYPE, DIR_MODE))
            else:
                tar.addfile(_info(path, tarfile.REGTYPE, FILE_MODE, len(content)), io.BytesIO(content))
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=packed, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(tar_bytes)
    data = packed.getvalue()
    return Layer(
        data=data,
        digest="sha256:" + hashlib.sha256(data).hexdigest(),
        diff_id="sha256:" + hashlib.sha256(tar_bytes).hexdigest(),
        uncompressed_size=len(tar_bytes),
    )
