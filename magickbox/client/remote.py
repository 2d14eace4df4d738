"""One magickbox node seen over HTTP (its REST API), for ``mb``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from .config import Machine

__all__ = ["Remote", "RemoteError"]

PAGE = 1000


class RemoteError(Exception):
    """A node answered with an error, or could not be reached (message names the machine)."""


class Remote:
    def __init__(self, machine: Machine, timeout: float = 30.0):
        self.machine = machine
        self.client = httpx.Client(base_url=machine.url, headers={"Authorization": f"Bearer {machine.token}",
                                                                  "User-Agent": "mb (HOPS)"},
                                   timeout=httpx.Timeout(timeout, read=None if timeout <= 0 else timeout * 10))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, response: httpx.Response | None, exc: Exception | None = None) -> RemoteError:
        name = self.machine.name
        if response is None:
            return RemoteError(f"{name} ({self.machine.url}): cannot connect: {exc}")
        try:
            why = response.json().get("error", response.text)
        except ValueError:
            why = response.text[:300]
        if response.status_code == 401:
            why += " - the token is not valid there (mb machines add URL --token-stdin again)"
        return RemoteError(f"{name}: HTTP {response.status_code}: {why}")

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._fail(None, exc) from None
        if response.status_code >= 400:
            raise self._fail(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def jobs(self, pattern: str | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every matching job (all pages), newest first."""
        out: list[dict[str, Any]] = []
        before = None
        while True:
            params = {"q": pattern or None, "limit": PAGE, "before": before, **filters}
            response = self.request("GET", "/api/jobs", params={k: v for k, v in params.items() if v is not None})
            out += response.json()
            before = response.headers.get("X-Next-Before")
            if not before:
                return out

    def download(self, path: str, target: Path, progress: Callable[[int], None]) -> int:
        """Stream ``path`` into ``target`` (written to a .part file, renamed when complete)."""
        part = target.with_name(target.name + ".part")
        size = 0
        try:
            with self.client.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._fail(response)
                with open(part, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                        size += len(chunk)
                        progress(len(chunk))
        except httpx.HTTPError as exc:
            part.unlink(missing_ok=True)
            raise self._fail(None, exc) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(target)
        return size

    def upload(self, zip_path: Path, bucket: str, sender: str | None, progress: Callable[[int], None]) -> Any:
        size = zip_path.stat().st_size

        def body() -> Iterator[bytes]:
            with open(zip_path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    progress(len(chunk))
                    yield chunk

        params = {"bucket": bucket, **({"sender": sender} if sender else {})}
        return self.request("POST", "/api/jobs", params=params, content=body(),
                            headers={"Content-Type": "application/zip", "Content-Length": str(size)}).json()
