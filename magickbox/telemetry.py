"""Node metrics sent to Graphite (names in :mod:`magickbox.node_metrics`).

Counters are counts per 10-second slot (the finest step of the ``hops.magickbox.``
storage schema), time-stamped with the slot start.  Reports may be more frequent than
the slot: a second report in the same slot re-sends the slot's running total, so whisper
(which keeps one value per slot) ends up with the full count.  If Graphite does not
confirm a report its counts are kept and added to the next one (nothing is lost, they
just arrive later).  Gauges are sampled at report time.  Delivery uses the same confirmed
sender as the stability collector.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Mapping

from stability_collector.core.graphite import DeliveryError, GraphiteAddress, GraphiteSender

from . import node_metrics as nm
from .periodic import Periodic

__all__ = ["NodeTelemetry"]

log = logging.getLogger("magickbox.telemetry")

#: seconds per point of the finest hops.magickbox. archive (storage-schemas.conf)
SLOT_SECONDS = 10


class NodeTelemetry:
    def __init__(self, node: str, address: GraphiteAddress | None, interval: float = 10.0,
                 gauges: Mapping[str, Callable[[], float]] | None = None):
        self.node = node
        self.sender = GraphiteSender(address, timeout=5) if address else None
        self.interval = interval
        self.gauges = dict(gauges or {})
        self._counts: Counter[str] = Counter()        # not yet reported
        self._slot = 0
        self._slot_counts: Counter[str] = Counter()   # reported in the current slot
        self.totals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = Periodic("node-telemetry", interval, self.report, log, "node metrics report failed")
        self._warned = False

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            self.totals[name] += n

    def report(self) -> bool:
        """Send one report; True if Graphite confirmed it (or nothing to send)."""
        if self.sender is None:
            return True
        now = int(time.time())
        slot = now - now % SLOT_SECONDS
        with self._lock:
            counts, self._counts = self._counts, Counter()
            if slot != self._slot:
                self._slot, self._slot_counts = slot, Counter()
            self._slot_counts.update(counts)
            totals = dict(self._slot_counts)
        lines = [f"{nm.node_metric(self.node, name)} {totals.get(name, 0)} {slot}" for name in nm.COUNTERS]
        for name, fn in self.gauges.items():
            try:
                lines.append(f"{nm.node_metric(self.node, name)} {float(fn()):.6g} {slot}")
            except Exception:   # a gauge must never stop the report
                log.debug("gauge %s failed", name, exc_info=True)
        try:
            self.sender.deliver("\n".join(lines) + "\n")
        except DeliveryError as exc:
            with self._lock:
                self._counts.update(counts)     # keep them for the next report
                if slot == self._slot:
                    self._slot_counts.subtract(counts)
            if not self._warned:
                log.warning("node metrics not delivered (kept for the next report): %s", exc)
                self._warned = True
            return False
        self._warned = False
        return True

    def start(self) -> None:
        if self.sender is not None:
            self._loop.start()

    def stop(self) -> None:
        if self._loop.stop():
            self.report()
