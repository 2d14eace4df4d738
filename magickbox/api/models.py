"""The JSON shapes of the REST API (they make the OpenAPI document).

Field names of jobs are those of the job store (``bucket_ae``, ``calling_ae`` …) that the
status API always used; times are Unix epoch seconds (float, UTC).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ..model import JobStatus
from .store import BucketRecord, JobRecord

Status = JobStatus


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in words")


class JobSummary(BaseModel):
    """A job in lists: no study UID, no patient data."""

    id: int
    bucket_ae: str = Field(description="called AE title: the bucket")
    calling_ae: str = Field(description="calling AE title, or the sender of an upload (mb sender)")
    caller_ip: str
    source: str = Field(description="dicom, upload, rerun or backfill")
    status: Status
    message: str = Field(description="why the job ended as it did (proc.json message, exit code, timeout ...)")
    received: float
    completed: float | None = Field(None, description="study complete (job created from it)")
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    committed: float | None = None
    worker: str | None = None
    exit_code: int | None = None
    attempts: int
    log_size: int = Field(description="bytes of processing.log")
    series_count: int
    instance_count: int
    follow_up_of: int | None = None
    bucket_version: str | None = None
    input_scope: str = Field("delivered", description="the job's input: what its association delivered "
                                                       "(delivered) or the whole archived study (study)")

    @classmethod
    def of(cls, job: JobRecord) -> "JobSummary":
        return cls(**{name: getattr(job, name) for name in cls.model_fields})


class OutputFile(BaseModel):
    path: str
    size: int


class JobDetail(JobSummary):
    """One job with MagickBox's info.json fields.  ``study_uid`` and ``classification``
    (keyed by series UID) only for admin tokens; ``series_types`` for everyone."""

    info: dict[str, Any]
    study_uid: str | None = None
    classification: dict[str, list[str]] | None = None
    series_types: list[str]
    cancel_requested: bool
    output_files: list[OutputFile] = Field(description="the committed result (first 1000 files)")
    output_bytes: int
    measures: list[dict[str, Any]] = Field(description="measures the bucket reported in measures.json: name, value, "
                                                       "unit, labels, time (ISO 8601 UTC), timestamp (epoch s), "
                                                       "path (Graphite metric), delivered (carbon confirmed it)")
    measures_error: str | None = Field(None, description="why the bucket's measures.json was refused (nothing sent)")
    routing: list[dict[str, Any]] = Field(description="results sent to DICOM nodes: one entry per destination "
                                          "(rule, destination, state pending/sending/sent/failed/skipped, "
                                          "attempts, next_try, files, sent, failed, last_error)")
    links: dict[str, str]


class Bucket(BaseModel):
    name: str
    AETitle: str
    version: str
    enabled: bool
    description: str
    license: str
    runner: str
    queued: int
    running: int

    @classmethod
    def of(cls, bucket: BucketRecord, queue: dict[str, int]) -> "Bucket":
        return cls(name=bucket.name, AETitle=bucket.ae_title, version=bucket.version, enabled=bucket.enabled,
                   description=bucket.description, license=bucket.license, runner=bucket.runner,
                   queued=queue.get(JobStatus.QUEUED, 0), running=queue.get(JobStatus.RUNNING, 0))


class Health(BaseModel):
    node: str
    dicom_port: int | None
    http_port: int | None
    pending_studies: int
    jobs: dict[str, int]
    dicom_connections: dict[str, Any] | None = Field(None, description="DICOM connections now, by state")
    buckets_error: str | None


class QueueEntry(BaseModel):
    queued: int
    running: int


class NodeStatus(BaseModel):
    node: str
    version: str
    dicom_ae_title: str
    dicom_port: int | None
    http_port: int | None
    uptime_seconds: float
    disk_free_bytes: int
    pending_studies: int
    jobs: dict[str, int]
    queue: dict[str, QueueEntry] = Field(description="unfinished jobs per bucket AE title: what mb push balances on")
    load: int = Field(description="queued + running jobs of all buckets")
    buckets_error: str | None


class UploadSkipped(BaseModel):
    file: str
    reason: str


class UploadResult(BaseModel):
    jobs: list[JobSummary]
    studies: int
    instances: int
    skipped: list[UploadSkipped]
    quarantined: bool = Field(description="the upload is kept in the node's quarantine (some files were refused)")


class RemoveResult(BaseModel):
    removed: int
    study_removed: bool


class RouteTargetView(BaseModel):
    when: str = Field(description="regular expression matched against proc.json's success value")
    AETitleTo: str
    IP: str
    PORT: str
    AETitleSender: str
    stop_after_success: bool


class RoutingRuleView(BaseModel):
    index: int
    name: str
    enabled: bool
    AETitleIn: str | None
    AETitleFrom: str | None
    ClassifyType: list[str]
    RouteDirectory: str
    stop_after: bool
    send: list[RouteTargetView]


class RoutingView(BaseModel):
    exists: bool
    text: str | None
    valid: bool
    error: str | None
    rules: list[RoutingRuleView]
