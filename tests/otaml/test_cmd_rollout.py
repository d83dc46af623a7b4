"""``otaml rollout`` end to end on a real trust site (``otaml trust init``): start, step, status, pause/resume/abort,
run, enable.

The site's keys are real key files; the fleet's states come from a states file (the I/O seam); what the commands
publish is read back by a device's TrustClient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_runtime.fleet.messages import DeviceState, device_topic
from edge_runtime.fleet.rollout import RolloutRecord
from otaml.cli import main
from otaml.localstack import LocalBroker
from registry.tuf import keys
from registry.tuf.repository import FleetRepository, RoleKeys, create
from registry.tuf.site import TrustSite, init
from registry.tuf.store import DirectoryStore
from tests.edge_runtime.trust.fakes import Device, provision
from tests.otaml.test_cmd_fleet import publish_as
from tests.registry.tuf.fleet import image

MODEL, CHANNEL = "pump-anomaly", "production"
DEVICES = [f"dev-{i:02d}" for i in range(30)]
DEVICES_ON_BROKER = ("pi-a", "pi-b", "pi-c")  # the users of tests/fixtures/mqtt_broker.py


@dataclass
class Site:
    """A trust site as ``otaml trust init`` makes it, with the approvers' key files beside it."""

    path: Path
    keys_out: Path

    @property
    def store(self) -> DirectoryStore:
        return DirectoryStore(self.path / "metadata")

    @property
    def repo(self) -> FleetRepository:
        return FleetRepository.read_only(self.store)

    def approve(self, version: int) -> None:
        """Approve as `otaml promote` does: staged once a lower version runs."""
        first, second = (keys.load_signer(self.keys_out / f"approver-{i}.key") for i in (1, 2))
        with TrustSite(self.path).locked() as repo:
            repo.propose(image(version, staged=repo.stages(CHANNEL, MODEL, version)), first)
            repo.approve_pending(second)

    def device(self, tmp_path: Path) -> Device:
        return provision(tmp_path, SimpleNamespace(store=self.store, path=self.store.path))  # type: ignore[arg-type]


@pytest.fixture
def fleet(tmp_path: Path) -> Site:
    init(tmp_path / "site", tmp_path / "keys")
    """v6 runs on every device; v7 and v8 are approved as `otaml promote` approves them: staged for a rollout."""
    site = Site(tmp_path / "site", tmp_path / "keys")
    for version in (6, 7, 8):
        site.approve(version)
    return site


def where(tmp_path: Path) -> list[str]:
    return ["--dir", str(tmp_path / "site")]


def write_states(
    path: Path, record: RolloutRecord, *, failing: str = "", ratios: dict[int, float] | None = None
) -> None:
    """Every device reports what the record tells it to run; with ``failing``, wave devices roll back with it;
    with ``ratios`` (version -> anomaly ratio), each device's field summary says its model alarms that often."""
    entries = []
    for d in DEVICES:
        version = record.version_for(d, {})
        failed = bool(failing) and version == record.version
        state = DeviceState(
            device_id=d,
            model=MODEL,
            version=record.stable_version if failed else version,
            phase="serving",
            last_outcome="rolled_back" if failed else "updated",
            last_reason=failing if failed else "",
            rollout_id=record.rollout_id,
            health="ok",
            last_seen=1.0,
        )
        entry: dict[str, object] = {"state": json.loads(state.to_json()), "availability": "online"}
        if ratios is not None:
            v = state.version
            entry["field"] = {"version": v, "window": 1000, "readings": 1000, "anomaly_ratio": ratios[v], "psi": {}}
        entries.append(entry)
    entries.append({"state": {"device_id": "garbage", "version": "x"}, "availability": "online"})
    path.write_text(json.dumps({"devices": entries}))


def published(fleet: Site) -> RolloutRecord:
    record = fleet.repo.rollout_record("production", MODEL)
    assert record is not None
    return record


def test_a_good_rollout_completes_and_a_bad_one_halts_with_its_reasons(
    tmp_path: Path, fleet: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    states = tmp_path / "states.json"
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "7", "--waves", "50,100", "--soak", "0s", *args]) == 0
    out = capsys.readouterr().out
    assert f"{MODEL} v6 -> v7 on production: RUNNING" in out
    record = published(fleet)
    device = fleet.device(tmp_path)
    assert device.client.rollout("production", MODEL) == record  # signed, verified, read as devices do

    for wave, state in ((1, "running"), (1, "completed")):
        write_states(states, published(fleet))
        assert main(["rollout", "step", "--states", str(states), *args]) == 0
        out = capsys.readouterr().out
        assert "advance (published)" in out
        assert "malformed reports ignored: 1" in out
        assert (published(fleet).wave, published(fleet).state) == (wave, state)
    assert published(fleet).state == "completed"

    assert main(["rollout", "start", MODEL, "8", "--waves", "50,100", "--max-failure-rate", "0.1", *args]) == 0
    bad = published(fleet)
    assert bad.stable_version == 7
    assert bad.soak_s == 600
    write_states(states, bad, failing="golden-mismatch")
    assert main(["rollout", "step", "--states", str(states), *args]) == 0
    assert "halt (published)" in capsys.readouterr().out
    assert main(["rollout", "status", MODEL, *args]) == 0
    out = capsys.readouterr().out
    assert "v7 -> v8 on production: HALTED" in out
    in_wave = [d for d in DEVICES if bad.version_for(d, {}) == 8]
    assert in_wave
    for d in in_wave:
        assert f"{d} (rolled_back:golden-mismatch)" in out
    device.client.refresh()  # the agent's next poll
    halted = device.client.rollout("production", MODEL)
    assert halted is not None
    assert {halted.version_for(d, {}) for d in DEVICES} == {7}


def test_a_candidate_whose_model_alarms_on_everything_is_halted_with_healthy_containers(
    tmp_path: Path, fleet: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    states = tmp_path / "states.json"
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "7", "--waves", "50,100", "--soak", "0s", *args]) == 0
    record = published(fleet)
    write_states(states, record, ratios={6: 0.01, 7: 0.97})
    # Containers only: the wave looks healthy and would advance.
    assert main(["rollout", "status", MODEL, "--states", str(states), "--no-model-health", *args]) == 0
    assert "advance" in capsys.readouterr().out
    assert main(["rollout", "step", "--states", str(states), *args]) == 0
    assert "halt (published)" in capsys.readouterr().out
    assert main(["rollout", "status", MODEL, *args]) == 0
    out = capsys.readouterr().out
    assert "HALTED" in out
    assert "v7 flags 97.0% of readings" in out
    assert published(fleet).state == "halted"


def test_status_with_states_shows_the_live_judgement_and_json(
    tmp_path: Path, fleet: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "8", "--waves", "50,100", "--soak", "10m", *args]) == 0
    states = tmp_path / "states.json"
    write_states(states, published(fleet))
    capsys.readouterr()
    base = ["rollout", "status", MODEL, *args, "--states", str(states)]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "now: wait: wave 1/2 (50%): soaking" in out
    assert "malformed reports: 1" in out
    assert main([*base, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["record"]["state"] == "running"
    assert doc["assessment"]["action"] == "wait"
    assert len(doc["assessment"]["healthy"]) == len(doc["assessment"]["in_wave"]) > 0
    assert len(doc["malformed_reports"]) == 1


def test_pause_resume_abort(tmp_path: Path, fleet: Site, capsys: pytest.CaptureFixture[str]) -> None:
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "8", "--waves", "10,100", "--group", "hw=pi4", *args]) == 0
    assert published(fleet).group == {"hw": "pi4"}
    assert main(["rollout", "pause", MODEL, *args]) == 0
    assert published(fleet).state == "paused"
    assert main(["rollout", "resume", MODEL, *args]) == 0
    assert published(fleet).state == "running"
    assert main(["rollout", "abort", MODEL, "--reason", "wrong model", *args]) == 0
    assert published(fleet).state == "aborted"
    assert "aborted by an operator in wave 1/2: wrong model" in capsys.readouterr().out
    assert main(["rollout", "resume", MODEL, *args]) == 1
    assert "is aborted; only a paused rollout can be resumed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", MODEL, "9"], "v9 is not approved for channel 'production'"),
        (["start", MODEL, "8", "--waves", "10,50"], "must be increasing percentages in 1..100 that end at 100"),
        (["status", MODEL, "--channel", "staging"], "no rollout of 'pump-anomaly' on channel 'staging'"),
        (["step"], "pass --broker HOST:PORT (or set OTAML_BROKER)"),
        (["step", "--states", "s.json", "--broker", "127.0.0.1:1"], "give only one"),
        (["step", "--broker", "nowhere"], "--broker has value 'nowhere'. Use host:port"),
        (["step", "--broker", "127.0.0.1:1", "--fleet", "a/b"], "--fleet:"),
    ],
)
def test_refusals_name_the_problem(
    tmp_path: Path,
    fleet: Site,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    extra = where(tmp_path)
    monkeypatch.delenv("OTAML_FLEET_STATES", raising=False)
    monkeypatch.delenv("OTAML_BROKER", raising=False)
    assert main(["rollout", *argv, *extra]) == 1
    assert message in capsys.readouterr().err


def test_a_site_that_is_not_there_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "status", MODEL, "--dir", str(tmp_path / "nothing")]) == 1
    assert (
        "is not a trust site (no metadata/1.root.json); create one with `otaml trust init`" in capsys.readouterr().err
    )


def test_the_site_and_states_come_from_the_environment_or_a_clear_error(
    tmp_path: Path, fleet: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTAML_TRUST_DIR", raising=False)
    monkeypatch.delenv("OTAML_FLEET_STATES", raising=False)
    monkeypatch.delenv("OTAML_BROKER", raising=False)
    assert main(["rollout", "status", MODEL]) == 1
    assert "pass --dir DIR or set OTAML_TRUST_DIR" in capsys.readouterr().err
    monkeypatch.setenv("OTAML_TRUST_DIR", str(tmp_path / "site"))
    assert main(["rollout", "start", MODEL, "8", "--waves", "100"]) == 0
    states = tmp_path / "states.json"
    write_states(states, published(fleet))
    monkeypatch.setenv("OTAML_FLEET_STATES", str(states))
    capsys.readouterr()
    assert main(["rollout", "step"]) == 0
    assert "pump-anomaly@production" in capsys.readouterr().out


def test_enable_adds_the_rollouts_role_to_an_older_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A site made before rollouts existed: no delegation, no online/rollouts.key."""
    site_dir, keys_out = tmp_path / "site", tmp_path / "keys"
    approvers = [keys.generate() for _ in range(3)]
    online = {role: keys.generate() for role in ("root", "snapshot", "timestamp")}
    for i, key in enumerate(approvers, 1):
        keys.write(key, keys_out, f"approver-{i}")
    for role in ("snapshot", "timestamp"):
        keys.write(online[role], site_dir / "online", role)
    create(
        DirectoryStore(site_dir / "metadata"),
        root=RoleKeys([online["root"].public_key]),
        targets=RoleKeys([k.public_key for k in approvers], threshold=2),
        snapshot=RoleKeys([online["snapshot"].public_key]),
        timestamp=RoleKeys([online["timestamp"].public_key]),
        root_signers=[online["root"]],
        targets_signers=approvers[:2],
        snapshot_signer=online["snapshot"],
        timestamp_signer=online["timestamp"],
    )
    site = Site(site_dir, keys_out)
    site.approve(6)
    site.approve(7)
    assert main(["rollout", "start", MODEL, "7", *where(tmp_path)]) == 1
    assert "has no rollouts key yet. Add the rollouts role with `otaml rollout enable" in capsys.readouterr().err
    one = ["--key", str(keys_out / "approver-1.key")]
    assert main(["rollout", "enable", *one, *where(tmp_path)]) == 1
    assert "signed by 1 of the 2 targets keys it needs" in capsys.readouterr().err
    assert main(["rollout", "enable", *one, "--key", str(keys_out / "approver-3.key"), *where(tmp_path)]) == 0
    assert "rollouts role added" in capsys.readouterr().out
    assert (site_dir / "online" / "rollouts.key").stat().st_mode & 0o777 == 0o600
    # Approved before the site had rollouts, v7 went to every device: a rollout of it would move nobody.
    assert main(["rollout", "start", MODEL, "7", *where(tmp_path)]) == 1
    assert "v7 is not above the stable v7" in capsys.readouterr().err
    site.approve(8)  # with the rollouts role, a new version is staged for a rollout
    assert [(a.version, a.staged) for a in site.repo.approvals()] == [(6, False), (7, False), (8, True)]
    assert main(["rollout", "start", MODEL, "8", *where(tmp_path)]) == 0
    assert site.device(tmp_path).client.rollout("production", MODEL) == published(site)


def test_run_steps_until_complete_and_two_controller_processes_at_once_do_not_corrupt_it(
    tmp_path: Path, fleet: Site
) -> None:
    """The timer's command run twice at the same time: the rollout moves one wave per judgement, never two."""
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "8", "--waves", "20,60,100", "--soak", "0", *args]) == 0
    states = tmp_path / "states.json"
    env = {**os.environ, "OTAML_TRUST_DIR": str(tmp_path / "site")}
    env["OTAML_FLEET_STATES"] = str(states)
    waves_seen = []
    for _ in range(3):
        write_states(states, published(fleet))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "otaml", "rollout", "step", "--json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        results = [json.loads(out)["results"] for out, _ in outs]
        assert sum(r["published"] for res in results for r in res) == 1  # one publishes; the other conflicts or
        record = published(fleet)  # finds the wave already moved (and waits for its soak from now)
        waves_seen.append(record.state if record.state != "running" else record.wave)
    assert waves_seen == [1, 2, "completed"]
    assert fleet.device(tmp_path).client.rollout("production", MODEL) == published(fleet)
    # The loop command: nothing left to move, two quick iterations.
    proc = subprocess.run(
        [sys.executable, "-m", "otaml", "rollout", "run", "--interval", "0", "--count", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("no rollout is running or paused") == 2


def report_states(broker: LocalBroker, record: RolloutRecord, *, failing: str = "") -> None:
    """Each device of the broker publishes, as itself, the retained state the record tells it to reach."""
    for d in DEVICES_ON_BROKER:
        version = record.version_for(d, {})
        failed = bool(failing) and version == record.version
        state = DeviceState(
            device_id=d,
            model=MODEL,
            version=record.stable_version if failed else version,
            phase="serving",
            last_outcome="rolled_back" if failed else "updated",
            last_reason=failing if failed else "",
            rollout_id=record.rollout_id,
            health="ok",
            last_seen=1.0,
        )
        publish_as(
            broker,
            d,
            [(device_topic("f", d, "state"), state.to_json()), (device_topic("f", d, "availability"), b"online")],
        )


@pytest.mark.integration
def test_the_controller_reads_the_states_from_the_broker(
    tmp_path: Path,
    fleet: Site,
    mqtt_broker: LocalBroker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mqtt_broker.instance is not None
    monkeypatch.delenv("OTAML_FLEET_STATES", raising=False)
    monkeypatch.setenv("OTAML_BROKER_PASSWORD_FILE", str(mqtt_broker.password_file("controller")))
    monkeypatch.setenv("OTAML_FLEET", "f")
    broker = ["--broker", mqtt_broker.instance.address]
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "7", "--waves", "100", "--soak", "0s", *args]) == 0
    report_states(mqtt_broker, published(fleet))
    assert main(["rollout", "step", *broker, *args]) == 0
    assert "advance (published)" in capsys.readouterr().out
    assert published(fleet).state == "completed"

    assert main(["rollout", "start", MODEL, "8", "--waves", "100", "--max-failure-rate", "0.1", *args]) == 0
    report_states(mqtt_broker, published(fleet), failing="no-platform")
    capsys.readouterr()
    monkeypatch.setenv("OTAML_BROKER", mqtt_broker.instance.address)  # the environment, as a timer unit sets it
    assert main(["rollout", "run", "--count", "1", "--json", *args]) == 0
    step = json.loads(capsys.readouterr().out)
    assert step["results"][0]["decision"]["action"] == "halt"
    assert published(fleet).state == "halted"
    assert main(["rollout", "status", MODEL, *args]) == 0
    out = capsys.readouterr().out
    assert "HALTED" in out
    assert "now: " in out  # the live judgement: the states were read from the broker
    for d in DEVICES_ON_BROKER:
        assert f"{d} (rolled_back:no-platform)" in out

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    assert main(["rollout", "status", MODEL, *args, "--password-file", str(wrong)]) == 1
    assert "refused" in capsys.readouterr().err
