"""The private Mosquitto: users and ACL as documented, restart on the same port, a remedy when it is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from otaml import localstack
from otaml.localstack import LocalBroker, LocalStackError, missing_tools
from tests.conftest import require


def test_missing_mosquitto_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(localstack, "SBIN", str(tmp_path))
    with pytest.raises(LocalStackError, match="apt-get install -y mosquitto"), LocalBroker(tmp_path / "mq"):
        pass


def sub_once(broker: LocalBroker, user: str, password: str, topic: str) -> subprocess.CompletedProcess[str]:
    assert broker.instance is not None
    host, port = broker.instance
    return subprocess.run(
        ["mosquitto_sub", "-h", host, "-p", str(port), "-u", user, "-P", password, "-t", topic, "-C", "1", "-W", "10"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def pub(broker: LocalBroker, user: str, password: str, topic: str, message: str) -> int:
    assert broker.instance is not None
    host, port = broker.instance
    argv = ["mosquitto_pub", "-h", host, "-p", str(port), "-u", user, "-P", password]
    return subprocess.run([*argv, "-t", topic, "-m", message, "-r", "-q", "1"], timeout=30).returncode


@pytest.mark.integration
def test_users_acl_and_restart_on_the_same_port(tmp_path: Path) -> None:
    require(
        not missing_tools((*LocalBroker.TOOLS, "mosquitto_pub")),
        "mosquitto",
        "apt-get install -y mosquitto mosquitto-clients",
    )
    broker = LocalBroker(tmp_path / "mq", devices=["pi-1"])
    with broker as instance:
        secret = broker.password_file("pi-1")
        assert secret.stat().st_mode & 0o077 == 0
        assert secret.read_text().strip() == broker.password("pi-1")
        assert "pi-1:$" in (tmp_path / "mq" / "passwords").read_text()  # hashed, never in clear
        assert pub(broker, "pi-1", broker.password("pi-1"), "otaml/f/devices/pi-1/state", "mine") == 0
        assert pub(broker, "pi-1", "wrong", "otaml/f/devices/pi-1/state", "x") != 0
        got = sub_once(broker, "controller", broker.password("controller"), "otaml/f/devices/+/state")
        assert got.stdout.strip() == "mine"
        port = instance.port
        broker.restart()
        assert broker.instance == instance
        assert broker.instance.port == port
        assert pub(broker, "pi-1", broker.password("pi-1"), "otaml/f/devices/pi-1/state", "again") == 0
    assert broker.process is not None
    assert broker.process.poll() is not None
    with pytest.raises(LocalStackError, match="no user 'pi-9'"):
        broker.password("pi-9")


@pytest.mark.integration
def test_a_user_whose_path_has_no_sbin_still_starts_the_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Debian installs mosquitto in /usr/sbin, which is not on a non-root user's PATH: the demo's fleet stage and
    # the tests must still find it.
    require(not missing_tools(LocalBroker.TOOLS), "mosquitto", "apt-get install -y mosquitto")
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert not missing_tools(LocalBroker.TOOLS)
    with LocalBroker(tmp_path / "mq", devices=["pi-1"]) as instance:
        assert instance.port > 0
