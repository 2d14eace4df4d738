"""A small client for graphite-web: the render API (``format=json``) and the events API.

Only the standard library (``urllib``).  Every failure — connection refused, an HTTP error,
an answer that is not the expected JSON — raises :class:`GraphiteWebError` naming the URL.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["GraphiteWeb", "GraphiteWebError", "RenderedSeries"]


class GraphiteWebError(OSError):
    """graphite-web could not be asked or did not answer as expected."""


@dataclass(frozen=True)
class RenderedSeries:
    """One series from the render API: its path and its non-empty points ``(epoch, value)``."""

    path: str
    points: list[tuple[int, float]]


class GraphiteWeb:
    """graphite-web at ``url`` (``http://host:port``, no trailing slash)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _open(self, request: urllib.request.Request | str) -> bytes:
        where = request.full_url if isinstance(request, urllib.request.Request) else request
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace").strip()
            raise GraphiteWebError(f"graphite-web answered {exc.code} {exc.reason} for {where}"
                                   + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GraphiteWebError(f"cannot reach graphite-web at {self.url}: {reason}") from None

    def _json(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        body = self._open(url)
        try:
            return json.loads(body)
        except ValueError:
            raise GraphiteWebError(f"graphite-web did not answer JSON for {url}: {body[:200]!r}") from None

    def render(self, targets: Sequence[str], start: int, end: int) -> list[RenderedSeries]:
        """Every series matching ``targets`` between epochs ``start`` and ``end``, raw (no
        consolidation: ``maxDataPoints`` is not set) and without empty slots."""
        if not targets:
            return []
        params = [("target", t) for t in targets]
        params += [("format", "json"), ("from", str(int(start))), ("until", str(int(end))), ("noNullPoints", "true")]
        data = self._json("/render", params)
        if not isinstance(data, list):
            raise GraphiteWebError(f"unexpected render answer from {self.url}: {str(data)[:200]}")
        out = []
        for entry in data:
            points = [(int(t), float(v)) for v, t in entry.get("datapoints", []) if v is not None]
            out.append(RenderedSeries(entry["target"], points))
        return out

    def find(self, query: str) -> list[dict]:
        """``/metrics/find`` for ``query``: ``[{"text", "id", "leaf", ...}]``."""
        data = self._json("/metrics/find", [("query", query)])
        if not isinstance(data, list):
            raise GraphiteWebError(f"unexpected find answer from {self.url}: {str(data)[:200]}")
        return data

    def events(self, start: int, end: int, tags: Sequence[str] = ()) -> list[dict]:
        """Events between two epochs having all ``tags``: ``[{"when", "what", "tags", "data", "id"}]``."""
        params = [("from", str(int(start))), ("until", str(int(end)))]
        if tags:
            params.append(("tags", " ".join(tags)))
        data = self._json("/events/get_data", params)
        if not isinstance(data, list):
            raise GraphiteWebError(f"unexpected events answer from {self.url}: {str(data)[:200]}")
        return data

    def post_event(self, what: str, when: int, tags: Sequence[str], data: str) -> None:
        """Create an event (graphite-web's ``POST /events/``)."""
        body = json.dumps({"what": what, "when": int(when), "tags": list(tags), "data": data}).encode()
        request = urllib.request.Request(f"{self.url}/events/", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        self._open(request)
