"""``otaml trust``: the key ceremony, status, the second approver, the timestamp refresh — through the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edge_runtime.trust.approval import Approval
from otaml.cli import main
from registry.tuf import keys
from registry.tuf.site import TrustSite

DIGEST = "sha256:" + "ab" * 32
BASE = "sha256:" + "cd" * 32


def test_init_status_approve_and_refresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, offline = tmp_path / "site", tmp_path / "offline"
    assert main(["trust", "init", "--dir", str(site), "--keys-out", str(offline)]) == 0
    assert "2 of 3 approver keys" in capsys.readouterr().out
    assert stat.S_IMODE((offline / "approver-1.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((site / "online").stat().st_mode) == 0o700
    assert not list((site / "metadata").glob("*.key")), "no private key is ever published"

    with TrustSite(site).locked() as repo:
        repo.propose(Approval("production", "pump", 1, DIGEST, 900, BASE), keys.load_signer(offline / "approver-1.key"))
    assert main(["trust", "status", "--dir", str(site), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["approvals"] == []
    assert (status["pending"]["target"], status["pending"]["missing"]) == ("production/pump/1", 1)

    # The same approver again is not four eyes; a second one publishes it.
    assert main(["trust", "approve", "--dir", str(site), "--key", str(offline / "approver-1.key")]) == 1
    assert "second, different approver" in capsys.readouterr().err
    assert main(["trust", "approve", "--dir", str(site), "--key", str(offline / "approver-2.key")]) == 0
    assert "devices will run it" in capsys.readouterr().out
    before = TrustSite(site).open().timestamp().signed.version
    assert main(["trust", "refresh", "--dir", str(site)]) == 0
    assert "timestamp re-signed" in capsys.readouterr().out
    assert TrustSite(site).open().timestamp().signed.version == before + 1
    assert main(["trust", "status", "--dir", str(site), "--json"]) == 0
    assert [a["version"] for a in json.loads(capsys.readouterr().out)["approvals"]] == [1]

    # v2, approved while v1 runs, is staged: the second approver sees it before signing, and after.
    with TrustSite(site).locked() as repo:
        staged = Approval("production", "pump", 2, "sha256:" + "ef" * 32, 900, BASE, staged=True)
        repo.propose(staged, keys.load_signer(offline / "approver-1.key"))
    assert main(["trust", "status", "--dir", str(site)]) == 0
    assert "pending: production/pump/2 sha256:efef" in (out := capsys.readouterr().out)
    assert "(staged: devices move with a rollout) — 1 more signature(s)" in out
    assert main(["trust", "status", "--dir", str(site), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pending"]["staged"] is True
    assert main(["trust", "approve", "--dir", str(site), "--key", str(offline / "approver-2.key")]) == 0
    assert "staged: devices move when a rollout opens a wave: `otaml rollout start pump 2" in capsys.readouterr().out
    assert main(["trust", "status", "--dir", str(site), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["approvals"]
    assert [(a["version"], a["staged"]) for a in listed] == [(1, False), (2, True)]


def test_no_site_given_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTAML_TRUST_DIR", raising=False)
    assert main(["trust", "status"]) == 1
    assert "--dir DIR or set OTAML_TRUST_DIR" in capsys.readouterr().err
    assert main(["trust", "status", "--dir", str(tmp_path / "nothing")]) == 1
    assert "otaml trust init" in capsys.readouterr().err
    assert main(["trust", "init", "--dir", str(tmp_path / "s"), "--keys-out", str(tmp_path / "s" / "k")]) == 1
    assert "offline keys must live elsewhere" in capsys.readouterr().err
