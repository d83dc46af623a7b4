from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import ClassVar

from edge_runtime.agent.loop import next_delay, run
from edge_runtime.agent.metrics import render
from edge_runtime.agent.reconcile import UpdateReport

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
