"""The directory store: atomic, world-readable files with plain names only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from registry.tuf.errors import MetadataMissing
from registry.tuf.store import DirectoryStore


def test_write_read_replace_delete(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "m")
    store.write("timestamp.json", b"1")
    store.write("timestamp.json", b"2")
    assert store.read("timestamp.json") == b"2"
    assert stat.S_IMODE((tmp_path / "m" / "timestamp.json").stat().st_mode) == 0o644
    assert store.names() == ["timestamp.json"]  # no temporary files left behind
    store.delete("timestamp.json")
    store.delete("timestamp.json")
    assert not store.exists("timestamp.json")


def test_missing_file_is_metadata_missing(tmp_path: Path) -> None:
    with pytest.raises(MetadataMissing, match=r"'1\.root\.json'"):
        DirectoryStore(tmp_path).read("1.root.json")


@pytest.mark.parametrize("name", ["../root.json", "a/b.json", "", ".hidden"])
def test_names_that_could_leave_the_store_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a plain file name"):
        DirectoryStore(tmp_path).write(name, b"x")
