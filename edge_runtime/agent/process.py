"""A :class:`~edge_runtime.agent.runtime.ContainerRuntime` made of local processes, for machines without containerd.

Images come from the registry's read client (an HTTP registry, or an OCI image layout): ``pull`` copies the
platform's blobs into a local content store and unpacks the model bundle (``/opt/model``) of the image; ``start`` runs
``python -m edge_runtime serve --bundle <that dir>`` with the spec's environment. It keeps the agent's contract
(names, labels, status, idempotent stop, logs) but isolates nothing: no memory or CPU limit, no read-only root,
the current user. A device without containerd, the fleet bench and the demo's embedded mode use it; a device
with containerd uses :mod:`edge_runtime.agent.ctr`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edge_runtime.agent.runtime import AGENT_LABEL, ContainerSpec, ContainerStatus, PullResult, RuntimeFailure
from edge_runtime.agent.source import pick_platform
from edge_runtime.errors import NotFound

BUNDLE_DIR = "opt/model"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def _member_path(name: str) -> PurePosixPath | None:
    """``name`` as a relative path, or None when it is absolute or climbs with ``..`` (never extracted)."""
    path = PurePosixPath(name)  # drops "." parts and repeated slashes
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path


def _may_touch(name: str, prefix: str) -> bool:
    """Whether :func:`extract_subtree` could act on member ``name``: it is under ``prefix/`` as that function
    reads names, or it is absolute or climbs with ``..`` (which it examines, and refuses under the prefix)."""
    path = _member_path(name)
    return path is None or (path != PurePosixPath(prefix) and path.is_relative_to(prefix))


def extract_subtree(tar: tarfile.TarFile, prefix: str, dest: Path) -> int:
    """Extract the regular files and directories of ``tar`` under ``prefix/`` into ``dest``; return the file count.

    Written out by hand rather than with ``TarFile.extractall(filter="data")``, which Debian bookworm's Python
    (3.11.2) lacks. Safe for untrusted layers: an absolute or ``..`` name, a symlink, hard link, device or fifo
    under ``prefix`` is refused (:class:`RuntimeFailure`, nothing written outside ``dest``), members elsewhere
    are ignored, permissions are reduced to ``0644``/``0755`` (no set-id bits, the current owner). OCI
    whiteouts (``.wh.NAME``, ``.wh..wh..opq``) delete what an earlier layer put there.
    """
    root = PurePosixPath(prefix)
    dest_resolved = dest.resolve()
    chosen: list[tuple[tarfile.TarInfo, PurePosixPath, Path]] = []
    for member in tar.getmembers():
        path = _member_path(member.name)
        if path is None:
            if member.name.lstrip("/").startswith(prefix + "/") or f"/{prefix}/" in member.name:
                raise RuntimeFailure(
                    f"Layer member {member.name!r} is absolute or climbs out with '..'; refusing the image."
                )
            continue
        if path == root or not path.is_relative_to(root):
            continue
        target = dest.joinpath(*path.parts)
        if not target.resolve().is_relative_to(dest_resolved):  # a symlinked parent left by an earlier layer
            raise RuntimeFailure(f"Layer member {member.name!r} would land outside {dest}; refusing the image.")
        if not (member.isdir() or member.isreg()):
            kind = "symlink" if member.issym() else "hard link" if member.islnk() else "device or fifo"
            raise RuntimeFailure(
                f"Layer member {member.name!r} is a {kind}; a model bundle holds only files and directories."
            )
        chosen.append((member, path, target))
    try:
        return _write(tar, chosen)
    except (OSError, ValueError) as exc:  # e.g. a whiteout of "." or a file where a directory must go
        raise RuntimeFailure(f"Extracting the bundle layer into {dest} failed: {exc}; refusing the image.") from exc


def _write(tar: tarfile.TarFile, chosen: list[tuple[tarfile.TarInfo, PurePosixPath, Path]]) -> int:
    # Whiteouts hide what lower layers left, never what this layer adds: apply them all first.
    for _member, path, target in chosen:
        if path.name == OPAQUE:
            if target.parent.is_dir():
                for child in target.parent.iterdir():
                    _remove(child)
        elif path.name.startswith(WHITEOUT):
            _remove(target.with_name(path.name.removeprefix(WHITEOUT)))
    written = 0
    for member, path, target in chosen:
        if path.name.startswith(WHITEOUT):
            continue
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o755)
            continue
        source = tar.extractfile(member)
        if source is None:
            raise RuntimeFailure(f"Layer member {member.name!r} has no data.")
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove(target)
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(0o755 if member.mode & 0o111 else 0o644)
        written += 1
    return written


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# A read-through cache shared by the devices of one machine: (digest, fetch) -> (its file, bytes fetched now).
# The file must hold exactly the blob ``fetch`` returned (verified against its digest by the client).
BlobCache = Callable[[str, Callable[[str], bytes]], tuple[Path, int]]


def _link_or_copy(source: Path, dest: Path) -> None:
    """Hardlink ``source`` to ``dest`` (a copy across file systems); the content store's files are never written
    in place, so sharing the inode is safe."""
    partial = dest.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    partial.rename(dest)


@dataclass
class _Process:
    spec: ContainerSpec
    process: subprocess.Popen[bytes]
    log: Path


# Layer digests known to hold nothing under BUNDLE_DIR (the runtime base's): content-addressed, so a pull skips
# reading and decompressing them again (each update's pull, and every device of a fleet run in one process).
_NO_BUNDLE_LAYERS: set[str] = set()


class ProcessRuntime:
    """Images unpacked under ``root``, services as child processes; ``client`` reads the layout (get_manifest/blob)."""

    def __init__(
        self, client: Any, root: Path, python: str = sys.executable, *, blob_cache: BlobCache | None = None
    ) -> None:
        self.client = client
        self.root = root
        self.python = python
        self.blob_cache = blob_cache
        self._containers: dict[str, _Process] = {}
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # ── images ─────────────────────────────────────────────────────────────────────────────────────
    def _image_dir(self, ref: str) -> Path:
        digest = ref.rsplit("@", 1)[-1]
        if not digest.startswith("sha256:"):
            raise NotFound(f"Image reference {ref!r} names no digest; the agent pulls host/repo@sha256:...")
        return self.root / "images" / digest.removeprefix("sha256:")

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.removeprefix("sha256:")

    def _store(self, digest: str) -> tuple[Path, int]:
        """Make the blob local (linked from the shared cache when there is one, not read); (path, bytes fetched)."""
        path = self._blob_path(digest)
        if path.is_file():
            return path, 0
        if self.blob_cache is not None:
            cached, fetched = self.blob_cache(digest, self.client.get_blob)
            _link_or_copy(cached, path)
            return path, fetched
        data: bytes = self.client.get_blob(digest)  # the client verifies the digest
        path.write_bytes(data)
        return path, len(data)

    def _fetch(self, digest: str) -> tuple[bytes, int]:
        path, fetched = self._store(digest)
        return path.read_bytes(), fetched

    def pull(self, ref: str, platform: str) -> PullResult:
        target = self._image_dir(ref)
        digest = ref.rsplit("@", 1)[-1]
        data, _media, _ = self.client.get_manifest(digest)
        manifest = json.loads(data)
        fetched = 0
        if "manifests" in manifest:
            entry = pick_platform(manifest, platform, ref)
            data, _media, _ = self.client.get_manifest(str(entry["digest"]))
            manifest = json.loads(data)
        _, n = self._fetch(str(manifest["config"]["digest"]))
        fetched += n
        bundle = target.with_suffix(".partial")
        shutil.rmtree(bundle, ignore_errors=True)
        for layer in manifest.get("layers", []):
            digest = str(layer["digest"])
            if digest in _NO_BUNDLE_LAYERS:  # a base layer seen before: stored (the canary may read it), not unpacked
                fetched += self._store(digest)[1]
                continue
            blob, n = self._fetch(digest)
            fetched += n
            if not self._unpack_bundle(blob, bundle):
                _NO_BUNDLE_LAYERS.add(digest)
        if not (bundle / BUNDLE_DIR / "model.json").is_file():
            shutil.rmtree(bundle, ignore_errors=True)
            raise RuntimeFailure(f"Image {ref} has no /{BUNDLE_DIR}/model.json; bake it with registry/bake.py.")
        (bundle / "ref").write_text(ref)
        shutil.rmtree(target, ignore_errors=True)
        bundle.rename(target)
        return PullResult(ref, fetched)

    @staticmethod
    def _unpack_bundle(blob: bytes, dest: Path) -> bool:
        """Extract only ``opt/model/*`` (a real runtime base layer holds a whole Debian root we do not need);
        ``False`` when the layer has nothing at all under it."""
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                if not any(_may_touch(name, BUNDLE_DIR) for name in tar.getnames()):
                    return False
                extract_subtree(tar, BUNDLE_DIR, dest)
                return True
        except tarfile.TarError as exc:
            raise RuntimeFailure(f"A layer is not a readable tar: {exc}") from exc

    def has_image(self, ref: str) -> bool:
        return ref in self.list_images()

    def read_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        if not path.is_file():
            raise NotFound(f"Blob {digest} is not in the local content store {self.root / 'blobs'}; pull first.")
        return path.read_bytes()

    def remove_image(self, ref: str) -> None:
        target = self._image_dir(ref)
        if not target.is_dir():
            raise NotFound(f"Image {ref} is not in {self.root / 'images'}.")
        shutil.rmtree(target)

    def list_images(self) -> list[str]:
        refs = []
        for ref_file in sorted((self.root / "images").glob("*/ref")):
            refs.append(ref_file.read_text())
        return refs

    # ── services ───────────────────────────────────────────────────────────────────────────────────
    def start(self, spec: ContainerSpec) -> None:
        if spec.name in self._containers:
            raise RuntimeFailure(f"A service named {spec.name} exists already; stop it first.")
        bundle = self._image_dir(spec.image) / BUNDLE_DIR
        if not bundle.is_dir():
            raise NotFound(f"Image {spec.image} is not unpacked here; pull it first.")
        log = self.root / "logs" / f"{spec.name}.log"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
        env.update(spec.env)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [self.python, "-m", "edge_runtime", "serve", "--bundle", str(bundle)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal does not hit it; stop() does, in order
            )
        self._containers[spec.name] = _Process(spec, process, log)

    def status(self, name: str) -> ContainerStatus:
        entry = self._containers.get(name)
        if entry is None:
            raise NotFound(f"No service named {name}.")
        code = entry.process.poll()
        return ContainerStatus(
            name=name,
            image=entry.spec.image,
            running=code is None,
            exit_code=code,
            labels={AGENT_LABEL: "1", **entry.spec.labels},
        )

    def stop(self, name: str, timeout_s: float) -> None:
        entry = self._containers.pop(name, None)
        if entry is None or entry.process.poll() is not None:
            return
        entry.process.send_signal(signal.SIGTERM if timeout_s > 0 else signal.SIGKILL)
        try:
            entry.process.wait(timeout=max(timeout_s, 0.1))
        except subprocess.TimeoutExpired:
            entry.process.kill()
            entry.process.wait()

    def list_containers(self) -> list[ContainerStatus]:
        return [self.status(name) for name in list(self._containers)]

    def logs(self, name: str, max_bytes: int = 2000) -> str:
        entry = self._containers.get(name)
        path = entry.log if entry else self.root / "logs" / f"{name}.log"
        try:
            return path.read_bytes()[-max_bytes:].decode(errors="replace")
        except OSError:
            return ""

    def stop_all(self) -> None:
        for name in list(self._containers):
            self.stop(name, 5)
