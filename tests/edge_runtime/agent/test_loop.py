from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from edge_runtime.agent.loop import next_delay, run
from edge_runtime.agent.metrics import render
from edge_runtime.agent.reconcile import UpdateReport
from edge_runtime.agent.source import ResolvedImage
from edge_runtime.agent.state import StateStore

from .fakes import World


def test_poll_delay_is_the_interval_with_jitter(tmp_path: Path) -> None:
    config = World(tmp_path).config
    rand = random.Random(1)
    delays = [next_delay(config, UpdateReport("unchanged"), 0, rand) for _ in range(200)]
    low, high = config.poll_interval_s * (1 - config.poll_jitter), config.poll_interval_s * (1 + config.poll_jitter)
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > config.poll_interval_s * config.poll_jitter


def test_backoff_grows_exponentially_with_jitter_and_is_capped(tmp_path: Path) -> None:
    config = World(tmp_path).config
    rand = random.Random(2)
    error = UpdateReport("error", temporary=True)
    for n in range(1, 12):
        ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** (n - 1))
        d = next_delay(config, error, n, rand)
        assert ceiling / 2 <= d <= ceiling
    assert next_delay(config, error, 50, rand) <= config.backoff_max_s


def test_run_recovers_first_then_reconciles_and_writes_metrics(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    reports: list[UpdateReport] = []

    class NoWait(threading.Event):
        delays: ClassVar[list[float]] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.delays.append(timeout or 0.0)
            return False

    stop = NoWait()
    last = run(agent, stop, max_steps=3, on_report=reports.append)
    assert len(stop.delays) == 2
    assert [r.outcome for r in reports] == ["recovered", "updated", "unchanged"]
    assert last is reports[-1]
    text = world.config.metrics_path.read_text()
    assert 'otaml_agent_current_version_info{model="pump",version="1"' in text
    assert "otaml_agent_updates_total 1" in text


def test_metrics_report_the_last_error(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    world.registry_down = True
    agent = world.agent()
    agent.reconcile()
    text = render(agent.state)
    assert "otaml_agent_failures_total 1" in text
    assert 'otaml_agent_last_error_info{error="poll: connecting to 127.0.0.1:5000: connection refused"} 1' in text


class _Count(threading.Event):
    """A stop event whose waits return at once and are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.delays.append(timeout or 0.0)
        return False


def test_an_exception_escaping_a_step_is_an_internal_error_then_back_off_then_the_next_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    real_resolve = world.source.resolve
    bad_steps = 3

    def resolve(digest: str, platform: str) -> ResolvedImage:
        nonlocal bad_steps
        if bad_steps > 0:
            bad_steps -= 1
            # What indexing a JSON array as an object raises: content no check foresaw, outside the error tree.
            raise TypeError("list indices must be integers or slices, not str")
        return real_resolve(digest, platform)

    world.source.resolve = resolve  # type: ignore[method-assign]
    reports: list[UpdateReport] = []
    stop = _Count()
    caplog.set_level(logging.ERROR, logger="otaml.agent")
    run(agent, stop, max_steps=5, on_report=reports.append, rand=random.Random(3))
    assert [r.outcome for r in reports] == ["recovered", "error", "error", "error", "updated"]
    for report in reports[1:4]:
        assert (report.reason, report.step, report.temporary) == ("internal", "reconcile", True)
        assert report.error == "TypeError: list indices must be integers or slices, not str"
    # Backed off exponentially (with jitter) after each failure, then back to the poll interval.
    config = world.config
    for n, delay in enumerate(stop.delays[1:4], start=1):
        ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert agent.state.consecutive_failures == 0
    assert agent.state.counters["failures"] == 3
    assert agent.state.current is not None
    assert agent.state.current.version == "1"
    # The traceback is logged once; the same failure again is one line with structured fields.
    raised = [r for r in caplog.records if r.getMessage().startswith("update step raised")]
    assert len(raised) == 3
    assert raised[0].exc_info is not None
    assert all(r.exc_info is None for r in raised[1:])
    assert all(getattr(r, "reason", None) == "internal" for r in raised)


def test_a_failing_recovery_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    failures = [RuntimeError("containerd said something new")]

    real_recover = agent.recover

    def recover() -> UpdateReport:
        if failures:
            raise failures.pop()
        return real_recover()

    agent.recover = recover  # type: ignore[method-assign]
    reports: list[UpdateReport] = []
    run(agent, _Count(), max_steps=3, on_report=reports.append)
    assert [r.outcome for r in reports] == ["error", "recovered", "updated"]
    assert (reports[0].step, reports[0].reason) == ("recover", "internal")
    saved = StateStore(world.config.state_dir).load()
    assert saved.history[0]["reason"] == "internal"


def test_update_steps_are_logged_as_json_fields_not_a_dict_in_the_message(tmp_path: Path) -> None:
    import io
    import json

    from edge_runtime.jsonlog import configure_logging

    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", stream)
        run(agent, _Count(), max_steps=2)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    updated = next(line for line in lines if line.get("outcome") == "updated")
    assert updated["msg"] == "update step updated"
    assert updated["version"] == "1"
    assert updated["digest"] == world.channel
    assert isinstance(updated["timings"], dict)
    assert isinstance(updated["actions"], list)
    assert all("{" not in line["msg"] for line in lines)


def test_a_failing_report_listener_does_not_stop_the_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    world.publish("1")
    agent = world.agent()
    seen: list[str] = []

    def listener(report: UpdateReport) -> None:
        seen.append(report.outcome)
        raise ConnectionError("broker gone")

    caplog.set_level(logging.ERROR, logger="otaml.agent")
    last = run(agent, _Count(), max_steps=3, on_report=listener)
    assert seen == ["recovered", "updated", "unchanged"]
    assert last is not None
    assert last.outcome == "unchanged"
    failures = [r for r in caplog.records if r.getMessage().startswith("report listener raised")]
    assert len(failures) == 3
    assert failures[0].exc_info is not None
    assert all(r.exc_info is None for r in failures[1:])
