"""Serving configuration: command-line flags win over ``OTAML_*`` environment variables, which win over defaults.

Every bad value is reported with the key and the value, e.g.
``Config 'OTAML_PORT' has value 'eighty'. Not a valid integer; expected 1..65535.``
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import InputError

LOG_LEVELS = ("debug", "info", "warning", "error")
GOLDEN_FAILURE_MODES = ("exit", "unready")
HTTP_PARSERS = ("auto", "h11", "httptools")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


class SettingsError(InputError):
    """A flag or environment variable has an invalid value."""


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``serve`` needs; build it with :meth:`from_sources`."""

    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8080
    max_batch: int = 1000
    max_body_bytes: int = 256 << 10
    # Score requests in progress at once (503 beyond; the probes are never refused): with max_body_bytes,
    # bounds what request bodies can hold in memory (16 x 256 KiB = 4 MiB). A request takes about a
    # millisecond: 16 at once is far more than a device's local clients need.
    max_concurrent_scores: int = 16
    # A request's head must arrive within this many seconds of the connection (or of its first byte), and its
    # body within as many seconds of the head (408): slow clients cannot hold connections and buffers for long.
    read_timeout_seconds: int = 5
    # GET /openapi.json: built by FastAPI on first request (+16 MB resident, ~1 s in a worker thread).
    openapi: bool = True
    max_streams: int = 1024
    max_stream_id_length: int = 128
    log_level: str = "info"
    access_log: bool = False
    # What a failed golden self-test does: "exit" (non-zero, the agent's canary sees the container die)
    # or "unready" (stay up, /readyz answers 503 with the reason).
    on_golden_failure: str = "exit"
    drain_seconds: int = 30
    # See edge_runtime.memory: drops ~25 MB of clean, start-up-only library pages from the resident set.
    release_startup_pages: bool = True
    # uvicorn's HTTP/1.1 parser: httptools (C) when installed under "auto", else h11 (pure Python).
    http: str = "auto"
    # The event loop: uvloop (libuv, C) when installed under "auto", else asyncio's own (pure Python selector loop).
    loop: str = "auto"
    # Optional bearer token on POST /v1/score, read from a file (mode 0600 or a ro mount): a token in the
    # environment would show in `ps` and in the container spec. Probes and /metrics stay open.
    api_token_file: Path | None = None
    # Field metrics (edge_runtime.field_metrics, docs/field.md): score histogram, anomaly ratio, drift, input
    # errors over a sliding window of this many readings. false turns them off (and GET /v1/field).
    field_metrics: bool = True
    field_window: int = 4096
    # Keep the raw readings around the latest anomalies in GET /v1/anomalies (16 windows), for the fleet agent to
    # publish when its [fleet] capture_windows is on. Off: nothing of the readings themselves leaves the service.
    capture_windows: bool = False

    def api_token(self) -> str | None:
        """The token from ``api_token_file`` (stripped), or None when no file is set; SettingsError if unusable."""
        if self.api_token_file is None:
            return None
        try:
            token = self.api_token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(
                f"Config 'OTAML_API_TOKEN_FILE' names {self.api_token_file}: cannot read it ({exc})."
            ) from exc
        if len(token) < 16:
            raise SettingsError(
                f"Config 'OTAML_API_TOKEN_FILE': the token in {self.api_token_file} has {len(token)} characters; "
                "use at least 16 (e.g. `openssl rand -hex 24 > FILE`)."
            )
        return token

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Merge ``flags`` (argparse values, ``None`` = not given) over ``OTAML_<NAME>`` variables over defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, parse in _PARSERS.items():
            flag = flags.get(name)
            key = "OTAML_" + name.upper()
            if flag is not None:
                values[name] = parse(f"--{name.replace('_', '-')}", flag)
            elif env.get(key, "") != "":
                values[name] = parse(key, env[key])
        if "bundle" not in values:
            raise SettingsError("No model bundle given. Pass --bundle DIR or set OTAML_BUNDLE=DIR.")
        return cls(**values)


def _bad(key: str, value: object, why: str) -> SettingsError:
    return SettingsError(f"Config '{key}' has value {str(value)!r}. {why}")


def _int(low: int, high: int) -> Callable[[str, object], int]:
    def parse(key: str, value: object) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            raise _bad(key, value, f"Not a valid integer; expected {low}..{high}.") from None
        if not low <= number <= high:
            raise _bad(key, value, f"Out of range; expected {low}..{high}.")
        return number

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise _bad(key, value, f"Expected one of {', '.join(choices)}.")
        return text

    return parse


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise _bad(key, value, "Not a valid bool; use true/false, 1/0, yes/no or on/off.")


def _text(key: str, value: object) -> str:
    text = str(value).strip()
    if not text:
        raise _bad(key, value, "Must not be empty.")
    return text


def _path(key: str, value: object) -> Path:
    return Path(_text(key, value))


_PARSERS: dict[str, Callable[[str, object], Any]] = {
    "bundle": _path,
    "host": _text,
    "port": _int(1, 65535),
    "max_batch": _int(1, 1_000_000),
    "max_body_bytes": _int(64, 1 << 30),
    "max_concurrent_scores": _int(1, 100_000),
    "read_timeout_seconds": _int(1, 3600),
    "openapi": _bool,
    "max_streams": _int(1, 10_000_000),
    "max_stream_id_length": _int(1, 4096),
    "log_level": _choice(LOG_LEVELS),
    "access_log": _bool,
    "on_golden_failure": _choice(GOLDEN_FAILURE_MODES),
    "drain_seconds": _int(0, 3600),
    "release_startup_pages": _bool,
    "http": _choice(HTTP_PARSERS),
    "loop": _choice(EVENT_LOOPS),
    "api_token_file": _path,
    "field_metrics": _bool,
    "field_window": _int(16, 10_000_000),
    "capture_windows": _bool,
}
