"""The records the node's stages pass to each other (one home for each).

receive -> archive -> classify -> queue -> run -> route / measure::

    Sender         who sent a study: called AE (the bucket), calling AE, address
    JobStatus      queued -> running -> success | failed | partial | timeout | cancelled
    JobRequest     what goes on the queue for a job (gearman payload, JSON)
    ClaimRecord    the ``active`` file of a running attempt (JSON)
    AttemptOutcome how one attempt ended (``outcome.json``)

Routing decisions, send reports and measures are in :mod:`magickbox.results`.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["AE_TITLE", "JobStatus", "ACTIVE_STATUSES", "FINAL_STATUSES", "JOB_STATUSES", "INFRASTRUCTURE_ERROR", "Sender",
           "JobRequest", "ClaimRecord", "AttemptOutcome"]


#: an AE title as DICOM defines it (PS3.5 AE): 1-16 characters of the default character
#: repertoire without backslash (leading and trailing spaces are not significant)
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


class JobStatus(str, enum.Enum):
    """A job's status (stored as its value; compares equal to it)."""
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    PARTIAL = "partial"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self not in ACTIVE_STATUSES


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
FINAL_STATUSES = (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.PARTIAL, JobStatus.TIMEOUT, JobStatus.CANCELLED)
JOB_STATUSES = ACTIVE_STATUSES + FINAL_STATUSES

#: the status of an attempt that could not run (engine unreachable, image missing): not a
#: job status; the node retries the job up to the bucket's ``retries``
INFRASTRUCTURE_ERROR = "error"


@dataclass(frozen=True)
class Sender:
    """Who delivered a study: the called AE title (it selects the bucket), the calling AE
    title and the peer's address."""
    called_ae: str
    calling_ae: str
    ip: str


@dataclass(frozen=True)
class JobRequest:
    """A job on the queue: the job's id and the AE title of its bucket."""
    job_id: int
    bucket_ae: str

    def encode(self) -> bytes:
        return json.dumps({"job": self.job_id, "bucket": self.bucket_ae}).encode()

    @classmethod
    def decode(cls, payload: bytes | str) -> "JobRequest":
        """Raises ValueError for a payload that is not a job request."""
        try:
            data = json.loads(payload)
            return cls(int(data["job"]), str(data["bucket"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a job request: {payload[:100]!r}") from exc


@dataclass(frozen=True)
class ClaimRecord:
    """The ``active`` file of a job: which attempt runs, where, since when (epoch s)."""
    attempt: str
    worker: str
    host: str
    pid: int
    started: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ClaimRecord":
        """Raises ValueError for anything that is not a claim record."""
        try:
            data = json.loads(text)
            return cls(str(data["attempt"]), str(data["worker"]), str(data["host"]), int(data["pid"]),
                       float(data["started"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a claim record: {text[:100]!r}") from exc


@dataclass
class AttemptOutcome:
    """How one attempt ended (``outcome.json``).  ``status`` is a job status, or
    :data:`INFRASTRUCTURE_ERROR` (the run could not happen; retried)."""
    attempt: str
    worker: str
    status: str
    message: str
    exit_code: int | None
    started: float
    finished: float
    log_size: int

    @classmethod
    def load(cls, path: Path) -> "AttemptOutcome":
        """Raises OSError, ValueError (not JSON) or TypeError (not an outcome)."""
        data: dict[str, Any] = json.loads(path.read_text())
        values: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**values)
