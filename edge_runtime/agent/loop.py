"""The agent's poll loop: start-up recovery, then one update step per interval.

Delays: the poll interval with ± ``poll_jitter`` (so a fleet does not poll in lock-step); after a temporary
failure (registry down, timeouts, 5xx, containerd hiccups) exponential back-off with "equal jitter" — a
random delay in [d/2, d] where d = min(backoff_max, backoff_base · 2^(failures-1)). Serving never depends
on the loop: the containers and the kernel redirect keep working while it waits.

The loop never dies from a bad step: an exception that escapes a step (a bug, or content no check foresaw)
becomes an ``error`` report with reason ``internal`` and backs off like any other failure. Its traceback is
logged once; the same failure again is one line, so a hostile registry cannot flood the log.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.metrics import render, write_textfile
from edge_runtime.agent.reconcile import Reconciler, UpdateReport
from edge_runtime.errors import reason_of

log = logging.getLogger("otaml.agent")


def next_delay(config: AgentConfig, report: UpdateReport, failures: int, rand: random.Random) -> float:
    """Seconds to wait after ``report``; ``failures`` counts consecutive failed steps."""
    if report.outcome == "error" and report.temporary and failures > 0:
        ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** min(failures - 1, 30))
        return rand.uniform(ceiling / 2, ceiling)
    jitter = config.poll_jitter * config.poll_interval_s
    return max(0.0, config.poll_interval_s + rand.uniform(-jitter, jitter))


def run(
    reconciler: Reconciler,
    stop: threading.Event,
    *,
    max_steps: int | None = None,
    on_report: Callable[[UpdateReport], None] | None = None,
    rand: random.Random | None = None,
) -> UpdateReport | None:
    """Recover, then reconcile until ``stop`` is set (or ``max_steps`` steps ran); returns the last report."""
    config = reconciler.config
    rand = rand or random.Random()
    report: UpdateReport | None = None
    steps = 0
    recovered = False
    seen: set[str] = set()
    while not stop.is_set() and (max_steps is None or steps < max_steps):
        step = "reconcile" if recovered else "recover"
        try:
            report = reconciler.reconcile() if recovered else reconciler.recover()
        except Exception as exc:
            report = _escaped(reconciler, step, exc, seen)
        recovered = recovered or report.outcome == "recovered"
        steps += 1
        try:
            write_textfile(config.metrics_path, render(reconciler.state, report))
        except OSError as exc:
            log.warning("could not write metrics to %s: %s", config.metrics_path, exc)
        if on_report is not None:
            try:
                on_report(report)
            except Exception as exc:  # the fleet link (or any listener) failing must not stop updates
                _log_once(seen, "report listener", exc, {"step": step, "reason": reason_of(exc)})
        if max_steps is not None and steps >= max_steps:
            break
        stop.wait(next_delay(config, report, reconciler.state.consecutive_failures, rand))
    return report


MAX_SEEN = 64  # distinct failures whose traceback was logged; then the set starts over (bounded memory)


def _log_once(seen: set[str], what: str, exc: Exception, fields: dict[str, str]) -> None:
    """Log ``exc`` with its traceback the first time it is seen, as one structured line after that."""
    key = f"{what}:{type(exc).__name__}: {exc}"[:1000]
    if key in seen:
        log.error("%s raised again", what, extra=fields)
        return
    if len(seen) >= MAX_SEEN:
        seen.clear()
    seen.add(key)
    log.error("%s raised; the agent carries on and retries with back-off", what, exc_info=exc, extra=fields)


def _escaped(reconciler: Reconciler, step: str, exc: Exception, seen: set[str]) -> UpdateReport:
    """The report of a step that raised: an error with reason ``internal`` (or the error's own), backed off."""
    error = f"{type(exc).__name__}: {exc}"[:1000]  # bounded: the message may quote hostile content
    _log_once(seen, "update step", exc, {"step": step, "reason": reason_of(exc), "error": error})
    report = UpdateReport("error", step=step, error=error, reason=reason_of(exc), temporary=True)
    state = reconciler.state
    state.record({"at": reconciler.clock(), **report.to_dict()})
    state.last_error = f"{step}: {error}"
    state.last_error_at = reconciler.clock()
    state.consecutive_failures += 1
    state.count("failures")
    try:
        reconciler.save()
    except Exception as save_exc:
        log.error("could not save the agent state after a failed step", extra={"error": str(save_exc)})
    return report
