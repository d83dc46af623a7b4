"""Promotion in the MLflow Model Registry: gates, aliases, an audit trail, and (optionally) signed images.

``promote`` checks the gates (:mod:`registry.gates`) on the bundle that will ship, then, when an image registry
is configured, bakes the bundle onto the runtime image as ``model-v<N>``, signs the digest and moves the channel
tag (signing first: a device never sees an unsigned channel head), and finally moves the MLflow alias
(``models:/NAME@production``). Baking is reproducible, so re-baking for production gives the very digest staging
ran; an existing ``model-v<N>`` holding anything else (pushed by someone else, another model in the same
repository, a moved base image) is refused (TagConflict), never signed. ``promote`` never goes below the
channel's current version: ``rollback`` does that, to an older version only, with a signed rollback
authorisation and no gates. Failed gates move nothing; the alias and the audit record are written only after
the image is signed and tagged.

What was decided is recorded in MLflow: on the version, tags ``otaml.<channel>.approved_by|approved_at|gates|
forced|reason|image``; on the registered model, one ``otaml.event.<time>`` tag per promotion or rollback
(JSON), which ``history`` lists.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.errors import InputError, NotFound, OtamlError, TemporaryError
from edge_runtime.trust.approval import Approval
from registry.cosign import RollbackAuthorisation, format_time
from registry.gates import GateReport, evaluate_gates, load_gate_config

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHANNELS = ("staging", "production")
EVENT_PREFIX = "otaml.event."
TAG_PREFIX = "otaml."


class PromotionRefused(OtamlError):
    """The gates failed (and ``--force`` was not given); ``report`` lists every result."""

    def __init__(self, message: str, report: GateReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class TrustTarget:
    """Where approvals are signed: the fleet's trust site (``otaml trust init``) and this approver's targets key.

    With a threshold above one (production: 2 of 3), one promotion records a *pending* approval; a second
    approver completes it with ``otaml trust approve``. Devices run only approved images.

    In a fleet that rolls out in waves (the site has a ``rollouts`` key, as ``otaml trust init`` makes it), an
    approval made while an earlier version runs is *staged*: no device moves until ``otaml rollout start`` opens a
    wave. ``all_at_once`` (``otaml promote --all-at-once``) approves it for every device at once instead.
    """

    site: Path
    approval_key: Path
    all_at_once: bool = False

    @classmethod
    def from_options(
        cls, site: str | None = None, approval_key: str | None = None, env: Mapping[str, str] | None = None
    ) -> TrustTarget | None:
        """From flags, else ``OTAML_TRUST_DIR`` and ``OTAML_APPROVAL_KEY``; None if neither is set."""
        env = os.environ if env is None else env
        d, k = site or env.get("OTAML_TRUST_DIR", ""), approval_key or env.get("OTAML_APPROVAL_KEY", "")
        if not d and not k:
            return None
        if not d or not k:
            missing = "--trust-dir / OTAML_TRUST_DIR" if not d else "--approval-key / OTAML_APPROVAL_KEY"
            raise InputError(
                f"Approvals are half configured: {missing} is not set. Give the trust site and your approver key "
                "(from `otaml trust init`), or neither (then devices, which run only approved images, ignore it)."
            )
        return cls(site=Path(d), approval_key=Path(k))


@dataclass(frozen=True)
class ImageTarget:
    """Where promoted images go: the runtime base image, the target repository and the fleet signing key.

    ``reference``: the repository devices pull from, signed as the payload's docker-reference (devices compare
    its path with their ``[registry] repository``). Default: ``repository`` itself; set it when writing to an
    ``oci:`` layout or to a registry that devices reach under another repository path.
    """

    base: str
    repository: str
    signing_key: Path
    expires_in: timedelta | None = None
    reference: str = ""
    trust: TrustTarget | None = None

    @property
    def base_digest(self) -> str:
        """The digest the base is pinned to (``REF@sha256:...``); :class:`InputError` if it is only a tag."""
        from registry.oci.refs import parse_ref

        digest = parse_ref(self.base).digest
        if not digest:
            raise InputError(
                f"Base image {self.base!r} is not pinned by digest: a tag can be moved by anyone with push rights, "
                "and devices would run whatever it points at. Pin it: --base-image REF@sha256:<digest> "
                "(OTAML_BASE_IMAGE; `skopeo inspect --format '{{.Digest}}' docker://REF` prints the digest)."
            )
        return digest

    @classmethod
    def from_options(
        cls,
        base: str | None = None,
        repository: str | None = None,
        signing_key: str | None = None,
        expires_in_days: float | None = None,
        env: Mapping[str, str] | None = None,
        reference: str | None = None,
        trust: TrustTarget | None = None,
    ) -> ImageTarget | None:
        """From flags, else ``OTAML_BASE_IMAGE``, ``OTAML_IMAGE_REPO``, ``OTAML_SIGNING_KEY``; None if none is set.

        ``reference`` (else ``OTAML_IMAGE_REFERENCE``, else the repository): see the class docstring.
        """
        env = os.environ if env is None else env
        values = {
            "--base-image / OTAML_BASE_IMAGE": base or env.get("OTAML_BASE_IMAGE", ""),
            "--image-repo / OTAML_IMAGE_REPO": repository or env.get("OTAML_IMAGE_REPO", ""),
            "--signing-key / OTAML_SIGNING_KEY": signing_key or env.get("OTAML_SIGNING_KEY", ""),
        }
        if not any(values.values()):
            return None
        missing = [k for k, v in values.items() if not v]
        if missing:
            raise InputError(
                f"An image registry is half configured: {', '.join(missing)} not set. Set all three "
                "(base runtime image, target repository, signing key) or none for an MLflow-only promotion."
            )
        days = expires_in_days if expires_in_days is not None else float(env.get("OTAML_SIGNATURE_DAYS", "0") or 0)
        b, r, k = values.values()
        return cls(
            base=b,
            repository=r,
            signing_key=Path(k),
            expires_in=timedelta(days=days) if days > 0 else None,
            reference=reference or env.get("OTAML_IMAGE_REFERENCE", ""),
            trust=trust,
        )


@dataclass(frozen=True)
class ImageOutcome:
    """What was pushed: ``repository:model-v<N>`` at ``digest``, signed at ``signature_tag``, channel moved."""

    repository: str
    digest: str
    version_tag: str
    channel_tag: str
    signature_tag: str
    approval: str = ""  # "approved" | "pending" | "" (no trust site configured)
    approvals_missing: int = 0
    staged: bool = False  # approved for a rollout: no device moves until `otaml rollout start` opens a wave

    def to_dict(self) -> dict[str, Any]:
        return {
            "approval": self.approval,
            "approvals_missing": self.approvals_missing,
            "staged": self.staged,
            "repository": self.repository,
            "digest": self.digest,
            "version_tag": self.version_tag,
            "channel_tag": self.channel_tag,
            "signature_tag": self.signature_tag,
        }


@dataclass(frozen=True)
class PromotionReport:
    action: str  # "promote" | "rollback"
    name: str
    version: str
    channel: str
    previous_version: str | None
    approver: str
    at: str
    forced: bool = False
    reason: str = ""
    gates: GateReport | None = None
    image: ImageOutcome | None = None
    notes: tuple[str, ...] = ()

    def event(self) -> dict[str, Any]:
        """The compact audit record stored on the registered model (MLflow caps those tags at 5000 chars)."""
        return {
            "action": self.action,
            "version": self.version,
            "channel": self.channel,
            "previous_version": self.previous_version,
            "approver": self.approver,
            "at": self.at,
            "forced": self.forced,
            "reason": self.reason,
            "gates": {r.name: r.status for r in self.gates.results} if self.gates else None,
            "image": f"{self.image.repository}@{self.image.digest}" if self.image else None,
        }


class ImagePublisher(Protocol):
    """Puts a version's image on a channel: bake ``model-v<N>``, sign its digest, move the tag."""

    def publish(
        self,
        *,
        name: str,
        version: str,
        channel: str,
        bundle_dir: Path,
        approver: str,
        rollback: RollbackAuthorisation | None = None,
    ) -> ImageOutcome: ...


BundleFetcher = Callable[[str, str, Path], Path]


# --- MLflow helpers -------------------------------------------------------------------------------


def _client(tracking_uri: str | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    from pipeline.tracking import resolve_tracking_uri

    uri = tracking_uri or resolve_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _model_version(client: MlflowClient, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(
                f"Model {name!r} has no version {version!r} in the MLflow registry. "
                f"List versions with `otaml models list {name}`."
            ) from exc
        raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``alias`` names; None only when MLflow says the alias does not exist (any other error raises)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        # Stores answer a missing alias with INVALID_PARAMETER_VALUE "... alias X not found.": only that is "none".
        if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)):
            return None
        # Guessing "no current version" here would sign an unchecked rollback or downgrade: surface it instead.
        raise TemporaryError(
            f"Cannot read {name}@{alias} from the MLflow registry ({exc}). Nothing was changed; retry when "
            "MLflow answers."
        ) from exc


def _number(version: str, what: str) -> int:
    try:
        return int(version)
    except ValueError as exc:
        raise InputError(f"{what} {version!r} is not an MLflow version number.") from exc


def download_bundle(name: str, version: str, dest: Path, *, tracking_uri: str | None = None) -> Path:
    """The version's shipped bundle (``pipeline.tracking.download_bundle``: the run artifact its tag names)."""
    from pipeline.tracking import download_bundle as pipeline_download

    return pipeline_download(name, version, dest / "bundle", tracking_uri=tracking_uri)


def _now() -> datetime:
    return datetime.now(UTC)


def _record(client: MlflowClient, report: PromotionReport) -> None:
    prefix = f"{TAG_PREFIX}{report.channel}."
    tags = {
        "approved_by": report.approver,
        "approved_at": report.at,
        "action": report.action,
        "forced": str(report.forced).lower(),
        "reason": report.reason,
        "gates": json.dumps(report.gates.to_dict(), sort_keys=True) if report.gates else "",
        "image": f"{report.image.repository}@{report.image.digest}" if report.image else "",
    }
    if report.gates is None:
        del tags["gates"]  # a rollback runs no gates: keep the version's last gate results for this channel
    for key, value in tags.items():
        client.set_model_version_tag(report.name, report.version, prefix + key, value)
    # Microseconds keep keys unique and sortable; a clash would overwrite an audit record, so refuse it.
    key = EVENT_PREFIX + re.sub(r"[^0-9TZ]", "", report.at) + f".{report.channel}"
    client.set_registered_model_tag(report.name, key, json.dumps(report.event(), sort_keys=True))
    client.set_registered_model_alias(report.name, report.channel, report.version)


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise InputError(f"Channel {channel!r} is not one of {list(CHANNELS)}.")


# --- promote / rollback ---------------------------------------------------------------------------


def promote(
    name: str,
    version: str,
    channel: str,
    *,
    approver: str,
    force: bool = False,
    reason: str = "",
    gates_file: str | os.PathLike[str] | None = None,
    publisher: ImagePublisher | None = None,
    fetch_bundle: BundleFetcher | None = None,
    tracking_uri: str | None = None,
    now: Callable[[], datetime] = _now,
) -> PromotionReport:
    """Gate, publish (if configured), alias and record ``name`` v``version`` on ``channel``.

    Raises PromotionRefused, listing every failed gate, unless ``force`` (which needs ``reason``).
    """
    _check_channel(channel)
    if force and not reason.strip():
        raise InputError("--force needs --reason TEXT: a forced promotion is recorded with why it was forced.")
    if not approver.strip():
        raise InputError("An approver is required (--approver WHO or OTAML_APPROVER).")
    version = str(version)
    client = _client(tracking_uri)
    mv = _model_version(client, name, version)
    previous = _alias_version(client, name, channel)
    # Devices refuse a lower version without a signed rollback authorisation: promoting one would move MLflow
    # and the channel tag while every device keeps the old version.
    if previous is not None and _number(version, "Version") < _number(previous, f"{name}@{channel}"):
        raise InputError(
            f"{name}@{channel} is on v{previous}; promoting the older v{version} would be a downgrade that devices "
            f"refuse. Roll back instead: `otaml rollback {name} --to-version {version} --reason TEXT`."
        )
    config = load_gate_config(channel, gates_file)
    metrics = dict(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    fetch = fetch_bundle or (lambda n, v, d: download_bundle(n, v, d, tracking_uri=tracking_uri))
    with tempfile.TemporaryDirectory(prefix="otaml-promote-") as tmp:
        bundle = _fetch(fetch, name, version, Path(tmp))
        _check_card(bundle, name, version)
        report = evaluate_gates(config, channel, bundle=bundle, metrics=metrics, tags=dict(mv.tags or {}))
        if not report.passed and not force:
            lines = "\n".join(f"  - {r.name}: {r.detail}" for r in report.failures)
            raise PromotionRefused(
                f"Refusing to promote {name} v{version} to {channel}; {len(report.failures)} gate(s) failed:\n{lines}\n"
                "Fix the model, or override with --force --reason TEXT (both are recorded).",
                report,
            )
        notes = []
        image = None
        if publisher is None:
            notes.append("no image registry configured: MLflow alias and tags only, no image baked or signed")
        else:
            image = publisher.publish(
                name=name, version=version, channel=channel, bundle_dir=bundle.path, approver=approver
            )
    result = PromotionReport(
        action="promote",
        name=name,
        version=version,
        channel=channel,
        previous_version=previous,
        approver=approver,
        at=_timestamp(now()),
        forced=force and not report.passed,
        reason=reason,
        gates=report,
        image=image,
        notes=tuple(notes),
    )
    _record(client, result)
    return result


def rollback(
    name: str,
    to_version: str,
    channel: str,
    *,
    approver: str,
    reason: str,
    publisher: ImagePublisher | None = None,
    fetch_bundle: BundleFetcher | None = None,
    tracking_uri: str | None = None,
    now: Callable[[], datetime] = _now,
) -> PromotionReport:
    """Move ``channel`` back to ``to_version`` with a signed, recorded rollback authorisation (no gates)."""
    _check_channel(channel)
    if not reason.strip():
        raise InputError("A rollback needs --reason TEXT; it is signed into the rollback authorisation and recorded.")
    if not approver.strip():
        raise InputError("An approver is required (--approver WHO or OTAML_APPROVER).")
    to_version = str(to_version)
    client = _client(tracking_uri)
    _model_version(client, name, to_version)
    previous = _alias_version(client, name, channel)
    # A rollback skips the gates, so it may only go back: a known current version, and an older target.
    if previous is None:
        raise InputError(
            f"{name}@{channel} names no version, so there is nothing to roll back from. "
            f"Promote a version instead: `otaml promote {name} VERSION --to {channel}` (gates run)."
        )
    if _number(to_version, "--to-version") >= _number(previous, f"{name}@{channel}"):
        raise InputError(
            f"{name}@{channel} is on v{previous}; a rollback goes to an older version, not v{to_version}. "
            f"To ship v{to_version}, promote it (gates run): `otaml promote {name} {to_version} --to {channel}`."
        )
    at = _timestamp(now())
    authorisation = RollbackAuthorisation(
        from_version=previous, to_version=to_version, authorised_by=approver, reason=reason, at=at
    )
    notes = []
    image = None
    if publisher is None:
        notes.append("no image registry configured: MLflow alias and tags only, no rollback signed")
    else:
        fetch = fetch_bundle or (lambda n, v, d: download_bundle(n, v, d, tracking_uri=tracking_uri))
        with tempfile.TemporaryDirectory(prefix="otaml-rollback-") as tmp:
            bundle = _fetch(fetch, name, to_version, Path(tmp))
            _check_card(bundle, name, to_version)
            image = publisher.publish(
                name=name,
                version=to_version,
                channel=channel,
                bundle_dir=bundle.path,
                approver=approver,
                rollback=authorisation,
            )
    result = PromotionReport(
        action="rollback",
        name=name,
        version=to_version,
        channel=channel,
        previous_version=previous,
        approver=approver,
        at=at,
        reason=reason,
        image=image,
        notes=tuple(notes),
    )
    _record(client, result)
    return result


def _fetch(fetch: BundleFetcher, name: str, version: str, dest: Path) -> Bundle:
    return load_bundle(fetch(name, version, dest))


def _check_card(bundle: Bundle, name: str, version: str) -> None:
    # The image's labels come from the card and devices compare them with the signed version: a bundle that
    # names another model or version would be signed as one thing and labelled as another.
    card = bundle.card
    if (card.name, card.version) != (name, version):
        raise InputError(
            f"The bundle of {name} v{version} says it is {card.name} v{card.version}; it was not logged by "
            "`otaml train` for this version. Re-register the version with `otaml train`."
        )


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- listing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionSummary:
    name: str
    version: str
    aliases: tuple[str, ...]
    created_at: str
    run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)

    def approval(self, channel: str) -> dict[str, str]:
        """The last approval recorded on this version for ``channel`` (empty if never promoted there)."""
        prefix = f"{TAG_PREFIX}{channel}."
        return {k[len(prefix) :]: v for k, v in self.tags.items() if k.startswith(prefix)}

    def gate_summary(self, channel: str) -> str:
        raw = self.approval(channel).get("gates", "")
        if not raw:
            return ""
        data = json.loads(raw)
        failed = [r["name"] for r in data.get("results", []) if r.get("status") == "fail"]
        return "passed" if not failed else "failed: " + ", ".join(failed)


def list_versions(name: str | None = None, *, tracking_uri: str | None = None) -> list[VersionSummary]:
    """Every version (of ``name``, or of every registered model), newest first within a model."""
    client = _client(tracking_uri)
    if name is None:
        names = sorted(m.name for m in client.search_registered_models())
    else:
        if not _exists(client, name):
            _missing(name)
        names = [name]
    rows = []
    for model in names:
        # Version search results do not carry aliases on every store; the registered model always does.
        aliases: dict[str, list[str]] = {}
        for alias, number in (client.get_registered_model(model).aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        versions = client.search_model_versions(f"name='{model}'")
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            rows.append(
                VersionSummary(
                    name=model,
                    version=str(mv.version),
                    aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                    created_at=format_time(datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)),
                    run_id=mv.run_id or "",
                    tags=dict(mv.tags or {}),
                )
            )
    return rows


def _exists(client: MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _missing(name: str) -> None:
    raise NotFound(f"No registered model {name!r} in the MLflow registry; `otaml models list` shows them all.")


def history(name: str, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Every promotion and rollback of ``name``, oldest first."""
    client = _client(tracking_uri)
    if not _exists(client, name):
        _missing(name)
    tags = client.get_registered_model(name).tags or {}
    events = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(EVENT_PREFIX)]
    return sorted(events, key=lambda e: e.get("at", ""))


# --- the real image publisher ---------------------------------------------------------------------


def _conflict_message(store: Any, repository: str, tag: str, name: str, version: str, exc: Exception) -> str:
    held = ""
    try:  # best effort: say what the tag holds; the refusal stands either way
        from edge_runtime.oci import LABEL_BUNDLE_DIGEST, LABEL_MODEL_NAME, LABEL_MODEL_VERSION

        annotations = json.loads(store.read_manifest(tag)[0]).get("annotations") or {}
        held = (
            f" It holds model {annotations.get(LABEL_MODEL_NAME, '?')!r} v{annotations.get(LABEL_MODEL_VERSION, '?')}"
            f" (bundle {annotations.get(LABEL_BUNDLE_DIGEST, '?')}) by its own unsigned labels."
        )
    except (OtamlError, OSError, ValueError, AttributeError):
        pass
    return (
        f"Refusing to sign {repository}:{tag} for {name} v{version}: it does not hold this version's gated bundle "
        f"baked on the configured base ({exc}).{held} Use one image repository per model; if the base "
        "image moved since the version was first baked, pin the base by the digest it had then "
        "(OTAML_BASE_IMAGE=HOST/REPO@sha256:...); if nobody released the tag, delete it and promote again."
    )


class RegistryPublisher:
    """Bakes with :func:`registry.bake.bake`, signs with :mod:`registry.signing`, moves channel tags."""

    def __init__(self, target: ImageTarget, *, now: Callable[[], datetime] = _now) -> None:
        self.target = target
        self._now = now

    def publish(
        self,
        *,
        name: str,
        version: str,
        channel: str,
        bundle_dir: Path,
        approver: str,
        rollback: RollbackAuthorisation | None = None,
    ) -> ImageOutcome:
        from registry import bake as baking
        from registry import signing
        from registry.oci.errors import TagConflict
        from registry.oci.refs import close_store, open_store, parse_ref

        key = signing.load_private_key(self.target.signing_key)  # before pushing anything: fail early
        base_digest = self.target.base_digest  # a base pinned by digest, or nothing is baked
        approver_key = _approver_key(self.target.trust)
        if self.target.trust is not None and self.target.trust.all_at_once and not rollback:
            _check_all_at_once(self.target.trust, channel, name)
        ref = parse_ref(self.target.repository)
        if ref.tag or ref.digest:
            raise InputError(
                f"Image repository {self.target.repository!r} names a tag or digest; give HOST[:PORT]/REPOSITORY "
                "only (otaml pushes model-v<N> and moves the channel tag itself)."
            )
        repository = ref.location()
        version_tag = f"model-v{version}"
        store = open_store(ref)
        try:
            # Always bake: the digest signed must be that of the bundle the gates passed. Baking is reproducible,
            # so an existing model-v<N> of this bundle is re-used (nothing uploaded) and anything else at that tag
            # (pushed by someone, another model, a moved base) is a TagConflict, never signed.
            try:
                baked = baking.bake(self.target.base, bundle_dir, repository, tag=version_tag)
            except TagConflict as exc:
                raise TagConflict(_conflict_message(store, repository, version_tag, name, version, exc)) from exc
            digest = baked.digest
            moment = self._now()
            payload = signing.build_payload(
                digest=digest,
                reference=self.target.reference or repository,
                model=name,
                version=version,
                channel=channel,
                approver=approver,
                signed_at=moment,
                expires_at=moment + self.target.expires_in if self.target.expires_in else None,
                rollback=rollback,
            )
            # Sign before moving the channel: a device polling in between must never see an unsigned head.
            sig_tag = signing.push_signature(store, digest, signing.sign_payload(key, payload))
        finally:
            close_store(store)
        baking.tag(f"{repository}@{digest}", channel)
        approval, missing, staged = "", 0, False
        if self.target.trust is not None and approver_key is not None:
            status = _approve(
                self.target.trust,
                approver_key,
                Approval(
                    channel=channel,
                    model=name,
                    version=int(version),
                    digest=digest,
                    length=baked.index_size,
                    base_digest=base_digest,
                ),
                rollback=rollback is not None,
            )
            approval, missing = status.state, status.missing
            staged = status.approval.staged and rollback is None
        return ImageOutcome(
            repository=repository,
            digest=digest,
            version_tag=version_tag,
            channel_tag=channel,
            signature_tag=sig_tag,
            approval=approval,
            approvals_missing=missing,
            staged=staged,
        )


def _approver_key(trust: TrustTarget | None) -> Any:
    """The approver's targets signer, loaded before anything is pushed (a bad key fails early)."""
    if trust is None:
        return None
    from registry.tuf import keys

    return keys.load_signer(trust.approval_key)


def _check_all_at_once(trust: TrustTarget, channel: str, model: str) -> None:
    """``--all-at-once`` means nothing once a rollout record decides: refuse it before anything is pushed."""
    from registry.tuf.site import TrustSite

    record = TrustSite(trust.site).open().rollout_record(channel, model)
    if record is not None:
        raise InputError(
            f"--all-at-once: rollout {record.rollout_id} ({record.state}) decides which version the devices of "
            f"{model} on {channel} run, so an approval alone moves none of them. Approve without --all-at-once, "
            f"then `otaml rollout start {model} VERSION --channel {channel} --waves 100` moves them all at once"
        )


def _approve(trust: TrustTarget, signer: Any, approval: Approval, *, rollback: bool) -> Any:
    """Sign the approval (or, for a rollback, the withdrawal of newer versions) into the trust site."""
    from registry.tuf.site import TrustSite

    with TrustSite(trust.site).locked() as repo:
        if rollback:
            if not any(a.same_image(approval) for a in repo.approvals()):
                repo_status = repo.propose(approval, signer)  # an old version approved before trust existed
                if repo_status.state != "approved":
                    raise InputError(
                        f"v{approval.version} needs {repo_status.missing} more approval(s) before devices may roll "
                        "back to it: `otaml trust approve` with another approver key, then roll back again."
                    )
            return repo.withdraw(approval.channel, approval.model, above=approval.version, signer=signer)
        staged = not trust.all_at_once and repo.stages(approval.channel, approval.model, approval.version)
        return repo.propose(replace(approval, staged=staged), signer)
