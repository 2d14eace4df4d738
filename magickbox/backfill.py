"""Backfill: run a (new) bucket over every archived study — the QM-ROCT need "execute a
new algorithm with all available sessions".

Selects studies in ``<data>/archive`` by StudyDate (``--since``/``--until``, from the
series records) and a regular expression (``--match``) searched in the study UID, study
and series descriptions and the calling AE titles that sent it.  A study is skipped
when the bucket already ran on it successfully, or has a queued or running job, with
the same bucket version (unless ``--force``).  Jobs are created as ``queued`` with source ``backfill``; the running node
queues them on gearman like any other job.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .buckets import BucketInfo
from .db import Database
from .model import ACTIVE_STATUSES, JobStatus
from .store import DicomArchive

__all__ = ["BackfillSummary", "backfill"]


@dataclass
class BackfillSummary:
    queued: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    skipped_filter: int = 0
    job_ids: list[int] = field(default_factory=list)

    def line(self, dry_run: bool) -> str:
        verb = "would queue" if dry_run else "queued"
        return (f"{verb} {len(self.queued)} study/studies, skipped {len(self.skipped_done)} already done with this "
                f"bucket version, {self.skipped_filter} outside --since/--until/--match")


def _study_facts(series_root: Path) -> tuple[_dt.date | None, str, int]:
    """(StudyDate, searchable text, series count) from a study's series records."""
    date = None
    texts = []
    count = 0
    for record in sorted(series_root.glob("*.json")):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        count += 1
        for key in ("StudyDescription", "SeriesDescription", "Modality", "ProtocolName"):
            if data.get(key):
                texts.append(str(data[key]))
        raw = str(data.get("StudyDate") or "")
        if date is None and re.fullmatch(r"\d{8}", raw):
            try:
                date = _dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
            except ValueError:
                pass
    return date, "\n".join(texts), count


def backfill(db: Database, archive: DicomArchive, views_root: Path, bucket: BucketInfo,
             since: _dt.date | None = None, until: _dt.date | None = None, match: str | None = None,
             dry_run: bool = False, force: bool = False, progress: bool = True) -> BackfillSummary:
    pattern = re.compile(match) if match else None
    studies = sorted(p for p in archive.root.iterdir() if p.is_dir()) if archive.root.is_dir() else []
    summary = BackfillSummary()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(studies), unit="study", desc=f"backfill {bucket.ae_title}", file=sys.stderr)
    try:
        for study_dir in studies:
            if bar is not None:
                bar.update(1)
            study = study_dir.name
            date, text, _ = _study_facts(views_root / study)
            previous = db.jobs_for_study(study, bucket.ae_title)
            callers = " ".join(sorted({j.calling_ae for j in previous}))
            if (since and (date is None or date < since)) or (until and (date is None or date >= until)) or (
                    pattern and not pattern.search(f"{study}\n{text}\n{callers}")):
                summary.skipped_filter += 1
                continue
            if not force and any(j.bucket_version == bucket.version and j.status in (JobStatus.SUCCESS, *ACTIVE_STATUSES)
                                 for j in previous):
                summary.skipped_done.append(study)
                continue
            summary.queued.append(study)
            if dry_run:
                continue
            series_count, instances = archive.study_counts(study)
            if instances == 0:
                continue
            classification = {}
            for record in (views_root / study).glob("*.json"):
                try:
                    classification[record.stem] = json.loads(record.read_text()).get("ClassifyType", [])
                except (OSError, ValueError):
                    pass
            job = db.create_job(bucket.ae_title, "BACKFILL", "", study, "backfill",
                                previous[0].received if previous else study_dir.stat().st_mtime,
                                series_count, instances, classification,
                                follow_up_of=previous[-1].id if previous else None, bucket_version=bucket.version)
            summary.job_ids.append(job.id)
    finally:
        if bar is not None:
            bar.close()
    return summary
