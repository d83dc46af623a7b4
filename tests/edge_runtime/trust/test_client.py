"""The trust client's answers and its error tree: every failure is a typed TrustError with a reason code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.errors import InputError, TemporaryError, VerificationFailed
from edge_runtime.trust.approval import Approval
from edge_runtime.trust.client import TrustClient, TrustSettings
from edge_runtime.trust.errors import (
    LocalStateError,
    MalformedMetadata,
    MetadataUnavailable,
    NotApproved,
    TrustConfigError,
    TrustError,
)
from edge_runtime.trust.fetch import CappedFetcher, role_of
from edge_runtime.trust.limits import MetadataLimits
from tests.edge_runtime.trust.fakes import BASE_URL, Device, DirectoryFetcher, provision
from tests.registry.tuf.fleet import Fleet, image, make_fleet

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = make_fleet(tmp_path / "repo")
    for version in (6, 7):
        fleet.approve(image(version))
    fleet.approve(image(2, model="bearing-wear"))
    return fleet


@pytest.fixture
def device(tmp_path: Path, fleet: Fleet) -> Device:
    return provision(tmp_path, fleet)


def test_an_approved_digest_answers_its_version_and_base(device: Device) -> None:
    approval = device.client.approval(image(6).digest, channel="production", model="pump-anomaly")
    assert approval == image(6)
    assert approval.version == 6
    assert approval.base_digest == image(6).base_digest


def test_refresh_lists_every_approval_and_latest_picks_the_highest(device: Device) -> None:
    approvals = device.client.refresh()
    assert sorted(a.target_path for a in approvals.approvals) == [
        "production/bearing-wear/2",
        "production/pump-anomaly/6",
        "production/pump-anomaly/7",
    ]
    assert approvals.targets_version == 4
    assert device.client.latest(channel="production", model="pump-anomaly").version == 7
    with pytest.raises(NotApproved, match="no version of model 'pump-anomaly' is approved for channel 'staging'"):
        device.client.latest(channel="staging", model="pump-anomaly")


@pytest.mark.parametrize(
    ("digest", "channel", "model"),
    [
        ("sha256:" + "0" * 64, "production", "pump-anomaly"),
        (image(6).digest, "staging", "pump-anomaly"),
        (image(6).digest, "production", "bearing-wear"),
        ("sha256:ABC", "production", "pump-anomaly"),
        (image(6).digest, "production", "../pump-anomaly"),
    ],
)
def test_anything_else_is_not_approved(device: Device, digest: str, channel: str, model: str) -> None:
    with pytest.raises(NotApproved) as caught:
        device.client.approval(digest, channel=channel, model=model)
    assert isinstance(caught.value, VerificationFailed)  # the agent's existing branch: never retried as-is


def test_the_error_tree_has_one_root_and_reason_codes() -> None:
    from edge_runtime.trust import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, TrustError)]
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons))  # one code, one meaning
    doc = errors.__doc__ or ""
    for cls in classes:  # the module docstring draws the whole tree: every class and its code is in it
        assert cls.__name__ in doc
        assert cls.__name__ == "TrustError" or cls.reason in doc or cls.__name__ == "NotTrusted"
    assert issubclass(errors.MetadataUnavailable, TemporaryError)
    assert issubclass(errors.TrustConfigError, InputError)
    assert all(issubclass(c, VerificationFailed) for c in classes if issubclass(c, errors.NotTrusted))


def test_a_missing_trusted_root_names_the_setting(tmp_path: Path) -> None:
    settings = TrustSettings(BASE_URL, tmp_path / "absent-root.json", tmp_path / "tuf")
    with pytest.raises(TrustConfigError, match=r"absent-root\.json does not exist; provision the device"):
        TrustClient(settings, fetcher=DirectoryFetcher(tmp_path)).refresh()


def test_a_trusted_root_that_is_not_a_signed_root_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    bad = tmp_path / "root.json"
    bad.write_bytes(fleet.store.read("timestamp.json"))
    settings = TrustSettings(BASE_URL, bad, tmp_path / "tuf")
    with pytest.raises(TrustConfigError, match="not valid, self-signed TUF root metadata"):
        TrustClient(settings, fetcher=DirectoryFetcher(fleet.path)).refresh()


@pytest.mark.parametrize("url", ["file:///srv/tuf", "repo.test/tuf", "http://"])
def test_a_metadata_url_that_is_not_http_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(TrustConfigError, match="is not an http"):
        TrustSettings(url, tmp_path / "root.json", tmp_path / "tuf")


def test_an_unreachable_repository_is_temporary(device: Device) -> None:
    device.fetcher.status["timestamp.json"] = 503
    with pytest.raises(MetadataUnavailable, match="HTTP 503") as caught:
        device.client.refresh()
    assert caught.value.reason == "metadata-unavailable"
    assert isinstance(caught.value, TemporaryError)


def test_garbage_and_hostile_json_is_malformed_not_a_crash(device: Device) -> None:
    for body in (b"\x00\xff not json", b"[]", b'{"signed": [], "signatures": {}}', json.dumps({"a": 1}).encode()):
        device.fetcher.overrides["timestamp.json"] = body
        with pytest.raises(MalformedMetadata):
            device.client.refresh()


def test_a_signed_target_that_is_no_approval_approves_nothing(tmp_path: Path, fleet: Fleet) -> None:
    md = fleet.repo.targets()
    md.signed.version += 1
    from tuf.api.metadata import TargetFile

    md.signed.targets["production/pump-anomaly/9"] = TargetFile(10, {"sha256": "ab" * 32}, "production/pump-anomaly/9")
    md.signatures.clear()
    for key in fleet.targets_keys[:2]:
        md.sign(key, append=True)
    fleet.repo._publish(md, fleet.repo.snapshot())
    device = provision(tmp_path, fleet)
    approvals = device.client.refresh()
    assert approvals.malformed == ("production/pump-anomaly/9",)
    with pytest.raises(NotApproved, match="ignored malformed targets: production/pump-anomaly/9"):
        approvals.find("sha256:" + "ab" * 32, channel="production", model="pump-anomaly")


def test_a_slow_drip_is_cut_at_the_deadline(device: Device) -> None:
    ticks = iter(range(0, 10_000, 10))  # every read of the clock: 10 s later

    device.fetcher.overrides["timestamp.json"] = [b"{"] * 100
    client = TrustClient(device.settings, fetcher=device.fetcher, clock=lambda: float(next(ticks)))
    with pytest.raises(MetadataUnavailable, match="took longer than 60 s"):
        client.refresh()


def test_an_unwritable_metadata_dir_is_local_state(tmp_path: Path, fleet: Fleet) -> None:
    device = provision(tmp_path, fleet)
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = TrustSettings(BASE_URL, device.settings.trusted_root, blocker / "tuf")
    with pytest.raises(LocalStateError, match="cannot create the trust metadata directory"):
        TrustClient(settings, fetcher=device.fetcher).refresh()


def test_caps_follow_the_role_in_the_url() -> None:
    assert role_of(BASE_URL + "timestamp.json") == "timestamp"
    assert role_of(BASE_URL + "12.root.json") == "root"
    assert role_of(BASE_URL + "3.snapshot.json?x=1") == "snapshot"
    assert role_of(BASE_URL + "4.targets.json") == "targets"
    limits = MetadataLimits()
    assert (limits.cap("root"), limits.cap("timestamp"), limits.cap("production")) == (
        131072,
        16384,
        limits.targets,
    )


def test_a_transport_error_mid_body_becomes_a_download_error(tmp_path: Path) -> None:
    from tuf.api.exceptions import DownloadError

    def broken() -> object:
        yield b"{"
        raise ConnectionResetError("peer reset")

    fetcher = DirectoryFetcher(tmp_path)
    fetcher.overrides["timestamp.json"] = broken()  # type: ignore[assignment]
    capped = CappedFetcher(fetcher, MetadataLimits())
    with pytest.raises(DownloadError, match="peer reset"):
        capped.download_bytes(BASE_URL + "timestamp.json", 1000)


@pytest.mark.parametrize("field", ["root", "timestamp", "snapshot", "targets", "root_rotations"])
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(InputError, match=f"trust limit '{field}' has value 0"):
        MetadataLimits(**{field: 0})  # type: ignore[arg-type]


def test_approval_fields_are_validated() -> None:
    with pytest.raises(InputError, match="model version 0"):
        Approval("production", "m", 0, image(1).digest, 1, image(1).base_digest)
    with pytest.raises(InputError, match="channel 'a/b'"):
        Approval("a/b", "m", 1, image(1).digest, 1, image(1).base_digest)
    with pytest.raises(MalformedMetadata, match="must name targets <channel>/<model>/<version>"):
        Approval.from_target("production/m/2", 1, {"sha256": "ab" * 32}, image(1, model="m").custom())


def test_staged_is_signed_in_the_target_and_read_back_strictly() -> None:
    staged = image(2, staged=True)
    assert staged.custom()["staged"] is True
    assert "staged" not in image(2).custom()
    assert Approval.from_target(staged.target_path, staged.length, {"sha256": staged.sha256}, staged.custom()) == staged
    assert staged.same_image(image(2))
    assert not staged.same_image(image(2, tag="other"))
    with pytest.raises(MalformedMetadata, match="staged 'yes' is not true or false"):
        Approval.from_target(staged.target_path, 1, {"sha256": staged.sha256}, {**staged.custom(), "staged": "yes"})


def test_the_scoring_service_never_imports_tuf() -> None:
    probe = (
        "import sys, json\n"
        "import edge_runtime.server, edge_runtime.trust, edge_runtime.trust.errors, edge_runtime.trust.approval\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tuf', 'securesystemslib'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout) == []
