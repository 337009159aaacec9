"""Serving the API with uvicorn inside the gateway's own event loop.

``uvicorn.Server.serve()`` would install its own signal handlers and run the loop's life; the
gateway already owns both (SMTP, dispatcher and API share one loop per worker). So we drive
uvicorn's documented pieces ourselves: ``startup(sockets=...)`` on a socket we bound (with
SO_REUSEPORT when workers share the port), its once-a-second tick for the ``Date`` header,
then ``shutdown()``, which lets requests in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn


class HttpServer:
    """One uvicorn server for ``app`` on an already-bound listening socket."""

    def __init__(self, app: Any, sock: socket.socket, *, grace: float = 10.0) -> None:
        self.sock = sock
        self.config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,
            access_log=False,
            ws="none",
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=int(grace),
        )
        self.server = uvicorn.Server(self.config)
        self._ticker: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self) -> None:
        if not self.config.loaded:
            self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup(sockets=[self.sock])
        self._ticker = asyncio.create_task(self.server.main_loop(), name="http-tick")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._ticker is not None:
            self._ticker.cancel()  # it only refreshes the Date header; no need to wait a tick
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.server.started:
            await self.server.shutdown(sockets=[self.sock])
