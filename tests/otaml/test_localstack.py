"""Private docker-registry and containerd launchers: they start, answer, stop, and fail with a remedy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from otaml.localstack import LocalContainerd, LocalRegistry, LocalStackError, missing_tools
from tests.conftest import require


def test_missing_registry_binary_names_the_package(tmp_path: Path) -> None:
    with (
        pytest.raises(LocalStackError, match="apt-get install -y docker-registry"),
        LocalRegistry(tmp_path, binary="no-such-registry-binary"),
    ):
        pass


@pytest.mark.containerd
def test_containerd_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and not missing_tools(LocalContainerd.TOOLS), "root + containerd, ctr, runc")
    deep = tmp_path / ("x" * 90)
    with pytest.raises(LocalStackError, match="shorter work directory"), LocalContainerd(deep, "ns"):
        pass


@pytest.mark.integration
def test_registry_serves_and_stops(tmp_path: Path) -> None:
    require(shutil.which("docker-registry") is not None, "docker-registry", "apt-get install -y docker-registry")
    stack = LocalRegistry(tmp_path / "reg")
    with stack as address:
        assert httpx.get(f"http://{address}/v2/", timeout=5).status_code == 200
        assert (tmp_path / "reg" / "config.yml").is_file()
    assert stack.process is not None
    assert stack.process.poll() is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}/v2/", timeout=2)


@pytest.mark.containerd
def test_containerd_runs_ctr_and_stops(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root", "containerd needs root")
    missing = missing_tools(LocalContainerd.TOOLS)
    require(not missing, ", ".join(missing), "apt-get install -y containerd runc")
    launcher = LocalContainerd(tmp_path / "ctrd", "otaml-localstack")
    with launcher as instance:
        socket, namespace = instance
        assert namespace == "otaml-localstack"
        assert Path(socket).is_socket()
        assert instance.ctr("version").returncode == 0
        assert instance.ctr("containers", "list", "--quiet").stdout.strip() == ""
    assert launcher.process is not None
    assert launcher.process.poll() is not None
