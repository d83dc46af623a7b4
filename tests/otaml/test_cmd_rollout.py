"""``otaml rollout`` end to end on a real TUF repository directory: start, step, status, pause/resume/abort, run.

The controller's keys are real key files; the fleet's states come from a states file (the I/O seam); what the
commands publish is read back by a device's TrustClient.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.rollout import RolloutRecord
from otaml.cli import main
from registry.tuf import keys
from tests.edge_runtime.trust.fakes import provision
from tests.registry.tuf.fleet import Fleet, image, make_fleet

MODEL = "pump-anomaly"
DEVICES = [f"dev-{i:02d}" for i in range(30)]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = make_fleet(tmp_path / "repo")
    for version in (6, 7, 8):
        fleet.approve(image(version))
    keys_dir = tmp_path / "keys"
    keys.write(fleet.snapshot_key, keys_dir, "snapshot")
    keys.write(fleet.timestamp_key, keys_dir, "timestamp")
    assert fleet.rollouts_key is not None
    keys.write(fleet.rollouts_key, keys_dir, "rollouts")
    return fleet


def where(tmp_path: Path) -> list[str]:
    return ["--tuf-dir", str(tmp_path / "repo"), "--keys-dir", str(tmp_path / "keys")]


def write_states(path: Path, record: RolloutRecord, *, failing: str = "") -> None:
    """Every device reports what the record tells it to run; with ``failing``, wave devices roll back with it."""
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
        entries.append({"state": json.loads(state.to_json()), "availability": "online"})
    entries.append({"state": {"device_id": "garbage", "version": "x"}, "availability": "online"})
    path.write_text(json.dumps({"devices": entries}))


def published(fleet: Fleet) -> RolloutRecord:
    record = fleet.repo.rollout_record("production", MODEL)
    assert record is not None
    return record


def test_a_good_rollout_completes_and_a_bad_one_halts_with_its_reasons(
    tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    states = tmp_path / "states.json"
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "7", "--waves", "50,100", "--soak", "0s", *args]) == 0
    out = capsys.readouterr().out
    assert f"{MODEL} v6 -> v7 on production: RUNNING" in out
    record = published(fleet)
    device = provision(tmp_path, fleet)
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
    assert main(["rollout", "status", MODEL, "--tuf-dir", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "v7 -> v8 on production: HALTED" in out
    in_wave = [d for d in DEVICES if bad.version_for(d, {}) == 8]
    assert in_wave
    for d in in_wave:
        assert f"{d} (rolled_back:golden-mismatch)" in out
    halted = device.client.rollout("production", MODEL)
    assert halted is not None
    assert {halted.version_for(d, {}) for d in DEVICES} == {7}


def test_status_with_states_shows_the_live_judgement_and_json(
    tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "8", "--waves", "50,100", "--soak", "10m", *args]) == 0
    states = tmp_path / "states.json"
    write_states(states, published(fleet))
    capsys.readouterr()
    base = ["rollout", "status", MODEL, "--tuf-dir", str(tmp_path / "repo"), "--states", str(states)]
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


def test_pause_resume_abort(tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
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
        (["step"], "pass --states FILE or set OTAML_FLEET_STATES"),
    ],
)
def test_refusals_name_the_problem(
    tmp_path: Path,
    fleet: Fleet,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    extra = ["--tuf-dir", str(tmp_path / "repo")] if argv[0] == "status" else where(tmp_path)
    monkeypatch.delenv("OTAML_FLEET_STATES", raising=False)
    assert main(["rollout", *argv, *extra]) == 1
    assert message in capsys.readouterr().err


def test_missing_configuration_names_the_setting(
    tmp_path: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTAML_TUF_DIR", raising=False)
    monkeypatch.delenv("OTAML_TUF_KEYS", raising=False)
    assert main(["rollout", "start", MODEL, "8"]) == 1
    assert "pass --tuf-dir DIR or set OTAML_TUF_DIR" in capsys.readouterr().err
    assert main(["rollout", "start", MODEL, "8", "--tuf-dir", str(tmp_path / "repo")]) == 1
    assert "pass --keys-dir DIR or set OTAML_TUF_KEYS" in capsys.readouterr().err
    assert main(["rollout", "status", MODEL, "--tuf-dir", str(tmp_path / "nothing")]) == 1
    assert "holds no TUF repository" in capsys.readouterr().err


def test_run_steps_until_complete_and_two_controller_processes_at_once_do_not_corrupt_it(
    tmp_path: Path, fleet: Fleet
) -> None:
    """The timer's command run twice at the same time: the rollout moves one wave per judgement, never two."""
    args = where(tmp_path)
    assert main(["rollout", "start", MODEL, "8", "--waves", "20,60,100", "--soak", "0", *args]) == 0
    states = tmp_path / "states.json"
    env = {**os.environ, "OTAML_TUF_DIR": str(tmp_path / "repo"), "OTAML_TUF_KEYS": str(tmp_path / "keys")}
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
    assert provision(tmp_path, fleet).client.rollout("production", MODEL) == published(fleet)
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
