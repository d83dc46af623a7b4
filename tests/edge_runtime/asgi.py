"""A synchronous in-process client over httpx's ASGITransport (starlette's TestClient wants ``httpx2`` now)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


class ASGIClient:
    """Calls an ASGI app in-process; each call runs on a fresh event loop, the app keeps its state."""

    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.app = app
        self.client = client  # the peer address the app sees

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=self.client)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                response = await client.request(method, url, **kwargs)
                await response.aread()
                return response

        return asyncio.run(call())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)
