"""Figures for the rollout controller: the cost of one judgement and of one signed publication.

- ``judge_seconds``: :func:`registry.fleet.rollout.judge` over ``--devices`` reports (the open wave at 50 %,
  every device healthy on the version its own bucket gives it), median of ``--repeat`` runs
- ``publish_seconds``: :meth:`FleetRepository.publish_rollout` (the rollouts role, snapshot and timestamp
  re-signed with ECDSA P-256, files written under the store's lock) in a temporary directory, median of 20
- ``record_bytes``: the record's canonical JSON; ``rollouts_role_bytes``: the signed role holding one record

Usage: ``.venv/bin/python bench/bench_rollout.py --devices 100000 [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edge_runtime.fleet.messages import DeviceState
from edge_runtime.fleet.rollout import RolloutRecord, canonical_json
from registry.fleet.rollout import ObservedDevice, judge
from registry.tuf import keys
from registry.tuf.repository import RoleKeys, create
from registry.tuf.store import DirectoryStore

RECORD = RolloutRecord(
    rollout_id="pump-anomaly-v8-bench",
    model="pump-anomaly",
    channel="production",
    version=8,
    stable_version=7,
    waves=(1, 10, 50, 100),
    wave=2,
)


def fleet(n: int) -> list[ObservedDevice]:
    out = []
    for i in range(n):
        device_id = f"dev-{i:06d}"
        state = DeviceState(
            device_id=device_id,
            model=RECORD.model,
            version=RECORD.version_for(device_id, {}),
            health="ok",
            last_outcome="updated",
            rollout_id=RECORD.rollout_id,
            last_seen=1.0,
        )
        out.append(ObservedDevice(state, True))
    return out


def publish_cost(directory: Path, times: int = 20) -> tuple[float, int]:
    root, targets, snapshot, timestamp, rollouts = (keys.generate() for _ in range(5))
    repo = create(
        DirectoryStore(directory),
        root=RoleKeys([root.public_key]),
        targets=RoleKeys([targets.public_key]),
        snapshot=RoleKeys([snapshot.public_key]),
        timestamp=RoleKeys([timestamp.public_key]),
        rollouts=RoleKeys([rollouts.public_key]),
        root_signers=[root],
        targets_signers=[targets],
        snapshot_signer=snapshot,
        timestamp_signer=timestamp,
        rollouts_signer=rollouts,
    )
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        repo.publish_rollout(RECORD, rollouts)
        spent.append(time.perf_counter() - start)
    md = repo.rollouts()
    if md is None:
        raise SystemExit("the bench repository lost its rollouts role")
    return statistics.median(spent), len(repo.store.read(f"{md.signed.version}.rollouts.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    devices = fleet(args.devices)
    spent, decision = [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        decision = judge(RECORD, devices, 10_000.0)
        spent.append(time.perf_counter() - start)
    if decision is None:
        raise SystemExit("--repeat must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        publish, role_bytes = publish_cost(Path(tmp) / "repo")
    result = {
        "devices": args.devices,
        "in_wave": len(decision.in_wave),
        "action": decision.action,
        "judge_seconds": round(statistics.median(spent), 3),
        "publish_seconds": round(publish, 4),
        "record_bytes": len(canonical_json(RECORD.to_dict())),
        "rollouts_role_bytes": role_bytes,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
