"""Every path of a node's data directory, derived once from the configuration.

Every stage and every command takes its paths from one :class:`DataLayout`; nothing else
joins names onto the data directory.  ``<data>`` is ``data_dir``::

    <data>/archive/<Study>/<Series>/<SOP>.dcm   archived instances (receive -> archive)
    <data>/tmp/                                 partial files while an instance is received
    <data>/views/raw/<Study>/<Series>.json      series records with classification types
    <data>/deliveries/                          what each association delivered, per study
    <data>/jobs/<id>/                           job directories (magickbox.jobfiles.JobDir)
    <data>/magickbox.sqlite                     the job store
    <data>/buckets/                             installed buckets          [buckets_dir]
    <data>/classifyRules.json                   series classification rules [classify_rules]
    <data>/routing.json                         routing rules
    <data>/api-tokens.json                      hashed API tokens (mode 0600)
    <data>/quarantine/uploads/                  refused uploads, with the reason

``buckets_dir`` and ``classify_rules`` may point elsewhere (configuration keys of the same
names); everything else lives under the data directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataLayout"]


@dataclass(frozen=True)
class DataLayout:
    root: Path
    buckets: Path
    classify_rules_file: Path
    classify_rules_configured: bool = False

    @classmethod
    def of(cls, data_dir: str | Path, buckets_dir: str | Path | None = None,
           classify_rules: str | Path | None = None) -> "DataLayout":
        root = Path(data_dir)
        return cls(root, Path(buckets_dir) if buckets_dir else root / "buckets",
                   Path(classify_rules) if classify_rules else root / "classifyRules.json", bool(classify_rules))

    archive = property(lambda self: self.root / "archive")
    tmp = property(lambda self: self.root / "tmp")
    series_views = property(lambda self: self.root / "views" / "raw")
    deliveries = property(lambda self: self.root / "deliveries")
    jobs = property(lambda self: self.root / "jobs")
    database = property(lambda self: self.root / "magickbox.sqlite")
    routing_rules = property(lambda self: self.root / "routing.json")
    api_tokens = property(lambda self: self.root / "api-tokens.json")
    upload_quarantine = property(lambda self: self.root / "quarantine" / "uploads")

    def job_dir(self, job_id: int | str) -> Path:
        return self.jobs / str(int(job_id))

    @property
    def classify_rules(self) -> Path | None:
        """The classification rules file: the configured one (which must exist), else the
        default one when it exists (it is optional)."""
        if self.classify_rules_configured or self.classify_rules_file.exists():
            return self.classify_rules_file
        return None
