"""Several receiving processes on one DICOM port (``[dicom] receivers = N``, N > 1).

pynetdicom runs every association of a process under one GIL, so one process receives
on about one core however many scanners send.  With ``receivers = N`` the node opens the
listening socket itself, accepts every connection and hands it (``SCM_RIGHTS`` over a
Unix socket pair) to the one of N child processes (``python -m magickbox.receivers``)
with the fewest connections; each child runs the ordinary :class:`~.receiver.StorageReceiver`
(peer guard, association, archive writer, series records, receive-side study tracker) on
the connections it is handed.  (Children accepting from the shared socket themselves
balanced badly: measured, one took three of four associations.)  The parent keeps
everything else (study completion, jobs, queue, worker, web UI/API).

What holds across processes:

* **Acknowledged = durable.**  A child acknowledges an instance only after the archive
  write (file and directory fsync'd) and the study's pending row (SQLite, shared by all
  processes, ``synchronous=FULL``) and delivery-list lines exist, exactly as a single
  receiver does.
* **One job per completed study.**  Only the parent completes studies.  Children record
  open associations in the pending row; the parent completes a study only if its row is
  unchanged inside the completing transaction (:meth:`.Database.complete_study`), so an
  association that a child opens meanwhile postpones the completion instead of being cut
  off.  A child that sees its delivery list was completed opens the new one.
* **Duplicates and replacement** are decided under a lock that holds across processes
  (:meth:`.DicomArchive._place`); new instances are linked with ``linkat``, which never
  replaces an existing file.  Series records merge their ``NumFiles`` under a lock.
* **Limits per process**: ``max_associations``, ``max_pending_connections`` and
  ``max_connections_per_address`` hold in each receiving process (so up to N times
  each for the node); ``spool_memory_mb`` is divided among them.
* **No orphans.**  Children stop on SIGTERM from the parent (:meth:`ReceiverPool.stop`,
  SIGKILL after a grace period), get SIGTERM when the parent dies
  (``PR_SET_PDEATHSIG``) and also exit when their control socket to the parent reaches
  EOF.  A child that dies on its own stops the node (``on_failure``): its open
  associations are recovered by the next start (every pending study then completes
  after the quiet period), which a supervisor such as systemd provides.

Children report instance/association counts and connection counts to the parent over
their control socket (one text line each); they log through the same one-line,
PHI-free formatter (:mod:`.logsafe`) to the node's stderr.
"""
from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

from .config import NodeConfig

__all__ = ["ReceiverPool", "child_main"]

log = logging.getLogger("magickbox.receivers")

#: seconds a child has to listen after it was started
START_TIMEOUT = 60.0
#: seconds children get to stop after SIGTERM before SIGKILL
STOP_GRACE = 10.0
#: seconds between two reports of a child to the parent
REPORT_INTERVAL = 1.0


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class _Child:
    def __init__(self, index: int, proc: subprocess.Popen, control: socket.socket):
        self.index = index
        self.proc = proc
        self.control = control
        self.buffer = b""
        self.ready = False
        self.counts: dict[str, int] = {"pending": 0, "associated": 0, "addresses": 0}
        self.load = 0          # connections at its last report
        self.handed = 0        # connections handed to it since


class ReceiverPool:
    """Starts, watches and stops the receiving processes of a node."""

    def __init__(self, config: NodeConfig, count: Callable[[str, int], None],
                 on_failure: Callable[[], None] | None = None):
        """``count(name, n)``: where the children's counters go (node telemetry);
        ``on_failure()``: called once if a child exits while the pool runs."""
        self.config = config
        self.count = count
        self.on_failure = on_failure
        self.children: list[_Child] = []
        self.socket: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._acceptor: threading.Thread | None = None

    def start(self) -> int:
        """Open the port, start the children, return once every one listens; the port."""
        d = self.config.dicom
        self.socket = _listening_socket(d.host, d.port)
        port = self.socket.getsockname()[1]
        level = logging.getLogger().getEffectiveLevel()
        try:
            for index in range(d.receivers):
                self.children.append(self._spawn(index, level))
            deadline = time.monotonic() + START_TIMEOUT
            while not all(c.ready for c in self.children):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"receiving processes did not start within {START_TIMEOUT:g} s")
                self._poll(0.1, starting=True)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="receiver-pool", daemon=True)
        self._watcher.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="dicom-listener", daemon=True)
        self._acceptor.start()
        log.info("DICOM listener on %s:%d (AE %s%s): %d receiving processes (pids %s)", d.host, port, d.ae_title,
                 ", TLS" if d.tls else "", len(self.children), ", ".join(str(c.proc.pid) for c in self.children))
        return port

    def _spawn(self, index: int, level: int) -> _Child:
        assert self.socket is not None
        parent_end, child_end = socket.socketpair()
        listen_fd, control_fd = self.socket.fileno(), child_end.fileno()
        proc = subprocess.Popen(
            [sys.executable, "-m", "magickbox.receivers", str(listen_fd), str(control_fd), str(os.getpid()),
             str(index), str(level)],
            stdin=subprocess.PIPE, pass_fds=(listen_fd, control_fd), close_fds=True)
        child_end.close()
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(self.config))
        proc.stdin.close()
        parent_end.setblocking(False)
        return _Child(index, proc, parent_end)

    def _poll(self, timeout: float, starting: bool = False) -> None:
        """Read what the children reported; a child that ended is handled here."""
        live = [c for c in self.children if c.control.fileno() >= 0]
        if not live:
            time.sleep(timeout)
            return
        readable, _, _ = select.select([c.control for c in live], [], [], timeout)
        for child in live:
            if child.control not in readable:
                continue
            try:
                data = child.control.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                child.control.close()
                self._ended(child, starting)
                continue
            child.buffer += data
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                self._report(child, line.decode("ascii", "replace").split())

    def _report(self, child: _Child, words: list[str]) -> None:
        if words == ["ready"]:
            child.ready = True
        elif len(words) == 3 and words[0] == "count":
            self.count(words[1], int(words[2]))
        elif len(words) == 4 and words[0] == "connections":
            child.counts = {"pending": int(words[1]), "associated": int(words[2]), "addresses": int(words[3])}
            child.load = child.counts["pending"] + child.counts["associated"]
            child.handed = 0

    def _ended(self, child: _Child, starting: bool) -> None:
        if self._stopping.is_set():
            return
        code = child.proc.wait()
        if starting:
            raise RuntimeError(f"receiving process {child.index} exited with code {code} while starting "
                               "(see its messages above)")
        log.error("receiving process %d (pid %d) exited with code %d; stopping the node (a restart recovers "
                  "the studies it was receiving)", child.index, child.proc.pid, code)
        if self.on_failure is not None:
            self.on_failure()

    def _accept_loop(self) -> None:
        """Accept connections and hand each to the receiving process with the fewest
        connections (its last report plus what it was handed since)."""
        assert self.socket is not None
        self.socket.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                conn, _ = self.socket.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accepting a DICOM connection failed")
                time.sleep(0.1)
                continue
            with conn:
                live = [c for c in self.children if c.ready and c.control.fileno() >= 0]
                if not live:
                    continue
                child = min(live, key=lambda c: c.load + c.handed)
                try:
                    socket.send_fds(child.control, [b"c"], [conn.fileno()])
                    child.handed += 1
                except OSError as exc:        # the child is gone or stuck: drop this connection
                    log.warning("could not hand a connection to receiving process %d: %s", child.index, exc)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll(0.5)
            except Exception:   # noqa: BLE001 - keep watching
                log.exception("receiver pool watcher")
                time.sleep(0.5)

    def counts(self) -> dict[str, int]:
        """Connections now over all receiving processes (as :meth:`.ConnectionGuard.counts`)."""
        total: Counter[str] = Counter()
        for child in self.children:
            total.update(child.counts)
        return {"pending": total["pending"], "associated": total["associated"], "addresses": total["addresses"]}

    def stop(self) -> None:
        """SIGTERM every child, SIGKILL what is left after :data:`STOP_GRACE` s."""
        self._stopping.set()
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in self.children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("receiving process %d (pid %d) did not stop; killed", child.index, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
            if child.control.fileno() >= 0:
                child.control.close()
        for thread in (self._watcher, self._acceptor):
            if thread is not None:
                thread.join(2)
        if self.socket is not None:
            self.socket.close()
            self.socket = None


# -- the child ------------------------------------------------------------------------------
class _Reporter:
    """The child's telemetry: counts go to the parent every :data:`REPORT_INTERVAL` s."""

    def __init__(self, control: socket.socket):
        self.control = control
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def send(self, line: str) -> None:
        self.control.sendall(line.encode("ascii") + b"\n")

    def report(self, guard: Any) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        for name, n in counts.items():
            self.send(f"count {name} {n}")
        c = guard.counts()
        self.send(f"connections {c['pending']} {c['associated']} {c['addresses']}")


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                          # the control socket's EOF still works
    if os.getppid() != parent:                        # it died before prctl
        os._exit(1)


def child_main(argv: list[str]) -> int:
    listen_fd, control_fd, parent, index, level = (int(a) for a in argv[:5])
    _die_with_parent(parent)
    from . import logsafe
    from .store import private_umask
    logsafe.configure(level)
    private_umask()
    config: NodeConfig = pickle.loads(sys.stdin.buffer.read())
    # a signal only writes to a pipe (a handler that takes a lock, e.g. Event.set, can
    # deadlock with the code it interrupts); the main loop selects on it
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def _signal(signum: int, _frame: object) -> None:
        try:
            os.write(wake_w, b"x")
        except OSError:
            pass

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    control = socket.socket(fileno=control_fd)
    listener = socket.socket(fileno=listen_fd)

    from .buckets import BucketRegistry
    from .classify import ClassifyRules
    from .db import Database
    from .dicomio import HeaderReader
    from .receiver import StorageReceiver
    from .series import SeriesRecords
    from .store import DicomArchive
    from .studies import StudyTracker

    layout = config.layout
    d = config.dicom
    registry = BucketRegistry(layout.buckets)
    registry.load()
    rules = ClassifyRules.load(layout.classify_rules) if layout.classify_rules else ClassifyRules.empty()
    archive = DicomArchive(layout, fsync=d.fsync, replace=d.replace,
                           spool_memory=int(d.spool_memory_mb * 1024 * 1024 / d.receivers))
    db = Database(layout.database)
    series = SeriesRecords(layout, rules, shared=True)
    tracker = StudyTracker(db, archive, series, d.quiet_seconds,
                           makes_jobs=lambda ae: registry.by_ae_title(ae) is not None)
    reporter = _Reporter(control)
    receiver = StorageReceiver(config, archive, registry, tracker, series, HeaderReader(rules.dicom_tags()),
                               reporter)  # type: ignore[arg-type]
    receiver.start(listen_socket=listener, accept=False)

    try:
        reporter.send("ready")
        next_report = time.monotonic() + REPORT_INTERVAL
        while True:
            readable, _, _ = select.select([control.fileno(), wake_r], [], [],
                                           max(0.0, next_report - time.monotonic()))
            if wake_r in readable:
                break                             # SIGTERM/SIGINT (also PR_SET_PDEATHSIG)
            if control.fileno() in readable:
                data, fds, _, _ = socket.recv_fds(control, 1024, 64)
                if not data and not fds:
                    break                         # EOF: the parent is gone
                for fd in fds:                    # connections the parent accepted
                    receiver.take_connection(socket.socket(fileno=fd))
            if time.monotonic() >= next_report:
                tracker.flush()
                series.flush()
                reporter.report(receiver.guard)
                next_report = time.monotonic() + REPORT_INTERVAL
    except OSError:
        pass                                      # the parent closed the control socket
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        receiver.stop()
        tracker.flush()
        series.flush()
        try:
            reporter.report(receiver.guard)
        except OSError:
            pass
        db.close()
    logging.shutdown()
    os._exit(0)                          # association threads (daemons) end with the process


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
