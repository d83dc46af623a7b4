"""The agent on TUF: it runs the approved image its metadata names, nothing else, and keeps serving on any failure.

A real fleet repository (registry.tuf) and the real TrustClient (python-tuf ngclient) over the fake fetcher seam
(``tests/edge_runtime/trust/fakes.py``; the HTTP transfer itself is exercised by ``trust/test_http.py``); the
registry, containerd and the kernel are the agent's usual fakes.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_runtime.agent.config import AgentConfig, ConfigError
from edge_runtime.agent.reconcile import Reconciler
from edge_runtime.agent.trust_policy import TrustPolicy
from edge_runtime.fleet.rollout import RolloutRecord, bucket
from edge_runtime.trust.approval import Approval
from tests.edge_runtime.trust.fakes import Device, provision
from tests.registry.tuf.fleet import BASE_DIGEST, Clock, Fleet, make_fleet

from .fakes import FakeRuntime, World, digest_of

MODEL = "pump"
CHANNEL = "production"


def approval(version: str, *, staged: bool = False) -> Approval:
    return Approval(CHANNEL, MODEL, int(version), digest_of(version), 1000, BASE_DIGEST, staged=staged)


class Setup:
    def __init__(self, tmp: Path, clock: Clock | None = None) -> None:
        self.world = World(tmp)
        self.fleet: Fleet = make_fleet(tmp / "repo", clock=clock)
        self.device: Device = provision(tmp, self.fleet)
        self.record: RolloutRecord | None = None
        self.groups: dict[str, str] = {}

    def approve(self, version: str, *, staged: bool = False) -> None:
        self.world.publish(version, move=False)
        status = self.fleet.approve(approval(version, staged=staged))
        assert status.state == "approved"

    def agent(self, device_id: str = "dev-1", prefetch: bool = False) -> Reconciler:
        policy = TrustPolicy(
            self.device.restarted().client,
            CHANNEL,
            MODEL,
            device_id,
            self.groups,
            rollout=lambda channel, model: self.record,
        )
        w = self.world
        return Reconciler(
            dataclasses.replace(w.config, prefetch=prefetch),
            w.store,
            w.source,
            w.runtime,
            w.switch,
            w.prober,
            policy,
            clock=w.clock.time,
            monotonic=w.clock.time,
            sleep=w.clock.sleep,
            available_memory=lambda: w.mem_available,
            trust=policy,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def serving(setup: Setup) -> str | None:
    containers = list(setup.world.runtime.containers.values())
    running = [c for c in containers if setup.world.runtime._running(c)]
    assert len(running) <= 1
    return running[0].spec.image.rsplit("@", 1)[1] if running else None


def test_the_device_runs_the_highest_approved_version_not_what_the_channel_tag_says(setup: Setup) -> None:
    setup.approve("1")
    # Someone with push rights moves the channel tag to an image nobody approved.
    setup.world.publish("9")
    agent = setup.agent()
    agent.recover()
    report = agent.reconcile()
    assert report.outcome == "updated", report
    assert serving(setup) == digest_of("1")
    assert agent.state.trust_status == "ok"
    assert "highest approved" in agent.state.desired
    assert setup.world.source.heads == 0, "a device on TUF never reads the channel tag"
    assert not any(digest_of("9") in r for r in setup.world.runtime.images), "the unapproved image was pulled"
    setup.approve("2")
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    assert agent.state.trust_floor >= 3  # targets v1 (empty), v2, v3


def test_nothing_approved_is_an_error_with_its_reason_and_nothing_runs(setup: Setup) -> None:
    setup.world.publish("1")
    agent = setup.agent()
    agent.recover()
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("error", "not-approved")
    assert serving(setup) is None


def test_stale_metadata_keeps_the_device_serving_and_reports_why(tmp_path: Path) -> None:
    # The repository's clock is two days behind: the timestamp it signs (valid one day) is already expired.
    setup = Setup(tmp_path, clock=Clock(datetime.now(UTC) - timedelta(days=2)))
    setup.world.publish("1", move=False)
    setup.fleet.approve(approval("1"))
    agent = setup.agent()
    agent.recover()
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("error", "stale-metadata")
    assert agent.state.trust_status == "stale-metadata"


def test_stale_metadata_after_install_never_stops_the_service(tmp_path: Path) -> None:
    clock = Clock()
    setup = Setup(tmp_path, clock=clock)
    setup.approve("1")
    agent = setup.agent()
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    # The next timestamp the device sees is already expired (as a frozen repository's is, once its day is over).
    clock.advance(days=-3)
    setup.fleet.repo.refresh()
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("error", "stale-metadata")
    assert serving(setup) == digest_of("1")


def test_a_withdrawn_approval_rolls_the_device_back_by_a_signed_act(setup: Setup) -> None:
    setup.approve("1")
    setup.approve("2")
    agent = setup.agent()
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    setup.fleet.repo.withdraw(CHANNEL, MODEL, above=1, signer=setup.fleet.targets_keys[0])
    assert setup.fleet.repo.approve_pending(setup.fleet.targets_keys[1]).state == "approved"
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1")


def test_one_key_below_the_threshold_approves_nothing(setup: Setup) -> None:
    setup.approve("1")
    setup.world.publish("2", move=False)
    pending = setup.fleet.repo.propose(approval("2"), setup.fleet.targets_keys[0])
    assert pending.state == "pending"
    agent = setup.agent()
    agent.recover()
    agent.reconcile()
    agent.reconcile()
    assert serving(setup) == digest_of("1")


def test_a_failed_approved_version_stays_blocked(setup: Setup) -> None:
    from .fakes import Behaviour

    setup.approve("1")
    agent = setup.agent()
    agent.recover()
    agent.reconcile()
    setup.world.publish("2", Behaviour(score_offset=0.5), move=False)
    setup.fleet.approve(approval("2"))
    report = agent.reconcile()
    assert report.outcome == "rolled_back"
    pulls = setup.world.runtime.calls.count("pull")
    for _ in range(3):
        report = agent.reconcile()
        assert (report.outcome, report.reason) == ("skipped", "blocked")
    assert setup.world.runtime.calls.count("pull") == pulls
    assert serving(setup) == digest_of("1")


def test_only_a_signed_retry_lifts_a_block(setup: Setup) -> None:
    from .fakes import Behaviour

    setup.approve("1")
    agent = setup.agent()
    agent.recover()
    agent.reconcile()
    setup.world.publish("2", Behaviour(score_offset=0.5), move=False)
    setup.fleet.approve(approval("2"))
    assert agent.reconcile().outcome == "rolled_back"
    # The image is fixed at the registry's side (say the runtime it needed was deployed); MLOps sign a retry.
    setup.world.behaviours.pop(digest_of("2"))
    assert setup.fleet.repo.retry(CHANNEL, MODEL, 2, signer=setup.fleet.targets_keys[0]).state == "pending"
    assert agent.reconcile().outcome == "skipped", "one approver is not enough to lift a block"
    status = setup.fleet.repo.approve_pending(setup.fleet.targets_keys[1])
    assert (status.state, status.approval.retry) == ("approved", 1)
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    assert not agent.state.blocked


def test_old_metadata_is_refused_even_after_the_metadata_directory_is_wiped(setup: Setup, tmp_path: Path) -> None:
    setup.approve("1")
    old_copy = tmp_path / "old-repo"
    shutil.copytree(setup.fleet.path, old_copy)
    setup.approve("2")
    agent = setup.agent()
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    # An attacker wipes the device's TUF directory and serves the older (still unexpired, validly signed) copy.
    shutil.rmtree(setup.device.settings.metadata_dir)
    setup.device.fetcher.root = old_copy
    report = setup.agent().reconcile()
    assert (report.outcome, report.reason) == ("error", "rollback")
    assert serving(setup) == digest_of("2")


def test_a_staged_approval_moves_no_device_until_a_rollout_puts_it_in_a_wave(setup: Setup) -> None:
    setup.approve("1")
    agent = setup.agent("dev-1")
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    setup.approve("2", staged=True)
    setup.approve("3", staged=True)
    report = agent.reconcile()
    assert report.outcome != "updated", report
    assert serving(setup) == digest_of("1"), "a staged approval alone moves nobody"
    assert agent.state.trust_status == "ok"
    assert "v1: the highest approved (v2, v3 staged: waiting for a rollout)" in agent.state.desired
    setup.record = _record((100,), 0)  # the rollout of v2 opens its only wave
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")


def test_a_model_whose_every_approval_is_staged_runs_nothing_and_says_why(setup: Setup) -> None:
    setup.approve("1", staged=True)
    agent = setup.agent()
    agent.recover()
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("error", "not-approved")
    assert "production/pump v1 approved but staged, and no rollout has started" in report.error
    assert serving(setup) is None


def _record(percent_waves: tuple[int, ...], wave: int, state: str = "running") -> RolloutRecord:
    return RolloutRecord(
        rollout_id="r1",
        model=MODEL,
        channel=CHANNEL,
        version=2,
        stable_version=1,
        waves=percent_waves,
        wave=wave,
        state=state,
    )


def test_a_rollout_record_decides_on_the_device_who_runs_the_candidate(setup: Setup) -> None:
    setup.approve("1")
    setup.approve("2")
    inside = next(f"dev-{i}" for i in range(1000) if bucket(f"dev-{i}", "r1") < 10)
    outside = next(f"dev-{i}" for i in range(1000) if bucket(f"dev-{i}", "r1") >= 50)
    setup.record = _record((10, 50, 100), 0)
    agent = setup.agent(outside)
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1"), "a device outside the wave stays on the stable version"
    assert agent.state.rollout_id == "r1"
    # The same machine under another id inside the first wave takes the candidate.
    agent = setup.agent(inside)
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    # The rollout halts: the signed record sends the wave back to the stable version.
    setup.record = _record((10, 50, 100), 0, state="halted")
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1")


def outside_the_first_wave(setup: Setup, prefetch: bool) -> tuple[Reconciler, FakeRuntime, str]:
    """v1 and v2 approved, a rollout of v2 in its first wave, and an agent outside it: (agent, runtime, v2's ref)."""
    setup.approve("1")
    setup.approve("2")
    outside = next(f"dev-{i}" for i in range(1000) if bucket(f"dev-{i}", "r1") >= 50)
    setup.record = _record((10, 50, 100), 0)
    agent = setup.agent(outside, prefetch=prefetch)
    agent.recover()
    return agent, setup.world.runtime, setup.world.config.image_ref(digest_of("2"))


def test_prefetch_pulls_the_candidate_before_the_wave_and_never_runs_it_early(setup: Setup) -> None:
    agent, runtime, v2 = outside_the_first_wave(setup, prefetch=True)
    assert agent.reconcile().outcome == "updated"  # installs the stable v1
    report = agent.reconcile()
    assert report.outcome == "unchanged"
    assert serving(setup) == digest_of("1"), "fetched ahead, never started before its wave"
    assert runtime.has_image(v2)
    assert agent.state.prefetched == v2
    assert any("pre-fetched v2" in a for a in report.actions)
    pulls = runtime.calls.count("pull")
    agent.reconcile()
    assert runtime.calls.count("pull") == pulls, "fetched once"
    # The wave reaches the device: the update finds the image already there.
    setup.record = _record((10, 50, 100), 2)
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    agent.reconcile()
    assert agent.state.prefetched == ""


def test_without_prefetch_or_after_a_halt_nothing_is_kept_ahead(setup: Setup) -> None:
    agent, runtime, v2 = outside_the_first_wave(setup, prefetch=False)  # off: the default
    outside = agent.trust.device_id if agent.trust is not None else ""
    agent.reconcile()
    agent.reconcile()
    assert not runtime.has_image(v2)
    # On, but the registry is down: the device keeps serving and tries again at the next poll.
    agent = setup.agent(outside, prefetch=True)
    setup.world.registry_down = True
    report = agent.reconcile()
    assert serving(setup) == digest_of("1")
    assert agent.state.prefetched == ""
    assert report.outcome == "unchanged"
    assert any("failed (1 of 3 tries)" in a for a in report.actions), report.actions
    setup.world.registry_down = False
    agent.reconcile()
    assert agent.state.prefetched == v2
    # The agent restarts: what it fetched ahead is remembered and survives the start-up clean-up.
    agent = setup.agent(outside, prefetch=True)
    agent.recover()
    assert agent.state.prefetched == v2
    assert runtime.has_image(v2)
    # The rollout halts: nothing is ahead any more, and the image is removed.
    setup.record = _record((10, 50, 100), 0, state="halted")
    agent.reconcile()
    assert agent.state.prefetched == ""
    assert not runtime.has_image(v2)


def test_a_prefetched_candidate_that_fails_its_canary_is_blocked_and_removed(setup: Setup) -> None:
    from .fakes import Behaviour

    agent, runtime, v2 = outside_the_first_wave(setup, prefetch=True)
    setup.world.publish("2", Behaviour(score_offset=0.5), move=False)  # v2's golden vectors will not match
    agent.reconcile()
    agent.reconcile()
    assert agent.state.prefetched == v2
    setup.record = _record((10, 50, 100), 2)  # the wave reaches the device
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("rolled_back", "golden-mismatch")
    assert agent.state.prefetched == ""
    assert not runtime.has_image(v2)
    agent.reconcile()
    assert not runtime.has_image(v2), "a blocked digest is not fetched ahead again"


def test_prefetch_gives_up_after_three_failures_and_skips_other_groups_rollouts(setup: Setup) -> None:
    agent, runtime, v2 = outside_the_first_wave(setup, prefetch=True)
    assert agent.reconcile().outcome == "updated"  # v1, the stable version; pre-fetches come on the next polls
    setup.world.registry_down = True
    for _ in range(6):
        agent.reconcile()
    assert agent.state.counters.get("prefetch_failures") == 3, "no download loop"
    setup.world.registry_down = False
    agent.reconcile()
    assert not runtime.has_image(v2), "given up until the agent restarts; the wave's update pulls it"
    # A rollout for another group: this device never runs its candidate, so it never fetches it.
    setup.record = dataclasses.replace(_record((10, 50, 100), 0), group={"site": "berlin"})
    agent = setup.agent(agent.trust.device_id if agent.trust else "", prefetch=True)
    agent.recover()
    agent.reconcile()
    assert not runtime.has_image(v2)


def test_prefetch_config_is_a_boolean(tmp_path: Path) -> None:
    from edge_runtime.agent.config import AgentConfig, ConfigError

    base: dict = {"registry": {"url": "http://x:1", "repository": "p"}, "trust": {"insecure": True}}
    assert AgentConfig.from_mapping(base).prefetch is False
    assert AgentConfig.from_mapping({**base, "update": {"prefetch": True}}).prefetch is True
    with pytest.raises(ConfigError, match=r"'update\.prefetch' has value 'yes'. Use true or false"):
        AgentConfig.from_mapping({**base, "update": {"prefetch": "yes"}})


def test_a_rollout_to_an_unapproved_version_is_ignored(setup: Setup) -> None:
    setup.approve("1")
    setup.record = _record((100,), 0)  # candidate v2 is not approved
    agent = setup.agent()
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1"), "the highest approved version below what the record names"


def test_a_rollback_withdraws_a_completed_rollouts_version(setup: Setup) -> None:
    setup.approve("1")
    setup.approve("2")
    setup.record = _record((10, 100), 1, state="completed")
    agent = setup.agent()
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("2")
    setup.fleet.repo.withdraw(CHANNEL, MODEL, above=1, signer=setup.fleet.targets_keys[0])
    setup.fleet.repo.approve_pending(setup.fleet.targets_keys[1])
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1")
    assert "withdrawn" in agent.state.desired


# --- configuration: secure by default -------------------------------------------------------------------


BASE = {"registry": {"url": "http://127.0.0.1:5000", "repository": "pump"}}


def test_the_agent_refuses_to_start_without_a_trust_root() -> None:
    with pytest.raises(ConfigError, match=r"trust\.metadata_url") as caught:
        AgentConfig.from_mapping(BASE)
    assert "insecure = true" in str(caught.value)


def test_insecure_is_an_explicit_setting() -> None:
    config = AgentConfig.from_mapping({**BASE, "trust": {"insecure": True}})
    assert config.insecure
    assert not config.trust_metadata_url


def test_the_old_cosign_key_section_says_what_replaces_it() -> None:
    with pytest.raises(ConfigError, match=r"\[trust\]"):
        AgentConfig.from_mapping({**BASE, "verification": {"public_key": "/etc/otaml/key.pub"}, "trust": {}})


def test_a_trust_section_needs_the_model() -> None:
    with pytest.raises(ConfigError, match=r"trust\.model"):
        AgentConfig.from_mapping({**BASE, "trust": {"metadata_url": "https://mlops/otaml/"}})
    config = AgentConfig.from_mapping(
        {
            **BASE,
            "trust": {"metadata_url": "https://mlops/otaml/", "model": "pump", "trusted_root": "/etc/otaml/r.json"},
            "device": {"id": "pump-7", "groups": {"hw": "pi4"}},
        }
    )
    assert (config.model, config.device_id, dict(config.groups)) == ("pump", "pump-7", {"hw": "pi4"})
    assert config.tuf_dir == config.state_dir / "tuf"


def test_the_agent_follows_a_record_signed_by_the_rollouts_role_through_the_real_client(tmp_path: Path) -> None:
    """The whole chain: `otaml trust init`'s site, the controller's key publishes a record, the device's
    TrustClient reads it through the delegation walk and the agent picks its version from it."""
    from edge_runtime.trust.client import TrustClient, TrustSettings
    from registry.tuf import keys
    from registry.tuf.site import TrustSite, init
    from tests.edge_runtime.trust.fakes import BASE_URL, DirectoryFetcher

    made = init(tmp_path / "site", tmp_path / "offline", approvers=3, threshold=2)
    approvers = [keys.load_signer(p) for p in made.approver_keys]
    world = World(tmp_path)
    with TrustSite(made.site.path).locked() as repo:
        for version in ("1", "2"):
            world.publish(version, move=False)
            repo.propose(approval(version), approvers[0])
            repo.approve_pending(approvers[1])
    client = TrustClient(
        TrustSettings(metadata_url=BASE_URL, trusted_root=made.trusted_root, metadata_dir=tmp_path / "tuf"),
        fetcher=DirectoryFetcher(made.site.metadata_dir),
    )
    outside = next(f"dev-{i}" for i in range(1000) if bucket(f"dev-{i}", "r1") >= 10)
    policy = TrustPolicy(client, CHANNEL, MODEL, outside, rollout=client.rollout)
    agent = Reconciler(
        world.config,
        world.store,
        world.source,
        world.runtime,
        world.switch,
        world.prober,
        policy,
        clock=world.clock.time,
        monotonic=world.clock.time,
        sleep=world.clock.sleep,
        trust=policy,
    )
    agent.recover()
    assert agent.reconcile().outcome == "updated"
    assert agent.state.current is not None
    assert agent.state.current.version == "2", "no rollout record: the highest approved version"
    site = TrustSite(made.site.path)
    with site.locked() as repo:
        repo.publish_rollout(_record((10, 100), 0), site.rollouts_signer(), expected=None)
    assert agent.reconcile().outcome == "updated"
    assert agent.state.current.version == "1", "outside the first wave: the stable version"
    assert agent.state.rollout_id == "r1"


def test_a_first_rollout_without_a_stable_version_leaves_devices_outside_the_wave_alone(setup: Setup) -> None:
    setup.approve("1")
    setup.record = RolloutRecord(
        rollout_id="r1", model=MODEL, channel=CHANNEL, version=1, stable_version=0, waves=(10, 100), wave=0
    )
    outside = next(f"dev-{i}" for i in range(1000) if bucket(f"dev-{i}", "r1") >= 10)
    agent = setup.agent(outside)
    agent.recover()
    report = agent.reconcile()
    assert (report.outcome, report.reason) == ("error", "not-approved")
    assert serving(setup) is None
    setup.record = RolloutRecord(
        rollout_id="r1", model=MODEL, channel=CHANNEL, version=1, stable_version=0, waves=(10, 100), wave=1
    )
    assert agent.reconcile().outcome == "updated"
    assert serving(setup) == digest_of("1")
