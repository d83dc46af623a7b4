"""One update step, and start-up recovery; each returns an :class:`UpdateReport`.

The step (``reconcile``)::

    supervise ─► poll (HEAD) ─► resolve (index, platform, labels) ─► verify ─► pull ─► canary (ready + golden)
              ─► hand-over (redirect, SIGTERM old) ─► probation ─► keep  |  roll back + block

The state file is saved before and after every step that changes the device, so ``recover`` can finish
or undo whatever a crash interrupted: it converges to exactly one healthy serving container, preferring
the last known good one, and removes every leftover container and image.

Blocking: a digest that is refused (no platform, verification) or fails canary / probation is blocked
until the channel moves to another digest. An update interrupted (pull error, agent crash) is retried,
and blocked after ``MAX_ATTEMPTS`` interruptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.agent.canary import Prober, golden_from_layers, replay_golden, wait_ready
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.handover import HandoverError, TrafficSwitch
from edge_runtime.agent.policy import CandidateImage, VerificationPolicy
from edge_runtime.agent.runtime import (
    AGENT_LABEL,
    ContainerRuntime,
    ContainerSpec,
    ContainerStatus,
    ExitWatch,
    RuntimeFailure,
    WatchesExits,
)
from edge_runtime.agent.source import ImageSource, NoMatchingPlatform, ResolvedImage
from edge_runtime.agent.state import AgentState, Deployment, StateStore
from edge_runtime.agent.trust_policy import TrustPolicy
from edge_runtime.errors import NotFound, OtamlError, TemporaryError, Unhealthy, VerificationFailed, reason_of
from edge_runtime.trust.approval import Approval
from edge_runtime.trust.errors import TrustError

log = logging.getLogger("otaml.agent")
MB = 1024 * 1024

MAX_ATTEMPTS = 3
PORT_LABEL = "io.otaml.port"
DIGEST_LABEL = "io.otaml.digest"


@dataclass
class UpdateReport:
    """What one step did. ``outcome`` is one of:

    ``unchanged`` (channel digest already serving), ``skipped`` (digest blocked), ``updated``,
    ``refused`` (no platform / verification failed: blocked), ``rolled_back`` (canary or probation failed:
    blocked, previous serving), ``error`` (poll/pull/runtime failure: retried with back-off), ``recovered``.
    """

    outcome: str
    digest: str = ""
    version: str = ""
    previous_version: str = ""
    step: str = ""
    error: str = ""
    reason: str = ""  # a stable code (edge_runtime.errors.reason_of) when the step did not succeed
    temporary: bool = False
    bytes_pulled: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome in ("unchanged", "skipped", "updated", "recovered")

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "digest": self.digest,
            "version": self.version,
            "previous_version": self.previous_version,
            "step": self.step,
            "error": self.error,
            "reason": self.reason,
            "temporary": self.temporary,
            "bytes_pulled": self.bytes_pulled,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "actions": list(self.actions),
        }


class Reconciler:
    """The agent's update logic with every I/O seam injected; ``state`` is saved through ``store``."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        source: ImageSource,
        runtime: ContainerRuntime,
        switch: TrafficSwitch,
        prober: Prober,
        policy: VerificationPolicy,
        clock: Callable[[], float] = time.time,
        trust: TrustPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        available_memory: Callable[[], int | None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.source = source
        self.runtime = runtime
        self.switch = switch
        self.prober = prober
        self.trust = trust
        self.policy: VerificationPolicy = trust if trust is not None else policy
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.available_memory = available_memory or mem_available_bytes
        # Told after each update phase is saved (the fleet link publishes it): a device that dies mid-update is
        # then judged by the phase it died in, not by the state it reported before the update began.
        self.on_phase: Callable[[], None] | None = None
        self.state: AgentState = store.load()
        self._retry: int | None = None  # the desired approval's retry count (TUF); None before the first poll
        self._upcoming: Approval | None = None  # a running rollout's candidate, not yet for this device
        self._prefetch_refused: set[str] = set()  # digests a pre-fetch gave up on (not retried until restart)
        self._prefetch_failures: dict[str, int] = {}  # digest -> failed pre-fetches in a row
        self._unready_checks = 0

    # ── persistence ────────────────────────────────────────────────────────────────────────────────
    def save(self) -> None:
        self.store.save(self.state)

    def _phase(self, phase: str) -> None:
        self.state.phase = phase
        self.state.phase_started = self.clock()
        self.save()
        if self.on_phase is not None:
            try:
                self.on_phase()
            except Exception:  # reporting never stops an update
                log.exception("reporting the %s phase failed", phase)

    def _finish(self, report: UpdateReport, started: float) -> UpdateReport:
        s = self.state
        report.timings["total_s"] = self.monotonic() - started
        if report.outcome in ("unchanged", "skipped"):
            pass
        else:
            entry = {"at": self.clock(), **report.to_dict()}
            s.record(entry)
        if report.outcome == "error":
            s.last_error = f"{report.step}: {report.error}"
            s.last_error_at = self.clock()
            s.consecutive_failures += 1
            s.count("failures")
        elif report.outcome in ("refused", "rolled_back"):
            s.last_error = f"{report.step}: {report.error}"
            s.last_error_at = self.clock()
            s.consecutive_failures = 0
        else:
            s.consecutive_failures = 0
        self.save()
        if report.ok:
            if report.outcome != "unchanged":
                log.info("update step %s", report.outcome, extra=report.to_dict())
        else:  # the message says why too, not only the structured fields (a plain-text log shows no extras)
            why = f"{report.reason}: {report.error}" if report.reason else report.error
            log.warning("update step %s at %s (%s)", report.outcome, report.step, why, extra=report.to_dict())
        return report

    # ── containers ─────────────────────────────────────────────────────────────────────────────────
    def spec_for(self, dep: Deployment) -> ContainerSpec:
        c = self.config
        env = {
            **c.service_env,
            "OTAML_HOST": c.service_host,
            "OTAML_PORT": str(dep.port),
            "OTAML_DRAIN_SECONDS": f"{c.drain_s:g}",
        }
        return ContainerSpec(
            name=dep.container,
            image=dep.ref,
            env=env,
            memory_bytes=c.memory_mb * 1024 * 1024,
            cpus=c.cpus,
            platform=c.platform,
            labels={AGENT_LABEL: "1", PORT_LABEL: str(dep.port), DIGEST_LABEL: dep.digest},
        )

    def _free_port(self) -> int:
        used = self.state.current.port if self.state.current else 0
        a, b = self.config.private_ports
        return b if used == a else a

    def _running_and_ready(self, dep: Deployment) -> bool:
        try:
            status = self.runtime.status(dep.container)
        except NotFound:
            return False
        return status.running and self.prober.ready(dep.port)

    def _start_and_wait(self, dep: Deployment) -> float:
        self.runtime.stop(dep.container, timeout_s=0)  # a stale container of that name (after reboot/crash)
        self.runtime.start(self.spec_for(dep))
        return wait_ready(
            self.runtime, self.prober, dep.container, dep.port, self.config.ready_timeout_s, self.monotonic, self.sleep
        )

    def ensure_serving(self, dep: Deployment, report: UpdateReport) -> None:
        """Make ``dep`` run, be ready and get the public port's traffic (starting it from the local image if needed)."""
        if not self._running_and_ready(dep):
            if not self.runtime.has_image(dep.ref):
                raise NotFound(f"Image {dep.ref} is no longer in containerd's store; cannot start it without a pull.")
            report.actions.append(f"start {dep.container}")
            self._start_and_wait(dep)
        if self.switch.target() != dep.port:
            report.actions.append(f"switch → {dep.port}")
            self.switch.point_to(dep.port)

    def _stop(self, name: str, report: UpdateReport, timeout_s: float | None = None) -> None:
        report.actions.append(f"stop {name}")
        self.runtime.stop(name, self.config.stop_timeout_s if timeout_s is None else timeout_s)

    def _remove_leftovers(self, keep: set[str], report: UpdateReport) -> None:
        for status in self.runtime.list_containers():
            if status.name not in keep:
                self._stop(status.name, report, timeout_s=self.config.stop_timeout_s if status.running else 0)

    def _gc_images(self, report: UpdateReport) -> None:
        keep = self._in_use()
        if self.state.prefetched:
            keep.add(self.state.prefetched)
        for ref in self.runtime.list_images():
            if ref not in keep:
                report.actions.append(f"remove image {ref}")
                try:
                    self.runtime.remove_image(ref)
                except (NotFound, RuntimeFailure) as exc:
                    log.warning("could not remove image %s: %s", ref, exc)

    def _in_use(self) -> set[str]:
        return {d.ref for d in (self.state.current, self.state.previous, self.state.candidate) if d}

    def _block(self, digest: str, reason: str) -> None:
        if self.state.prefetched == self.config.image_ref(digest):
            self.state.prefetched = ""  # a blocked digest is not kept ahead: the next clean-up removes it
        self.state.blocked[digest] = reason
        self.state.attempts.pop(digest, None)
        if self._retry is not None:  # the approval's retry count then: only a higher one (signed) lifts the block
            self.state.block_retry[digest] = self._retry

    def _interrupted(self, digest: str) -> None:
        """An attempt at ``digest`` ended without a verdict; block it after MAX_ATTEMPTS."""
        n = self.state.attempts.get(digest, 0) + 1
        self.state.attempts[digest] = n
        if n >= MAX_ATTEMPTS:
            self._block(digest, f"update interrupted {n} times (pull/runtime errors or agent crashes)")

    # ── start-up recovery ──────────────────────────────────────────────────────────────────────────
    def recover(self) -> UpdateReport:
        """Converge to exactly one healthy serving container after a start, reboot, crash or SIGKILL."""
        started = self.monotonic()
        s = self.state
        report = UpdateReport("recovered", step="recover")
        if s.phase == "probation" and s.previous and s.current:
            # The new image never finished probation: the last known good one is the previous.
            good: Deployment | None = s.previous
            abandoned: Deployment | None = s.current
        else:
            good, abandoned = s.current, s.candidate
        if abandoned and (good is None or abandoned.digest != good.digest):
            report.actions.append(f"abandon {abandoned.digest} ({s.phase})")
            self._interrupted(abandoned.digest)
        try:
            target = self.switch.target()
            serving_traffic = {
                st.name
                for st in self.runtime.list_containers()
                if st.running and st.labels.get(PORT_LABEL) == str(target)
            }
            keep = {good.container} if good else set()
            self._remove_leftovers(keep | serving_traffic, report)
            if good is not None:
                try:
                    self.ensure_serving(good, report)
                except (Unhealthy, NotFound, RuntimeFailure) as exc:
                    report.actions.append(f"cannot serve {good.container}: {exc}")
                    fallback = s.previous if good is s.current else None
                    if fallback is None:
                        raise
                    self.ensure_serving(fallback, report)
                    good = fallback
            self._remove_leftovers({good.container} if good else set(), report)
        except (OtamlError, OSError) as exc:
            report.outcome, report.error, report.reason = "error", str(exc), reason_of(exc)
            report.temporary = True
            if good is not None and not isinstance(exc, (HandoverError, TemporaryError)):
                # Nothing installed can serve: forget it so the next poll installs the channel's image.
                s.current, s.previous = None, None
            return self._finish(report, started)
        if good is not s.current:
            s.previous = None
        s.current, s.candidate = good, None
        s.phase = "idle"
        self._gc_images(report)
        if good:
            report.digest, report.version = good.digest, good.version
        return self._finish(report, started)

    # ── the update step ────────────────────────────────────────────────────────────────────────────
    def supervise(self, report: UpdateReport) -> None:
        """Between updates: restart the serving container if it died or stays unready."""
        cur = self.state.current
        if cur is None:
            return
        try:
            status = self.runtime.status(cur.container)
            healthy = status.running and self.prober.ready(cur.port)
        except NotFound:
            healthy, status = False, None
        if healthy:
            self._unready_checks = 0
            if self.switch.target() != cur.port:
                # The redirect vanished or moved (a firewall reload, an operator): put it back.
                report.actions.append(f"switch → {cur.port} (redirect was {self.switch.target()})")
                self.switch.point_to(cur.port)
            return
        self._unready_checks += 1
        if status is not None and status.running and self._unready_checks < self.config.unhealthy_after:
            return
        self._unready_checks = 0
        report.actions.append(f"restart {cur.container} (not running or not ready)")
        self.state.count("restarts")
        self.ensure_serving(cur, report)

    def reconcile(self) -> UpdateReport:
        """Poll the channel once and, if it moved, take the device through one whole update."""
        started = self.monotonic()
        s = self.state
        report = UpdateReport("unchanged", step="supervise")
        try:
            self.supervise(report)
        except (OtamlError, OSError) as exc:
            report.actions.append(f"supervise failed: {exc}")
            log.warning("supervise: %s", exc)
        # 1. Poll: the fleet's trust metadata (timestamp.json; the rest only when it changed), or, on an
        # insecure device, one HEAD of the channel tag.
        report.step = "poll"
        t = self.monotonic()
        try:
            digest = self._desired_digest()
        except TrustError as exc:
            s.trust_status = exc.reason
            return self._error(report, started, exc)
        except (TemporaryError, NotFound, OtamlError, OSError) as exc:
            return self._error(report, started, exc)
        report.timings["poll_s"] = self.monotonic() - t
        s.last_check_at = self.clock()
        s.count("checks")
        report.digest = digest
        if digest != s.channel_digest:
            if self.trust is None:
                # Insecure mode: the channel moved, so blocks on other digests are lifted (a re-promotion gets a
                # fresh chance). With trust, a blocked digest stays blocked: only a new approval replaces it.
                s.blocked = {d: r for d, r in s.blocked.items() if d == digest}
            s.attempts = {d: n for d, n in s.attempts.items() if d == digest}
            s.channel_digest = digest
        if s.current and digest == s.current.digest:
            report.version = s.current.version
            self._prefetch(report)
            return self._finish(report, started)
        if digest in s.blocked:
            report.outcome, report.error, report.reason = "skipped", s.blocked[digest], "blocked"
            return self._finish(report, started)
        return self._update(digest, report, started)

    def _desired_digest(self) -> str:
        if self.trust is None:
            self.state.trust_status = "insecure"
            return self.source.channel_digest()
        desired = self.trust.desired(trust_floor=self.state.trust_floor)
        s = self.state
        s.trust_floor = max(s.trust_floor, desired.targets_version)
        s.trust_status, s.rollout_id, s.desired = "ok", desired.rollout_id, desired.why
        self._retry = desired.approval.retry
        self._upcoming = desired.upcoming
        blocked_at = s.block_retry.get(desired.digest)  # a block made without a known count is never lifted
        if desired.digest in s.blocked and blocked_at is not None and desired.approval.retry > blocked_at:
            # `otaml trust retry`: MLOps signed "try this digest again".
            log.info("block on %s lifted by a signed retry (%d)", desired.digest, desired.approval.retry)
            del s.blocked[desired.digest]
            s.block_retry.pop(desired.digest, None)
        return desired.digest

    def _candidate_image(self, digest: str, image: ResolvedImage) -> CandidateImage:
        s, c = self.state, self.config
        return CandidateImage(
            repository=c.repository,
            digest=digest,
            manifest_digest=image.manifest_digest,
            platform=c.platform,
            model=image.model,
            version=image.version,
            labels=dict(image.labels),
            current_version=s.current.version if s.current else "",
            current_digest=s.current.digest if s.current else "",
        )

    def _prefetch(self, report: UpdateReport) -> None:
        """With ``[update] prefetch``, pull the candidate of a running rollout whose wave has not reached this
        device: resolved for its platform and approved like an update, never started. A failure changes nothing
        (the update at wave time pulls again); a temporary one is retried at the next polls, 3 tries in all."""
        s, c, upcoming = self.state, self.config, self._upcoming
        ahead = upcoming if c.prefetch and upcoming is not None and upcoming.digest not in s.blocked else None
        if s.prefetched and s.prefetched != (c.image_ref(ahead.digest) if ahead else ""):
            self._release_prefetched(report)  # the rollout ended, or moved on to another candidate
        if ahead is None or s.prefetched or ahead.digest in self._prefetch_refused:
            return
        wanted, ref = ahead.digest, c.image_ref(ahead.digest)
        try:
            image = self.source.resolve(wanted, c.platform)
            self.policy.check(self._candidate_image(wanted, image))
            pulled = self.runtime.pull(ref, c.platform)
        except (NoMatchingPlatform, VerificationFailed, ValueError, KeyError) as exc:
            self._prefetch_refused.add(wanted)  # the update at wave time will say why, once
            self._prefetch_failed(ahead.version, f"skipped: {exc}", report)
            return
        except (TemporaryError, RuntimeFailure, NotFound, OtamlError, OSError) as exc:
            n = self._prefetch_failures[wanted] = self._prefetch_failures.get(wanted, 0) + 1
            if n >= MAX_ATTEMPTS:
                self._prefetch_refused.add(wanted)  # no download loop: the wave's own update retries with back-off
            self._prefetch_failed(ahead.version, f"failed ({n} of {MAX_ATTEMPTS} tries): {exc}", report)
            return
        self._prefetch_failures.pop(wanted, None)
        s.prefetched = ref
        s.count("prefetches")
        report.actions.append(f"pre-fetched v{ahead.version} ({pulled.bytes_fetched} bytes) ahead of its wave")
        log.info("pre-fetched v%s ahead of this device's wave", ahead.version, extra={"digest": wanted})

    def _prefetch_failed(self, version: int, why: str, report: UpdateReport) -> None:
        self.state.count("prefetch_failures")
        report.actions.append(f"pre-fetch of v{version} {why}")
        log.warning("pre-fetch of v%s %s", version, why, extra={"event": "prefetch_failed"})

    def _release_prefetched(self, report: UpdateReport) -> None:
        """Forget the image fetched ahead, and remove it unless it serves (or is about to)."""
        ref, self.state.prefetched = self.state.prefetched, ""
        if ref in self._in_use():
            return
        report.actions.append(f"remove pre-fetched image {ref}")
        try:
            self.runtime.remove_image(ref)
        except (NotFound, RuntimeFailure) as exc:
            log.warning("could not remove pre-fetched image %s: %s", ref, exc)

    def _error(self, report: UpdateReport, started: float, exc: BaseException) -> UpdateReport:
        report.outcome = "error"
        report.error = str(exc) or repr(exc)
        report.reason = reason_of(exc)
        report.temporary = not isinstance(exc, (VerificationFailed, NoMatchingPlatform))
        return self._finish(report, started)

    def _refuse(self, report: UpdateReport, started: float, exc: BaseException) -> UpdateReport:
        # Status shows the reason code first (not-approved, stale-metadata, no-platform, ...).
        rejection = getattr(exc, "rejection", None)
        message = f"{getattr(rejection, 'value', reason_of(exc))}: {exc}"
        self._block(report.digest, f"{report.step}: {message}")
        self.state.count("refusals")
        report.outcome, report.error, report.reason = "refused", message, reason_of(exc)
        return self._finish(report, started)

    def _update(self, digest: str, report: UpdateReport, started: float) -> UpdateReport:
        s, c = self.state, self.config
        # 2. Resolve: index → this platform's manifest → config labels.
        report.step = "resolve"
        t = self.monotonic()
        try:
            image: ResolvedImage = self.source.resolve(digest, c.platform)
        except NoMatchingPlatform as exc:
            return self._refuse(report, started, exc)
        except (TemporaryError, NotFound, OtamlError, OSError, ValueError, KeyError) as exc:
            return self._error(report, started, exc)
        report.timings["resolve_s"] = self.monotonic() - t
        report.version = image.version
        report.previous_version = s.current.version if s.current else ""
        # 3. Verify.
        report.step = "verify"
        try:
            self.policy.check(self._candidate_image(digest, image))
        except VerificationFailed as exc:
            return self._refuse(report, started, exc)
        except (TemporaryError, OSError) as exc:
            return self._error(report, started, exc)
        # 4. Pull.
        port = self._free_port()
        cand = Deployment(
            digest=digest,
            ref=c.image_ref(digest),
            model=image.model,
            version=image.version,
            container=f"otaml-svc-{digest.split(':')[-1][:12]}-{port}",
            port=port,
        )
        s.candidate = cand
        report.step = "pull"
        self._phase("pulling")
        t = self.monotonic()
        try:
            pulled = self.runtime.pull(cand.ref, c.platform)
        except (TemporaryError, RuntimeFailure, NotFound, OSError) as exc:
            self._interrupted(digest)
            self._abandon_candidate(report)
            return self._error(report, started, exc)
        report.bytes_pulled = pulled.bytes_fetched
        report.timings["pull_s"] = self.monotonic() - t
        # 5. Canary on the free private port.
        report.step = "canary"
        self._phase("canary")
        try:
            t = self.monotonic()
            golden = golden_from_layers(self.runtime, image.layers, cand.ref)
            report.timings["ready_s"] = self._start_and_wait(cand)
            t = self.monotonic()
            replay_golden(self.prober, cand.port, golden, cand.container)
            report.timings["golden_s"] = self.monotonic() - t
        except (Unhealthy, NotFound, RuntimeFailure) as exc:
            self._stop(cand.container, report, timeout_s=0)
            self._block(digest, f"canary: {exc}")
            self._abandon_candidate(report, remove_image=True)
            s.count("rollbacks")
            report.outcome, report.error, report.reason = "rolled_back", str(exc), reason_of(exc)
            return self._finish(report, started)
        except (OtamlError, OSError) as exc:
            self._stop(cand.container, report, timeout_s=0)
            self._interrupted(digest)
            self._abandon_candidate(report)
            return self._error(report, started, exc)
        # 6. Hand-over: new connections go to the canary; the old container drains on SIGTERM.
        report.step = "handover"
        self._phase("handover")
        t = self.monotonic()
        try:
            self.switch.point_to(cand.port)
        except (HandoverError, OSError) as exc:
            self._stop(cand.container, report, timeout_s=0)
            self._interrupted(digest)
            self._abandon_candidate(report)
            return self._error(report, started, exc)
        old = s.current
        s.previous, s.current, s.candidate = old, cand, None
        self._phase("probation")
        report.timings["switch_s"] = self.monotonic() - t
        warm = old is not None and self._keep_warm(old, report)
        if old is not None and not warm:
            self._retire(old, report)
        # 7. Probation.
        report.step = "probation"
        t = self.monotonic()
        try:
            self.probation(cand)
        except Unhealthy as exc:
            report.timings["probation_s"] = self.monotonic() - t
            return self.rollback(report, started, exc, warm=warm)
        report.timings["probation_s"] = self.monotonic() - t
        if old is not None and warm:
            self._retire(old, report, grace=False)
        s.phase = "idle"
        s.count("updates")
        s.attempts.pop(digest, None)
        report.step, report.outcome = "done", "updated"
        self._gc_images(report)
        return self._finish(report, started)

    def _retire(self, old: Deployment, report: UpdateReport, grace: bool = True) -> None:
        """SIGTERM the container that no longer gets new connections; it drains the ones it has."""
        if grace:
            # Connections that reached the old container just before the switch may still sit in its
            # accept queue; SIGTERM closes the listener, so give them a moment to be accepted first.
            self.sleep(self.config.switch_grace_s)
        t = self.monotonic()
        try:
            self._stop(old.container, report)
        except (RuntimeFailure, OSError) as exc:
            report.actions.append(f"stopping {old.container} failed: {exc}")
        report.timings["drain_s"] = self.monotonic() - t

    def _stopped(self, dep: Deployment) -> ContainerStatus:
        """The status of a container whose process exited; containerd may take a moment to notice."""
        deadline = self.monotonic() + 2.0
        while True:
            status = self.runtime.status(dep.container)
            if not status.running or self.monotonic() >= deadline:
                return status
            self.sleep(0.05)

    def _keep_warm(self, old: Deployment, report: UpdateReport) -> bool:
        """Keep the previous container running through probation? ``auto``: when the device has the memory."""
        mode = self.config.warm_rollback
        if mode != "auto":
            keep = mode == "on"
        else:
            available = self.available_memory()
            keep = available is not None and available >= self.config.warm_min_available_mb * MB
            seen = "unknown" if available is None else f"{available / MB:.0f} MB"
            report.actions.append(
                f"{'keep' if keep else 'retire'} {old.container} "
                f"({'warm for a rollback' if keep else 'cold rollback'}: MemAvailable {seen}, "
                f"warm_min_available_mb {self.config.warm_min_available_mb})"
            )
        return keep

    def _abandon_candidate(self, report: UpdateReport, remove_image: bool = False) -> None:
        cand = self.state.candidate
        self.state.candidate = None
        self.state.phase = "idle"
        self.save()
        if cand is not None and remove_image:
            self._gc_images(report)

    def probation(self, dep: Deployment) -> None:
        """Watch ``dep`` for ``probation_s``: it must keep running (no exit, no OOM kill) and stay ready.

        Its exit is seen within milliseconds (:meth:`WatchesExits.exit_watch`); readiness is probed every
        ``health_interval_s`` and ``unhealthy_after`` misses in a row fail it."""
        c = self.config
        end = self.monotonic() + c.probation_s
        failures = 0
        watch: ExitWatch | None = None
        if isinstance(self.runtime, WatchesExits):
            try:
                watch = self.runtime.exit_watch(dep.container)
            except NotFound as exc:  # no running task: it died between the hand-over and now
                raise ContainerExited(f"Container {dep.container} exited during probation.") from exc
            except (OtamlError, OSError) as exc:  # containerd hiccup: fall back to the status checks
                log.warning(
                    "cannot watch %s for its exit (%s); checking every %g s", dep.container, exc, c.health_interval_s
                )
        try:
            while self.monotonic() < end:
                wait_s = min(c.health_interval_s, max(0.0, end - self.monotonic()))
                if watch is not None:
                    if watch.wait(wait_s):
                        raise ContainerExited(f"Container {dep.container} exited during probation.")
                else:
                    self.sleep(wait_s)
                try:
                    status = self.runtime.status(dep.container)
                except NotFound as exc:
                    raise Unhealthy(f"Container {dep.container} disappeared during probation.") from exc
                if not status.running:
                    raise Unhealthy(f"Container {dep.container} {_why_stopped(status)} during probation.")
                if self.prober.ready(dep.port):
                    failures = 0
                    continue
                failures += 1
                if failures >= c.unhealthy_after:
                    raise Unhealthy(
                        f"Container {dep.container} failed {failures} readiness checks in a row in probation."
                    )
        finally:
            if watch is not None:
                watch.close()

    def rollback(self, report: UpdateReport, started: float, exc: BaseException, warm: bool = False) -> UpdateReport:
        """The new image failed probation: serve the previous one again (local image), block the new digest.

        With the previous container kept ``warm`` the redirect moves back first, before anything else is asked
        of containerd: every millisecond here is requests refused by the dead container's port."""
        s = self.state
        failed, good = s.current, s.previous
        if failed is None:
            raise RuntimeError("rollback without a current deployment")
        if warm and good is not None:
            try:
                self.switch.point_to(good.port)
                report.actions.append(f"switch → {good.port} (warm {good.container})")
            except (HandoverError, OSError) as err:
                report.actions.append(f"switch back to the warm {good.container} failed: {err}")
        if isinstance(exc, ContainerExited):
            try:  # now that traffic is safe, find out how it died
                why = _why_stopped(self._stopped(failed))
                exc = ContainerExited(f"Container {failed.container} {why} during probation.")
            except (OtamlError, OSError) as err:
                report.actions.append(f"reading how {failed.container} stopped failed: {err}")
        self._block(failed.digest, f"probation: {exc}")
        s.count("rollbacks")
        report.outcome, report.error, report.reason = "rolled_back", str(exc), reason_of(exc)
        try:
            if good is not None:
                self.ensure_serving(good, report)
        except (OtamlError, OSError) as err:
            # The supervisor keeps retrying `good` on every step; the failed image is never restarted.
            report.reason = reason_of(exc)
            report.outcome, report.error = "error", f"{exc}; rolling back to {good.ref if good else 'nothing'}: {err}"
            report.temporary = True
        try:
            self._retire(failed, report)
        except (OtamlError, OSError) as err:
            report.actions.append(f"stopping {failed.container} failed: {err}")
        s.current, s.previous, s.candidate = good, None, None
        s.phase = "idle"
        self._gc_images(report)
        return self._finish(report, started)


class ContainerExited(Unhealthy):
    """The container's main process exited (killed, OOM-killed, crashed) while it was being watched."""

    reason = "container-exited"


def _why_stopped(status: ContainerStatus) -> str:
    if status.oom_killed:
        return "was OOM-killed"
    return f"exited with code {status.exit_code}" if status.exit_code is not None else "exited"


def mem_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The kernel's estimate of memory available for new work (``MemAvailable``), or None when unknown."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reconcile(reconciler: Reconciler) -> UpdateReport:
    """One update step (see the module docstring)."""
    return reconciler.reconcile()


def recover(reconciler: Reconciler) -> UpdateReport:
    """Start-up recovery (see :meth:`Reconciler.recover`)."""

    return reconciler.recover()
