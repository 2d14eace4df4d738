"""Serve the API and web UI of a running node with uvicorn, in a thread of the node.

``HttpServer(node, host, port).start()`` binds (port 0: any free port), returns the
port and serves until :meth:`stop`.  TLS when ``cert`` and ``key`` are given (else put a
reverse proxy in front, see the README).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import uvicorn

from .app import create_app
from .store import NodeStore
from .tokens import TokenStore
from .uploads import UploadLimits

__all__ = ["HttpServer"]

log = logging.getLogger("magickbox.api")


class HttpServer:
    def __init__(self, node: Any, host: str, port: int, limits: UploadLimits | None = None,
                 cert: Path | None = None, key: Path | None = None):
        self.store = NodeStore.from_node(node)
        self.tokens = TokenStore(node.layout.api_tokens)
        self.host, self.port = host, port
        self.app = create_app(self.store, self.tokens, limits)
        self.cert, self.key = cert, key
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> int:
        threading.Thread(target=self._warm, name="search-cache", daemon=True).start()
        stale = self.store.remove_stale_uploads()
        if stale:
            log.info("removed %d unfinished upload(s) left by an interrupted node", stale)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then; without it
        # every keep-alive response waits 40 ms for a delayed ACK (headers and body are two writes)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.set_inheritable(True)
        self._socket = sock
        port = sock.getsockname()[1]
        self.store.http_port = port
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3, proxy_headers=True, server_header=False,
                                ssl_certfile=str(self.cert) if self.cert else None,
                                ssl_keyfile=str(self.key) if self.key else None)
        self._server = uvicorn.Server(config)
        started = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(started))
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="http", daemon=True)
        self._thread.start()
        started.wait(30)
        if self.tokens.path.exists() and self.tokens.path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users: chmod 600 it", self.tokens.path)
        elif not self.tokens.path.exists():
            log.info("no API tokens yet: magickbox tokens create --data-dir DIR --role admin NAME")
        log.info("web UI and REST API on http%s://%s:%d/", "s" if self.cert else "", self.host, port)
        return port

    def _warm(self) -> None:
        try:
            self.store.warm_search_cache()
        except Exception:                      # only an optimisation: searches work without it
            log.exception("could not prepare the job search")

    async def _serve(self, started: threading.Event) -> None:
        assert self._server is not None and self._socket is not None
        serving = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        started.set()
        await serving

    def stop(self) -> None:
        self.app.state.api.closing = True          # live log streams end
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
