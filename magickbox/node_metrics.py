"""Names of the metrics a magickbox node sends to Graphite.

All node metrics live under ``hops.magickbox.<node>.`` (storage schema ``10s:2d,1m:30d,
1h:5y``); counters are counts per report interval (aggregated by ``sum`` when rolled up),
gauges are the value at the report time.  The *DICOM node* dashboard in
``grafana-dashboards/`` is built from these names.

Bucket measures (values a processing bucket reports about a study) are not node
metrics: they go to ``hops.measures.<bucket>.<measure>`` with the study's time stamp and
the long ``hops.`` retention, like phantom data.
"""

from __future__ import annotations

from .model import FINAL_STATUSES

PREFIX = "hops.magickbox"

#: counter: DICOM instances stored (and acknowledged) since the last report
INSTANCES_RECEIVED = "dicom.received"
#: counter: associations accepted
ASSOCIATIONS = "dicom.associations"
#: counter: associations rejected plus instances refused
REJECTED = "dicom.rejected"
#: counter: studies completed (quiet period over, job created)
STUDIES_COMPLETED = "studies.completed"
#: gauge: jobs waiting in the queue
QUEUE_LENGTH = "jobs.queued"
#: gauge: jobs running
JOBS_RUNNING = "jobs.running"
#: counters: jobs that ended, by final status
JOB_STATUS_COUNTERS: dict[str, str] = {status: f"jobs.{status.value}" for status in FINAL_STATUSES}
#: gauge: seconds from study completion to container start, last job
START_LATENCY = "jobs.start_latency"

#: counters: everything counted per reporting interval
COUNTERS = (INSTANCES_RECEIVED, ASSOCIATIONS, REJECTED, STUDIES_COMPLETED, *JOB_STATUS_COUNTERS.values())
#: gauges
GAUGES = (QUEUE_LENGTH, JOBS_RUNNING, START_LATENCY)


def node_metric(node: str, name: str) -> str:
    """Full path of node metric ``name`` (e.g. ``dicom.received``) for ``node``."""
    return f"{PREFIX}.{node}.{name}"
