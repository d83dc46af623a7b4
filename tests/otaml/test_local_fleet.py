"""otaml.local_fleet: the fleet's device specs, the metadata publication order, and a device agent end to end."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edge_runtime.bundle import Bundle
from otaml.local_fleet import (
    PI4,
    X86,
    BlobCache,
    FleetHarnessError,
    fleet_specs,
    minimal_base,
    publish_metadata,
    quiet_agent_logs,
)
from otaml.localstack import LocalBroker


def test_agent_logs_go_to_the_file_while_quiet_and_the_loggers_are_put_back_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = logging.getLogger("otaml.agent")
    before = (agent.level, agent.propagate, list(agent.handlers))
    caplog.set_level(logging.INFO)
    undo = quiet_agent_logs(tmp_path / "agents.log")
    agent.info("while quiet")
    undo()
    agent.warning("after")
    assert "while quiet" in (tmp_path / "agents.log").read_text()
    assert [r.getMessage() for r in caplog.records if r.name == "otaml.agent"] == ["after"]
    assert (agent.level, agent.propagate, list(agent.handlers)) == before


def test_fleet_specs_alternate_hardware_classes_with_their_platforms() -> None:
    specs = fleet_specs(5)
    assert [s.device_id for s in specs] == ["dev-0000", "dev-0001", "dev-0002", "dev-0003", "dev-0004"]
    assert [(s.groups["hw"], s.platform) for s in specs] == [
        ("pi4", PI4), ("x86", X86), ("pi4", PI4), ("x86", X86), ("pi4", PI4),
    ]  # fmt: skip
    assert {s.groups["hw"] for s in fleet_specs(4, pi4_every=4)} == {"pi4", "x86"}


def test_publish_copies_changed_files_and_writes_the_timestamp_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, served = tmp_path / "metadata", tmp_path / "served"
    source.mkdir()
    for name in ("1.root.json", "timestamp.json", "snapshot.json", "2.targets.json"):
        (source / name).write_text(json.dumps({"name": name}))
    (source / ".lock").write_text("")
    written: list[str] = []
    original = Path.rename

    def noting(self: Path, target: Path) -> Path:
        written.append(Path(target).name)
        return original(self, target)

    monkeypatch.setattr(Path, "rename", noting)
    publish_metadata(source, served)
    assert written[-1] == "timestamp.json"
    assert sorted(written) == ["1.root.json", "2.targets.json", "snapshot.json", "timestamp.json"]
    assert sorted(p.name for p in served.iterdir()) == sorted(written)  # no partial files, no lock
    written.clear()
    (source / "timestamp.json").write_text('{"version": 2}')
    publish_metadata(source, served)
    assert written == ["timestamp.json"]  # only what changed
    assert (served / "timestamp.json").read_text() == '{"version": 2}'


def test_blob_cache_refuses_a_digest_that_is_not_sha256(tmp_path: Path) -> None:
    with pytest.raises(FleetHarnessError, match="is not sha256:<64 hex>"):
        BlobCache(tmp_path).path("sha256:../../etc/passwd", lambda _d: b"")


def test_minimal_base_lists_each_platform(tmp_path: Path) -> None:
    from registry.oci.layout import Layout

    ref = minimal_base(tmp_path / "base", (X86, PI4))
    assert ref == f"oci:{tmp_path / 'base'}:base"
    layout = Layout(tmp_path / "base")
    descriptor = layout.resolve("base")
    assert descriptor is not None
    index = json.loads(layout.read_manifest(descriptor.digest)[0])
    platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}" for m in index["manifests"]}
    assert platforms == {X86, PI4}


@pytest.mark.integration
@pytest.mark.parametrize("broker_down", [False, True], ids=["broker-up", "broker-down-during-the-install"])
def test_a_fleet_device_installs_the_approved_version_and_reports_it(
    tmp_path: Path, mqtt_broker: LocalBroker, model_bundle: Bundle, broker_down: bool
) -> None:
    """One device of the harness against a real broker, real TUF metadata over HTTP and an OCI layout.

    With the broker down the device installs all the same, and reports once the broker is back."""
    from edge_runtime.trust.approval import Approval
    from otaml.demo_embedded import LayoutClient
    from otaml.local_fleet import DeviceOptions, DeviceSpec, LocalFleet
    from otaml.static_http import StaticServer
    from registry.bake import bake
    from registry.fleet.collect import collect
    from registry.oci.layout import Layout
    from registry.oci.refs import parse_ref, pinned
    from registry.tuf import keys
    from registry.tuf.site import TrustSite, init

    assert mqtt_broker.instance is not None
    bundle = model_bundle
    base = pinned(minimal_base(tmp_path / "base", (X86, PI4)))
    baked = bake(base, bundle.path, f"oci:{tmp_path / 'images'}", tag="model-v1")
    trust = init(tmp_path / "trust", tmp_path / "keys")
    site = TrustSite(trust.site.path)
    first, second = (keys.load_signer(p) for p in trust.approver_keys[:2])
    with site.locked() as repo:
        approval = Approval(
            channel="production", model=bundle.card.name, version=1, digest=baked.digest,
            length=baked.index_size, base_digest=parse_ref(base).digest or "",
        )  # fmt: skip
        repo.propose(approval, first)
        repo.approve_pending(second)
    publish_metadata(site.metadata_dir, tmp_path / "served")
    with StaticServer(tmp_path / "served") as meta:
        options = DeviceOptions(
            registry_url="http://embedded.invalid",
            repository="demo",
            trust_url=meta.url,
            trusted_root=trust.trusted_root,
            model=bundle.card.name,
            broker_host=mqtt_broker.instance.host,
            broker_port=mqtt_broker.instance.port,
            password_file=mqtt_broker.password_file,
            fleet="f",
            poll_interval_s=0.5,
        )
        layout = Layout(tmp_path / "images")
        with LocalFleet(tmp_path / "fleet", options, client_factory=lambda: LayoutClient(layout)) as fleet:
            if broker_down:
                mqtt_broker.stop()
            device = fleet.add(DeviceSpec("pi-a", {"hw": "pi4"}, PI4))
            deadline = time.monotonic() + 120
            while device.serving_version() != "1":
                assert fleet.problems() == []
                assert time.monotonic() < deadline, device.state().last_error
                time.sleep(0.3)
            if broker_down:
                mqtt_broker.start()  # on the same port; it kept nothing, so the device must send its state again
            password = mqtt_broker.password("controller")
            deadline = time.monotonic() + 30
            while True:
                view = collect(mqtt_broker.instance.host, mqtt_broker.instance.port, "f", password=password).devices
                state = view.get("pi-a")
                if state is not None and state.state is not None and state.state.version == 1:
                    break
                assert time.monotonic() < deadline, view
                time.sleep(0.5)
            assert state.online is True
            assert state.state.groups == {"hw": "pi4"}
            assert fleet.broker_bytes() > 0
