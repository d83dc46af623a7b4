"""A static HTTP server for a directory, in a thread: how the demo and tests publish the fleet's TUF metadata.

Devices need nothing more than static files (``GET <metadata_url>/timestamp.json``...): in production any
web server, object store or CDN serves the trust site's ``metadata/`` directory.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


class StaticServer:
    """Serves ``directory`` on ``127.0.0.1`` (a free port unless given) until :meth:`stop`."""

    def __init__(self, directory: str | Path, port: int = 0, host: str = "127.0.0.1") -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otaml-static-http", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/`` (with the trailing slash ngclient expects of a metadata URL)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> StaticServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
