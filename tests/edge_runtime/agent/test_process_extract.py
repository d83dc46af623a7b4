"""extract_subtree: the embedded runtime's layer unpacking, safe on Python 3.11.2 (no ``extractall(filter=)``)."""

from __future__ import annotations

import gzip
import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from edge_runtime.agent.process import ProcessRuntime, extract_subtree
from edge_runtime.agent.runtime import RuntimeFailure


def layer(*members: tuple[tarfile.TarInfo, bytes | None]) -> tarfile.TarFile:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw.seek(0)
    return tarfile.open(fileobj=raw, mode="r")


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info, None


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_extracts_only_the_subtree_with_plain_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    tar = layer(
        entry("./", tarfile.DIRTYPE),
        entry("./usr/bin/", tarfile.DIRTYPE),
        entry("./usr/bin/python3", tarfile.SYMTYPE, "python3.11"),  # the base's links are not ours: ignored
        file("./etc/passwd", b"root"),
        entry("./opt/model/", tarfile.DIRTYPE, mode=0o7777),
        file("./opt/model/model.json", b"{}", mode=0o4777),
        file("opt/model/sub/model.onnx", b"onnx", mode=0o2600),
    )
    assert extract_subtree(tar, "opt/model", dest) == 2
    assert tree(dest) == {
        "opt": None,
        "opt/model": None,
        "opt/model/model.json": b"{}",
        "opt/model/sub": None,
        "opt/model/sub/model.onnx": b"onnx",
    }
    assert stat.S_IMODE((dest / "opt/model/model.json").stat().st_mode) == 0o755  # executable, set-uid dropped
    assert stat.S_IMODE((dest / "opt/model/sub/model.onnx").stat().st_mode) == 0o644  # set-gid dropped
    assert stat.S_IMODE((dest / "opt/model").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("member", "says"),
    [
        (file("opt/model/../../../escaped"), "climbs out"),
        (file("./opt/model/../../../escaped"), "climbs out"),
        (file("/opt/model/escaped"), "absolute"),
        (entry("opt/model/model.json", tarfile.SYMTYPE, "/etc/shadow"), "symlink"),
        (entry("opt/model/link", tarfile.SYMTYPE, "../../../escaped"), "symlink"),
        (entry("opt/model/model.onnx", tarfile.LNKTYPE, "etc/passwd"), "hard link"),
        (entry("opt/model/tty", tarfile.CHRTYPE), "device or fifo"),
        (entry("opt/model/disk", tarfile.BLKTYPE), "device or fifo"),
        (entry("opt/model/pipe", tarfile.FIFOTYPE), "device or fifo"),
    ],
)
def test_refuses_members_that_escape_or_are_not_plain(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], says: str
) -> None:
    dest = tmp_path / "a" / "dest"
    tar = layer(file("opt/model/model.json", b"{}"), member)
    with pytest.raises(RuntimeFailure, match=says):
        extract_subtree(tar, "opt/model", dest)
    assert not dest.exists()  # checked before anything is written
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere


def test_a_symlinked_parent_in_the_destination_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "opt").mkdir(parents=True)
    (dest / "opt" / "model").symlink_to(outside)
    with pytest.raises(RuntimeFailure, match="outside"):
        extract_subtree(layer(file("opt/model/model.json")), "opt/model", dest)
    assert list(outside.iterdir()) == []


def test_whiteouts_remove_what_lower_layers_left(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    extract_subtree(
        layer(file("opt/model/a"), file("opt/model/b"), file("opt/model/old/c"), file("opt/model/keep/d")),
        "opt/model",
        dest,
    )
    extract_subtree(
        layer(file("opt/model/a2", b"new"), file("opt/model/.wh.a"), file("opt/model/.wh.old")),
        "opt/model",
        dest,
    )
    assert sorted(tree(dest / "opt/model")) == ["a2", "b", "keep", "keep/d"]
    # An opaque directory hides everything below it from lower layers, not what its own layer adds.
    extract_subtree(layer(file("opt/model/fresh", b"1"), file("opt/model/.wh..wh..opq")), "opt/model", dest)
    assert tree(dest / "opt/model") == {"fresh": b"1"}


def test_unpack_bundle_reports_a_hostile_layer_as_a_runtime_failure(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info, _ = entry("opt/model/model.json", tarfile.SYMTYPE, "/etc/passwd")
        tar.addfile(info)
    with pytest.raises(RuntimeFailure, match="symlink"):
        ProcessRuntime._unpack_bundle(gzip.compress(raw.getvalue()), tmp_path / "bundle")
    with pytest.raises(RuntimeFailure, match="not a readable tar"):
        ProcessRuntime._unpack_bundle(b"not a tar", tmp_path / "bundle")


@pytest.mark.parametrize(
    "members",
    [
        [file("opt/model/.wh..")],  # a whiteout of "." itself
        [file("opt/model/a"), file("opt/model/a/b")],  # a file where a directory must go
    ],
    ids=["whiteout-of-dot", "file-then-child"],
)
def test_malformed_layers_are_refused_as_runtime_failures(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    dest = tmp_path / "bundle"
    dest.mkdir()
    with pytest.raises(RuntimeFailure, match="refusing the image"):
        extract_subtree(layer(*members), "opt/model", dest)


class TwoLayerClient:
    """One image: a base layer with a root filesystem but no bundle, and a bundle layer; counts blob reads."""

    def __init__(self) -> None:
        self.blobs = {
            "sha256:" + "b" * 64: _tar({"usr/bin/python3": b"#!", "etc/os-release": b"ID=debian"}),
            "sha256:" + "c" * 64: _tar({"opt/model/model.json": b"{}", "opt/model/model.onnx": b"onnx"}),
            "sha256:" + "d" * 64: b"{}",
        }
        self.reads: list[str] = []

    def get_manifest(self, digest: str) -> tuple[bytes, str, int]:
        layers = [{"digest": "sha256:" + "b" * 64}, {"digest": "sha256:" + "c" * 64}]
        return json.dumps({"config": {"digest": "sha256:" + "d" * 64}, "layers": layers}).encode(), "", 0

    def get_blob(self, digest: str) -> bytes:
        self.reads.append(digest)
        return self.blobs[digest]


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_base_layer_without_the_bundle_is_unpacked_once_then_only_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_runtime.agent import process
    from otaml.local_fleet import BlobCache

    base = "sha256:" + "b" * 64
    process._NO_BUNDLE_LAYERS.discard(base)
    unpacked: list[bytes] = []
    real = process.ProcessRuntime._unpack_bundle

    def counting(blob: bytes, dest: Path) -> bool:
        unpacked.append(blob)
        return real(blob, dest)

    monkeypatch.setattr(process.ProcessRuntime, "_unpack_bundle", staticmethod(counting))
    client = TwoLayerClient()
    cache = BlobCache(tmp_path / "cache")  # the devices of one machine share it, as in the fleet bench
    ref = "registry.invalid/pump@sha256:" + "e" * 64
    first = ProcessRuntime(client, tmp_path / "device-1", blob_cache=cache.path)
    first.pull(ref, "linux/amd64")
    assert len(unpacked) == 2
    assert base in process._NO_BUNDLE_LAYERS
    second = ProcessRuntime(client, tmp_path / "device-2", blob_cache=cache.path)
    second.pull(ref, "linux/amd64")
    assert len(unpacked) == 3, "the second device unpacks only the bundle layer"
    assert client.reads.count(base) == 1
    for device, runtime in (("device-1", first), ("device-2", second)):
        image = tmp_path / device / "images" / ("e" * 64)
        assert (image / "opt" / "model" / "model.onnx").read_bytes() == b"onnx"
        assert not (image / "usr").exists()
        assert runtime.read_blob(base)  # stored for the canary, though not unpacked again


@pytest.mark.parametrize("name", ["opt//model/model.onnx", "opt/./model/model.onnx", "./opt/model/model.onnx"])
def test_a_layer_naming_the_bundle_unusually_is_still_unpacked(tmp_path: Path, name: str) -> None:
    from edge_runtime.agent import process

    layer = _tar({name: b"onnx"})
    assert process.ProcessRuntime._unpack_bundle(layer, tmp_path / "b") is True
    assert (tmp_path / "b" / "opt" / "model" / "model.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize("name", ["/opt/model/x", "../opt/model/x", "opt/model/../../etc/x"])
def test_a_hostile_bundle_name_is_refused_never_skipped(tmp_path: Path, name: str) -> None:
    from edge_runtime.agent import process

    with pytest.raises(RuntimeFailure):
        process.ProcessRuntime._unpack_bundle(_tar({name: b"x"}), tmp_path / "b")
