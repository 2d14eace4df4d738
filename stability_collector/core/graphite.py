"""Confirmed delivery of datapoints to Graphite over the plaintext TCP protocol.

"Sent" is not "delivered": bytes in a local socket buffer are lost if carbon is down or
restarts.  :class:`GraphiteSender` therefore sends one batch per connection, half-closes
the connection (``shutdown(SHUT_WR)``) and waits until carbon closes its side.  Carbon
(and carbon-relay, go-carbon, carbon-c-relay) close a plaintext connection only after
they have read and processed every line before the end-of-stream, so a clean close is
the acknowledgement that each datapoint reached carbon's cache.  Anything else —
connection refused, reset, a timeout while waiting for the close — raises
:class:`DeliveryError` and the caller keeps the report for the next attempt.

What it cannot see: carbon dropping points *after* accepting them (a full cache with
``MAX_CACHE_SIZE``, or creates over ``MAX_CREATES_PER_MINUTE``; the shipped carbon.conf
sets both to ``inf``), or a whisper schema whose retention does not reach back to the
scan time (the shipped storage-schemas.conf keeps 30 years).
"""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["GraphiteAddress", "GraphiteSender", "DeliveryError", "sanitize_node"]

_NODE_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def sanitize_node(text: str) -> str:
    """A safe single Graphite path node: anything but ``A-Z a-z 0-9 _ -`` becomes ``_``."""
    node = _NODE_BAD.sub("_", text.strip())
    return node or "_"


class DeliveryError(OSError):
    """Datapoints were not confirmed as delivered; nothing may be archived."""


@dataclass(frozen=True)
class GraphiteAddress:
    host: str
    port: int = 2003

    @classmethod
    def parse(cls, text: str, key: str = "graphite") -> "GraphiteAddress":
        """``HOST:PORT``, ``HOST`` (port 2003) or ``[v6addr]:PORT``."""
        text = (text or "").strip()
        if not text:
            raise ConfigError(key, "expected HOST:PORT, found an empty value")
        host, port = text, "2003"
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ConfigError(key, f"expected [IPv6]:PORT, found {text!r}")
            host, rest = text[1:end], text[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise ConfigError(key, f"expected [IPv6]:PORT, found {text!r}")
                port = rest[1:]
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            port_no = int(port)
        except ValueError:
            raise ConfigError(key, f"port must be a number, found {port!r}") from None
        if not 0 < port_no < 65536 or not host:
            raise ConfigError(key, f"expected HOST:PORT with a port 1-65535, found {text!r}")
        return cls(host, port_no)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class GraphiteSender:
    """Send batches of plaintext lines, one confirmed TCP connection per batch.

    ``timeout`` (seconds) bounds connecting and waiting for carbon's close.
    """

    def __init__(self, address: GraphiteAddress, timeout: float = 15.0):
        self.address = address
        self.timeout = timeout
        self.batches_delivered = 0
        self.lines_delivered = 0

    def deliver(self, payload: str | bytes) -> None:
        """Deliver ``payload`` (newline-terminated ``path value epoch`` lines).

        Returns only once carbon has closed the connection after reading everything;
        raises :class:`DeliveryError` otherwise.
        """
        data = payload.encode("ascii") if isinstance(payload, str) else payload
        if not data:
            return
        if not data.endswith(b"\n"):
            data += b"\n"
        deadline = time.monotonic() + self.timeout
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=self.timeout)
        except OSError as exc:
            raise DeliveryError(f"cannot connect to Graphite at {self.address}: {exc}") from None
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeliveryError(f"Graphite at {self.address} did not confirm the batch "
                                        f"(no close within {self.timeout:g} s)")
                sock.settimeout(remaining)
                try:
                    if not sock.recv(4096):
                        break
                except TimeoutError:
                    raise DeliveryError(f"Graphite at {self.address} did not confirm the batch "
                                        f"(no close within {self.timeout:g} s)") from None
        except DeliveryError:
            raise
        except OSError as exc:
            raise DeliveryError(f"sending to Graphite at {self.address} failed: {exc}") from None
        finally:
            sock.close()
        self.batches_delivered += 1
        self.lines_delivered += data.count(b"\n")
