"""API tokens of a node: ``<data>/api-tokens.json`` (mode 0600), only SHA-256 hashes stored.

A token is ``mbx_`` followed by 43 random URL-safe characters (256 bits); it is shown
once, when created (``magickbox tokens create --role read|admin NAME``), and from then on
only its hash exists.  Roles:

``read``   see jobs, logs, buckets, routing rules and node status; download outputs
``admin``  also push studies, cancel, re-run and remove jobs, download inputs, replace
           the routing rules, and see study UIDs on job pages

The running node re-reads the file when it changes, so ``create``/``revoke`` take effect
at once.  Writes are atomic (temporary file, fsync, rename) and serialised with a lock
file, so two CLI calls at once never lose a token.
"""
from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from stability_collector.core.fsutil import atomic_write

__all__ = ["TokenStore", "TokenInfo", "TokenError", "ROLES"]

ROLES = ("read", "admin")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}")
_PREFIX = "mbx_"


class TokenError(ValueError):
    """A bad token name or role, a duplicate name, or an unknown token to revoke."""


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created: float
    sha256: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The token file of one data directory.  Thread-safe; cheap to query (one ``stat``
    per lookup to notice changes made by the CLI)."""

    def __init__(self, path: str | Path):
        """``path``: the token file (``DataLayout.api_tokens``)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._by_hash: dict[str, TokenInfo] = {}
        self._loaded = False

    # -- reading -------------------------------------------------------------------------
    def _read_file(self) -> list[TokenInfo]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise TokenError(f"{self.path}: cannot read the token file: {exc}") from None
        tokens = data.get("tokens", []) if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise TokenError(f"{self.path}: expected {{\"tokens\": [...]}}")
        out = []
        for i, t in enumerate(tokens):
            try:
                out.append(TokenInfo(str(t["name"]), str(t["role"]), float(t["created"]), str(t["sha256"])))
            except (KeyError, TypeError, ValueError):
                raise TokenError(f"{self.path}: token {i} is malformed") from None
        return out

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if self._loaded and signature == self._signature:
            return
        with self._lock:
            try:
                tokens = self._read_file()
            except TokenError:
                tokens = []          # a broken file authorises nobody
            self._by_hash = {t.sha256: t for t in tokens if t.role in ROLES}
            self._signature = signature
            self._loaded = True

    def verify(self, token: str | None) -> TokenInfo | None:
        """The token's record, or None for a missing, unknown or revoked token."""
        if not token or not token.startswith(_PREFIX) or len(token) > 200:
            return None
        self._refresh()
        digest = _hash(token)
        found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found.sha256, digest):
            return None
        return found

    def still_valid(self, token: TokenInfo) -> bool:
        """False once the token was revoked (or the token file changed its role)."""
        self._refresh()
        return self._by_hash.get(token.sha256) == token

    def list(self) -> list[TokenInfo]:
        return sorted(self._read_file(), key=lambda t: t.created)

    # -- changing (the CLI) ------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, tokens: "builtins.list[TokenInfo]") -> None:
        atomic_write(self.path, json.dumps({"version": 1, "tokens": [asdict(t) for t in tokens]}, indent=1), 0o600)

    def create(self, name: str, role: str) -> str:
        """A new token (returned in clear, the only time it exists outside the caller)."""
        if role not in ROLES:
            raise TokenError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not _NAME_RE.fullmatch(name):
            raise TokenError(f"token name must be 1-64 letters, digits and _ . @ : - (starting with a letter "
                             f"or digit), not {name!r}")
        token = _PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            tokens = self._read_file()
            if any(t.name == name for t in tokens):
                raise TokenError(f"a token named {name!r} exists already (revoke it first)")
            tokens.append(TokenInfo(name, role, time.time(), _hash(token)))
            self._write(tokens)
        return token

    def revoke(self, name: str) -> TokenInfo:
        with self._locked():
            tokens = self._read_file()
            gone = [t for t in tokens if t.name == name]
            if not gone:
                raise TokenError(f"no token named {name!r}")
            self._write([t for t in tokens if t.name != name])
        return gone[0]
