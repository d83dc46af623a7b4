"""``serve``: flags, start-up checks and the uvicorn run loop, shared by ``otaml serve`` and ``python -m edge_runtime``.

Exit codes: 0 after a graceful stop (SIGTERM or SIGINT: in-flight requests drain first),
1 bad bundle (missing, malformed, ONNX sha256 mismatch), 2 bad configuration,
3 golden self-test failed (with ``--on-golden-failure exit``, the default, so an OTA canary sees it fail;
``unready`` keeps serving ``/readyz`` 503 with the reason instead).
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import OtamlError
from edge_runtime.jsonlog import configure_logging
from edge_runtime.memory import limit_malloc_arenas, release_startup_pages
from edge_runtime.settings import (
    EVENT_LOOPS,
    GOLDEN_FAILURE_MODES,
    HTTP_PARSERS,
    LOG_LEVELS,
    ServeSettings,
    SettingsError,
)

if TYPE_CHECKING:
    from edge_runtime.server import ScoringService

log = logging.getLogger("edge_runtime.serve")

EXIT_OK, EXIT_BUNDLE, EXIT_CONFIG, EXIT_GOLDEN = 0, 1, 2, 3


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``; each defaults to ``None`` so the ``OTAML_*`` variable (then the default) applies."""
    add = parser.add_argument
    add("--bundle", metavar="DIR", help="model bundle directory (env OTAML_BUNDLE)")
    add("--host", help="address to bind (env OTAML_HOST, default 127.0.0.1)")
    add("--port", help="port to bind (env OTAML_PORT, default 8080)")
    add("--max-batch", help="most readings per request (env OTAML_MAX_BATCH, default 1000)")
    add("--max-body-bytes", help="largest request body (env OTAML_MAX_BODY_BYTES, default 262144)")
    add(
        "--max-concurrent-scores",
        help="score requests in progress at once, 503 beyond (env OTAML_MAX_CONCURRENT_SCORES, default 16)",
    )
    add(
        "--read-timeout-seconds",
        help="seconds for a request's head, then its body, to arrive (env OTAML_READ_TIMEOUT_SECONDS, default 5)",
    )
    add(
        "--openapi",
        choices=("true", "false"),
        help="serve GET /openapi.json, loading FastAPI on first request (env OTAML_OPENAPI, default true)",
    )
    add("--max-streams", help="streams whose windows are kept, LRU (env OTAML_MAX_STREAMS, default 1024)")
    add("--max-stream-id-length", help="longest stream id (env OTAML_MAX_STREAM_ID_LENGTH, default 128)")
    add("--log-level", choices=LOG_LEVELS, help="env OTAML_LOG_LEVEL, default info")
    add("--access-log", action="store_const", const=True, help="log every request (env OTAML_ACCESS_LOG)")
    add(
        "--on-golden-failure",
        choices=GOLDEN_FAILURE_MODES,
        help="exit (code 3, default) or stay up unready (env OTAML_ON_GOLDEN_FAILURE)",
    )
    add(
        "--release-startup-pages",
        choices=("true", "false"),
        help="page out start-up-only library pages after loading (env OTAML_RELEASE_STARTUP_PAGES, default true)",
    )
    add("--http", choices=HTTP_PARSERS, help="HTTP parser (env OTAML_HTTP, default auto: httptools if installed)")
    add("--loop", choices=EVENT_LOOPS, help="event loop (env OTAML_LOOP, default auto: uvloop if installed)")
    add(
        "--field-metrics",
        choices=("true", "false"),
        help="field metrics and GET /v1/field, docs/field.md (env OTAML_FIELD_METRICS, default true)",
    )
    add("--field-window", help="readings in the field metrics' sliding window (env OTAML_FIELD_WINDOW, default 4096)")
    add("--drain-seconds", help="longest wait for in-flight requests on SIGTERM (env OTAML_DRAIN_SECONDS, default 30)")


def _http_parser(choice: str) -> str:
    if choice != "auto":
        return choice
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def _event_loop(choice: str) -> tuple[str, str]:
    """The event loop uvicorn runs (``uvloop`` or ``asyncio``) and why; SettingsError if uvloop is asked for and absent.

    uvloop (libuv, in C) wakes up and moves bytes with far fewer Python-level steps than asyncio's selector loop:
    at a low request rate, where every request runs on cold caches, that is most of the HTTP server's cost
    (docs/footprint.md). Where no uvloop wheel exists for the platform, ``auto`` falls back to asyncio.
    """
    if choice == "asyncio":
        return "asyncio", "asked for (OTAML_LOOP=asyncio)"
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        if choice == "uvloop":
            raise SettingsError(
                f"Config 'OTAML_LOOP' has value 'uvloop', but uvloop cannot be imported ({exc}). "
                "Install it (pip install uvloop) or use auto/asyncio."
            ) from None
        return "asyncio", f"uvloop is not installed ({exc}); asyncio's selector loop serves instead"
    return "uvloop", "asked for (OTAML_LOOP=uvloop)" if choice == "uvloop" else "installed"


def _protocol(settings: ServeSettings, service: ScoringService) -> Any:
    """httptools with a deadline on request heads and the direct score route; h11 (pure Python) only when asked
    for, without either. With the access log on, score requests go the ASGI way (uvicorn writes that log)."""
    parser = _http_parser(settings.http)
    if parser == "h11":
        log.warning(
            "HTTP parser h11: request heads have no deadline (slow clients can hold connections)",
            extra={"event": "no_head_deadline"},
        )
        return parser
    from edge_runtime.http_protocol import service_protocol
    from edge_runtime.server import DirectScoreRoute

    route = None if settings.access_log else DirectScoreRoute(service)
    return service_protocol(settings.read_timeout_seconds, route)


def run_serve(args: argparse.Namespace) -> int:
    """Start the service from parsed flags and the environment; return the process exit code."""
    # Before any thread exists: glibc would give each thread its own malloc arena.
    limit_malloc_arenas(2)
    try:
        settings = ServeSettings.from_sources(vars(args))
    except SettingsError as exc:
        configure_logging("info")
        log.error(str(exc), extra={"event": "config_invalid"})
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    # Imported after the configuration is known good: these are the heavy modules. Start-up touches far
    # more library pages than serving does; paging them out after each heavy step keeps the peak of the
    # whole start-up (what a container's memory limit sees) close to the steady state (docs/footprint.md).
    settle = release_startup_pages if settings.release_startup_pages else (lambda: 0)
    import onnxruntime  # noqa: F401  (numpy comes with it)

    settle()
    import uvicorn

    from edge_runtime.server import build_service

    try:
        loop, loop_reason = _event_loop(settings.loop)
    except SettingsError as exc:
        log.error(str(exc), extra={"event": "config_invalid"})
        return EXIT_CONFIG
    settle()
    try:
        app, golden, bundle = build_service(settings, settle)
    except OtamlError as exc:
        log.error(str(exc), extra={"event": "bundle_invalid", "bundle": str(settings.bundle)})
        return EXIT_BUNDLE
    card = bundle.card
    about = {"model": card.name, "version": card.version, "bundle_digest": bundle.digest}
    if not golden.ok:
        log.error(f"golden self-test failed: {golden.message}", extra={"event": "golden_failed", **about})
        if settings.on_golden_failure == "exit":
            return EXIT_GOLDEN
    else:
        log.info(f"golden self-test passed: {golden.message}", extra={"event": "golden_passed", **about})

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=_protocol(settings, app),
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=settings.drain_seconds,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught after draining; with a handler of ours installed that
    # re-raise lands here instead of killing the process, so a graceful stop exits 0 (also as PID 1).
    stopped_by: list[int] = []

    def note_signal(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)

    previous = {sig: signal.signal(sig, note_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Everything allocated so far lives for the whole process: keep the collector off it.
    gc.collect()
    gc.freeze()
    settle()
    log.info(
        f"serving on the {loop} event loop ({loop_reason})",
        extra={
            "event": "serving",
            "host": settings.host,
            "port": settings.port,
            "ready": golden.ok,
            "loop": loop,
            **about,
        },
    )
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        log.error(f"could not listen on {settings.host}:{settings.port}", extra={"event": "bind_failed"})
        return EXIT_CONFIG
    log.info("stopped", extra={"event": "stopped", "signals": stopped_by})
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime serve", description="Serve a model bundle over HTTP.")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
