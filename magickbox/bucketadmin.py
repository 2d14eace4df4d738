"""``magickbox buckets``: create, test-run, install, list, enable/disable and remove buckets.

A bucket is a directory under the node's buckets directory with MagickBox's
``info.json`` (see :mod:`magickbox.buckets` for the ``"run"`` settings).  ``create``
scaffolds one that works with both runners; ``run`` executes it on an input directory
exactly as a worker does (same runner, same ``/input`` ``/output`` ``/memory``, same
status decision); ``install`` copies a bucket directory, or extracts a bucket from a
container image the MagickBox way (its ``/root/storage/info.json``).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from stability_collector.core.fsutil import atomic_write

from .buckets import BucketError, BucketInfo, load_bucket_info
from .jobfiles import decide_status, read_proc_json
from .runners import RunRequest, runner_for

__all__ = ["create_bucket", "install_bucket", "remove_bucket", "set_enabled", "run_bucket", "list_buckets"]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

WORK_SH = """#!/bin/sh
# MagickBox bucket entry point: called with INPUT OUTPUT MEMORY (also in the environment).
# In a container they are /input (read-only), /output and /memory (kept between runs).
set -eu
INPUT=${1:-${INPUT:-/input}}
OUTPUT=${2:-${OUTPUT:-/output}}
MEMORY=${3:-${MEMORY:-/memory}}
echo "processing $(find "$INPUT" -type f | wc -l) files"

# ... run your program on $INPUT, write results to $OUTPUT ...
find "$INPUT" -type f | wc -l > "$OUTPUT/file_count.txt"

# persistent memory, e.g. a run counter
runs=$(cat "$MEMORY/runs" 2>/dev/null || echo 0)
echo $((runs + 1)) > "$MEMORY/runs"

# numbers about the study for Graphite (README "measures.json"; the node sends them as
# hops.measures.<AETitle>.<scanner>.<name>, time-stamped with the acquisition time)
echo "{\\"version\\": 1, \\"measures\\": [{\\"name\\": \\"file_count\\", \\"value\\": $(cat "$OUTPUT/file_count.txt")}]}" \\
  > "$OUTPUT/measures.json"

# tell MagickBox how it went: success, partial or failed (and why)
echo '[{"success": "success", "message": "counted the input files"}]' > "$OUTPUT/proc.json"
"""

DOCKERFILE = """# Container image of this bucket.  Without a registry, build it elsewhere and import it:
#   docker build -t localhost/{name}:latest . && docker save localhost/{name} | podman load
# or make a root file system and:  podman import --change 'ENV PATH=/bin:/usr/bin' rootfs.tar localhost/{name}
FROM debian:bookworm-slim
COPY work.sh /work.sh
RUN chmod +x /work.sh
# MagickBox convention: info.json inside the image, for "magickbox buckets install IMAGE"
COPY info.json /root/storage/info.json
CMD ["/bin/sh", "/work.sh"]
"""

MEASURES = """{
  "version": 1,
  "comment": "Example: write OUTPUT/measures.json with numbers about the study; the node records them on the job and sends them to Graphite at the study's acquisition time (README: measures.json).",
  "measures": [{"name": "file_count", "value": 42},
               {"name": "whole_brain_volume", "value": 1180.5, "unit": "ml", "labels": {"atlas": "mni"}}]
}
"""


def _write_info(directory: Path, info: dict[str, Any]) -> None:
    atomic_write(directory / "info.json", json.dumps(info, indent=2) + "\n")


def create_bucket(buckets_dir: Path, name: str, ae_title: str | None = None, runner: str = "process") -> BucketInfo:
    if not _NAME_RE.fullmatch(name):
        raise BucketError(buckets_dir / name, "name", "use lower-case letters, digits, '-' and '_' (like MagickBox)")
    directory = buckets_dir / name
    if directory.exists():
        raise BucketError(directory, "name", "a bucket of that name exists")
    directory.mkdir(parents=True)
    ae = ae_title or ("Proc" + name.replace("-", "").replace("_", ""))[:16]
    info = {
        "name": name, "description": f"{name}: describe what it computes", "version": "0.0.1", "AETitle": ae,
        "license": "describe the license", "enabled": 1,
        "run": {"runner": runner, "timeout": 3600, "network": False, "concurrency": 1, "retries": 2,
                **({"image": f"localhost/{name}:latest", "command": ["/bin/sh", "/work.sh"]}
                   if runner == "container" else {"entrypoint": "work.sh"})},
    }
    (directory / "work.sh").write_text(WORK_SH)
    (directory / "work.sh").chmod(0o755)
    (directory / "Dockerfile").write_text(DOCKERFILE.format(name=name))
    (directory / "measures.json").write_text(MEASURES)
    (directory / "memory").mkdir()
    _write_info(directory, info)
    return load_bucket_info(directory)


def list_buckets(buckets_dir: Path) -> list[BucketInfo | BucketError]:
    out: list[BucketInfo | BucketError] = []
    if buckets_dir.is_dir():
        for d in sorted(p for p in buckets_dir.iterdir() if p.is_dir() and (p / "info.json").exists()):
            try:
                out.append(load_bucket_info(d))
            except BucketError as exc:
                out.append(exc)
    return out


def find_bucket(buckets_dir: Path, name: str) -> BucketInfo:
    for b in list_buckets(buckets_dir):
        if isinstance(b, BucketInfo) and name in (b.directory.name, b.ae_title, b.name):
            return b
    raise BucketError(buckets_dir / name, "name", "no such bucket (magickbox buckets list)")


def set_enabled(buckets_dir: Path, name: str, enabled: bool) -> BucketInfo:
    bucket = find_bucket(buckets_dir, name)
    info = dict(bucket.raw)
    info["enabled"] = 1 if enabled else 0
    _write_info(bucket.directory, info)
    return load_bucket_info(bucket.directory)


def remove_bucket(buckets_dir: Path, name: str) -> Path:
    """Move the bucket out of service into ``<buckets>/.removed/`` (nothing is deleted)."""
    bucket = find_bucket(buckets_dir, name)
    target = buckets_dir / ".removed" / f"{bucket.directory.name}-{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(exist_ok=True)
    os.rename(bucket.directory, target)
    return target


def _check_unique(buckets_dir: Path, info: BucketInfo) -> None:
    for other in list_buckets(buckets_dir):
        if isinstance(other, BucketInfo) and other.ae_title == info.ae_title and other.directory != info.directory:
            raise BucketError(info.info_path, "AETitle", f"{info.ae_title!r} is already used by {other.directory}")


def install_bucket(buckets_dir: Path, source: str, engine_url: str | None = None) -> BucketInfo:
    """Install from a bucket directory, or from a container image carrying
    ``/root/storage/info.json``."""
    path = Path(source)
    if path.is_dir():
        info = load_bucket_info(path)
        target = buckets_dir / path.resolve().name
        if target.exists():
            raise BucketError(target, "name", "a bucket of that name is installed (remove it first)")
        _check_unique(buckets_dir, info)
        shutil.copytree(path, target, symlinks=True)
        (target / "memory").mkdir(exist_ok=True)
        return load_bucket_info(target)
    return _install_image(buckets_dir, source, engine_url)


def _install_image(buckets_dir: Path, image: str, engine_url: str | None) -> BucketInfo:
    from .runners import ContainerRunner
    client = ContainerRunner(engine_url).client()
    container = client.containers.create(image, command=["/bin/true"])
    try:
        stream, _ = container.get_archive("/root/storage/info.json")
        data = b"".join(stream)
    except Exception as exc:
        raise BucketError(Path(image), "info.json", f"image has no /root/storage/info.json: {exc}") from None
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmembers()[0]
        info = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    name = re.sub(r"[^a-z0-9_-]", "-", image.split("/")[-1].split(":")[0].lower())
    target = buckets_dir / name
    if target.exists():
        raise BucketError(target, "name", "a bucket of that name is installed (remove it first)")
    info.setdefault("run", {})
    info["run"].update({"runner": "container", "image": image})
    with tempfile.TemporaryDirectory(dir=buckets_dir if buckets_dir.exists() else None) as tmp:
        staging = Path(tmp) / name
        staging.mkdir()
        (staging / "memory").mkdir()
        _write_info(staging, info)
        bucket = load_bucket_info(staging)
        _check_unique(buckets_dir, bucket)
        buckets_dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)
    return load_bucket_info(target)


def run_bucket(buckets_dir: Path, name: str, input_dir: Path, output_dir: Path,
               engine_url: str | None = None) -> tuple[str, str, int | None]:
    """Run a bucket locally exactly as a worker would; returns (status, message, exit code).
    The processing log goes to ``OUTPUT/../processing.log`` and to the terminal."""
    bucket = find_bucket(buckets_dir, name)
    output_dir.mkdir(parents=True, exist_ok=True)
    bucket.memory_dir.mkdir(exist_ok=True)
    log_path = output_dir.parent / f"{output_dir.name}.processing.log"
    runner = runner_for(bucket, engine_url)
    result = runner.run(RunRequest(bucket=bucket, input_dir=input_dir.resolve(), output_dir=output_dir.resolve(),
                                   memory_dir=bucket.memory_dir.resolve(), log_path=log_path,
                                   labels={"hops.job": "local-run"}))
    status, message = decide_status(result.exit_code, result.timed_out, result.cancelled,
                                    read_proc_json(output_dir / "proc.json"), bucket.run.timeout)
    return status, message, result.exit_code
