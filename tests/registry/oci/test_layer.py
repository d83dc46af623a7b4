from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from edge_runtime.errors import InputError
from registry.oci.layer import build_layer


def test_layer_is_reproducible_and_read_only() -> None:
    files = {"model.onnx": b"\x08\x01onnx", "model.json": b"{}"}
    a, b = build_layer(files), build_layer(dict(reversed(list(files.items()))))
    assert (a.digest, a.diff_id, a.data) == (b.digest, b.diff_id, b.data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(a.data))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["opt", "opt/model", "opt/model/model.json", "opt/model/model.onnx"]
    modes = {m.name: (m.mode, m.uid, m.gid, m.mtime) for m in members}
    assert modes["opt/model"] == (0o555, 0, 0, 0)
    assert modes["opt/model/model.onnx"] == (0o444, 0, 0, 0)
    assert modes["opt"][0] == 0o755


def test_content_change_changes_digest() -> None:
    assert build_layer({"a": b"1"}).digest != build_layer({"a": b"2"}).digest


def test_subdirectories_and_bad_names() -> None:
    layer = build_layer({"sub/x": b"1"})
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as tar:
        assert "opt/model/sub" in tar.getnames()
    with pytest.raises(InputError, match=r"\.\."):
        build_layer({"../etc/passwd": b"x"})
