"""The node's REST API (FastAPI): ``create_app(store, tokens)``.

Every route except ``GET /api/health`` needs ``Authorization: Bearer <token>`` (a
missing, unknown or revoked token: 401); changes need an admin token (403 otherwise) and
are only POST, PUT or DELETE.  Errors are ``{"error": "..."}``.  The OpenAPI document is
``GET /api/openapi.json`` (with a token).  The web UI (:mod:`.ui`) is mounted on the same
application.
"""
from __future__ import annotations

import datetime as _dt
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import models as m
from .search import SearchPatternError, compile_search
from .store import FINAL_STATUSES, InstanceRejected, JobQuery, JobRecord, NodeStore, StoreConflict
from .streams import file_part, log_events, zip_stream
from .tokens import TokenInfo, TokenStore
from .uploads import NotPart10, UploadLimits, UploadRejected, check_archive, read_file_meta

__all__ = ["create_app", "ApiState"]

_SENDER_RE = r"^[\x21-\x5b\x5d-\x7e][\x20-\x5b\x5d-\x7e]{0,63}$"       # printable, no backslash
_WHEN_RE = r"^(\d{1,12}(\.\d{1,9})?|\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?)?)$"
MAX_ROUTING_BYTES = 1 << 20
JOB_ID = Annotated[int, PathParam(ge=1, le=2**62, description="job number")]


class ApiState:
    """What the routes share: the store, the tokens, limits, and whether the server is
    shutting down (live streams end then)."""

    def __init__(self, store: NodeStore, tokens: TokenStore, limits: UploadLimits):
        self.store = store
        self.tokens = tokens
        self.limits = limits
        self.closing = False


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=message, headers=headers)


_bearer = HTTPBearer(auto_error=False, description="a token from `magickbox tokens create`")


def _parse_when(value: str | None, name: str) -> float | None:
    """``YYYY-MM-DD`` (local midnight), an ISO date-time, or epoch seconds."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        raise _error(422, f"{name}: expected YYYY-MM-DD, an ISO date-time or epoch seconds, found {value!r}") from None
    return when.timestamp()


def job_detail(store: NodeStore, job: JobRecord, admin: bool, links: dict[str, str]) -> m.JobDetail:
    info = dict(store.job_info(job))
    types = sorted({t for ts in job.classification.values() for t in ts})
    if not admin:
        info.pop("StudyInstanceUID", None)
        info.pop("ClassifyTypes", None)
    files = store.output_files(job.id)
    measures, measures_error = store.measures(job.id)
    return m.JobDetail(
        **m.JobSummary.of(job).model_dump(), info=info,
        study_uid=job.study_uid if admin else None, classification=job.classification if admin else None,
        series_types=types, cancel_requested=store.cancel_requested(job.id),
        output_files=[m.OutputFile(path=f.arcname, size=f.size) for f in files[:1000]],
        output_bytes=sum(f.size for f in files), measures=measures, measures_error=measures_error,
        routing=store.routing(job.id), links=links)


def routing_view(store: NodeStore) -> m.RoutingView:
    from ..results.routing import RoutingError, parse_rules
    text = store.routing_text()
    if text is None:
        return m.RoutingView(exists=False, text=None, valid=True, error=None, rules=[])
    try:
        table = parse_rules(text, "routing.json")
    except RoutingError as exc:
        return m.RoutingView(exists=True, text=text, valid=False, error=str(exc), rules=[])
    rules = [m.RoutingRuleView(
        index=r.index, name=r.name, enabled=r.enabled, AETitleIn=r.called_pattern, AETitleFrom=r.calling_pattern,
        ClassifyType=list(r.classify_patterns), RouteDirectory=r.directory, stop_after=r.stop_after,
        send=[m.RouteTargetView(when=t.pattern, AETitleTo=t.called_ae, IP=t.host, PORT=t.port,
                                AETitleSender=t.calling_ae, stop_after_success=t.stop_after_success)
              for t in r.targets]) for r in table.rules]
    return m.RoutingView(exists=True, text=text, valid=True, error=None, rules=rules)


def validate_routing(text: str) -> None:
    """Raise 400 naming the rule and key when ``text`` is not valid routing.json."""
    from ..results.routing import RoutingError, parse_rules
    try:
        parse_rules(text, "routing.json")
    except RoutingError as exc:
        raise _error(400, str(exc)) from None


def node_status(store: NodeStore) -> m.NodeStatus:
    queue = store.queue_by_bucket()
    return m.NodeStatus(
        node=store.node_name, version=__version__, dicom_ae_title=store.dicom_ae_title, dicom_port=store.dicom_port,
        http_port=store.http_port, uptime_seconds=round(__import__("time").time() - store.started, 1),
        disk_free_bytes=store.disk_free(), pending_studies=store.pending_study_count(), jobs=store.job_counts(),
        queue={ae: m.QueueEntry(**q) for ae, q in queue.items()},
        load=sum(sum(q.values()) for q in queue.values()), buckets_error=store.buckets_error())


def ingest_upload(state: ApiState, spooled: Path, bucket_ae: str, sender: str, caller_ip: str) -> m.UploadResult:
    """Check the spooled zip, archive its DICOM instances, create the jobs (runs in a
    worker thread).  Rejected uploads are quarantined."""
    store, limits = state.store, state.limits
    try:
        try:
            zf = zipfile.ZipFile(spooled)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise UploadRejected(f"not a zip archive ({exc})") from None
        with zf:
            entries = check_archive(zf, limits)
            studies: dict[str, int] = {}
            skipped: list[m.UploadSkipped] = []
            for info in entries:
                try:
                    with zf.open(info) as stream:
                        sop_class, sop, syntax = read_file_meta(stream)
                        study = store.archive_instance(sop_class, sop, syntax, stream, limits.max_unpacked)
                except (NotPart10, InstanceRejected) as exc:
                    skipped.append(m.UploadSkipped(file=info.filename[:300], reason=str(exc)))
                    continue
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                    skipped.append(m.UploadSkipped(file=info.filename[:300], reason=f"damaged in the archive: {exc}"))
                    continue
                studies[study] = studies.get(study, 0) + 1
    except UploadRejected as exc:
        kept = store.quarantine_upload(spooled, f"rejected: {exc}")
        raise _error(400, f"{exc} (the upload is kept as {kept.name} in the node's quarantine)") from None
    if not studies:
        why = "no DICOM instance in the archive" + (f": {skipped[0].file}: {skipped[0].reason}" if skipped else "")
        kept = store.quarantine_upload(spooled, why + "".join(f"\n{s.file}: {s.reason}" for s in skipped))
        raise _error(400, f"{why} (kept as {kept.name} in the node's quarantine)")
    jobs = store.create_upload_jobs(bucket_ae, sender, caller_ip, sorted(studies))
    if skipped:
        store.quarantine_upload(spooled, "accepted in part; refused files:"
                                + "".join(f"\n{s.file}: {s.reason}" for s in skipped))
    else:
        spooled.unlink(missing_ok=True)
    return m.UploadResult(jobs=[m.JobSummary.of(j) for j in jobs], studies=len(studies),
                          instances=sum(studies.values()), skipped=skipped, quarantined=bool(skipped))


class HeadAsGet:
    """ASGI middleware: ``HEAD`` is answered like ``GET`` without the body (same status
    and headers, including Content-Length), for every GET route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def send_headers_only(message):
            if message["type"] == "http.response.body":
                if not message.get("more_body"):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        return await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _declared_media_types_only(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI documents every 200 response as ``application/json`` (with an empty schema)
    beside the media type a route declares itself; the zips, the log and the event stream
    are never JSON, so that entry goes (in place; the document is cached)."""
    for item in document.get("paths", {}).values():
        for operation in item.values():
            content = operation.get("responses", {}).get("200", {}).get("content", {})
            if len(content) > 1 and content.get("application/json") == {"schema": {}}:
                del content["application/json"]
    return document


def create_app(store: NodeStore, tokens: TokenStore, limits: UploadLimits | None = None) -> FastAPI:
    state = ApiState(store, tokens, limits or UploadLimits())
    app = FastAPI(title="magickbox node", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="Jobs, logs, downloads, uploads, buckets, routing rules and status of a HOPS "
                              "magickbox node.  Every route except /api/health needs `Authorization: Bearer "
                              "<token>`; changes need an admin token.")
    app.state.api = state

    # -- errors as {"error": ...} --------------------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 303 and exc.headers and "Location" in exc.headers:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        render_error = getattr(state, "render_error", None)
        if (render_error is not None and request.url.path.startswith("/ui/")
                and "text/html" in request.headers.get("accept", "")):
            return render_error(request, exc.status_code, str(exc.detail))
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    def allowed_methods(request: Request) -> str:
        from starlette.routing import Match
        methods: set[str] = set()
        for route in app.routes:
            match, _ = route.matches(request.scope)
            if match != Match.NONE and getattr(route, "methods", None):
                methods |= set(route.methods)
        return ", ".join(sorted(methods))

    @app.exception_handler(405)
    async def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
        return JSONResponse({"error": f"{request.method} is not allowed here"}, status_code=405,
                            headers={"Allow": allowed_methods(request)})

    forms = {"since": "expected YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] or epoch seconds",
             "until": "expected YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS] or epoch seconds",
             "sender": "expected 1-64 printable characters without backslash"}

    def _problem(e: dict[str, Any]) -> str:
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
        if e.get("type") == "string_pattern_mismatch" and where in forms:
            return f"{where}: {forms[where]}, found {e.get('input')!r}"
        return f"{where}: {e.get('msg')}"

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(_problem(e) for e in exc.errors()[:5])
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)

    # -- authentication ---------------------------------------------------------------------------
    def reader(credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> TokenInfo:
        token = state.tokens.verify(credentials.credentials) if credentials is not None else None
        if token is None:
            raise _error(401, "a valid token is needed: Authorization: Bearer <token> "
                              "(magickbox tokens create --role read|admin NAME)",
                         {"WWW-Authenticate": 'Bearer realm="magickbox"'})
        return token

    def admin(token: TokenInfo = Depends(reader)) -> TokenInfo:
        if not token.is_admin:
            raise _error(403, f"token {token.name!r} is read-only; this needs an admin token")
        return token

    errors = {401: {"model": m.ErrorBody, "description": "no valid token"}}
    admin_errors = {**errors, 403: {"model": m.ErrorBody, "description": "not an admin token"}}
    not_found = {404: {"model": m.ErrorBody, "description": "no such job"}}
    conflict = {409: {"model": m.ErrorBody, "description": "not possible in the job's state"}}

    def existing_job(job_id: int) -> JobRecord:
        job = store.job(job_id)
        if job is None:
            raise _error(404, f"no job {job_id}")
        return job

    def links(job_id: int) -> dict[str, str]:
        base = f"/api/jobs/{job_id}"
        return {"self": base, "log": f"{base}/log", "log_events": f"{base}/log/events",
                "output": f"{base}/output.zip", "input": f"{base}/input.zip", "page": f"/ui/jobs/{job_id}"}

    # -- routes -------------------------------------------------------------------------------------
    @app.get("/api/health", response_model=m.Health, tags=["node"], summary="liveness (no token needed)")
    def health() -> m.Health:
        return m.Health(node=store.node_name, dicom_port=store.dicom_port, http_port=store.http_port,
                        pending_studies=store.pending_study_count(), jobs=store.job_counts(),
                        dicom_connections=store.dicom_connections(), buckets_error=store.buckets_error())

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: TokenInfo = Depends(reader)) -> JSONResponse:
        return JSONResponse(_declared_media_types_only(app.openapi()))

    @app.get("/api/status", response_model=m.NodeStatus, tags=["node"], responses=errors,
             summary="node status and load (queue per bucket)")
    def status(_: TokenInfo = Depends(reader)) -> m.NodeStatus:
        return node_status(store)

    @app.get("/api/buckets", response_model=list[m.Bucket], tags=["buckets"], responses=errors,
             summary="installed buckets (computeModules) with their queues")
    def buckets(_: TokenInfo = Depends(reader)) -> list[m.Bucket]:
        queue = store.queue_by_bucket()
        return [m.Bucket.of(b, queue.get(b.ae_title, {})) for b in store.buckets()]

    @app.get("/api/jobs", response_model=list[m.JobSummary], tags=["jobs"],
             responses={**errors, 422: {"model": m.ErrorBody, "description": "bad filter"}},
             summary="jobs, newest first, filtered and paginated",
             description="The next page: the same query with `before` = the `X-Next-Before` response header "
                         "(also in `Link: <...>; rel=\"next\"`).  `q` is a regular expression (RE2 syntax, "
                         "case-insensitive) searched in one line per job: `#id bucket_ae calling_ae caller_ip "
                         "status source worker message`.")
    def list_jobs(request: Request, response: Response, _: TokenInfo = Depends(reader),
                  status: Annotated[list[m.Status] | None, Query(description="one or more statuses")] = None,
                  bucket: Annotated[list[str] | None, Query(max_length=64, description="called AE title(s)")] = None,
                  sender: Annotated[list[str] | None, Query(max_length=64, description="calling AE title(s) / "
                                                                                       "mb sender(s)")] = None,
                  since: Annotated[str | None, Query(max_length=40, pattern=_WHEN_RE,
                                                     description="received on or after: YYYY-MM-DD, ISO date-time "
                                                                 "or epoch seconds")] = None,
                  until: Annotated[str | None, Query(max_length=40, pattern=_WHEN_RE,
                                                     description="received before")] = None,
                  q: Annotated[str | None, Query(max_length=200, description="regular expression")] = None,
                  before: Annotated[int | None, Query(ge=1, le=2**62, description="only jobs with a smaller id")]
                  = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[m.JobSummary]:
        try:
            pattern = compile_search(q) if q else None
        except SearchPatternError as exc:
            raise _error(422, f"q: {exc}") from None
        query = JobQuery(statuses=tuple(status or ()), buckets=tuple(bucket or ()), senders=tuple(sender or ()),
                         since=_parse_when(since, "since"), until=_parse_when(until, "until"), pattern=pattern,
                         before=before, limit=limit)
        try:
            jobs, next_before = store.list_jobs(query)
        except TimeoutError as exc:
            raise _error(422, str(exc)) from None
        if next_before is not None:
            response.headers["X-Next-Before"] = str(next_before)
            response.headers["Link"] = f'<{request.url.include_query_params(before=next_before)}>; rel="next"'
        return [m.JobSummary.of(j) for j in jobs]

    @app.post("/api/jobs", response_model=m.UploadResult, status_code=201, tags=["jobs"],
              responses={**admin_errors, 400: {"model": m.ErrorBody, "description": "unsafe or unusable archive"},
                         404: {"model": m.ErrorBody, "description": "no such bucket"},
                         409: {"model": m.ErrorBody, "description": "bucket disabled"},
                         413: {"model": m.ErrorBody, "description": "too large"}},
              summary="upload a study as a zip of DICOM files for a bucket (mb push)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/zip": {"schema": {"type": "string", "format": "binary"}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request,
                     bucket: Annotated[str, Query(min_length=1, max_length=16, description="the bucket's AE title")],
                     sender: Annotated[str | None, Query(max_length=64, pattern=_SENDER_RE,
                                                         description="who sends it (default: the token name); "
                                                                     "stored as the calling AE title")] = None,
                     token: TokenInfo = Depends(admin)) -> m.UploadResult:
        target = store.bucket(bucket)
        if target is None:
            raise _error(404, f"no bucket with AE title {bucket!r}")
        if not target.enabled:
            raise _error(409, f"bucket {bucket!r} is disabled")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > state.limits.max_upload:
            raise _error(413, f"the upload is larger than the node's limit of {state.limits.max_upload} bytes")
        spooled = store.upload_dir() / f"upload-{uuid.uuid4().hex}.zip"
        size = 0
        try:
            with open(spooled, "xb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > state.limits.max_upload:
                        raise _error(413, f"the upload is larger than the node's limit of "
                                          f"{state.limits.max_upload} bytes")
                    fh.write(chunk)
        except BaseException:
            spooled.unlink(missing_ok=True)     # never accepted: nothing of it is kept
            raise
        caller_ip = request.client.host if request.client else ""
        return await run_in_threadpool(ingest_upload, state, spooled, target.ae_title, sender or token.name,
                                       caller_ip)

    @app.get("/api/jobs/{job_id}", response_model=m.JobDetail, tags=["jobs"], responses={**errors, **not_found},
             summary="one job: info.json fields, output files, measures, routing results")
    def get_job(job_id: JOB_ID, token: TokenInfo = Depends(reader)) -> m.JobDetail:
        return job_detail(store, existing_job(job_id), token.is_admin, links(job_id))

    @app.delete("/api/jobs/{job_id}", response_model=m.RemoveResult, tags=["jobs"],
                responses={**admin_errors, **not_found, **conflict},
                summary="remove a finished job (and with study=true its archived study)")
    def delete_job(job_id: JOB_ID, _: TokenInfo = Depends(admin),
                   study: Annotated[bool, Query(description="also remove the archived study")] = False
                   ) -> m.RemoveResult:
        existing_job(job_id)
        try:
            return m.RemoveResult(**store.delete(job_id, with_study=study))
        except StoreConflict as exc:
            raise _error(409, str(exc)) from None
        except KeyError:
            raise _error(404, f"no job {job_id}") from None

    @app.post("/api/jobs/{job_id}/cancel", response_model=m.JobSummary, status_code=202, tags=["jobs"],
              responses={**admin_errors, **not_found, **conflict}, summary="cancel a queued or running job")
    def cancel_job(job_id: JOB_ID, _: TokenInfo = Depends(admin)) -> m.JobSummary:
        existing_job(job_id)
        try:
            return m.JobSummary.of(store.cancel(job_id))
        except StoreConflict as exc:
            raise _error(409, str(exc)) from None
        except KeyError:
            raise _error(404, f"no job {job_id}") from None

    @app.post("/api/jobs/{job_id}/rerun", response_model=m.JobSummary, status_code=201, tags=["jobs"],
              responses={**admin_errors, **not_found, **conflict},
              summary="run the job's bucket again on its archived study (a new job)")
    def rerun_job(job_id: JOB_ID, _: TokenInfo = Depends(admin)) -> m.JobSummary:
        existing_job(job_id)
        try:
            return m.JobSummary.of(store.rerun(job_id))
        except StoreConflict as exc:
            raise _error(409, str(exc)) from None
        except KeyError:
            raise _error(404, f"no job {job_id}") from None

    @app.get("/api/jobs/{job_id}/log", tags=["jobs"],
             responses={**errors, **not_found, 200: {"content": {"text/plain": {}}}},
             summary="processing.log (the end of it with tail=BYTES)")
    def job_log(job_id: JOB_ID, _: TokenInfo = Depends(reader),
                tail: Annotated[int | None, Query(ge=1, le=1 << 30, description="only the last BYTES")] = None
                ) -> Response:
        existing_job(job_id)
        return log_text(job_id, tail)

    def log_text(job_id: int, tail: int | None = None) -> Response:
        """processing.log as it is now (the last ``tail`` bytes), streamed when large."""
        path = store.log_path(job_id)
        if path is None:
            return PlainTextResponse("")
        size = path.stat().st_size
        start = max(0, size - tail) if tail else 0
        if size - start > 4 << 20:
            return StreamingResponse(file_part(path, start, size), media_type="text/plain; charset=utf-8")
        return PlainTextResponse(b"".join(file_part(path, start, size)).decode("utf-8", "replace"))

    @app.get("/api/jobs/{job_id}/log/events", tags=["jobs"],
             responses={**errors, **not_found, 200: {"content": {"text/event-stream": {}}}},
             summary="processing.log followed live (server-sent events: log, status, end)")
    def job_log_events(job_id: JOB_ID, _: TokenInfo = Depends(reader)) -> StreamingResponse:
        existing_job(job_id)
        return event_stream(job_id)

    def event_stream(job_id: int) -> StreamingResponse:
        return StreamingResponse(log_events(store, job_id, lambda: state.closing), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def zip_response(job: JobRecord, which: str) -> StreamingResponse:
        files = store.output_files(job.id) if which == "output" else store.input_files(job.id)
        if which == "output" and not files and job.status not in FINAL_STATUSES:
            raise _error(409, f"job {job.id} is {job.status}: no output yet")
        name = f"{store.node_name}-job{job.id}-{which}"
        return StreamingResponse(zip_stream(files, name), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.zip"',
                                          "Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/output.zip", tags=["jobs"],
             responses={**errors, **not_found, **conflict, 200: {"content": {"application/zip": {}}}},
             summary="the job's output/ and processing.log as a zip (streamed)")
    def output_zip(job_id: JOB_ID, _: TokenInfo = Depends(reader)) -> StreamingResponse:
        return zip_response(existing_job(job_id), "output")

    @app.get("/api/jobs/{job_id}/input.zip", tags=["jobs"],
             responses={**admin_errors, **not_found, 200: {"content": {"application/zip": {}}}},
             summary="the job's input (the DICOM study, with patient data) as a zip (streamed; admin)")
    def input_zip(job_id: JOB_ID, _: TokenInfo = Depends(admin)) -> StreamingResponse:
        return zip_response(existing_job(job_id), "input")

    @app.get("/api/routing", response_model=m.RoutingView, tags=["routing"], responses=errors,
             summary="routing rules (routing.json in the data directory)")
    def get_routing(_: TokenInfo = Depends(reader)) -> m.RoutingView:
        return routing_view(store)

    @app.put("/api/routing", response_model=m.RoutingView, tags=["routing"],
             responses={**admin_errors, 400: {"model": m.ErrorBody, "description": "invalid rules (rule and key "
                                                                                   "named)"},
                        409: {"model": m.ErrorBody, "description": "no routing.json to replace"},
                        413: {"model": m.ErrorBody, "description": "too large"}},
             summary="replace routing.json (validated first; the old one is kept as a .bak)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {
                     "type": "object", "required": ["routing"], "additionalProperties": False,
                     "properties": {"routing": {"type": "array", "items": {"type": "object"}}},
                     "description": "routing.json as text (comments allowed); its rules are checked as the "
                                    "node's routing checks them"}}}}})
    async def put_routing(request: Request, _: TokenInfo = Depends(admin)) -> m.RoutingView:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ROUTING_BYTES:
                raise _error(413, f"routing.json larger than {MAX_ROUTING_BYTES} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(400, "routing.json must be UTF-8 text") from None
        validate_routing(text)
        try:
            await run_in_threadpool(store.replace_routing, text)
        except StoreConflict as exc:
            raise _error(409, str(exc)) from None
        return routing_view(store)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/jobs", status_code=303)

    from .ui import mount_ui
    mount_ui(app, state, job_detail=job_detail, node_status=node_status, routing_view=routing_view,
             validate_routing=validate_routing, event_stream=event_stream, zip_response=zip_response,
             log_text=log_text)

    app.add_middleware(HeadAsGet)
    return app
