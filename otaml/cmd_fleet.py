"""``otaml fleet status``: every device of a fleet as the MQTT broker holds it (state, availability, failures).

The broker and the controller's credentials come from the options or the environment: ``--broker`` /
``OTAML_BROKER`` (``host:port``, default ``127.0.0.1:1883``), ``--fleet`` / ``OTAML_FLEET`` (default ``default``),
``--username`` / ``OTAML_BROKER_USER`` (default ``controller``), ``--password-file`` / ``OTAML_BROKER_PASSWORD_FILE``,
``--tls-ca`` / ``OTAML_BROKER_TLS_CA``, ``--known-devices`` / ``OTAML_FLEET_DEVICES`` (a file of device ids: messages
from any other device are counted as ``unknown-device``, not shown).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError
from edge_runtime.fleet.messages import check_id


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser("fleet", help="the fleet as its devices report it over MQTT")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    status = fleet_sub.add_parser(
        "status", help="devices × version × phase × health × last seen; versions, failures, offline devices"
    )
    broker_options(status, default="127.0.0.1:1883")
    status.add_argument(
        "--known-devices",
        default=os.environ.get("OTAML_FLEET_DEVICES", ""),
        help="file of the fleet's device ids, one a line: messages from any other device are counted, not shown",
    )
    status.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for the broker (default 10)")
    status.add_argument(
        "--quiet-s", type=float, default=0.5, help="the retained burst has ended after this many silent seconds"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=run_status)


def broker_options(p: argparse.ArgumentParser, default: str = "", help: str = "MQTT broker host:port") -> None:
    """The options that name the broker and the controller's credentials (each with its environment variable)."""
    env = os.environ.get
    p.add_argument("--broker", default=env("OTAML_BROKER", default), help=help)
    p.add_argument("--fleet", default=env("OTAML_FLEET", "default"), help="fleet name (default: default)")
    p.add_argument("--username", default=env("OTAML_BROKER_USER", "controller"), help="broker user (controller)")
    p.add_argument(
        "--password-file",
        default=env("OTAML_BROKER_PASSWORD_FILE", ""),
        help="file whose first line is the controller's broker password",
    )
    p.add_argument("--tls-ca", default=env("OTAML_BROKER_TLS_CA", ""), help="CA file: TLS to the broker")


def parse_broker(value: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); :class:`InputError` naming the value otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--broker has value {value!r}. Use host:port, e.g. 127.0.0.1:1883.")
    return host.strip("[]"), int(port)


def read_password(path: str) -> str | None:
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(
            f"--password-file {path!r} cannot be read: {exc.strerror}. Pass the controller's password file."
        ) from exc
    if not lines or not lines[0].strip():
        raise InputError(f"--password-file {path!r} is empty. Put the password on its first line.")
    return lines[0].strip()


def read_known_devices(path: str) -> list[str] | None:
    if not path:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(
            f"--known-devices {path!r} cannot be read: {exc.strerror}. Give a file of device ids."
        ) from exc
    ids = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for number, device_id in enumerate(ids, 1):
        try:
            check_id("device id", device_id)
        except InputError as exc:
            raise InputError(f"--known-devices {path!r}, id {number}: {exc}") from None
    return ids


def snapshot_reader(args: argparse.Namespace) -> Callable[[], Any]:
    """A function that reads the fleet's retained messages from the broker the command's options name
    (``--broker``, ``--fleet``, ``--username``, ``--password-file``, ``--tls-ca`` and, when the command has
    them, ``--known-devices`` and its timeouts); options are checked now, the broker is read at each call."""
    from registry.fleet.collect import collect

    host, port = parse_broker(args.broker)
    try:
        check_id("fleet", args.fleet)
    except InputError as exc:
        raise InputError(f"--fleet: {exc}") from None
    password = read_password(args.password_file)
    known = read_known_devices(getattr(args, "known_devices", ""))
    tls_ca = Path(args.tls_ca) if args.tls_ca else None
    timeout_s = float(getattr(args, "timeout", None) or getattr(args, "broker_timeout", None) or 10.0)
    quiet_s = float(getattr(args, "quiet_s", 0.5))
    return lambda: collect(
        host,
        port,
        args.fleet,
        username=args.username,
        password=password,
        tls_ca=tls_ca,
        known_devices=known,
        quiet_s=quiet_s,
        timeout_s=timeout_s,
    )


def run_status(args: argparse.Namespace) -> int:
    from registry.fleet.status import render, summarize

    snapshot = snapshot_reader(args)()
    now = time.time()
    if args.json:
        print(json.dumps(summarize(snapshot, now), indent=2, allow_nan=False))  # device numbers are checked finite
    else:
        print(render(snapshot, now))
    return 0
