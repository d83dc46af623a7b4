from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otaml.cli import main
from otaml.cmd_field import report
from registry.field import write_jsonl
from tests.registry.test_field import _register_version, summary


def test_field_report_from_file_prints_json_and_logs_each_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register_version(uri, "pump")
    path = tmp_path / "summaries.jsonl"
    write_jsonl(path, [("d1", ["a"], summary(version)), ("d2", ["b"], summary(version)), ("d3", [], "junk")])
    code = main(["field", "report", "pump", "--from-file", str(path), "--json", "--tracking-uri", uri])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["malformed"] == {"not_an_object": 1}
    assert {g["group"] for g in data["groups"]} == {"*", "a", "b"}
    assert set(data["mlflow_runs"]) == {version}
    assert data["mlflow_errors"] == {}


def test_field_report_text_for_one_version_and_an_unregistered_one(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register_version(uri, "pump")
    lines: list[str] = []
    source = [("d1", ["a"], summary(version)), ("d2", ["a"], summary("77"))]
    assert report("pump", source, version=version, tracking_uri=uri, out=lines.append) == 0
    assert "77" not in lines[0]
    assert any(line.startswith(f"logged to MLflow: pump v{version}") for line in lines)
    # A version the registry does not know is reported, and the failure to log it is said (exit 1).
    lines.clear()
    assert report("pump", source, tracking_uri=uri, out=lines.append) == 1
    assert any("not logged" in line and "77" in line for line in lines)


def test_field_report_needs_a_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["field", "report", "pump", "--no-log"]) == 1
    assert "--from-file" in capsys.readouterr().err
    assert main(["field", "report", "pump", "--no-log", "--from-file", "/nonexistent/x.jsonl"]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.integration
def test_field_report_reads_the_devices_summaries_from_the_broker(
    mqtt_broker: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from edge_runtime.fleet.messages import DeviceState
    from edge_runtime.fleet.reporter import Reporter
    from edge_runtime.fleet.settings import FleetSettings

    broker = mqtt_broker
    host, port = broker.instance  # type: ignore[attr-defined]
    for device_id, hw in (("pi-a", "pi4"), ("pi-b", "x86")):
        settings = FleetSettings(
            device_id=device_id,
            broker_host=host,
            broker_port=port,
            password_file=broker.password_file(device_id),  # type: ignore[attr-defined]
        )
        with Reporter(settings) as reporter:
            reporter.publish_state(DeviceState(device_id, groups={"hw": hw}, model="pump", version=3))
            reporter.publish_field(json.dumps(summary("3")).encode())
            deadline = time.monotonic() + 10
            while (reporter.stats().state_pending or reporter.stats().published < 3) and time.monotonic() < deadline:
                time.sleep(0.05)
    password = str(broker.password_file("controller"))  # type: ignore[attr-defined]
    argv = ["field", "report", "pump", "--broker", f"{host}:{port}", "--password-file", password, "--json", "--no-log"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    groups = {g["group"]: g["devices"] for g in data["groups"]}
    assert groups == {"*": 2, "hw=pi4": 1, "hw=x86": 1}


@pytest.mark.integration
def test_captured_windows_travel_from_the_service_to_otaml_field_capture(
    mqtt_broker: object, model_bundle: object, tmp_path: Path
) -> None:
    """The service's capture (on), the agent's fleet link (opted in), the device's MQTT reporter, the broker and
    ``otaml field capture``: every part real but the containers (the link reads the service's own answer)."""
    import threading
    import time

    from edge_runtime.agent.fleet_link import FleetLink
    from edge_runtime.fleet.reporter import Reporter
    from edge_runtime.fleet.settings import FleetSettings
    from edge_runtime.scoring import Scorer
    from edge_runtime.server import create_app
    from edge_runtime.settings import ServeSettings
    from tests.edge_runtime.agent.fakes import World
    from tests.edge_runtime.asgi import ASGIClient

    broker: Any = mqtt_broker
    bundle: Any = model_bundle
    host, port = broker.instance
    service = ASGIClient(create_app(Scorer.load(bundle), ServeSettings(bundle=bundle.path, capture_windows=True)))
    out = tmp_path / "windows.jsonl"
    argv = [
        "field",
        "capture",
        "--broker",
        f"{host}:{port}",
        "--password-file",
        str(broker.password_file("controller")),
    ]
    argv += ["--out", str(out), "--max-windows", "2", "--duration", "60"]
    codes: list[int] = []
    capture = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    capture.start()
    world = World(tmp_path / "device")
    world.publish("1")
    agent = world.agent()
    settings = FleetSettings(device_id="pi-a", broker_host=host, broker_port=port,
                             password_file=broker.password_file("pi-a"), capture_windows=True)  # fmt: skip
    with Reporter(settings) as reporter:
        link = FleetLink(
            agent, reporter, device_id="pi-a", groups={}, model="pump", field_fetch=lambda p: None,
            anomaly_fetch=lambda p: service.get("/v1/anomalies").json(), capture_windows=True,
        )  # fmt: skip
        agent.recover()
        spike = [[500.0, 50.0, 90.0]]
        deadline = time.monotonic() + 60
        # Events are not retained: keep making anomalies until the capture (subscribed meanwhile) has two.
        while capture.is_alive() and time.monotonic() < deadline:
            service.post("/v1/score", content=json.dumps({"stream": "pump-3", "readings": spike}),
                         headers={"content-type": "application/json"})  # fmt: skip
            link(agent.reconcile())
            time.sleep(0.3)
    capture.join(10)
    assert codes == [0]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2
    assert all(line["device_id"] == "pi-a" and line["stream"] == "pump-3" for line in lines)
    assert all(line["window"][-1] == [500.0, 50.0, 90.0] for line in lines)  # the window ends at the anomaly
    assert all(line["score"] >= line["threshold"] for line in lines)
