"""One background thread that calls a function every ``interval`` seconds until stopped;
an exception is logged and the loop goes on (a bad pass must never stop the node)."""
from __future__ import annotations

import logging
import threading
from typing import Callable

__all__ = ["Periodic"]


class Periodic:
    def __init__(self, name: str, interval: float, work: Callable[[], object], log: logging.Logger,
                 failure: str):
        self.name = name
        self.interval = interval
        self.work = work
        self.log = log
        self.failure = failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.work()
            except Exception:
                self.log.exception("%s; retrying", self.failure)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop and wait for the thread; True if it had been started."""
        self._stop.set()
        if self._thread is None:
            return False
        self._thread.join(5)
        return True
