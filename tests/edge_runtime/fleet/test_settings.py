"""The [fleet] table: defaults, every key, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_runtime.fleet.settings import FleetConfigError, fleet_settings


def table(**fleet: Any) -> dict[str, Any]:
    return {"fleet": {"device_id": "pi-1", **fleet}}


def test_no_fleet_table_means_no_reporting() -> None:
    assert fleet_settings({"registry": {"url": "http://r"}}) is None


def test_defaults_and_every_key(tmp_path: Path) -> None:
    s = fleet_settings(table())
    assert s is not None
    assert (s.fleet, s.broker_host, s.broker_port, s.user, s.password()) == ("default", "127.0.0.1", 1883, "pi-1", None)
    assert (s.keepalive_s, s.heartbeat_s, s.max_events) == (300, 900.0, 100)
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    s = fleet_settings(
        table(
            fleet="plant-3",
            broker_host="mqtt.example.org",
            username="user-1",
            password_file=str(secret),
            tls_ca="/etc/ca.pem",
            keepalive_s=60,
            heartbeat_s=30,
            max_events=5,
            groups={"hw": "pi4", "site": "plant-3"},
        )
    )
    assert s is not None
    assert s.broker_port == 8883  # TLS: the MQTT-over-TLS port by default
    assert (s.fleet, s.user, s.password(), str(s.tls_ca)) == ("plant-3", "user-1", "s3cret", "/etc/ca.pem")
    assert (s.keepalive_s, s.heartbeat_s, s.max_events) == (60, 30.0, 5)
    assert dict(s.groups) == {"hw": "pi4", "site": "plant-3"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"fleet": {}}, "missing 'fleet.device_id'"),
        ({"fleet": "x"}, "'fleet' must be a table"),
        (table(device_id="pi/1"), "'fleet.device_id' has value 'pi/1'"),
        (table(fleet="a+b"), "'fleet.fleet' has value 'a+b'"),
        (table(broker_port=0), "'fleet.broker_port' has value 0. Not a valid port"),
        (table(broker_port="1883"), "'fleet.broker_port' has value '1883'"),
        (table(keepalive_s=1), "'fleet.keepalive_s' has value 1. Out of range"),
        (table(heartbeat_s="often"), "'fleet.heartbeat_s' has value 'often'. Not a number"),
        (table(groups={"hw": 4}), "'fleet.groups' has value"),
        (table(brokr_host="x"), "unknown key 'fleet.brokr_host'"),
        (table(username=3), "'fleet.username' has value 3"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(FleetConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        fleet_settings(data)


def test_password_file_missing_or_empty_is_named(tmp_path: Path) -> None:
    s = fleet_settings(table(password_file=str(tmp_path / "nope")))
    assert s is not None
    with pytest.raises(FleetConfigError, match=r"'fleet.password_file' is .*nope.*cannot be read"):
        s.password()
    (tmp_path / "empty").write_text("\n")
    s = fleet_settings(table(password_file=str(tmp_path / "empty")))
    assert s is not None
    with pytest.raises(FleetConfigError, match="is empty"):
        s.password()


def test_device_id_and_groups_default_to_the_callers() -> None:
    s = fleet_settings({"fleet": {"fleet": "f"}}, device_id="host-7", groups={"hw": "pi4"})
    assert s is not None
    assert (s.device_id, dict(s.groups)) == ("host-7", {"hw": "pi4"})
    s = fleet_settings(table(groups={"hw": "pi5"}), device_id="host-7", groups={"hw": "pi4"})
    assert s is not None
    assert (s.device_id, dict(s.groups)) == ("pi-1", {"hw": "pi5"})
