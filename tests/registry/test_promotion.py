"""Promotion against a real MLflow (sqlite here; the PostgreSQL-backed server in the integration tier)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bundle import Bundle, load_bundle
from edge_runtime.errors import InputError, NotFound, TemporaryError
from registry.cosign import RollbackAuthorisation
from registry.promotion import (
    ImageOutcome,
    ImageTarget,
    PromotionRefused,
    history,
    list_versions,
    promote,
    rollback,
)
from tests.conftest import require
from tests.registry.mlflow_versions import RELAXED_GATES, register_version

STRICT_GATES = """
[default]
min_metrics = { test_f1 = 0.95 }
max_bundle_bytes = 1000
max_latency_p50_ms = 10_000.0
max_latency_p99_ms = 10_000.0
"""


@pytest.fixture(scope="module")
def shared_tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite store for the module: creating its schema costs seconds, so tests share it."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    gates = root / "gates.toml"
    gates.write_text(RELAXED_GATES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OTAML_GATES", str(gates))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        yield uri


@pytest.fixture
def pump(shared_tracking: str, request: pytest.FixtureRequest) -> str:
    """A model name of this test's own in the shared store."""
    return "pump-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]


def alias_version(name: str, alias: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias(name, alias).version)


@dataclass
class FakePublisher:
    """Records publish calls; the real one (bake + sign + tag) runs in the integration tier."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def publish(self, **kwargs: Any) -> ImageOutcome:
        if self.fail:
            raise TemporaryError("registry down; retry later")
        bundle = load_bundle(kwargs["bundle_dir"])  # the bundle that ships is the version's own
        self.calls.append({**kwargs, "card_version": bundle.card.version})
        return ImageOutcome(
            repository="127.0.0.1:5000/pump",
            digest="sha256:" + "c" * 64,
            version_tag=f"model-v{kwargs['version']}",
            channel_tag=kwargs["channel"],
            signature_tag="sha256-" + "c" * 64 + ".sig",
        )


def test_promotion_passes_gates_sets_alias_and_records_approval(pump: str, model_bundle: Bundle) -> None:
    version = register_version(pump, model_bundle.path)
    report = promote(pump, version, "staging", approver="alice")
    assert report.gates is not None
    assert report.gates.passed
    assert alias_version(pump, "staging") == version
    assert "no image registry configured" in report.notes[0]
    # models:/NAME@alias resolves to the promoted version's bundle.
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{pump}@staging"))
    assert load_bundle(local).card.onnx.sha256 == model_bundle.card.onnx.sha256
    (row,) = list_versions(pump)
    assert row.aliases == ("staging",)
    assert row.approval("staging")["approved_by"] == "alice"
    assert row.gate_summary("staging") == "passed"
    (event,) = history(pump)
    assert event["action"] == "promote"
    assert (event["version"], event["channel"], event["approver"], event["forced"]) == (
        version,
        "staging",
        "alice",
        False,
    )


def test_failing_gates_refuse_with_every_reason_and_move_nothing(
    pump: str, model_bundle: Bundle, tmp_path: Path
) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text(STRICT_GATES)
    version = register_version(pump, model_bundle.path, metrics={"test_f1": 0.6, "parity_fp32_agreement": 1.0})
    with pytest.raises(PromotionRefused) as info:
        promote(pump, version, "production", approver="alice", gates_file=gates)
    message = str(info.value)
    assert "metric:test_f1" in message
    assert "bundle_size" in message
    assert "--force --reason" in message
    assert {r.name for r in info.value.report.failures} == {"metric:test_f1", "bundle_size"}
    assert list_versions(pump)[0].aliases == ()
    assert history(pump) == []


def test_force_needs_a_reason_and_both_are_recorded(pump: str, model_bundle: Bundle, tmp_path: Path) -> None:
    gates = tmp_path / "gates.toml"
    gates.write_text(STRICT_GATES)
    version = register_version(pump, model_bundle.path)
    with pytest.raises(InputError, match="--reason"):
        promote(pump, version, "production", approver="alice", gates_file=gates, force=True)
    report = promote(
        pump, version, "production", approver="alice", gates_file=gates, force=True, reason="hotfix INC-42"
    )
    assert report.forced
    assert alias_version(pump, "production") == version
    approval = list_versions(pump)[0].approval("production")
    assert (approval["forced"], approval["reason"]) == ("true", "hotfix INC-42")
    assert json.loads(approval["gates"])["passed"] is False
    (event,) = history(pump)
    assert event["forced"] is True
    assert event["reason"] == "hotfix INC-42"
    assert event["gates"]["bundle_size"] == "fail"


def test_publisher_gets_the_versions_bundle_and_its_outcome_is_recorded(pump: str, model_bundle: Bundle) -> None:
    version = register_version(pump, model_bundle.path)
    publisher = FakePublisher()
    report = promote(pump, version, "production", approver="alice", publisher=publisher)
    (call,) = publisher.calls
    assert (call["name"], call["version"], call["channel"], call.get("rollback")) == (
        pump,
        version,
        "production",
        None,
    )
    assert report.image is not None
    assert list_versions(pump)[0].approval("production")["image"] == f"127.0.0.1:5000/pump@sha256:{'c' * 64}"
    assert history(pump)[0]["image"].endswith("c" * 64)


def test_a_failed_publish_leaves_alias_and_history_untouched(pump: str, model_bundle: Bundle) -> None:
    version = register_version(pump, model_bundle.path)
    with pytest.raises(TemporaryError):
        promote(pump, version, "production", approver="alice", publisher=FakePublisher(fail=True))
    assert list_versions(pump)[0].aliases == ()
    assert history(pump) == []


def test_rollback_moves_alias_back_with_a_recorded_authorisation(pump: str, model_bundle: Bundle) -> None:
    v1 = register_version(pump, model_bundle.path)
    v2 = register_version(pump, model_bundle.path)
    promote(pump, v1, "production", approver="alice")
    promote(pump, v2, "production", approver="alice")
    assert alias_version(pump, "production") == v2
    with pytest.raises(InputError, match="--reason"):
        rollback(pump, v1, "production", approver="bob", reason=" ")
    publisher = FakePublisher()
    report = rollback(pump, v1, "production", approver="bob", reason="v2 false alarms", publisher=publisher)
    assert alias_version(pump, "production") == v1
    assert report.previous_version == v2
    authorisation = publisher.calls[0]["rollback"]
    assert isinstance(authorisation, RollbackAuthorisation)
    assert (authorisation.from_version, authorisation.to_version, authorisation.authorised_by) == (v2, v1, "bob")
    events = history(pump)
    assert [e["action"] for e in events] == ["promote", "promote", "rollback"]
    assert events[-1]["previous_version"] == v2
    assert events[-1]["reason"] == "v2 false alarms"


def test_unknown_model_or_version_and_channel_are_clear_errors(pump: str, model_bundle: Bundle) -> None:
    with pytest.raises(NotFound, match="otaml models list"):
        promote(pump, "1", "staging", approver="alice")
    version = register_version(pump, model_bundle.path)
    with pytest.raises(NotFound, match="no version '9'"):
        promote(pump, "9", "staging", approver="alice")
    with pytest.raises(InputError, match="Channel 'prod'"):
        promote(pump, version, "prod", approver="alice")
    with pytest.raises(NotFound):
        history("nope")


def test_image_target_needs_all_three_settings(tmp_path: Path) -> None:
    assert ImageTarget.from_options(env={}) is None
    with pytest.raises(InputError, match="OTAML_SIGNING_KEY"):
        ImageTarget.from_options(env={"OTAML_BASE_IMAGE": "h:5000/base:1", "OTAML_IMAGE_REPO": "h:5000/pump"})
    target = ImageTarget.from_options(
        signing_key=str(tmp_path / "k"),
        env={"OTAML_BASE_IMAGE": "h:5000/base:1", "OTAML_IMAGE_REPO": "h:5000/pump", "OTAML_SIGNATURE_DAYS": "30"},
    )
    assert target is not None
    assert target.expires_in is not None
    assert target.expires_in.days == 30


def _server_uri(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL-backed ``mlflow server`` of tests/fixtures/mlflow_server.py (its tracking URI)."""
    try:
        server = request.getfixturevalue("mlflow_server")
    except pytest.FixtureLookupError:
        require(False, "the mlflow_server fixture (tests/fixtures/mlflow_server.py)", "PostgreSQL + mlflow server")
    for attr in ("tracking_uri", "uri", "url"):
        if isinstance(getattr(server, attr, None), str):
            return str(getattr(server, attr))
    return str(server)


@pytest.mark.integration
def test_gates_force_and_rollback_against_a_postgresql_backed_mlflow_server(
    request: pytest.FixtureRequest, model_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _server_uri(request)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    (tmp_path / "gates.toml").write_text(RELAXED_GATES)
    monkeypatch.setenv("OTAML_GATES", str(tmp_path / "gates.toml"))
    monkeypatch.chdir(tmp_path)
    name = f"pump-pg-{tmp_path.name}".lower().replace("_", "-")
    v1 = register_version(name, model_bundle.path, tracking_uri=uri)
    v2 = register_version(name, model_bundle.path, tracking_uri=uri, metrics={"test_f1": 0.1})
    promote(name, v1, "production", approver="alice", tracking_uri=uri)
    with pytest.raises(PromotionRefused, match="metric:test_f1"):
        promote(name, v2, "production", approver="alice", tracking_uri=uri)
    forced = promote(name, v2, "production", approver="carol", force=True, reason="INC-7", tracking_uri=uri)
    assert forced.forced
    rollback(name, v1, "production", approver="bob", reason="f1 regression", tracking_uri=uri)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias(name, "production").version) == v1
    events = history(name, tracking_uri=uri)
    assert [(e["action"], e["version"], e["forced"]) for e in events] == [
        ("promote", v1, False),
        ("promote", v2, True),
        ("rollback", v1, False),
    ]


def test_promoting_below_the_channels_version_is_refused_with_the_rollback_command(
    pump: str, model_bundle: Bundle
) -> None:
    v1 = register_version(pump, model_bundle.path)
    v2 = register_version(pump, model_bundle.path)
    promote(pump, v2, "production", approver="alice")
    publisher = FakePublisher()
    with pytest.raises(InputError, match=rf"otaml rollback {pump} --to-version {v1} --reason"):
        promote(pump, v1, "production", approver="alice", publisher=publisher)
    assert publisher.calls == []
    assert alias_version(pump, "production") == v2
    promote(pump, v2, "production", approver="alice")  # re-approving the same version stays allowed


def test_rollback_only_goes_back_from_a_known_version(pump: str, model_bundle: Bundle) -> None:
    v1 = register_version(pump, model_bundle.path)
    v2 = register_version(pump, model_bundle.path)
    publisher = FakePublisher()
    with pytest.raises(InputError, match="names no version"):
        rollback(pump, v1, "production", approver="bob", reason="r", publisher=publisher)
    promote(pump, v1, "production", approver="alice")
    with pytest.raises(InputError, match=rf"otaml promote {pump} {v2} --to production"):
        rollback(pump, v2, "production", approver="bob", reason="skip the gates", publisher=publisher)
    with pytest.raises(InputError, match="older version"):
        rollback(pump, v1, "production", approver="bob", reason="r", publisher=publisher)
    assert publisher.calls == []
    assert alias_version(pump, "production") == v1


def test_an_mlflow_error_reading_the_channel_surfaces_instead_of_signing(
    pump: str, model_bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    v1 = register_version(pump, model_bundle.path)
    v2 = register_version(pump, model_bundle.path)
    promote(pump, v2, "production", approver="alice")

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise MlflowException("API request failed: 503", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(MlflowClient, "get_model_version_by_alias", down)
    publisher = FakePublisher()
    with pytest.raises(TemporaryError, match="Nothing was changed"):
        rollback(pump, v1, "production", approver="bob", reason="r", publisher=publisher)
    with pytest.raises(TemporaryError):
        promote(pump, v1, "production", approver="alice", publisher=publisher)
    assert publisher.calls == []
    monkeypatch.undo()
    assert alias_version(pump, "production") == v2


# --- the real publisher on OCI layouts (no registry needed) --------------------------------------


def _card_copy(bundle: Bundle, dest: Path, name: str, version: str) -> Path:
    import dataclasses

    from edge_runtime.bundle import write_bundle

    card = dataclasses.replace(bundle.card, name=name, version=version)
    return write_bundle(dest, card, bundle.onnx_path.read_bytes()).path


def test_publisher_never_signs_what_a_model_tag_holds_unless_it_is_the_gated_bundle(
    model_bundle: Bundle, tmp_path: Path
) -> None:
    from registry.oci.errors import TagConflict
    from registry.oci.layout import Layout
    from registry.oci.refs import pinned
    from registry.promotion import ImageTarget, RegistryPublisher
    from registry.signing import generate_keys
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    keys = generate_keys(tmp_path / "keys")
    repo = tmp_path / "repo"
    layout = Layout(repo, create=True)
    base = pinned(f"oci:{tmp_path / 'base'}:base")
    publisher = RegistryPublisher(ImageTarget(base=base, repository=f"oci:{repo}", signing_key=keys.private_key))
    pump1 = _card_copy(model_bundle, tmp_path / "pump1", "pump", "1")
    staged = publisher.publish(name="pump", version="1", channel="staging", bundle_dir=pump1, approver="alice")
    prod = publisher.publish(name="pump", version="1", channel="production", bundle_dir=pump1, approver="alice")
    assert prod.digest == staged.digest  # reproducible bake: production signs what staging ran

    # Another model in the same repository: fan v1 must not be signed as pump's image (or vice versa).
    fan1 = _card_copy(model_bundle, tmp_path / "fan1", "fan", "1")
    with pytest.raises(TagConflict, match=r"holds model 'pump' v1.*one image repository per model"):
        publisher.publish(name="fan", version="1", channel="production", bundle_dir=fan1, approver="alice")

    # Someone with push rights puts another image at model-v2 before the operator promotes v2.
    data, media_type, _ = layout.read_manifest("model-v1")
    layout.write_manifest(data, media_type, "model-v2")
    pump2 = _card_copy(model_bundle, tmp_path / "pump2", "pump", "2")
    with pytest.raises(TagConflict, match="Refusing to sign"):
        publisher.publish(name="pump", version="2", channel="production", bundle_dir=pump2, approver="alice")
    assert layout.resolve("production") is not None
    assert layout.resolve("production").digest == staged.digest  # type: ignore[union-attr]
    sigs = [t for t in layout.tags() if t.endswith(".sig")]
    assert sigs == [prod.signature_tag]  # only pump v1 was ever signed


def test_publisher_signs_the_repository_devices_pull_from(model_bundle: Bundle, tmp_path: Path) -> None:
    from registry.cosign import parse_payload
    from registry.oci.layout import Layout
    from registry.oci.refs import pinned
    from registry.promotion import ImageTarget, RegistryPublisher
    from registry.signing import generate_keys, read_signatures
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    layout = Layout(tmp_path / "repo", create=True)
    target = ImageTarget.from_options(
        pinned(f"oci:{tmp_path / 'base'}:base"),
        f"oci:{tmp_path / 'repo'}",
        str(generate_keys(tmp_path / "keys").private_key),
        env={"OTAML_IMAGE_REFERENCE": "registry.example.com/fleet/pump"},
    )
    assert target is not None
    bundle = _card_copy(model_bundle, tmp_path / "pump1", "pump", "1")
    out = RegistryPublisher(target).publish(
        name="pump", version="1", channel="staging", bundle_dir=bundle, approver="alice"
    )
    (layer,) = read_signatures(layout, out.digest)
    assert parse_payload(layer.payload).reference == "registry.example.com/fleet/pump"


def test_promotion_bakes_only_onto_a_base_pinned_by_digest(model_bundle: Bundle, tmp_path: Path) -> None:
    from registry.oci.layout import Layout
    from registry.promotion import ImageTarget, RegistryPublisher
    from registry.signing import generate_keys
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    repo = Layout(tmp_path / "repo", create=True)
    target = ImageTarget(
        base=f"oci:{tmp_path / 'base'}:base",
        repository=f"oci:{tmp_path / 'repo'}",
        signing_key=generate_keys(tmp_path / "keys").private_key,
    )
    bundle = _card_copy(model_bundle, tmp_path / "pump1", "pump", "1")
    with pytest.raises(InputError, match=r"not pinned by digest.*REF@sha256"):
        RegistryPublisher(target).publish(name="pump", version="1", channel="staging", bundle_dir=bundle, approver="a")
    assert repo.tags() == [], "nothing may be pushed for an unpinned base"


def test_promotion_approves_into_the_trust_site_with_four_eyes_and_rollback_withdraws(
    model_bundle: Bundle, tmp_path: Path
) -> None:
    from registry.oci.layout import Layout
    from registry.oci.refs import pinned
    from registry.promotion import ImageTarget, RegistryPublisher, TrustTarget
    from registry.signing import generate_keys
    from registry.tuf import keys
    from registry.tuf.site import TrustSite, init
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    Layout(tmp_path / "repo", create=True)
    site = init(tmp_path / "trust", tmp_path / "offline", approvers=3, threshold=2)
    base = pinned(f"oci:{tmp_path / 'base'}:base")
    target = ImageTarget(
        base=base,
        repository=f"oci:{tmp_path / 'repo'}",
        signing_key=generate_keys(tmp_path / "keys").private_key,
        trust=TrustTarget(site.site.path, site.approver_keys[0]),
    )
    publisher = RegistryPublisher(target)
    v1 = _card_copy(model_bundle, tmp_path / "pump1", "pump", "1")
    out = publisher.publish(name="pump", version="1", channel="production", bundle_dir=v1, approver="alice")
    assert (out.approval, out.approvals_missing) == ("pending", 1)
    repo = TrustSite(site.site.path).open()
    assert repo.approvals() == []  # one approver is not enough: devices see nothing yet
    status = repo.approve_pending(keys.load_signer(site.approver_keys[1]))
    assert status.state == "approved"
    (approved,) = repo.approvals()
    assert (approved.model, approved.version, approved.digest) == ("pump", 1, out.digest)
    assert approved.base_digest == base.rsplit("@", 1)[1], "the signed target records the pinned base"
    # The same key cannot count twice.
    v2 = _card_copy(model_bundle, tmp_path / "pump2", "pump", "2")
    publisher.publish(name="pump", version="2", channel="production", bundle_dir=v2, approver="alice")
    with pytest.raises(InputError, match="second, different approver"):
        repo.approve_pending(keys.load_signer(site.approver_keys[0]))
    repo.approve_pending(keys.load_signer(site.approver_keys[2]))
    assert [a.version for a in repo.approvals()] == [1, 2]
    # A rollback is a signed withdrawal of the newer approvals, with four eyes too.
    from registry.cosign import RollbackAuthorisation

    back = publisher.publish(
        name="pump",
        version="1",
        channel="production",
        bundle_dir=v1,
        approver="bob",
        rollback=RollbackAuthorisation(from_version="2", to_version="1", authorised_by="bob", reason="r", at="t"),
    )
    assert back.approval == "pending"
    assert [a.version for a in repo.approvals()] == [1, 2]
    repo.approve_pending(keys.load_signer(site.approver_keys[1]))
    assert [a.version for a in repo.approvals()] == [1]


def test_promotion_stages_a_version_while_another_runs_unless_all_at_once(model_bundle: Bundle, tmp_path: Path) -> None:
    """In a site that rolls out in waves, v1 goes to every device (nothing to fall back to); v2, promoted while
    v1 runs, is approved but staged until a rollout; ``all_at_once`` approves v3 for every device at once."""
    from dataclasses import replace

    from registry.oci.layout import Layout
    from registry.oci.refs import pinned
    from registry.promotion import ImageTarget, RegistryPublisher, TrustTarget
    from registry.signing import generate_keys
    from registry.tuf.site import TrustSite, init
    from tests.registry.oci.fakes import write_fake_base

    write_fake_base(tmp_path / "base")
    Layout(tmp_path / "repo", create=True)
    site = init(tmp_path / "trust", tmp_path / "offline", approvers=1, threshold=1)
    target = ImageTarget(
        base=pinned(f"oci:{tmp_path / 'base'}:base"),
        repository=f"oci:{tmp_path / 'repo'}",
        signing_key=generate_keys(tmp_path / "keys").private_key,
        trust=TrustTarget(site.site.path, site.approver_keys[0]),
    )

    def publish(version: str, target: ImageTarget = target, **kwargs: Any) -> Any:
        bundle = _card_copy(model_bundle, tmp_path / f"pump{version}", "pump", version)
        return RegistryPublisher(target).publish(
            name="pump", version=version, channel="production", bundle_dir=bundle, approver="alice", **kwargs
        )

    assert [(o.approval, o.staged) for o in (publish("1"), publish("2"))] == [("approved", False), ("approved", True)]
    assert publish("2").staged, "promoting it again reports the published approval"
    all_at_once = replace(target, trust=replace(target.trust, all_at_once=True))
    assert publish("3", all_at_once).staged is False
    repo = TrustSite(site.site.path).open()
    assert [(a.version, a.staged) for a in repo.approvals()] == [(1, False), (2, True), (3, False)]
    from registry.cosign import RollbackAuthorisation

    def back_to(version: str) -> Any:
        by = RollbackAuthorisation(from_version="3", to_version=version, authorised_by="b", reason="r", at="t")
        return publish(version, rollback=by)

    # Devices run v3 and never ran the staged v2: rolling back to it approves it for them in the same signed act.
    assert (back_to("2").approval, back_to("2").staged) == ("approved", False)
    assert [(a.version, a.staged) for a in repo.approvals()] == [(1, False), (2, False)]
    # Once a rollout record decides, --all-at-once would move nobody: refused before anything is pushed.
    from registry.fleet.rollout import RolloutService, TufRecordStore

    assert publish("4").staged
    store = TufRecordStore(TrustSite(site.site.path).open(), TrustSite(site.site.path).rollouts_signer())
    RolloutService(store).start("pump", 4, channel="production", waves=(100,))
    with pytest.raises(InputError, match=r"--all-at-once: rollout pump-v4-\w+ \(running\) decides"):
        publish("5", all_at_once)
    tags = Layout(tmp_path / "repo").tags()
    assert "model-v4" in tags
    assert "model-v5" not in tags
