"""The measures stage: a finished job's ``measures.json`` → the job record → Graphite.

Runs in the node after a job's final status is committed (:mod:`magickbox.jobqueue`).
Every pass (``interval`` seconds):

1. **Collect.**  Every job whose final status is in the database but which has no row in
   ``measure_jobs`` yet (a LEFT JOIN, so a crash between the commit and the collection
   loses nothing) is collected: ``result/output/measures.json`` is read and validated
   (:mod:`magickbox.results.measures`), the study's header is read from the job's input
   (else the archived study) — StationName, DeviceSerialNumber, the acquisition date and
   time, and the identifying values a metric path must not contain — and the datapoints
   are computed with the bucket's subject policy and allowed prefixes.  The job's
   ``measure_jobs`` row and its ``measure_points`` rows are written in **one
   transaction**: the points table is the durable outbox.  An invalid or refused file
   leaves an error naming the file (and entry) in ``measure_jobs.error`` and sends
   nothing; a job without ``measures.json`` gets an empty row.
2. **Deliver.**  Points not yet confirmed are sent with the confirmed Graphite sender
   (:class:`~stability_collector.core.graphite.GraphiteSender`, the one the stability half
   uses) and marked delivered only after carbon confirmed them.  While carbon does not
   confirm, they wait and are retried every ``retry_interval`` seconds, also across
   restarts (at-least-once: a point sent twice lands in the same whisper slot).

Node configuration ``[measures]`` (:func:`parse_measures_config`) and the bucket's
``"measures"`` object in ``info.json`` (:func:`parse_bucket_measures`) are validated at
start-up, errors naming the key.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import pydicom

from stability_collector.core.errors import ConfigError
from stability_collector.core.graphite import DeliveryError, GraphiteAddress, GraphiteSender, sanitize_node
from stability_collector.core.values import parse_number, parse_string
from stability_collector.core.whisper_check import check_whisper_dir, missing_from_whisper
from stability_collector.metrics import resolve_timezone

from ..model import ACTIVE_STATUSES, JobStatus
from ..periodic import Periodic
from .measures import PHI_KEYWORDS, MeasuresError, SubjectPolicy, datapoint_lines, parse_measures, phi_values

__all__ = ["MeasuresConfig", "BucketMeasures", "parse_measures_config", "parse_bucket_measures", "MeasureStage",
           "MeasurePoint", "measure_points", "read_measures_file", "job_measures", "measures_summary",
           "study_header", "MEASURES_FILE"]

log = logging.getLogger("magickbox.measures")

#: where a bucket writes its measures, relative to the job directory
MEASURES_FILE = "result/output/measures.json"
#: a larger measures.json is refused (bytes)
MAX_MEASURES_BYTES = 16 << 20
#: header keywords the stage reads from the study (safe sources and times; the
#: identifying ones only to check that no metric path contains them)
HEADER_KEYWORDS = ("StationName", "DeviceSerialNumber", "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime",
                   "SeriesDate", "SeriesTime", "StudyDate", "StudyTime") + PHI_KEYWORDS
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_PREFIX = re.compile(r"(?:[A-Za-z0-9_-]+|\*)(?:\.(?:[A-Za-z0-9_-]+|\*))*")
_SUBJECTS = ("station", "serial", "alias", "hash")
#: final statuses whose measures are sent
SENT_STATUSES = (JobStatus.SUCCESS.value, JobStatus.PARTIAL.value)
#: lines per confirmed batch when many jobs' points wait
_BATCH_LINES = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measure_jobs (
    job_id INTEGER PRIMARY KEY,
    collected REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS measure_points (
    job_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    unit TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    time INTEGER NOT NULL,
    path TEXT NOT NULL,
    delivered REAL,
    PRIMARY KEY (job_id, name)
);
CREATE INDEX IF NOT EXISTS measure_points_waiting ON measure_points (job_id) WHERE delivered IS NULL;
"""


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuresConfig:
    """The node's ``[measures]`` table::

        [measures]
        timezone = ""              # IANA zone of the scanners' clocks (naive DICOM and
                                   # measures.json times); "" = this host's zone
        subject = "station"        # default subject key: station | serial | alias | hash
        alias = ""                 # the key for subject = "alias"
        salt = ""                  # secret for subject = "hash" (required then); also
                                   # hashes serials missing from serial_aliases
        serial_aliases = {}        # DeviceSerialNumber -> alias, e.g. {"166012" = "prisma1"}
        interval = 1               # seconds between passes (collect new jobs' measures)
        retry_interval = 10        # seconds between delivery attempts while carbon is down
        verify_whisper_dir = ""    # carbon's whisper directory, when carbon runs on this
                                   # host: a point counts as delivered only once it is read
                                   # back from whisper (carbon confirms what it has read,
                                   # not what it has written; a killed carbon loses that)
        verify_timeout = 15        # seconds to wait for the read-back before sending again
    """

    timezone: str = ""
    subject: str = "station"
    alias: str = ""
    salt: str = ""
    serial_aliases: Mapping[str, str] = field(default_factory=dict)
    interval: float = 1.0
    retry_interval: float = 10.0
    verify_whisper_dir: str = ""
    verify_timeout: float = 15.0

    @property
    def tz(self) -> dt.tzinfo | None:
        """The zone of naive times (None: this host's zone)."""
        return resolve_timezone(self.timezone, "measures.timezone")


@dataclass(frozen=True)
class BucketMeasures:
    """The ``"measures"`` object of a bucket's info.json (every key optional)::

        "measures": {"subject": "serial",          # overrides the node's [measures] subject
                     "alias": "phantom1",          # with "subject": "alias"
                     "prefixes": ["hops.stability.*.*.fbirn"]}   # prefixes measures.json may use

    A prefix pattern's literal components are the site's (not checked); ``*`` components
    and anything after the pattern come from data and are checked for identifying
    values.  Without ``prefixes`` the bucket's measures go to
    ``hops.measures.<AETitle>.<subject key>``."""

    subject: str | None = None
    alias: str = ""
    prefixes: tuple[str, ...] = ()


def _alias(key: str, value: Any) -> str:
    text = parse_string(key, value)
    if not _TOKEN.fullmatch(text):
        raise ConfigError(key, f"expected a metric-safe name of [A-Za-z0-9_-], found {text!r}")
    return text


def parse_measures_config(table: Any, key: str = "measures") -> MeasuresConfig:
    """Validate the ``[measures]`` table; :class:`ConfigError` names the key."""
    if table is None:
        table = {}
    if not isinstance(table, Mapping):
        raise ConfigError(key, f"expected a table, found {table!r}")
    known = set(MeasuresConfig.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown setting; known: {', '.join(sorted(known))}")
    timezone = parse_string(f"{key}.timezone", table.get("timezone", ""))
    resolve_timezone(timezone, f"{key}.timezone")
    subject = parse_string(f"{key}.subject", table.get("subject", "station"))
    if subject not in _SUBJECTS:
        raise ConfigError(f"{key}.subject", f"expected one of {', '.join(_SUBJECTS)}, found {subject!r}")
    alias = _alias(f"{key}.alias", table["alias"]) if table.get("alias") else ""
    if subject == "alias" and not alias:
        raise ConfigError(f"{key}.alias", "missing (needed for subject = \"alias\")")
    salt = parse_string(f"{key}.salt", table.get("salt", ""))
    if subject == "hash" and not salt:
        raise ConfigError(f"{key}.salt", "missing (needed for subject = \"hash\"; a secret of the site)")
    raw_aliases = table.get("serial_aliases", {})
    if not isinstance(raw_aliases, Mapping):
        raise ConfigError(f"{key}.serial_aliases", f"expected a table of serial = \"alias\", found {raw_aliases!r}")
    aliases = {str(serial).strip(): _alias(f"{key}.serial_aliases.{serial}", name)
               for serial, name in raw_aliases.items()}
    return MeasuresConfig(timezone, subject, alias, salt, aliases,
                          parse_number(f"{key}.interval", table.get("interval", 1.0), 0.05, text=False),
                          parse_number(f"{key}.retry_interval", table.get("retry_interval", 10.0), 0.1, text=False),
                          parse_string(f"{key}.verify_whisper_dir", table.get("verify_whisper_dir", "")),
                          parse_number(f"{key}.verify_timeout", table.get("verify_timeout", 15.0), 0.1, text=False))


def parse_bucket_measures(value: Any, key: str = "measures") -> BucketMeasures:
    """Validate a bucket's ``"measures"`` object; :class:`ConfigError` names the key."""
    if value is None:
        return BucketMeasures()
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected an object, found {value!r}")
    unknown = sorted(set(value) - {"subject", "alias", "prefixes"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", "unknown setting; known: alias, prefixes, subject")
    subject = value.get("subject")
    if subject is not None and subject not in _SUBJECTS:
        raise ConfigError(f"{key}.subject", f"expected one of {', '.join(_SUBJECTS)}, found {subject!r}")
    alias = _alias(f"{key}.alias", value["alias"]) if value.get("alias") else ""
    if subject == "alias" and not alias:
        raise ConfigError(f"{key}.alias", "missing (needed for \"subject\": \"alias\")")
    prefixes = value.get("prefixes", [])
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and _PREFIX.fullmatch(p) for p in prefixes):
        raise ConfigError(f"{key}.prefixes", f"expected a list of dot-separated metric paths (components "
                                             f"[A-Za-z0-9_-] or *), found {prefixes!r}")
    return BucketMeasures(subject, alias, tuple(prefixes))


def subject_policy(config: MeasuresConfig, bucket: BucketMeasures) -> SubjectPolicy:
    """The bucket's subject key rule: its own ``subject``, else the node's; the site's
    serial aliases and salt."""
    source = bucket.subject or config.subject
    alias = bucket.alias or config.alias
    return SubjectPolicy(source, config.serial_aliases, alias, config.salt)


# -- the study's header ----------------------------------------------------------------------
def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def study_header(files: Iterable[Path]) -> tuple[dict[str, str], set[str]]:
    """(header of the first readable file, identifying values of all of them).

    ``files``: DICOM files of the study (one per series is enough: the patient fields are
    the same, the UIDs are refused by their form anyway).  Raises :class:`MeasuresError`
    when none is readable."""
    header: dict[str, str] | None = None
    phi: set[str] = set()
    problems = []
    for number, path in enumerate(files, 1):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
        except Exception as exc:        # anything pydicom raises for a damaged file
            problems.append(f"input file {number}: {type(exc).__name__}")     # (file names are SOP UIDs)
            continue
        values = {k: _text(ds.get(k)).strip() for k in HEADER_KEYWORDS if ds.get(k) is not None}
        phi |= phi_values(values)
        if header is None:
            header = values
    if header is None:
        raise MeasuresError("cannot read the study's DICOM header (needed for the time stamp and the check for "
                            f"identifying values): {', '.join(problems[:3]) or 'no input files'}; nothing sent")
    return header, phi


def _one_per_series(root: Path) -> list[Path]:
    """The first ``.dcm`` file of every series directory under ``root`` (sorted)."""
    if not root.is_dir():
        return []
    out = []
    for series in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = min((f for f in series.iterdir() if f.suffix == ".dcm" and f.is_file()), default=None)
        if first is not None:
            out.append(first)
    return out


# -- from measures.json to datapoints ----------------------------------------------------------
class MeasurePoint(NamedTuple):
    """One measure as a Graphite datapoint: ``path value timestamp`` (epoch seconds)."""
    name: str
    value: float
    unit: str
    labels: Mapping[str, str]
    timestamp: int
    path: str

    @property
    def line(self) -> str:
        """The plaintext protocol line (with its newline)."""
        return f"{self.path} {self.value!r} {self.timestamp}\n"


def read_measures_file(path: Path, source: str) -> str:
    """The text of a bucket's measures.json: a regular file (no symbolic link) of at most
    :data:`MAX_MEASURES_BYTES`, UTF-8.  :class:`MeasuresError` names ``source``."""
    if path.is_symlink() or not path.is_file():
        raise MeasuresError(f"{source}: not a regular file (a symbolic link or a directory): refused")
    if path.stat().st_size > MAX_MEASURES_BYTES:
        raise MeasuresError(f"{source}: larger than {MAX_MEASURES_BYTES >> 20} MB: refused")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasuresError(f"{source}: cannot read: {type(exc).__name__}") from None


def measure_points(text: str, source: str, bucket_ae: str, settings: BucketMeasures, config: MeasuresConfig,
                   study_files: Iterable[Path]) -> list[MeasurePoint]:
    """The datapoints of a measures.json text for a study (``study_files``: DICOM files of
    it, one per series), exactly as the node sends them.  Raises :class:`MeasuresError`
    (invalid file, a prefix the bucket may not use, no time, an identifying value)."""
    tz = config.tz
    measure_set = parse_measures(text, tz, source)
    if not measure_set.measures:
        return []
    header, phi = study_header(study_files)
    lines = datapoint_lines(measure_set, sanitize_node(bucket_ae), header, subject_policy(config, settings), tz,
                            settings.prefixes, phi=phi)
    points = []
    for measure, line in zip(measure_set.measures, lines):
        metric, _value, epoch = line.split(" ")
        points.append(MeasurePoint(measure.name, measure.value, measure.unit, dict(measure.labels), int(epoch),
                                   metric))
    return points


# -- the job record ---------------------------------------------------------------------------
def job_measures(conn: sqlite3.Connection | Any, job_id: int) -> tuple[list[dict[str, Any]], str | None]:
    """(measures, error) of a job for its record: each measure with ``name value unit
    labels time`` (ISO 8601, UTC) ``timestamp`` (epoch s) ``path`` and ``delivered``
    (carbon confirmed it); ``error`` is why measures.json was refused (None: not refused,
    or not collected yet).  Works on any connection to the node's database (the API's
    read-only one too); a database without the tables has no measures."""
    try:
        rows = conn.execute("SELECT name, value, unit, labels, time, path, delivered FROM measure_points"
                            " WHERE job_id = ? ORDER BY rowid", (job_id,)).fetchall()
        state = conn.execute("SELECT error FROM measure_jobs WHERE job_id = ?", (job_id,)).fetchone()
    except sqlite3.OperationalError:
        return [], None
    measures = [{"name": r[0], "value": r[1], "unit": r[2], "labels": json.loads(r[3] or "{}"),
                 "time": dt.datetime.fromtimestamp(r[4], dt.timezone.utc).isoformat(), "timestamp": r[4],
                 "path": r[5], "delivered": r[6] is not None} for r in rows]
    return measures, (state[0] or None) if state else None


def measures_summary(conn: sqlite3.Connection | Any, job_id: int) -> str:
    """One short phrase for job lists: ``12 measures delivered``, ``12 measures (3 waiting
    for Graphite)``, ``measures refused: ...`` or ``""``."""
    measures, error = job_measures(conn, job_id)
    if error:
        return f"measures refused: {error}"
    if not measures:
        return ""
    waiting = sum(1 for m in measures if not m["delivered"])
    return f"{len(measures)} measures delivered" if not waiting else \
        f"{len(measures)} measures ({waiting} waiting for Graphite)"


# -- the stage -------------------------------------------------------------------------------
class MeasureStage:
    """Collect and deliver the measures of a node's finished jobs (see the module doc).

    ``db``: the node's :class:`~magickbox.db.Database`; ``registry``: its buckets;
    ``graphite``: where carbon listens (None: measures are collected and wait until a
    node with Graphite configured runs on the same data)."""

    def __init__(self, layout: Any, db: Any, registry: Any, config: MeasuresConfig,
                 graphite: GraphiteAddress | None, sender_timeout: float = 15.0):
        self.layout = layout
        self.db = db
        self.registry = registry
        self.config = config
        self.tz = config.tz
        self.sender = GraphiteSender(graphite, timeout=sender_timeout) if graphite else None
        if config.verify_whisper_dir:
            check_whisper_dir(config.verify_whisper_dir, "measures.verify_whisper_dir")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        self._floor = 0                       # every final job below this id is collected
        self._postponed: set[int] = set()     # jobs whose files could not be read (warned once)
        self._retry_at = 0.0
        self._warned = False
        self.last_error = ""
        self._loop = Periodic("measures", config.interval, self.run_pass, log, "measures pass failed")

    # -- collection ---------------------------------------------------------------------------
    def collect_new(self, limit: int = 200) -> int:
        """Collect the jobs that are final and not collected yet; how many."""
        active = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES)
        lowest_active = self.db.execute(f"SELECT min(id) FROM jobs WHERE status IN ({active})").fetchone()[0]
        next_id = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM jobs").fetchone()[0]
        candidate = min(lowest_active or next_id, next_id)
        rows = self.db.execute(
            "SELECT jobs.id, jobs.bucket_ae, jobs.study_uid, jobs.status FROM jobs"
            " LEFT JOIN measure_jobs m ON m.job_id = jobs.id"
            f" WHERE jobs.id >= ? AND jobs.status NOT IN ({active}) AND m.job_id IS NULL"
            " ORDER BY jobs.id LIMIT ?", (self._floor, limit)).fetchall()
        done = 0
        postponed = False
        for job_id, bucket_ae, study_uid, status in rows:
            try:
                self.collect(job_id, bucket_ae, study_uid, status)
                done += 1
            except OSError as exc:             # the file system, not the data: try again next pass
                postponed = True
                if job_id not in self._postponed:
                    self._postponed.add(job_id)
                    log.warning("job %d: measures not collected yet (%s); retried", job_id, type(exc).__name__)
        if len(rows) < limit and not postponed:
            self._floor = max(self._floor, candidate)
        return done

    def collect(self, job_id: int, bucket_ae: str, study_uid: str, status: str = "success") -> None:
        """Read, check and record one finished job's measures (one transaction).  Only a
        ``success`` or ``partial`` job's measures are sent."""
        jobdir = self.layout.job_dir(job_id)
        path = jobdir / MEASURES_FILE
        source = f"job {job_id}: output/measures.json"
        points: list[MeasurePoint] = []
        error = ""
        now = time.time()
        if (path.is_symlink() or path.exists()) and status not in SENT_STATUSES:
            error = f"{source}: not sent because the job ended {status} (only success and partial jobs' measures are)"
        elif path.is_symlink() or path.exists():
            try:
                points = self._points(job_id, path, source, bucket_ae, study_uid)
            except MeasuresError as exc:
                text = str(exc)
                error = text if text.startswith(source) else f"{source}: {text}"
                log.warning("job %d: measures.json refused, nothing sent (the reason is on the job record)", job_id)
            except OSError:
                raise
            except Exception as exc:           # never let one job's file stop the stage
                error = f"{source}: could not be processed ({type(exc).__name__}); nothing sent"
                log.error("job %d: measures.json could not be processed (%s)", job_id, type(exc).__name__)
        self.db.transaction([("INSERT OR IGNORE INTO measure_jobs (job_id, collected, source, error) VALUES (?, ?, ?, ?)",
                      (job_id, now, "output/measures.json" if path.exists() else "", error))]
                    + [("INSERT OR IGNORE INTO measure_points (job_id, name, value, unit, labels, time, path)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)", (job_id, p.name, p.value, p.unit, json.dumps(dict(p.labels)),
                                                          p.timestamp, p.path)) for p in points])
        if points:
            log.info("job %d: %d measures recorded", job_id, len(points))

    def _points(self, job_id: int, path: Path, source: str, bucket_ae: str, study_uid: str) -> list[MeasurePoint]:
        text = read_measures_file(path, source)
        bucket = self.registry.by_ae_title(bucket_ae)
        try:
            settings = parse_bucket_measures(bucket.raw.get("measures")) if bucket is not None else BucketMeasures()
        except ConfigError as exc:
            raise MeasuresError(f"bucket {bucket_ae} info.json: {exc}") from None
        files = _one_per_series(jobdir_input(self.layout, job_id)) or \
            _one_per_series(self.layout.archive / study_uid)
        return measure_points(text, source, bucket_ae, settings, self.config, files)

    # -- delivery -------------------------------------------------------------------------------
    def deliver_waiting(self) -> tuple[int, str]:
        """Send the points carbon has not confirmed, oldest job first, in confirmed
        batches; ``(points delivered, error or "")``.  Stops at the first failure."""
        if self.sender is None:
            return 0, "no Graphite address configured ([graphite] address)"
        delivered = 0
        while True:
            jobs = [r[0] for r in self.db.execute(
                "SELECT DISTINCT job_id FROM measure_points WHERE delivered IS NULL ORDER BY job_id LIMIT 500")]
            if not jobs:
                return delivered, ""
            points: list[tuple[int, str, float, int]] = []
            for job_id in jobs:
                rows = self.db.execute("SELECT path, value, time FROM measure_points WHERE job_id = ?"
                                       " AND delivered IS NULL", (job_id,)).fetchall()
                points += [(job_id, p, float(v), int(t)) for p, v, t in rows]
                if len(points) >= _BATCH_LINES:
                    break
            try:
                self.sender.deliver("".join(f"{p} {v!r} {t}\n" for _job, p, v, t in points))
            except DeliveryError as exc:
                return delivered, str(exc)
            missing: set[str] = set()
            if self.config.verify_whisper_dir:
                missing = set(missing_from_whisper(Path(self.config.verify_whisper_dir),
                                                   [(p, v, t) for _job, p, v, t in points], self.config.verify_timeout))
            now = time.time()
            done = [(job_id, path) for job_id, path, _v, _t in points if path not in missing]
            self.db.transaction([("UPDATE measure_points SET delivered = ? WHERE job_id = ? AND path = ?"
                                  " AND delivered IS NULL", (now, job_id, path)) for job_id, path in done])
            delivered += len(done)
            if missing:
                return delivered, (f"carbon confirmed, but {len(missing)} datapoint(s) are not in whisper under "
                                   f"{self.config.verify_whisper_dir} after {self.config.verify_timeout:g} s "
                                   f"(e.g. {min(missing)}); they are sent again")

    def waiting(self) -> int:
        """Points waiting for carbon's confirmation."""
        return self.db.execute("SELECT count(*) FROM measure_points WHERE delivered IS NULL").fetchone()[0]

    # -- running ---------------------------------------------------------------------------------
    def run_pass(self) -> None:
        """Collect what is new; deliver what waits (after a failure, not before
        ``retry_interval`` has passed)."""
        self.collect_new()
        if self.sender is None or time.monotonic() < self._retry_at:
            return
        delivered, error = self.deliver_waiting()
        if error:
            self._retry_at = time.monotonic() + self.config.retry_interval
            self.last_error = error
            if not self._warned:
                log.warning("measures not delivered (kept, retried every %g s): %s", self.config.retry_interval,
                            error)
                self._warned = True
            return
        self.last_error = ""
        if self._warned:
            log.info("Graphite confirmed the measures that waited (%d datapoints)", delivered)
        self._warned = False

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()


def jobdir_input(layout: Any, job_id: int) -> Path:
    """The job's frozen input snapshot (``jobs/<id>/input``)."""
    return Path(layout.job_dir(job_id)) / "input"
