"""The update state machine against fakes: happy path, the failure matrix, and crash recovery at every step.

Every failure scenario ends with the invariant of :func:`assert_serving`: the previous version serving from
exactly one healthy container that receives the public port, the bad digest blocked, and the state on disk
equal to the agent's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_runtime.agent.policy import CandidateImage
from edge_runtime.agent.reconcile import MAX_ATTEMPTS, Reconciler, UpdateReport
from edge_runtime.agent.runtime import RuntimeFailure
from edge_runtime.errors import TemporaryError
from registry.cosign import Rejection, SignatureRejected

from .fakes import AgentKilled, Behaviour, World, digest_of


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def assert_serving(world: World, agent: Reconciler, version: str) -> None:
    rt = world.runtime
    assert len(rt.containers) == 1, f"expected one container, have {sorted(rt.containers)}"
    (container,) = rt.containers.values()
    assert rt._running(container)
    assert container.spec.image.endswith(digest_of(version))
    assert world.switch.port == container.port
    assert world.prober.ready(container.port)
    s = agent.state
    assert s.current is not None
    assert s.current.version == version
    assert s.current.container == container.spec.name
    assert s.phase == "idle"
    assert s.candidate is None
    assert s.current.ref in rt.images
    assert world.store.load().to_dict() == s.to_dict(), "state on disk differs from the agent's"


def install(world: World, version: str = "1") -> Reconciler:
    world.publish(version)
    agent = world.agent()
    agent.recover()
    report = agent.reconcile()
    assert report.outcome == "updated", report
    return agent


def test_first_install_serves_the_channel_image(world: World) -> None:
    agent = install(world, "1")
    assert_serving(world, agent, "1")
    assert agent.state.previous is None
    assert agent.state.counters["updates"] == 1


def test_unchanged_channel_costs_one_head_and_nothing_else(world: World) -> None:
    agent = install(world, "1")
    heads, resolves, pulls = world.source.heads, world.source.resolves, world.runtime.calls.count("pull")
    report = agent.reconcile()
    assert report.outcome == "unchanged"
    assert (world.source.heads, world.source.resolves) == (heads + 1, resolves)
    assert world.runtime.calls.count("pull") == pulls


def test_update_hands_over_and_keeps_previous_image_for_rollback(world: World) -> None:
    agent = install(world, "1")
    old_port = world.switch.port
    world.publish("2")
    report = agent.reconcile()
    assert report.outcome == "updated"
    assert (report.version, report.previous_version) == ("2", "1")
    assert report.bytes_pulled == 1000
    assert {"pull_s", "ready_s", "golden_s", "probation_s", "total_s"} <= set(report.timings)
    assert_serving(world, agent, "2")
    assert world.switch.port != old_port
    assert agent.state.previous is not None
    assert agent.state.previous.version == "1"
    assert agent.state.previous.ref in world.runtime.images


def test_third_update_garbage_collects_the_oldest_image(world: World) -> None:
    agent = install(world, "1")
    for v in ("2", "3"):
        world.publish(v)
        assert agent.reconcile().outcome == "updated"
    assert_serving(world, agent, "3")
    assert world.runtime.images == {world.config.image_ref(digest_of(v)) for v in ("2", "3")}


FAILURES = {
    "canary crashes at start": (Behaviour(crash_at_start=True), "canary", "last output: golden self-test failed"),
    "canary never ready": (Behaviour(ready=False), "canary", "not ready"),
    "golden mismatch": (Behaviour(score_offset=0.5), "canary", "golden"),
    "dies inside probation": (Behaviour(die_after_s=10), "probation", "exited"),
    "OOM-killed inside probation": (Behaviour(oom_after_s=12), "probation", "OOM"),
    "turns unhealthy inside probation": (Behaviour(unready_after_s=5), "probation", "readiness"),
}


@pytest.mark.parametrize("case", FAILURES, ids=list(FAILURES))
def test_failed_update_rolls_back_and_blocks_the_digest(
    world: World, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    behaviour, step, words = FAILURES[case]
    agent = install(world, "1")
    bad = world.publish("2", behaviour)
    with caplog.at_level("WARNING", logger="otaml.agent"):
        report = agent.reconcile()
    assert report.outcome == "rolled_back"
    assert report.step == step
    assert words in report.error
    # The log line itself says why (a plain-text log shows none of the structured fields).
    (logged,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("update step rolled_back")]
    assert logged == f"update step rolled_back at {step} ({report.reason}: {report.error})"
    assert_serving(world, agent, "1")
    assert bad in agent.state.blocked
    assert world.config.image_ref(bad) not in world.runtime.images
    assert agent.state.counters["rollbacks"] == 1
    assert agent.state.last_error.startswith(step)
    # Blocked: the next poll neither pulls nor starts anything.
    pulls = world.runtime.calls.count("pull")
    assert agent.reconcile().outcome == "skipped"
    assert world.runtime.calls.count("pull") == pulls
    # The channel moves on to a good image: the block is lifted and the update goes through.
    world.publish("3")
    assert agent.reconcile().outcome == "updated"
    assert_serving(world, agent, "3")
    assert agent.state.blocked == {}


@pytest.mark.parametrize(
    "case", ["dies inside probation", "OOM-killed inside probation", "turns unhealthy inside probation"]
)
def test_warm_rollback_switches_back_to_the_still_running_previous_container(world: World, case: str) -> None:
    world.config = replace(world.config, warm_rollback="on")
    agent = install(world, "1")
    behaviour, step, _ = FAILURES[case]
    bad = world.publish("2", behaviour)
    starts = world.runtime.calls.count("start")
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("rolled_back", step)
    assert world.runtime.calls.count("start") == starts + 1, "the previous container must not be restarted"
    assert bad in agent.state.blocked
    assert_serving(world, agent, "1")


def test_warm_rollback_keeps_two_containers_only_during_probation(world: World) -> None:
    world.config = replace(world.config, warm_rollback="on")
    agent = install(world, "1")
    world.publish("2")
    seen: list[int] = []
    original = world.prober.ready

    def ready(port: int) -> bool:
        if agent.state.phase == "probation":
            seen.append(len(world.runtime.running()))
        return original(port)

    world.prober.ready = ready  # type: ignore[method-assign]
    assert agent.reconcile().outcome == "updated"
    assert set(seen) == {2}
    assert_serving(world, agent, "2")


@pytest.mark.parametrize(("available_mb", "warm"), [(4096, True), (255, False), (None, False)])
def test_auto_warm_rollback_keeps_the_previous_container_only_when_the_device_has_the_memory(
    world: World, available_mb: int | None, warm: bool
) -> None:
    assert world.config.warm_rollback == "auto"  # the default
    world.mem_available = None if available_mb is None else available_mb * 1024 * 1024
    agent = install(world, "1")
    bad = world.publish("2", Behaviour(die_after_s=10))
    starts = world.runtime.calls.count("start")
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("rolled_back", "probation")
    # Warm: only the canary was started; cold: the previous container had to be started again.
    assert world.runtime.calls.count("start") == starts + (1 if warm else 2)
    assert any(a.startswith("keep" if warm else "retire") and "MemAvailable" in a for a in report.actions)
    assert bad in agent.state.blocked
    assert_serving(world, agent, "1")


def test_a_death_in_probation_is_seen_when_it_happens_and_the_warm_switch_comes_first(world: World) -> None:
    world.config = replace(world.config, warm_rollback="on", health_interval_s=2)
    agent = install(world, "1")
    v1_port = world.switch.port
    world.publish("2", Behaviour(die_after_s=7.3))
    switched: list[tuple[float, str]] = []
    original = world.switch.point_to

    def point_to(port: int) -> None:
        if port == v1_port and agent.state.phase == "probation":
            switched.append((world.clock.now, world.runtime.calls[-1]))
        original(port)

    world.switch.point_to = point_to  # type: ignore[method-assign]
    report = agent.reconcile()
    assert report.outcome == "rolled_back"
    assert "exited with code 1 during probation" in report.error
    canary = next(c for c in world.runtime.calls_log if c[1].endswith(digest_of("2")))
    # Back on v1 at the instant of death (not at the next 2 s probe), before containerd was asked anything.
    assert switched == [(canary[2] + 7.3, "exit_watch fired")]
    assert_serving(world, agent, "1")


def test_a_death_before_the_exit_watch_is_set_fails_probation_at_once(world: World) -> None:
    world.config = replace(world.config, warm_rollback="on")
    agent = install(world, "1")
    bad = world.publish("2")
    original = world.runtime.exit_watch
    handed_over: list[float] = []

    def die_first(name: str):  # type: ignore[no-untyped-def]
        world.runtime.containers[name].killed = True  # killed right after the hand-over
        handed_over.append(world.clock.now)
        return original(name)

    world.runtime.exit_watch = die_first  # type: ignore[method-assign]
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("rolled_back", "probation"), report.to_dict()
    assert "exited" in report.error
    assert report.timings["probation_s"] == 0.0  # no health_interval_s wait before noticing
    assert handed_over
    assert bad in agent.state.blocked
    assert_serving(world, agent, "1")


def test_rollback_after_probation_needs_no_registry(world: World) -> None:
    agent = install(world, "1")
    world.publish("2", Behaviour(die_after_s=10))
    pulls = world.runtime.calls.count("pull")

    original = world.runtime.status

    def status_then_registry_down(name: str):  # type: ignore[no-untyped-def]
        if agent.state.phase == "probation":
            world.registry_down = True
        return original(name)

    world.runtime.status = status_then_registry_down  # type: ignore[method-assign]
    assert agent.reconcile().outcome == "rolled_back"
    assert world.runtime.calls.count("pull") == pulls + 1
    assert_serving(world, agent, "1")


@pytest.mark.parametrize("fault", ["registry_down", "registry_500"])
def test_registry_failure_during_poll_keeps_serving_and_reports(world: World, fault: str) -> None:
    agent = install(world, "1")
    world.publish("2")
    setattr(world, fault, True)
    for n in (1, 2):
        report = agent.reconcile()
        assert report.outcome == "error"
        assert report.temporary
        assert report.step == "poll"
        assert agent.state.consecutive_failures == n
    assert "poll" in agent.state.last_error
    assert_serving(world, agent, "1")
    assert agent.state.blocked == {}
    setattr(world, fault, False)
    assert agent.reconcile().outcome == "updated"
    assert agent.state.consecutive_failures == 0


def test_no_platform_for_the_device_is_refused_and_blocked(world: World) -> None:
    agent = install(world, "1")
    bad = world.publish("2")
    world.platforms[bad] = ("linux/amd64",)
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("refused", "resolve")
    assert bad in agent.state.blocked
    assert "pull" not in world.runtime.calls[-3:]
    assert_serving(world, agent, "1")


def test_channel_moved_back_to_an_older_version_is_refused(world: World) -> None:
    agent = install(world, "1")
    world.publish("2")
    assert agent.reconcile().outcome == "updated"
    world.channel = digest_of("1")
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("refused", "verify")
    assert "downgrade" in report.error
    assert digest_of("1") in agent.state.blocked
    assert_serving(world, agent, "2")


def test_a_verification_policy_refusal_blocks_without_pulling(world: World) -> None:
    class Unsigned:
        def check(self, image: CandidateImage) -> None:
            if image.version == "2":
                raise SignatureRejected(Rejection.UNSIGNED, f"{image.digest} is not signed by the fleet key")

    world.publish("1")
    agent = world.agent(Unsigned())
    agent.reconcile()
    pulls = world.runtime.calls.count("pull")
    world.publish("2")
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("refused", "verify")
    assert world.runtime.calls.count("pull") == pulls
    # The reason code leads the error, in the report and in the state that `otaml agent status` shows.
    assert report.error.startswith("unsigned: ")
    assert agent.state.blocked[digest_of("2")].startswith("verify: unsigned: ")
    assert_serving(world, agent, "1")


@pytest.mark.parametrize(
    ("method", "error", "outcome", "blocked"),
    [
        ("pull", TemporaryError("registry went away mid-pull"), "error", False),
        ("pull", RuntimeFailure("failed commit: unexpected sha256 digest (corrupt blob)"), "error", False),
        ("start", RuntimeFailure("runc create failed"), "rolled_back", True),
        ("start", TemporaryError("containerd is not answering: transport is closing"), "error", False),
        ("read_blob", RuntimeFailure("content store: blob missing"), "rolled_back", True),
    ],
)
def test_containerd_errors_mid_update_change_nothing(
    world: World, method: str, error: Exception, outcome: str, blocked: bool
) -> None:
    agent = install(world, "1")
    bad = world.publish("2")
    world.runtime.fail[method] = error
    report = agent.reconcile()
    assert report.outcome == outcome
    assert (bad in agent.state.blocked) is blocked
    assert_serving(world, agent, "1")
    if not blocked:
        assert report.temporary
        assert agent.reconcile().outcome == "updated"


def test_repeated_pull_failures_block_after_max_attempts(world: World) -> None:
    agent = install(world, "1")
    bad = world.publish("2")
    for _ in range(MAX_ATTEMPTS):
        world.runtime.fail["pull"] = RuntimeFailure("corrupt blob")
        assert agent.reconcile().outcome == "error"
    assert bad in agent.state.blocked
    assert agent.reconcile().outcome == "skipped"


def test_handover_failure_keeps_the_old_container_serving(world: World) -> None:
    from edge_runtime.agent.handover import HandoverError

    agent = install(world, "1")
    world.publish("2")
    original = world.switch.point_to

    def broken(port: int) -> None:
        raise HandoverError("iptables-restore: permission denied")

    world.switch.point_to = broken  # type: ignore[method-assign]
    report = agent.reconcile()
    assert (report.outcome, report.step) == ("error", "handover")
    world.switch.point_to = original  # type: ignore[method-assign]
    assert_serving(world, agent, "1")


KILL_POINTS = {
    "after saving phase pulling": ("store", "pulling"),
    "after saving phase canary": ("store", "canary"),
    "after saving phase handover": ("store", "handover"),
    "after saving phase probation": ("store", "probation"),
    "during the pull": ("runtime", "pull"),
    "while starting the canary": ("runtime", "start"),
    "while stopping the old container": ("runtime", "stop"),
    "right after the redirect moved": ("switch", ""),
}


@pytest.mark.parametrize("point", KILL_POINTS, ids=list(KILL_POINTS))
def test_agent_killed_at_each_step_recovers_to_one_healthy_container(world: World, point: str) -> None:
    agent = install(world, "1")
    world.publish("2")
    where, what = KILL_POINTS[point]
    if where == "store":
        world.store.kill_after_phase = what
    elif where == "runtime":
        # stop is also called (idempotently) before starting the canary; kill on the one that matters.
        world.runtime.kill_on[what] = 2 if what == "stop" else 1
    else:
        original = world.switch.point_to

        def moved_then_killed(port: int) -> None:
            original(port)
            raise AgentKilled("after point_to")

        world.switch.point_to = moved_then_killed  # type: ignore[method-assign]
    with pytest.raises(AgentKilled):
        agent.reconcile()
    if where == "switch":
        world.switch.point_to = original  # type: ignore[method-assign]

    restarted = world.agent()  # a fresh process: state comes from disk only
    report = restarted.recover()
    assert report.outcome == "recovered", report
    assert_serving(world, restarted, "1")
    assert digest_of("2") not in restarted.state.blocked
    # The interrupted update is retried and goes through.
    assert restarted.reconcile().outcome == "updated"
    assert_serving(world, restarted, "2")


def test_recovery_after_reboot_restarts_the_last_known_good_image(world: World) -> None:
    agent = install(world, "1")
    world.publish("2")
    agent.reconcile()
    world.runtime.reboot()
    world.switch.port = None  # nat rules are not persistent
    restarted = world.agent()
    assert restarted.recover().outcome == "recovered"
    assert_serving(world, restarted, "2")


def test_recovery_falls_back_to_previous_when_current_image_is_gone(world: World) -> None:
    agent = install(world, "1")
    world.publish("2")
    agent.reconcile()
    world.runtime.reboot()
    world.runtime.images.discard(world.config.image_ref(digest_of("2")))
    restarted = world.agent()
    report = restarted.recover()
    assert report.outcome == "recovered", report
    assert_serving(world, restarted, "1")


def test_recovery_removes_leftover_containers(world: World) -> None:
    from edge_runtime.agent.runtime import AGENT_LABEL, ContainerSpec

    agent = install(world, "1")
    world.runtime.images.add("stray@" + digest_of("9"))
    world.runtime.start(
        ContainerSpec(
            name="otaml-svc-leftover",
            image="stray@" + digest_of("9"),
            env={"OTAML_PORT": "19999"},
            labels={AGENT_LABEL: "1"},
        )
    )
    restarted = world.agent()
    restarted.recover()
    assert_serving(world, restarted, "1")
    assert "stray@" + digest_of("9") not in world.runtime.images
    assert agent.state.current is not None


def test_supervisor_restarts_a_serving_container_that_died(world: World) -> None:
    agent = install(world, "1")
    (container,) = world.runtime.containers.values()
    container.killed = True
    report: UpdateReport = agent.reconcile()
    assert any(a.startswith("restart") for a in report.actions)
    assert_serving(world, agent, "1")
    assert agent.state.counters["restarts"] == 1


def test_rollback_reaches_the_previous_version_even_after_a_fresh_start(world: World) -> None:
    """Blocks and history survive a restart: the state file is the agent's memory."""
    agent = install(world, "1")
    bad = world.publish("2", Behaviour(score_offset=1.0))
    agent.reconcile()
    restarted = world.agent()
    restarted.recover()
    assert bad in restarted.state.blocked
    assert restarted.reconcile().outcome == "skipped"
    assert [h["outcome"] for h in restarted.state.history][-3:] == ["updated", "rolled_back", "recovered"]


def test_supervisor_restores_a_redirect_that_vanished(world: World) -> None:
    agent = install(world, "1")
    world.switch.port = None  # e.g. `iptables -t nat -F` by a firewall reload
    report = agent.reconcile()
    assert any(a.startswith("switch") for a in report.actions)
    assert_serving(world, agent, "1")
