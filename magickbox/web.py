"""A read-only HTTP status API of the node (JSON).

``GET /api/health``   node name, ports, counts of pending studies, jobs by status and DICOM
                      connections (pending, associated, peer addresses)
``GET /api/jobs``      job records (no patient names; study UIDs, AE titles, counts)
``GET /api/jobs/<id>`` one job, with MagickBox's ``info.json`` fields
``GET /api/buckets``   installed buckets (MagickBox ``info.json`` fields)

Nothing here changes state; mutating calls arrive with authentication in the REST API.
``HEAD`` answers like ``GET`` without the body; other methods get 405 with ``Allow``.
A job id that cannot exist (beyond SQLite's 64-bit integers) is simply not found.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .db import JOB_STATUSES

#: largest job id SQLite can store
MAX_JOB_ID = 2**63 - 1

__all__ = ["StatusServer"]

log = logging.getLogger("magickbox.web")


class StatusServer:
    def __init__(self, node: Any, host: str, port: int):
        self.node = node
        self.host = host
        self.port = port
        self.httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _routes(self, path: str) -> tuple[int, Any]:
        node = self.node
        if path == "/api/health":
            counts = {s: node.db.count_jobs(s) for s in JOB_STATUSES}
            return 200, {"node": node.config.node_name, "dicom_port": node.dicom_port, "http_port": node.http_port,
                         "pending_studies": len(node.db.pending()), "jobs": counts,
                         "dicom_connections": node.receiver.guard.counts(),
                         "buckets_error": node.registry.last_error}
        if path == "/api/jobs":
            return 200, [j.as_dict() for j in node.db.jobs()]
        m = re.fullmatch(r"/api/jobs/(\d{1,25})", path)
        if m:
            job_id = int(m.group(1))
            job = node.db.job(job_id) if job_id <= MAX_JOB_ID else None
            if job is None:
                return 404, {"error": f"no job {m.group(1)}"}
            return 200, {**job.as_dict(), "info": job.info_json()}
        if path == "/api/buckets":
            return 200, [{"name": b.name, "AETitle": b.ae_title, "version": b.version, "enabled": b.enabled,
                          "description": b.description, "license": b.license} for b in node.registry.all()]
        return 404, {"error": f"no such resource: {path}"}

    def start(self) -> int:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                try:
                    status, body = server._routes(self.path.split("?", 1)[0])
                except Exception:
                    log.exception("status API failed for %s", self.path)
                    status, body = 500, {"error": "internal error"}
                data = json.dumps(body, indent=1).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def _not_allowed(self) -> None:
                data = json.dumps({"error": f"{self.command} not allowed: this API is read-only"}).encode()
                self.send_response(405)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()
        return self.httpd.server_address[1]

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
