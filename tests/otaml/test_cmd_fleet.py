"""``otaml fleet status`` against a real broker: devices, failures, and device messages that break the contract."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.fleet.messages import DeviceEvent, DeviceState, device_topic
from edge_runtime.fleet.reporter import stop_network
from otaml.cli import main
from otaml.cmd_fleet import parse_broker, read_known_devices
from otaml.localstack import LocalBroker
from otaml.ports import free_port


def publish_as(broker: LocalBroker, user: str, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained QoS 1 messages as ``user`` and wait for the broker to acknowledge each."""
    assert broker.instance is not None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-test")
    client.username_pw_set(user, broker.password(user))
    client.connect(broker.instance.host, broker.instance.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        stop_network(client)


@pytest.mark.integration
def test_status_json_shows_devices_and_counts_bad_messages(
    mqtt_broker: LocalBroker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert mqtt_broker.instance is not None
    good = DeviceState(
        "pi-a", {"hw": "pi4"}, "pump", 3, phase="serving", last_outcome="rolled_back", last_reason="unhealthy"
    )
    publish_as(
        mqtt_broker,
        "pi-a",
        [
            (device_topic("f", "pi-a", "state"), good.to_json()),
            (device_topic("f", "pi-a", "availability"), b"online"),
            # pi-a's own topics, other content: a document naming pi-b; and a kind of its own, which the ACL
            # refuses (a device writes exactly its four topics), so no reader ever sees it
            (device_topic("f", "pi-a", "events"), DeviceEvent("pi-b", "update", 1.0).to_json()),
            ("otaml/f/devices/pi-a/shadow", b"{}"),
        ],
    )
    publish_as(
        mqtt_broker,
        "pi-b",
        [
            (device_topic("f", "pi-b", "state"), b"{not json"),
            (device_topic("f", "pi-b", "field"), b"[" + b"0," * 4000 + b"0]"),
            (device_topic("f", "pi-b", "availability"), b"offline"),
        ],
    )
    publish_as(mqtt_broker, "pi-c", [(device_topic("f", "pi-c", "state"), DeviceState("pi-c").to_json())])
    known = tmp_path / "devices.txt"
    known.write_text("# the fleet\npi-a\npi-b\n")
    code = main(
        [
            "fleet", "status", "--fleet", "f", "--broker", mqtt_broker.instance.address,
            "--password-file", str(mqtt_broker.password_file("controller")), "--known-devices", str(known), "--json",
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rejected"] == {
        "device-mismatch": 1,
        "malformed": 1,
        "oversized": 1,
        "unknown-device": 1,
    }
    devices = {d["device_id"]: d for d in doc["devices"]}
    assert (devices["pi-a"]["version"], devices["pi-a"]["online"], devices["pi-a"]["groups"]) == (
        3,
        True,
        {"hw": "pi4"},
    )
    assert devices["pi-b"]["version"] is None
    assert doc["offline"] == ["pi-b"]
    assert doc["failures"] == [
        {"device_id": "pi-a", "source": "state", "outcome": "rolled_back", "reason": "unhealthy", "version": 3}
    ]


@pytest.mark.integration
def test_wrong_password_and_absent_broker_are_reported(
    mqtt_broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mqtt_broker.instance is not None
    code = main(["fleet", "status", "--fleet", "f", "--broker", mqtt_broker.instance.address, "--timeout", "20"])
    assert code == 1
    assert "refused user 'controller'" in capsys.readouterr().err
    code = main(["fleet", "status", "--broker", f"127.0.0.1:{free_port()}"])
    assert code == 1
    assert "cannot connect to the MQTT broker" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["localhost", "host:", ":1883", "host:99999", "host:x"])
def test_bad_broker_address_names_the_value(value: str) -> None:
    with pytest.raises(ValueError, match=f"--broker has value {value!r}"):
        parse_broker(value)


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "ten"])
def test_a_broker_timeout_must_be_a_positive_finite_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from otaml.cli import main

    for argv in (["fleet", "status", "--timeout", value], ["rollout", "step", "--broker-timeout", value]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert f"{value!r} is not a positive number of seconds" in capsys.readouterr().err


def test_broker_address() -> None:
    assert parse_broker("mqtt.example.org:8883") == ("mqtt.example.org", 8883)
    assert parse_broker("[::1]:1883") == ("::1", 1883)


def test_unusable_ca_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fleet", "status", "--broker", f"127.0.0.1:{free_port()}", "--tls-ca", str(tmp_path / "ca.pem")])
    assert code == 1
    assert "ca.pem' cannot be used" in capsys.readouterr().err


def test_known_devices_file_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "ok.txt"
    good.write_text("# fleet\npi-1\n\n  pi-2 \n")
    assert read_known_devices(str(good)) == ["pi-1", "pi-2"]
    bad = tmp_path / "bad.txt"
    bad.write_text("pi-1\npi/2\n")
    with pytest.raises(ValueError, match="id 2: device id 'pi/2' is not a valid id"):
        read_known_devices(str(bad))
    with pytest.raises(ValueError, match="cannot be read"):
        read_known_devices(str(tmp_path / "missing.txt"))
