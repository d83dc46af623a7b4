"""``otaml demo``: mode selection, the agent config it writes, the summary table, and the whole loop for real.

The real-tier tests run the demo end to end and assert on its summary: v2 serving at the end, no request
failed during hand-overs, v3 refused or rolled back and blocked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.state import AgentState, StateStore
from edge_runtime.errors import InputError, TemporaryError
from otaml.cli import build_parser
from otaml.demo import DemoOptions, demo_ok, run_demo
from otaml.demo_device import AgentSettings, DemoFailed, wait_for_outcome
from otaml.demo_mode import REAL_TOOLS, HostFacts, choose_mode, probe_host
from otaml.demo_summary import DemoSummary, VersionRow, format_table, readable
from tests.conftest import require

GOOD = HostFacts(system="Linux", root=True, missing=(), iptables_nat=True)

GOLDEN_REASON = (
    "canary: Container otaml-svc-0e3b651a31ed-45915 exited with code 3 before becoming ready; its last output: "
    '{"ts":"2026-11-26T23:24:12.949Z","level":"error","msg":"golden self-test failed: golden vector 0 scored 0.235, '
    'expected 0.735 (error 0.5 > tolerance 0.00037)","event":"golden_failed"}'
)


def summary_after_good_run() -> DemoSummary:
    return DemoSummary(
        mode="real",
        mode_reason="root on Linux with containerd",
        workdir="/tmp/otaml-demo-x",
        public_port=48531,
        versions=[
            VersionRow("1", "pca", "gates passed", "sha256:" + "1" * 64, "updated", "done", "", 16.1, 19.1, 91_600_000),
            VersionRow("2", "pca", "gates passed", "sha256:" + "2" * 64, "updated", "done", "", 4.3, 11.9, 10_463, 482),
            VersionRow(
                "3",
                "pca",
                "forced (parity failed)",
                "sha256:" + "3" * 64,
                "rolled_back",
                "canary",
                "exited with code 3",
                None,
                4.9,
                10_430,
                191,
            ),
        ],
        serving_version="2",
        blocked={"sha256:" + "3" * 64: GOLDEN_REASON},
        rollbacks=1,
        requests_total=1094,
        duration_s=69.2,
    )


# ── mode selection ────────────────────────────────────────────────────────────────────────────────────


def test_auto_picks_real_when_everything_is_there() -> None:
    choice = choose_mode("auto", GOOD)
    assert choice.mode == "real"


def test_auto_falls_back_to_embedded_and_says_what_is_missing() -> None:
    facts = HostFacts(system="Linux", root=True, missing=("containerd", "buildah"), iptables_nat=False)
    choice = choose_mode("auto", facts)
    assert choice.mode == "embedded"
    assert "containerd, buildah" in choice.reason
    assert "scripts/host-deps.sh" in choice.reason


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (HostFacts("Darwin", True, (), True), "not Linux"),
        (HostFacts("Linux", False, (), False), "not root"),
        (HostFacts("Linux", True, (), False), "nat table"),
    ],
)
def test_real_mode_refuses_with_the_reason(facts: HostFacts, why: str) -> None:
    assert choose_mode("auto", facts).mode == "embedded"
    with pytest.raises(InputError, match=why):
        choose_mode("real", facts)


def test_embedded_when_asked_and_unknown_modes_rejected() -> None:
    assert choose_mode("embedded", GOOD).mode == "embedded"
    with pytest.raises(InputError, match="'docker'"):
        choose_mode("docker", GOOD)


def test_cli_registers_demo() -> None:
    args = build_parser().parse_args(["demo", "--mode", "embedded", "--json", "--keep"])
    assert (args.mode, args.json, args.keep) == ("embedded", True, True)


# ── the agent configuration the demo writes ───────────────────────────────────────────────────────────


def test_agent_settings_toml_is_a_valid_agent_config(tmp_path: Path) -> None:
    settings = AgentSettings(
        registry_url="http://127.0.0.1:5000",
        repository="otaml/pump-anomaly",
        state_dir=tmp_path / "state dir",
        public_port=18080,
        private_ports=(18081, 18082),
        containerd_socket=str(tmp_path / "c.sock"),
        trust_url="http://127.0.0.1:8000/",
        trusted_root=tmp_path / 'root "quoted".json',
        model="pump-anomaly",
        probation_s=3,
    )
    config = AgentConfig.from_mapping(tomllib.loads(settings.toml()))
    assert config.registry_host == "127.0.0.1:5000"
    assert config.plain_http
    assert config.private_ports == (18081, 18082)
    assert config.state_dir == tmp_path / "state dir"
    assert config.trusted_root == tmp_path / 'root "quoted".json'
    assert (config.trust_metadata_url, config.model, config.insecure) == (
        "http://127.0.0.1:8000/",
        "pump-anomaly",
        False,
    )
    assert (config.probation_s, config.poll_interval_s, config.handover) == (3.0, 1.0, "iptables")
    # Extra sections, tables included (a fleet device's identity and groups).
    extra = {"device": {"id": "ctr-0", "groups": {"hw": "x86", "site": "lab 1"}}, "fleet": {"fleet": "bench"}}
    config = AgentConfig.from_mapping(tomllib.loads(dataclasses.replace(settings, extra=extra).toml()))
    assert (config.device_id, config.groups) == ("ctr-0", {"hw": "x86", "site": "lab 1"})
    assert config.fleet is not None
    assert (config.fleet.fleet, dict(config.fleet.groups)) == ("bench", {"hw": "x86", "site": "lab 1"})


class FakeAgent:
    def __init__(self, state_dir: Path, problem: str | None = None) -> None:
        self.state_dir = state_dir
        self._problem = problem

    def problem(self) -> str | None:
        return self._problem

    def stop(self) -> None:
        return None


def test_wait_for_outcome_returns_the_final_entry_for_the_digest(tmp_path: Path) -> None:
    state = AgentState()
    state.record({"at": 5.0, "digest": "sha256:a", "outcome": "updated"})  # before the channel moved
    state.record({"at": 11.0, "digest": "sha256:a", "outcome": "error", "error": "registry down"})  # retried
    state.record({"at": 12.0, "digest": "sha256:b", "outcome": "updated"})  # another digest
    state.record({"at": 13.0, "digest": "sha256:a", "outcome": "rolled_back", "step": "canary"})
    StateStore(tmp_path).save(state)
    entry = wait_for_outcome(FakeAgent(tmp_path), "sha256:a", after=10.0, timeout_s=5, what="v3")
    assert (entry["outcome"], entry["step"]) == ("rolled_back", "canary")


def test_wait_for_outcome_fails_fast_when_the_agent_dies(tmp_path: Path) -> None:
    with pytest.raises(DemoFailed, match="while waiting for v2: the agent exited with 1"):
        wait_for_outcome(FakeAgent(tmp_path, "the agent exited with 1"), "sha256:a", after=0, timeout_s=5, what="v2")


def test_wait_for_outcome_times_out_with_the_agents_last_error(tmp_path: Path) -> None:
    state = AgentState(phase="pulling", last_error="pull: connection refused")
    StateStore(tmp_path).save(state)
    with pytest.raises(TemporaryError, match="phase pulling, last error: pull: connection refused"):
        wait_for_outcome(FakeAgent(tmp_path), "sha256:a", after=0, timeout_s=0, what="v2", sleep=lambda _s: None)


# ── the summary ───────────────────────────────────────────────────────────────────────────────────────


def test_table_shows_each_version_and_the_end_state() -> None:
    text = format_table(summary_after_good_run())
    lines = text.splitlines()
    assert lines[0].split() == [
        "version",
        "promotion",
        "agent",
        "move→serving",
        "agent",
        "step",
        "pulled",
        "requests",
        "failed",
    ]
    v1 = next(line for line in lines if line.startswith("v1 "))
    assert "16.1 s" in v1
    assert "19.1 s" in v1
    assert "91.6 MB" in v1
    v3 = next(line for line in lines if line.startswith("v3 "))
    assert "forced (parity failed)" in v3
    assert "rolled back (canary)" in v3
    assert "10.4 kB" in v3
    assert v3.split()[-2:] == ["191", "0"]
    assert "serving now      v2 on port 48531" in text
    assert "canary: golden self-test failed: golden vector 0 scored 0.235" in text  # the service's words, not JSON
    assert "1094 requests, 0 failed (0 during hand-overs)" in text
    # Columns line up: "pulled" starts at the same offset in the header and in every row.
    column = lines[0].index("pulled")
    assert all(line[column:].split()[0][0].isdigit() for line in lines[2:5])


def test_json_summary_round_trips_and_counts_handover_failures() -> None:
    summary = summary_after_good_run()
    summary.versions[1].window_failed = 2
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["handover_failures"] == 2
    assert [v["version"] for v in data["versions"]] == ["1", "2", "3"]
    assert data["versions"][2]["move_to_serving_s"] is None


def test_readable_keeps_plain_reasons_and_truncates() -> None:
    assert readable("verify: unsigned") == "verify: unsigned"
    assert readable("x" * 300, limit=50) == "x" * 49 + "…"


def test_demo_ok_names_each_broken_promise() -> None:
    assert demo_ok(summary_after_good_run()) == []
    bad = summary_after_good_run()
    bad.serving_version = "3"
    bad.versions[1].window_failed = 4
    bad.blocked = {}
    problems = demo_ok(bad)
    assert any("serves v3" in p for p in problems)
    assert any("4 request(s) failed" in p for p in problems)
    assert any("not blocked" in p for p in problems)
    fleet = summary_after_good_run()
    fleet.fleet = {"good_rollout": "halted", "bad_rollout": "running", "versions": {"pi4-1": "3"}}
    problems = demo_ok(fleet)
    assert any("rollout of v2 ended 'halted'" in p for p in problems)
    assert any("broken v3 ended 'running', not halted" in p for p in problems)
    assert any("alarming v4 ended None, not halted" in p for p in problems)
    assert any("does not serve v2" in p for p in problems)
    fleet.fleet = {
        "good_rollout": "completed",
        "bad_rollout": "halted",
        "model_rollout": "halted",
        "model_reason": "halted in wave 1/2 (50%): 1 of 1 devices failed",  # a platform halt: not the story
        "versions": {"pi4-1": "2"},
    }
    assert [p for p in demo_ok(fleet) if "v4" in p] == [
        "the alarming v4 was halted, but not on model health: halted in wave 1/2 (50%): 1 of 1 devices failed"
    ]
    fleet.fleet = {"skipped": "mosquitto not installed"}
    assert demo_ok(fleet) == []
    assert "fleet            skipped: mosquitto not installed" in format_table(fleet)


def test_probe_host_reports_this_machine() -> None:
    facts = probe_host()
    assert facts.root == (os.geteuid() == 0)
    assert set(facts.missing) <= set(REAL_TOOLS)


# ── the whole loop ────────────────────────────────────────────────────────────────────────────────────


def assert_story(summary: DemoSummary) -> None:
    assert demo_ok(summary) == [], format_table(summary)
    assert summary.serving_version == "2"
    assert summary.handover_failures == 0
    v1, v2, v3 = (summary.row(v) for v in ("1", "2", "3"))
    assert v1 is not None
    assert v2 is not None
    assert v3 is not None
    assert (v1.agent_outcome, v2.agent_outcome) == ("updated", "updated")
    assert v2.move_to_serving_s is not None
    assert v2.window_requests > 0
    assert v3.promotion.startswith("forced")
    assert v3.agent_outcome in ("rolled_back", "refused")
    assert v3.digest in summary.blocked
    assert summary.requests_total > 0
    assert summary.failed_total == 0
    fleet = summary.fleet  # the fleet stage: mosquitto is there wherever the integration tier runs
    assert fleet["good_rollout"] == "completed"
    assert fleet["bad_rollout"] == "halted"
    assert set(fleet["versions"].values()) == {"2"}
    if fleet["bad_first_wave"]:  # a 50 % wave of 4 devices is empty 1 time in 16; then it halts in wave 2
        assert fleet["bad_halted_in_wave"] == 1
        assert set(fleet["bad_tried_by"]) <= set(fleet["bad_first_wave"])  # nobody outside the first wave
    assert "halted in wave" in fleet["bad_reason"]
    # The alarming v4: healthy containers, halted on what its model does in the field, named in the reason.
    assert fleet["model_rollout"] == "halted"
    assert "model: v4 flags" in fleet["model_reason"]
    if fleet["model_first_wave"]:
        assert fleet["model_halted_in_wave"] == 1
    assert fleet["load_requests"] > 0
    row = re.search(r"^4 +\* +\d+ +\d+ +([0-9.]+)", fleet["field_report"], re.M)  # version, group, devices, readings
    assert row is not None, fleet["field_report"]
    assert float(row.group(1)) > 0.9, fleet["field_report"]  # the candidate's anomaly ratio, as it was halted
    assert "versions: pump-anomaly v2: 4" in fleet["status"]


@pytest.mark.containerd
def test_demo_real(tmp_path: Path) -> None:
    facts = probe_host()
    require(facts.system == "Linux", "Linux", "the real demo runs containerd")
    require(facts.root, "root", "the real demo needs root (containerd, buildah, iptables)")
    for tool in REAL_TOOLS:
        require(tool not in facts.missing, tool, "scripts/host-deps.sh installs it")
    require(facts.iptables_nat, "the iptables nat table", "the agent's redirect needs CAP_NET_ADMIN")
    summary = run_demo(DemoOptions(workdir=tmp_path / "demo", mode="real"), say=print)
    assert summary.mode == "real"
    assert_story(summary)
    v1 = summary.row("1")
    assert v1 is not None
    assert v1.bytes_pulled > 10_000_000


@pytest.mark.integration
def test_demo_embedded(tmp_path: Path) -> None:
    agent_logger = logging.getLogger("otaml.agent")
    before = (agent_logger.level, agent_logger.propagate, list(agent_logger.handlers))
    summary = run_demo(DemoOptions(workdir=tmp_path / "demo", mode="embedded"), say=print)
    assert summary.mode == "embedded"
    assert_story(summary)
    # The agent logged to a file while the demo ran; the program around the demo gets its logger back.
    assert (agent_logger.level, agent_logger.propagate, list(agent_logger.handlers)) == before
