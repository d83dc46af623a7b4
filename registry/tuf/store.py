"""Where the repository's metadata files live. Devices read them over plain HTTP, so any static server works.

A store holds flat file names (``1.root.json``, ``timestamp.json``, ``3.targets.json``, ...). The interface is
small on purpose so that an OCI-registry store (metadata as artifacts under tags) can follow with the same verbs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from registry.tuf.errors import MetadataMissing

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LOCK_FILE = ".lock"  # hidden: names() skips dot files, and the HTTP server has no reason to serve it


class MetadataStore(Protocol):
    """A flat namespace of metadata files."""

    def describe(self) -> str:
        """A short human name for messages (``dir:/srv/tuf``)."""
        ...

    def read(self, name: str) -> bytes:
        """The file's bytes; :class:`MetadataMissing` if there is none."""
        ...

    def exists(self, name: str) -> bool: ...

    def write(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically: a reader sees the old or the new file, never a mix."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name`` if present."""
        ...

    def names(self) -> list[str]:
        """Every file name, sorted."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive access for one publication (read, compare, write), across threads and processes."""
        ...


def check_name(name: str) -> str:
    """Refuse names that could leave the store (``../x``, ``a/b``) or are empty."""
    if not _NAME.match(name):
        raise ValueError(f"metadata file name {name!r} is not a plain file name (letters, digits, '.', '_', '-')")
    return name


class DirectoryStore:
    """Metadata files in one directory: serve it with any static HTTP server (``python -m http.server``, nginx)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"dir:{self.path}"

    def read(self, name: str) -> bytes:
        try:
            return (self.path / check_name(name)).read_bytes()
        except FileNotFoundError:
            raise MetadataMissing(
                f"{self.describe()} has no {name!r}; create the repository first (registry.tuf.repository.create)"
            ) from None

    def exists(self, name: str) -> bool:
        return (self.path / check_name(name)).is_file()

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / check_name(name)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # served to devices: world-readable by design, never writable by others
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / check_name(name)).unlink()

    def names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """``flock`` on ``<dir>/.lock``: one writer at a time, whether threads of one process or several hosts'
        processes on a local file system (not NFS: serve the directory from the host that writes it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
