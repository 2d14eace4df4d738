"""schemathesis over the REST API of a running node, as a stranger (no token), as a reader
and as an admin: no request may get a 5xx, every response must conform to the OpenAPI
document (status code, content type, body schema), everything but ``GET /api/health``
needs a token (401 without one) and every change (POST, PUT, DELETE) needs an admin token
(403 for a reader).  The schema is the node's own (``GET /api/openapi.json``).

Bounded by default (``HOPS_API_FUZZ_EXAMPLES``, default 12 examples per operation and
role); ``HOPS_API_FUZZ_EXAMPLES=500`` for a long run."""
from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from dicom_helpers import MagickboxProcess, make_study
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from test_api import OK_SCRIPT, Api, make_token
from test_jobs import process_bucket

from magickbox.api.ui import COOKIE

EXAMPLES = int(os.environ.get("HOPS_API_FUZZ_EXAMPLES", "12"))
MUTATING = {"POST", "PUT", "DELETE", "PATCH"}
PUBLIC = {("GET", "/api/health"), ("HEAD", "/api/health")}


@pytest.fixture(scope="module")
def api_node(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-api")
    data = base / "node"
    process_bucket(data / "buckets", "ProcOK", OK_SCRIPT)
    node = MagickboxProcess(data, quiet_seconds=0.5, config={"data_dir": str(data), "http": {"max_upload_mb": 4}})
    node.start()
    node.read_token = make_token(data, "reader", "read")
    node.base = base
    admin = Api(node, node.token)
    for n in range(2):                       # jobs for the fuzzer to find (ids 1, 2)
        make_study(base / f"study{n}", 2)
        admin.wait_final(admin.push("ProcOK", base / f"study{n}")["jobs"][0]["id"])
    (data / "routing.json").write_text('{"routing": []}')
    yield node
    node.stop()
    log = node.log()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def api_schema(api_node):
    document = httpx.get(f"{api_node.url}/api/openapi.json", timeout=30,
                         headers={"Authorization": f"Bearer {api_node.token}"}).json()
    return schemathesis.openapi.from_dict(document)


def check(case, api_node, role: str) -> None:
    token = {"stranger": None, "reader": api_node.read_token, "admin": api_node.token}[role]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if case.headers:                       # negative cases may carry a made-up Authorization header
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
    response = case.call(base_url=api_node.url, headers=headers, timeout=60)
    method, path = case.method.upper(), case.operation.path
    if token and response.request.headers.get("authorization") != f"Bearer {token}":
        role, token = "stranger", None     # schemathesis dropped the token: a negative case about auth
    where = f"{role}: {method} {case.formatted_path} -> {response.status_code} {response.content[:300]!r}"
    assert response.status_code < 500, where
    if token is None and (method, path) not in PUBLIC:
        assert response.status_code == 401, where
    elif role == "reader" and method in MUTATING:
        assert response.status_code == 403, where
    case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                             response_schema_conformance])


def fuzz(api_schema, api_node, role: str) -> None:
    """Every operation, valid and invalid requests (schemathesis' positive and negative
    generation), EXAMPLES of each; all failures are collected, then reported."""
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None, phases=[Phase.explicit, Phase.generate, Phase.shrink])
            def run(case):
                check(case, api_node, role)
            try:
                run()
            except Unsatisfiable:                  # nothing to make invalid (e.g. no parameters)
                continue
            except Exception as exc:  # noqa: BLE001 - collected with the operation
                failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.timeout(600 + 20 * EXAMPLES)
def test_api_as_a_stranger(api_schema, api_node):
    fuzz(api_schema, api_node, "stranger")


@pytest.mark.timeout(600 + 20 * EXAMPLES)
def test_api_as_a_reader(api_schema, api_node):
    fuzz(api_schema, api_node, "reader")


@pytest.mark.timeout(600 + 20 * EXAMPLES)
def test_api_as_an_admin(api_schema, api_node):
    fuzz(api_schema, api_node, "admin")


def answer(response: httpx.Response) -> int | str:
    """The status, or for a redirect "303 <path>" (without its query)."""
    if response.status_code in (302, 303, 307):
        return f"{response.status_code} {response.headers['location'].split('?')[0]}"
    return response.status_code


def test_web_ui_changes_need_an_admin_session_and_its_csrf_token(api_node):
    """The web UI's forms are not in the OpenAPI document: every POST without a session,
    with a reader's session or without the form's CSRF token is refused, never a 5xx, and
    nothing changes."""
    url = api_node.url
    routing_before = (api_node.data_dir / "routing.json").read_text()
    jobs_before = [j["id"] for j in api_node.api("/api/jobs")]
    posts = [("/ui/jobs/1/remove", {"study": "1"}), ("/ui/jobs/1/cancel", {}), ("/ui/jobs/1/rerun", {}),
             ("/ui/routing", {"text": '{"routing": [{"name": "x"}]}'}), ("/ui/jobs/99999999999999999999/remove", {}),
             ("/ui/jobs/-1/cancel", {}), ("/ui/logout", {})]
    answers = []
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as stranger:
        for path, form in posts:
            answers.append(("stranger", path, answer(stranger.post(path, data=form))))
        stranger.cookies.set(COOKIE, "forged")
        for path, form in posts:
            answers.append(("forged cookie", path, answer(stranger.post(path, data=form))))
        assert stranger.post("/ui/login", data={"token": "mbx_" + "A" * 40}).status_code == 401
        assert stranger.post("/ui/login", content=b"\xff" * 70000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code < 500
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as reader:
        assert reader.post("/ui/login", data={"token": api_node.read_token}).status_code == 303
        for path, form in posts[:4]:
            answers.append(("reader", path, answer(reader.post(path, data=form))))
    with httpx.Client(base_url=url, timeout=30, follow_redirects=False) as admin:
        assert admin.post("/ui/login", data={"token": api_node.token}).status_code == 303
        for path, form in posts[:4]:                      # an admin session, but no CSRF token in the form
            answers.append(("admin without csrf", path, answer(admin.post(path, data=form))))
    # refused: 401/403/404/422, or (no valid session) a redirect to the login page
    wrong = [a for a in answers if not (a[2] in (401, 403, 404, 422) or a[2] == "303 /ui/login")]
    assert not wrong, wrong
    assert (api_node.data_dir / "routing.json").read_text() == routing_before
    assert [j["id"] for j in api_node.api("/api/jobs")] == jobs_before


def test_openapi_names_only_the_media_types_the_api_sends(api_node, api_schema):
    """Found by reading schemathesis' view of the document: the zips, the log and the event
    stream were documented as application/json as well (FastAPI's default), so a client
    generated from the document would try to parse a zip as JSON."""
    document = httpx.get(f"{api_node.url}/api/openapi.json", timeout=30,
                         headers={"Authorization": f"Bearer {api_node.token}"}).json()
    sent = {"/api/jobs/{job_id}/output.zip": "application/zip", "/api/jobs/{job_id}/input.zip": "application/zip",
            "/api/jobs/{job_id}/log": "text/plain", "/api/jobs/{job_id}/log/events": "text/event-stream"}
    documented = {path: sorted(document["paths"][path]["get"]["responses"]["200"]["content"]) for path in sent}
    assert documented == {path: [media] for path, media in sent.items()}, documented
    admin = Api(api_node, api_node.token)                # a job of its own (the fuzzers may remove jobs)
    make_study(api_node.base / "media", 1)
    job = admin.wait_final(admin.push("ProcOK", api_node.base / "media")["jobs"][0]["id"])["id"]
    with httpx.Client(base_url=api_node.url, timeout=30, headers={"Authorization": f"Bearer {api_node.token}"}) as c:
        for which in ("output.zip", "input.zip", "log"):
            response = c.get(f"/api/jobs/{job}/{which}")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].split(";")[0] == sent["/api/jobs/{job_id}/" + which]
