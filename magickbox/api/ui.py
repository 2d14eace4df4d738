"""The web UI: server-rendered pages (Jinja2, autoescaped) with a little JavaScript, all
assets in the package (``templates/``, ``static/``; nothing from a CDN).

Log in with a token: the page stores nothing in the browser but an HttpOnly,
SameSite=Strict session cookie (random, 12 h, kept in memory: a restart logs everyone
out; a revoked token ends its sessions at once).  Every form that changes something is
a POST carrying the session's CSRF token.  Read-only tokens see no change buttons.
"""
from __future__ import annotations

import datetime as _dt
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..model import JobStatus
from .search import SearchPatternError, compile_search
from .store import ACTIVE_STATUSES, FINAL_STATUSES, JOB_STATUSES, JobQuery, StoreConflict
from .tokens import TokenInfo

__all__ = ["mount_ui", "Sessions"]

HERE = Path(__file__).parent
COOKIE = "mbx_session"
SESSION_SECONDS = 12 * 3600
PAGE_SIZE = 50
MAX_FORM_BYTES = 2 << 20


@dataclass
class Session:
    token: TokenInfo
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)   # (kind, text)


class Sessions:
    """Browser sessions in memory: session id -> the token that logged in."""

    def __init__(self, tokens: Any, seconds: float = SESSION_SECONDS):
        self.tokens = tokens
        self.seconds = seconds
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self, token: TokenInfo) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            for key in [k for k, s in self._by_id.items() if s.expires < now]:
                del self._by_id[key]
            self._by_id[sid] = Session(token, secrets.token_urlsafe(24), now + self.seconds)
        return sid

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if session.expires < time.time() or not self.tokens.still_valid(session.token):
                del self._by_id[sid]
                return None
            session.expires = time.time() + self.seconds
            return session

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


# -- formatting ----------------------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    if not epoch:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _clock(epoch: float | None) -> str:
    return time.strftime("%H:%M", time.localtime(epoch)) if epoch else ""


def _ago(epoch: float | None) -> str:
    if not epoch:
        return ""
    seconds = time.time() - epoch
    if seconds < 0:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _day(epoch: float) -> str:
    day = _dt.date.fromtimestamp(epoch)
    today = _dt.date.today()
    label = day.strftime("%a %d %b %Y")
    if day == today:
        return f"Today · {label}"
    if day == today - _dt.timedelta(days=1):
        return f"Yesterday · {label}"
    return label


STATUS_HELP = {
    JobStatus.QUEUED: "waiting for a worker",
    JobStatus.RUNNING: "being processed now",
    JobStatus.SUCCESS: "finished; the bucket reported success",
    JobStatus.PARTIAL: "finished; the bucket reported a partial result",
    JobStatus.FAILED: "did not produce a result; the reason is on the job page",
    JobStatus.TIMEOUT: "stopped at the bucket's time limit",
    JobStatus.CANCELLED: "cancelled on request",
}


def mount_ui(app: FastAPI, state: Any, *, job_detail: Callable[..., Any], node_status: Callable[..., Any],
             routing_view: Callable[..., Any], validate_routing: Callable[[str], None],
             event_stream: Callable[[int], Response], zip_response: Callable[..., Response],
             log_text: Callable[[int], Response]) -> None:
    store = state.store
    sessions = Sessions(state.tokens)
    state.sessions = sessions
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, ago=_ago, duration=_duration, size=_size, clock=_clock)
    env.globals.update(version=__version__, statuses=JOB_STATUSES, status_help=STATUS_HELP,
                       final_statuses=FINAL_STATUSES, active_statuses=ACTIVE_STATUSES)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(request: Request, template: str, session: Session | None, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        flash = []
        if session is not None:
            flash, session.flash = session.flash, []
        html = env.get_template(template).render(request=request, session=session, node=store.node_name,
                                                 flash=flash, **context)
        return HTMLResponse(html, status_code=status_code, headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
            "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; "
                                       "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"})

    def render_error(request: Request, status_code: int, message: str) -> HTMLResponse:
        titles = {401: "Please log in", 403: "Not allowed", 404: "Not found", 409: "Not possible now"}
        return render(request, "error.html", sessions.get(request.cookies.get(COOKIE)), status_code=status_code,
                      title=titles.get(status_code, "Something went wrong"), message=message)

    state.render_error = render_error

    def session_of(request: Request, page: bool = True) -> Session:
        session = sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if page:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise HTTPException(303, "log in first",
                                    {"Location": "/ui/login?" + urllib.parse.urlencode({"next": target})})
            raise HTTPException(401, "log in first (or use the REST API with a token)")
        return session

    async def form_of(request: Request, session: Session | None) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise HTTPException(413, "form too large")
        fields = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                                                keep_blank_values=True).items()}
        if session is not None and not secrets.compare_digest(fields.get("csrf", ""), session.csrf):
            raise HTTPException(403, "the form has expired; reload the page and try again")
        return fields

    def admin_session(request: Request, page: bool = True) -> Session:
        session = session_of(request, page)
        if not session.token.is_admin:
            raise HTTPException(403, f"token {session.token.name!r} is read-only; this needs an admin token")
        return session

    def job_or_404(job_id: int) -> Any:
        job = store.job(job_id) if 0 < job_id < 2**62 else None
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    # -- login ------------------------------------------------------------------------------------
    def safe_next(value: str | None) -> str:
        if value and value.startswith("/ui/") and "//" not in value and "\\" not in value:
            return value
        return "/ui/jobs"

    @app.get("/ui/login", include_in_schema=False)
    def login_page(request: Request, next: str | None = None) -> HTMLResponse:
        return render(request, "login.html", None, next=safe_next(next), error=None)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await form_of(request, None)
        token = state.tokens.verify(fields.get("token", "").strip())
        if token is None:
            return render(request, "login.html", None, status_code=401, next=safe_next(fields.get("next")),
                          error="That token is not valid here (mistyped, revoked, or from another node).")
        response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
        response.set_cookie(COOKIE, sessions.create(token), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = session_of(request)
        await form_of(request, session)
        sessions.end(request.cookies.get(COOKIE))
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- jobs ---------------------------------------------------------------------------------------
    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/jobs", status_code=303)

    @app.get("/ui/jobs", include_in_schema=False)
    def jobs_page(request: Request) -> HTMLResponse:
        session = session_of(request)
        params = request.query_params
        chosen = [s for s in params.getlist("status") if s in JOB_STATUSES]
        bucket = params.get("bucket", "")[:64]
        sender = params.get("sender", "")[:64]
        q = params.get("q", "")[:200]
        since, until = params.get("since", "")[:10], params.get("until", "")[:10]
        error = None
        pattern = None
        if q:
            try:
                pattern = compile_search(q)
            except SearchPatternError as exc:
                error = f"Search: {exc}"

        def day(value: str, name: str, shift: int = 0) -> float | None:
            nonlocal error
            if not value:
                return None
            try:
                return (_dt.datetime.fromisoformat(value) + _dt.timedelta(days=shift)).timestamp()
            except ValueError:
                error = f"{name}: expected a date like 2025-03-31"
                return None
        before = params.get("before", "")
        query = JobQuery(statuses=tuple(chosen), buckets=(bucket,) if bucket else (), senders=(sender,) if sender else (),
                         since=day(since, "From"), until=day(until, "To", 1), pattern=pattern,
                         before=int(before) if before.isdigit() and 0 < len(before) < 19 else None, limit=PAGE_SIZE)
        jobs, next_before = [], None
        if error is None:
            try:
                jobs, next_before = store.list_jobs(query)
            except TimeoutError as exc:
                error = str(exc)
        days: list[tuple[str, list[Any]]] = []
        for job in jobs:
            label = _day(job.received)
            if not days or days[-1][0] != label:
                days.append((label, []))
            days[-1][1].append(job)
        kept = [(k, v) for k, v in params.multi_items() if k != "before"]
        older = "/ui/jobs?" + urllib.parse.urlencode(kept + [("before", str(next_before))]) if next_before else None
        newest = "/ui/jobs?" + urllib.parse.urlencode(kept) if query.before else None
        return render(request, "jobs.html", session, days=days, counts=store.job_counts(), error=error,
                      buckets=store.buckets(), chosen=chosen, bucket=bucket, sender=sender, q=q, since=since,
                      until=until, older=older, newest=newest, filtered=bool(chosen or bucket or sender or q or since
                                                                            or until),
                      live=any(j.status in ACTIVE_STATUSES for j in jobs))

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: int) -> HTMLResponse:
        session = session_of(request)
        job = job_or_404(job_id)
        detail = job_detail(store, job, session.token.is_admin, {})
        return render(request, "job.html", session, job=job, detail=detail)

    @app.get("/ui/jobs/{job_id}/log", include_in_schema=False)
    def job_log_text(request: Request, job_id: int) -> Response:
        session_of(request, page=False)
        job_or_404(job_id)
        return log_text(job_id)

    @app.get("/ui/jobs/{job_id}/log/events", include_in_schema=False)
    def job_log_stream(request: Request, job_id: int) -> Response:
        session_of(request, page=False)
        job_or_404(job_id)
        return event_stream(job_id)

    @app.get("/ui/jobs/{job_id}/output.zip", include_in_schema=False)
    def job_output(request: Request, job_id: int) -> Response:
        session_of(request, page=False)
        return zip_response(job_or_404(job_id), "output")

    @app.get("/ui/jobs/{job_id}/input.zip", include_in_schema=False)
    def job_input(request: Request, job_id: int) -> Response:
        admin_session(request, page=False)
        return zip_response(job_or_404(job_id), "input")

    @app.post("/ui/jobs/{job_id}/{action}", include_in_schema=False)
    async def job_action(request: Request, job_id: int, action: str) -> Response:
        session = admin_session(request)
        fields = await form_of(request, session)
        job_or_404(job_id)
        try:
            if action == "rerun":
                new = store.rerun(job_id)
                session.flash.append(("ok", f"Job {new.id} was created to run {new.bucket_ae} again on the same "
                                            f"study."))
                return RedirectResponse(f"/ui/jobs/{new.id}", status_code=303)
            if action == "cancel":
                store.cancel(job_id)
                session.flash.append(("ok", f"Cancelling job {job_id}; it stops within a few seconds."))
                return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
            if action == "remove":
                result = store.delete(job_id, with_study=fields.get("study") == "1")
                session.flash.append(("ok", f"Job {job_id} was removed"
                                            + (" with its archived study." if result["study_removed"] else ".")))
                return RedirectResponse("/ui/jobs", status_code=303)
        except StoreConflict as exc:
            session.flash.append(("error", str(exc)))
            return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
        raise HTTPException(404, f"no action {action!r}")

    # -- buckets, routing, node ---------------------------------------------------------------------
    @app.get("/ui/buckets", include_in_schema=False)
    def buckets_page(request: Request) -> HTMLResponse:
        session = session_of(request)
        return render(request, "buckets.html", session, buckets=store.buckets(), queue=store.queue_by_bucket(),
                      host=request.url.hostname or "this-node", dicom_port=store.dicom_port,
                      buckets_error=store.buckets_error())

    @app.get("/ui/routing", include_in_schema=False)
    def routing_page(request: Request) -> HTMLResponse:
        session = session_of(request)
        return render(request, "routing.html", session, routing=routing_view(store), draft=None, error=None)

    @app.post("/ui/routing", include_in_schema=False)
    async def routing_save(request: Request) -> Response:
        session = admin_session(request)
        fields = await form_of(request, session)
        text = fields.get("text", "").replace("\r\n", "\n")
        try:
            validate_routing(text)
            store.replace_routing(text)
        except HTTPException as exc:
            return render(request, "routing.html", session, status_code=400, routing=routing_view(store),
                          draft=text, error=str(exc.detail))
        except StoreConflict as exc:
            return render(request, "routing.html", session, status_code=409, routing=routing_view(store),
                          draft=text, error=str(exc))
        session.flash.append(("ok", "The routing rules were saved (the previous file is kept as a .bak)."))
        return RedirectResponse("/ui/routing", status_code=303)

    @app.get("/ui/status", include_in_schema=False)
    def status_page(request: Request) -> HTMLResponse:
        session = session_of(request)
        return render(request, "status.html", session, status=node_status(store))
