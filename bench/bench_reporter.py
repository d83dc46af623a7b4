"""Figures for the device's fleet reporter (edge_runtime.fleet.reporter) against a real Mosquitto (LocalBroker).

- memory: a bare interpreter (``python -c``, nothing else imported) that imports the reporter, connects as its
  device, publishes a state, an event and a field summary and waits for them to be sent; its VmHWM (peak RSS
  including start-up) against a bare interpreter that does nothing, and the difference. The same again after
  ``import httpx``, which the agent loads anyway: what the reporter adds to the agent.
- idle traffic: what an idle device costs per hour with the default settings (``heartbeat_s`` 900, ``keepalive_s``
  300). Both exchanges an idle device makes are measured on its TCP connection to the real broker with ``ss -ti``
  (TCP payload bytes and segments, both directions): a heartbeat (the retained state PUBLISH + its PUBACK, timed
  down to 1 s) and a keep-alive (PINGREQ + PINGRESP, keep-alive 5 s). IP-level bytes add 52 bytes of IPv4 + TCP
  header (with timestamps) per segment. The hour is then 3600/heartbeat_s heartbeats + 3600/keepalive_s pings
  (an upper bound: paho skips a ping when a heartbeat went out within the keep-alive).

Usage: ``.venv/bin/python bench/bench_reporter.py [--runs 3] [--json]`` (needs mosquitto and ss: iproute2).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.fleet.messages import DeviceState  # noqa: E402
from edge_runtime.fleet.reporter import Reporter  # noqa: E402
from edge_runtime.fleet.settings import FleetSettings  # noqa: E402
from otaml.localstack import LocalBroker  # noqa: E402

HEADER_BYTES = 52  # IPv4 (20) + TCP (20) + the timestamps option (12), per segment
DEFAULT_HEARTBEAT_S = 900
DEFAULT_KEEPALIVE_S = 300

MEMORY_PROBE = """
import sys, time
from pathlib import Path
from edge_runtime.fleet.messages import DeviceEvent, DeviceState
from edge_runtime.fleet.reporter import Reporter
from edge_runtime.fleet.settings import FleetSettings
settings = FleetSettings(device_id="pi-1", fleet="bench", broker_port=int(sys.argv[1]), password_file=Path(sys.argv[2]),
                         groups={"hw": "pi4", "site": "plant-3"})
reporter = Reporter(settings).start()
state = DeviceState("pi-1", model="pump-anomaly", version=12, digest="sha256:" + "a" * 64, phase="serving",
                    last_outcome="updated", health="ok")
reporter.publish_state(state)
reporter.publish_event(DeviceEvent("pi-1", "update", time.time(), outcome="updated", version=12))
reporter.publish_field(b'{"anomaly_ratio":0.012,"psi_max":0.04,"input_errors":0}')
while reporter.stats().published < 4:
    time.sleep(0.01)
reporter.close()
print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
"""
HTTPX_PROBE = 'import httpx\nprint([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])'
BARE_PROBE = 'print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])'

# A realistic serving state: a full digest, two groups, one blocked digest.
IDLE_STATE = DeviceState(
    "pi-1",
    groups={"hw": "pi4", "site": "plant-3"},
    model="pump-anomaly",
    version=12,
    digest="sha256:" + "a" * 64,
    phase="serving",
    last_outcome="updated",
    rollout_id="r-2026-12-03-pump-v12",
    blocked=("sha256:" + "b" * 64,),
    health="ok",
)


def vmhwm_kib(code: str, *args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return int(done.stdout.split()[-1])


def tcp_counters(port: int) -> dict[str, int]:
    """TCP payload bytes and segments of the one client connection to ``port`` (the device's side)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", "dst", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    found = dict(re.findall(r"\b(bytes_sent|bytes_received|segs_out|segs_in):(\d+)", out))
    counters = {k: int(found.get(k, 0)) for k in ("bytes_sent", "bytes_received", "segs_out", "segs_in")}
    return counters


def delta(after: dict[str, int], before: dict[str, int]) -> tuple[int, int]:
    payload = after["bytes_sent"] - before["bytes_sent"] + after["bytes_received"] - before["bytes_received"]
    segments = after["segs_out"] - before["segs_out"] + after["segs_in"] - before["segs_in"]
    return payload, segments


def wait(predicate: Any, bound_s: float = 60) -> None:
    deadline = time.monotonic() + bound_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the reporter did not get there in time")
        time.sleep(0.01)


def per_exchange(
    broker: LocalBroker, port: int, *, heartbeat_s: float, keepalive_s: int, count: int
) -> dict[str, float]:
    settings = FleetSettings(
        device_id="pi-1",
        fleet="bench",
        broker_port=port,
        password_file=broker.password_file("pi-1"),
        heartbeat_s=heartbeat_s,
        keepalive_s=keepalive_s,
    )
    with Reporter(settings) as reporter:
        reporter.publish_state(IDLE_STATE)
        wait(lambda: reporter.stats().published >= 2)
        time.sleep(0.3)  # the PUBACKs and TCP ACKs of the start-up exchange
        before = tcp_counters(port)
        if keepalive_s < heartbeat_s:  # pings: 2 bytes of PINGRESP each
            wait(
                lambda: tcp_counters(port)["bytes_received"] - before["bytes_received"] >= 2 * count,
                keepalive_s * (count + 2),
            )
        else:
            start = reporter.stats().published
            wait(lambda: reporter.stats().published >= start + count, heartbeat_s * (count + 4))
        time.sleep(0.3)
        payload, segments = delta(tcp_counters(port), before)
    return {
        "payload_bytes": payload / count,
        "segments": segments / count,
        "ip_bytes": (payload + segments * HEADER_BYTES) / count,
    }


def run_once(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = LocalBroker(Path(tmp), devices=["pi-1"])
        with broker as instance:
            heartbeat = per_exchange(broker, instance.port, heartbeat_s=1, keepalive_s=600, count=count)
            ping = per_exchange(broker, instance.port, heartbeat_s=10**6, keepalive_s=5, count=3)
            args = (str(instance.port), str(broker.password_file("pi-1")))
            hwm = vmhwm_kib(MEMORY_PROBE, *args)
            hwm_httpx = vmhwm_kib("import httpx\n" + MEMORY_PROBE, *args)
    bare = vmhwm_kib(BARE_PROBE)
    httpx_only = vmhwm_kib(HTTPX_PROBE)
    per_hour = {
        k: heartbeat[k] * 3600 / DEFAULT_HEARTBEAT_S + ping[k] * 3600 / DEFAULT_KEEPALIVE_S
        for k in ("payload_bytes", "ip_bytes")
    }
    return {
        "state_bytes": len(IDLE_STATE.to_json()),
        "heartbeat": heartbeat,
        "keepalive": ping,
        "idle_tcp_payload_bytes_per_hour": per_hour["payload_bytes"],
        "idle_ip_bytes_per_hour": per_hour["ip_bytes"],
        "reporter_vmhwm_mb": hwm / 1024,
        "bare_interpreter_vmhwm_mb": bare / 1024,
        "reporter_extra_mb": (hwm - bare) / 1024,
        "httpx_interpreter_vmhwm_mb": httpx_only / 1024,
        "reporter_over_httpx_mb": (hwm_httpx - httpx_only) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heartbeats", type=int, default=5, help="heartbeats measured per run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [run_once(args.heartbeats) for _ in range(args.runs)]
    keys = [
        "idle_ip_bytes_per_hour",
        "idle_tcp_payload_bytes_per_hour",
        "reporter_vmhwm_mb",
        "bare_interpreter_vmhwm_mb",
        "reporter_extra_mb",
        "httpx_interpreter_vmhwm_mb",
        "reporter_over_httpx_mb",
    ]
    result = {
        "runs": runs,
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "defaults": {"heartbeat_s": DEFAULT_HEARTBEAT_S, "keepalive_s": DEFAULT_KEEPALIVE_S},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result["median"].items():
            print(f"{k}: {v:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
