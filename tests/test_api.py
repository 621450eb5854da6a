"""The JSON API through Django's test client: auth, permissions, limits, contract, fuzzing."""

from __future__ import annotations

import io
import json
import sys
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

import sisy
from sisy import api, heartbeat
from sisy.models import ApiToken, Job, JobStatus
from sisy.openapi import document
from sisy.state import WorkerState
from tests.test_runner import MARKER

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/sisy/jobs/"
SPEC = {"job_title": "two steps", "tasks": [{"record": {"label": "a"}}, {"slow": {"seconds": 0}}]}


def user_with(*codenames: str, username: str = "caller") -> User:
    user = User.objects.create_user(username, password="pw")
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=user.pk)  # fresh: no permission cache


def token_client(*codenames: str, username: str = "machine") -> Client:
    _, token = ApiToken.issue(user_with(*codenames, username=username), "tests")
    return Client(headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "r@example.com", "pw"))
    return client


def post(client: Client, body: Any, **kwargs: Any) -> Any:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(JOBS, data=data, content_type="application/json", **kwargs)


# -- the contract: responses match the OpenAPI document ----------------------------


def matches(payload: Any, component: str) -> None:
    doc = document()
    registry = Registry().with_resource("urn:sisy:openapi", Resource.opaque(doc))
    schema = {"$ref": f"urn:sisy:openapi#/components/schemas/{component}"}
    errors = list(Draft202012Validator(schema, registry=registry).iter_errors(payload))
    assert not errors, [e.message for e in errors]


def test_the_openapi_document_is_served_and_valid(client: Client) -> None:
    from openapi_spec_validator import validate

    response = client.get("/sisy/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)
    assert doc["servers"] == [{"url": "/sisy/"}]
    assert set(doc["paths"]) == {
        "/jobs/",
        "/jobs/{job_id}/",
        "/jobs/{job_id}/cancel/",
        "/jobs/{job_id}/retry/",
        "/workers/",
        "/modules/",
    }
    titles = [
        s["title"]
        for s in doc["components"]["schemas"]["JobSpec"]["properties"]["tasks"]["items"]["oneOf"]
    ]
    assert "record" in titles and "sisy.task" not in titles


def test_the_documented_job_spec_schema_accepts_what_submit_accepts() -> None:
    matches(SPEC, "JobSpec")
    with pytest.raises(AssertionError):
        matches({"tasks": [{"record": {"label": 3}}]}, "JobSpec")


# -- submitting ----------------------------------------------------------------


def test_submit_with_a_session_enforces_csrf(admin_client: Client) -> None:
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = admin_client.cookies
    refused = post(strict, SPEC)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]
    assert not Job.objects.exists()

    strict.get("/admin/")  # its logout form sets the CSRF cookie
    token = strict.cookies["csrftoken"].value
    created = post(strict, SPEC, headers={"X-CSRFToken": token})
    assert created.status_code == 201, created.content
    body = created.json()
    matches(body, "Job")
    job = Job.objects.get()
    assert body["job_id"] == str(job.job_id) and body["status"] == "queued"
    assert created["Location"] == f"/sisy/jobs/{job.job_id}/"
    assert [t["module"] for t in body["tasks"]] == ["record", "slow"]


def test_submit_with_a_token_needs_no_csrf_and_accepts_every_shape() -> None:
    client = token_client("add_job")
    legacy = post(client, {"job_title": "legacy", "record": {"label": "b"}})
    explicit = post(
        client, {"job_name": "x", "tasks": [{"module": "record", "data": {"label": "c"}}]}
    )
    assert (legacy.status_code, explicit.status_code) == (201, 201)
    assert Job.objects.count() == 2


@pytest.mark.parametrize(
    "header",
    ["Bearer sisy_nottherealone", "Token abc", "Bearer", "Basic dXNlcjpwdw==", "bearer  "],
)
def test_bad_credentials_get_401_and_store_nothing(header: str) -> None:
    response = post(Client(headers={"Authorization": header}), SPEC)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]
    assert not Job.objects.exists()


def test_anonymous_gets_401_everywhere_and_stores_nothing(client: Client) -> None:
    job = sisy.submit(SPEC)
    for method, url in [
        ("post", JOBS),
        ("get", JOBS),
        ("get", f"{JOBS}{job.pk}/"),
        ("post", f"{JOBS}{job.pk}/cancel/"),
        ("get", "/sisy/workers/"),
        ("get", "/sisy/modules/"),
    ]:
        if method == "post":
            response = client.post(url, data="{}", content_type="application/json")
        else:
            response = client.get(url)
        assert response.status_code == 401, (method, url)
    assert Job.objects.count() == 1
    assert Job.objects.get().status == JobStatus.QUEUED


def test_expired_tokens_and_inactive_users_are_refused() -> None:
    user = user_with("add_job", "view_job")
    row, token = ApiToken.issue(user, "old", expires_at=timezone.now() - timedelta(seconds=1))
    assert row.expired
    assert Client(headers={"Authorization": f"Bearer {token}"}).get(JOBS).status_code == 401
    _, fresh = ApiToken.issue(user, "new")
    assert Client(headers={"Authorization": f"Bearer {fresh}"}).get(JOBS).status_code == 200
    user.is_active = False
    user.save()
    assert Client(headers={"Authorization": f"Bearer {fresh}"}).get(JOBS).status_code == 401


def test_tokens_are_stored_as_digests_and_record_their_use() -> None:
    row, token = ApiToken.issue(user_with("view_job"), "ci")
    assert token.startswith("sisy_") and len(token) > 40
    assert token not in json.dumps(list(ApiToken.objects.values()), default=str)
    assert row.hint == token[:11] and row.last_used_at is None
    Client(headers={"Authorization": f"Bearer {token}"}).get(JOBS)
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_permissions_are_djangos() -> None:
    job = sisy.submit(SPEC)
    reader = token_client("view_job", username="reader")
    assert post(reader, SPEC).status_code == 403
    assert reader.get(JOBS).status_code == 200
    assert reader.post(f"{JOBS}{job.pk}/cancel/").status_code == 403
    assert "sisy.change_job" in reader.post(f"{JOBS}{job.pk}/cancel/").json()["error"]
    writer = token_client("add_job", username="writer")
    assert writer.get(JOBS).status_code == 403
    assert post(writer, SPEC).status_code == 201


# -- bad input -----------------------------------------------------------------


def details(response: Any) -> list[dict[str, Any]]:
    assert response["Content-Type"] == "application/json"
    return response.json()["details"]


def test_schema_violations_name_the_task_and_path(admin_client: Client) -> None:
    response = post(
        admin_client,
        {"tasks": [{"record": {"label": "ok"}}, {"record": {"label": 5}}, {"nope": {}}]},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid job specification"
    found = details(response)
    assert {"task": 1, "path": "$.label", "message": "5 is not of type 'string'"} in found
    assert any(d["task"] == 2 and "unknown module 'nope'" in d["message"] for d in found)
    matches(response.json(), "Error")
    assert not Job.objects.exists()


def test_a_dotted_path_is_never_imported(admin_client: Client) -> None:
    MARKER.unlink(missing_ok=True)
    sys.modules.pop("tests.canary_module", None)
    response = post(admin_client, {"tasks": [{"module": "tests.canary_module", "data": {}}]})
    assert response.status_code == 400
    assert "unknown module 'tests.canary_module'" in details(response)[0]["message"]
    assert not MARKER.exists() and "tests.canary_module" not in sys.modules


def test_internal_modules_cannot_be_named(admin_client: Client) -> None:
    response = post(admin_client, {"tasks": [{"sisy.task": {"task": 1}}]})
    assert response.status_code == 400
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"record": {"label": NaN}}', "NaN is not allowed"),
        (b'{"record": {"label": "a"}, "x": Infinity}', "Infinity is not allowed"),
        (b'{"record": {"label": 1e999}}', "numbers must be finite"),
        (b'{"record": {"label": "a"}, "record": {"label": "b"}}', "duplicate key 'record'"),
        (b"[" * 40 + b"]" * 40, "nested deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b'{"record": {"label": "\xff"}}', "not UTF-8"),
        (b'{"record": ', "not valid JSON"),
        (b" ", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"just text"', "must be a JSON object"),
        (b'{"job_title": 7, "record": {"label": "a"}}', "7 is not of type 'string'"),
        (b'{"tasks": []}', "should be non-empty"),
        (b'{"job_id": "nope", "record": {"label": "a"}}', "is not a UUID"),
        (b'{"record": {"label": "a\\u0000b"}}', "NUL character"),
        (b'{"job_title": "\\ud800", "record": {"label": "a"}}', "unpaired surrogate"),
    ],
)
def test_malformed_bodies_get_400(admin_client: Client, body: bytes, fragment: str) -> None:
    response = post(admin_client, body)
    assert response.status_code == 400, response.content
    payload = response.json()
    assert fragment in payload["error"] + json.dumps(payload["details"])
    assert not Job.objects.exists()


@override_settings(SISY_API_MAX_ITEMS=50, SISY_API_MAX_STRING_LENGTH=20)
def test_item_and_string_limits(admin_client: Client) -> None:
    many = post(admin_client, {"record": {"label": "a"}, "x": list(range(60))})
    assert many.status_code == 400 and "more than 50" in many.json()["error"]
    long = post(admin_client, {"record": {"label": "a" * 21}})
    assert long.status_code == 400 and "longer than 20" in long.json()["error"]
    assert post(admin_client, {"record": {"label": "a" * 20}}).status_code == 201


@override_settings(SISY_API_MAX_BODY_SIZE=100)
def test_large_bodies_get_413(admin_client: Client) -> None:
    response = post(admin_client, {"record": {"label": "a" * 200}})
    assert response.status_code == 413
    assert "larger than 100 bytes" in response.json()["error"]
    assert not Job.objects.exists()


@override_settings(SISY_API_MAX_BODY_SIZE=100)
def test_a_large_body_is_not_read(admin_client: Client) -> None:
    """A declared length over the limit is refused before any byte is read."""

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            Counting.consumed += len(chunk)
            return chunk

    request = RequestFactory().post(JOBS, data=b"{}", content_type="application/json")
    request.META["CONTENT_LENGTH"] = str(10**9)
    request.META["wsgi.input"] = Counting(b"x" * 10_000)
    from django.core.handlers.wsgi import WSGIRequest

    fresh = WSGIRequest(request.META)
    fresh.user = User.objects.create_superuser("big", "b@example.com", "pw")
    fresh._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
    response = api.jobs(fresh)
    assert response.status_code == 413
    assert Counting.consumed == 0


def test_wrong_content_type_gets_415(admin_client: Client) -> None:
    response = admin_client.post(JOBS, data={"record": "x"})  # a form post
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_wrong_methods_get_405_with_allow(admin_client: Client) -> None:
    response = admin_client.put(JOBS, data="{}", content_type="application/json")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert admin_client.options(JOBS).status_code == 204
    assert admin_client.get("/sisy/jobs/x/cancel/").status_code == 405


def test_a_taken_job_id_gets_409(admin_client: Client) -> None:
    job_id = str(uuid.uuid4())
    assert post(admin_client, {**SPEC, "job_id": job_id}).status_code == 201
    again = post(admin_client, {**SPEC, "job_id": job_id, "job_title": "other"})
    assert again.status_code == 409
    assert Job.objects.get().job_title == "two steps"


@override_settings(SISY_MAX_QUEUED_JOBS=2)
def test_a_full_queue_answers_503_with_retry_after(admin_client: Client) -> None:
    assert post(admin_client, SPEC).status_code == 201
    assert post(admin_client, SPEC).status_code == 201
    full = post(admin_client, SPEC)
    assert full.status_code == 503
    assert int(full["Retry-After"]) > 0
    assert Job.objects.count() == 2


# -- reading -------------------------------------------------------------------


def test_list_filters_paginates_and_uses_a_fixed_number_of_queries(admin_client: Client) -> None:
    for i in range(3):
        sisy.submit({**SPEC, "job_title": f"job {i}"})
    sisy.cancel(Job.objects.get(job_title="job 0").pk)
    with CaptureQueriesContext(connection) as few:
        page = admin_client.get(JOBS, {"page_size": 2})
    assert page.status_code == 200
    body = page.json()
    matches(body, "JobPage")
    assert (body["count"], body["pages"], len(body["results"])) == (3, 2, 2)
    assert [j["title"] for j in body["results"]] == ["job 2", "job 1"]
    assert body["results"][0]["task_count"] == 2
    second = admin_client.get(JOBS, {"page_size": 2, "page": 2}).json()
    assert [j["title"] for j in second["results"]] == ["job 0"]
    cancelled = admin_client.get(JOBS, {"status": "cancelled"}).json()
    assert [j["title"] for j in cancelled["results"]] == ["job 0"]

    for i in range(20):
        sisy.submit({**SPEC, "job_title": f"more {i}"})
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(JOBS, {"page_size": 20}).status_code == 200
    assert len(many) == len(few)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"status": "done"}, "unknown status"),
        ({"page": "x"}, "page must be an integer"),
        ({"page": "0"}, "page must be between"),
        ({"page": "5"}, "page must be between 1 and 1"),
        ({"page_size": "100000"}, "page_size must be between 1 and 500"),
    ],
)
def test_bad_query_parameters_get_400(
    admin_client: Client, query: dict[str, str], fragment: str
) -> None:
    response = admin_client.get(JOBS, query)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_job_detail_has_tasks_and_progress(admin_client: Client) -> None:
    job = sisy.submit(SPEC)
    job.job_tasks.filter(position=0).update(status="succeeded", progress=1.0, result={"n": 1})
    body = admin_client.get(f"{JOBS}{job.pk}/").json()
    matches(body, "Job")
    assert body["progress"] == 0.5
    assert body["tasks"][0]["result"] == {"n": 1}
    assert body["tasks"][1]["status"] == "pending"


@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.UUID(int=0)), "%00"])
def test_unknown_jobs_get_404_as_json(admin_client: Client, job_id: str) -> None:
    response = admin_client.get(f"{JOBS}{job_id}/")
    assert response.status_code == 404
    matches(response.json(), "Error")


def test_cancel_and_retry(admin_client: Client) -> None:
    job = sisy.submit(SPEC)
    cancelled = admin_client.post(f"{JOBS}{job.pk}/cancel/")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = admin_client.post(f"{JOBS}{job.pk}/cancel/")
    assert again.status_code == 409 and "already finished" in again.json()["error"]
    retried = admin_client.post(f"{JOBS}{job.pk}/retry/")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert admin_client.post(f"{JOBS}{job.pk}/retry/").status_code == 409


def test_workers_come_from_heartbeats(admin_client: Client, redis: Any) -> None:
    busy = WorkerState(worker_id="api-1")
    busy.job_started("j", "t", 1)
    heartbeat.publish(redis, busy)
    body = admin_client.get("/sisy/workers/").json()
    matches(body, "Workers")
    assert [(w["worker_id"], w["status"]) for w in body["results"]] == [("api-1", "in_progress")]


@override_settings(SISY_REDIS_URL="redis://127.0.0.1:1/0")
def test_workers_without_redis_is_a_503(admin_client: Client) -> None:
    response = admin_client.get("/sisy/workers/")
    assert response.status_code == 503
    assert "cannot read worker heartbeats" in response.json()["error"]


def test_modules_lists_public_modules_with_schemas(admin_client: Client) -> None:
    body = admin_client.get("/sisy/modules/").json()
    matches(body, "Modules")
    by_name = {m["name"]: m for m in body["results"]}
    assert by_name["record"]["schema"]["required"] == ["label"]
    assert by_name["record"]["description"].startswith("Appends")
    assert by_name["slow"]["description"] == ""  # no docstring: not Module's own
    assert "sisy.task" not in by_name


# -- nothing a client sends gives a 500 ---------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=10) | st.sampled_from(["record", "slow", "tasks"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
labels = st.text(max_size=12) | json_values | st.sampled_from(["\x00", "a\ud800", "\udfff"])
task_items = st.one_of(
    st.fixed_dictionaries({"record": st.fixed_dictionaries({"label": labels})}),
    st.fixed_dictionaries(
        {
            "module": st.sampled_from(["record", "slow", "nope", "sisy.task", "os.system"]),
            "data": json_values,
        }
    ),
    st.dictionaries(
        st.sampled_from(["record", "slow", "module", "data", "tests.canary_module"]),
        json_values,
        max_size=2,
    ),
    json_values,
)
specs_like = st.fixed_dictionaries(
    {},
    optional={
        "job_title": st.text(max_size=30) | json_values,
        "job_name": json_values,
        "job_id": st.uuids().map(str) | json_values,
        "max_attempts": st.integers(-2, 200) | json_values,
        "tasks": st.lists(task_items, max_size=3) | json_values,
        "record": st.fixed_dictionaries({"label": labels}) | json_values,
    },
)
valid_specs = st.fixed_dictionaries(
    {
        "tasks": st.lists(
            st.fixed_dictionaries(
                {"record": st.fixed_dictionaries({"label": st.text(max_size=12)})}
            ),
            min_size=1,
            max_size=3,
        )
    },
    optional={"job_title": st.text(max_size=30), "max_attempts": st.integers(1, 100)},
)
bodies = st.one_of(
    valid_specs.map(lambda v: json.dumps(v).encode()),
    specs_like.map(lambda v: json.dumps(v).encode()),
    specs_like.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
)
header_text = st.text(st.characters(codec="latin-1", exclude_categories=["Cs"]), max_size=30)


def mostly(usual: list[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually one of ``usual`` (the common case), sometimes anything from ``odd``."""
    return st.sampled_from([*usual, "ODD"]).flatmap(lambda v: odd if v == "ODD" else st.just(v))


requests = st.fixed_dictionaries(
    {
        "target": mostly(
            [("POST", JOBS)] * 6
            + [("GET", JOBS), ("GET", "/sisy/workers/"), ("GET", "/sisy/modules/")],
            st.tuples(
                st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
                st.sampled_from([JOBS, "/sisy/workers/", "/sisy/modules/", "/sisy/openapi.json"])
                | st.builds(
                    lambda job_id, tail: f"{JOBS}{job_id}/{tail}",
                    st.uuids().map(str)
                    | st.text(
                        st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=40
                    ),
                    st.sampled_from(["", "cancel/", "retry/"]),
                ),
            ),
        ),
        "auth": mostly(
            ["session", "session", "session", "token", None], header_text.map(lambda h: f"raw:{h}")
        ),
        "content_type": mostly(["application/json"] * 5, header_text),
        "query": mostly(
            [{}] * 3,
            st.dictionaries(
                st.sampled_from(["status", "page", "page_size", "x"]),
                st.text(max_size=12),
                max_size=3,
            ),
        ),
        "body": bodies,
        "extra": st.fixed_dictionaries(
            {},
            optional={
                "CONTENT_LENGTH": st.sampled_from(["0", "-1", "5", "999999999999", "x", ""])
                | header_text,
                "HTTP_X_CSRFTOKEN": header_text,
                "HTTP_ACCEPT": header_text,
                "HTTP_COOKIE": header_text,
            },
        ),
    }
)


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests)
def test_nothing_a_client_sends_gives_a_500(request: dict[str, Any]) -> None:
    method, path = request["target"]
    client = Client(raise_request_exception=True)
    extra = dict(request["extra"])
    auth = request["auth"]
    if auth == "session":
        client.force_login(_fuzz_admin())
    elif auth == "token":
        extra["HTTP_AUTHORIZATION"] = f"Bearer {_fuzz_token()}"
    elif auth is not None:
        extra["HTTP_AUTHORIZATION"] = auth.removeprefix("raw:")
    body = request["body"]
    response = client.generic(
        method,
        path,
        data=body,
        content_type=request["content_type"],
        QUERY_STRING=urlencode(request["query"]),  # a WSGI server hands over latin-1 text only
        # A stream that ends where the body ends, as a server's does, whatever the headers claim.
        **{"wsgi.input": io.BytesIO(body)},
        **extra,
    )
    event(f"{method} {response.status_code}")
    assert response.status_code < 500, response.content
    if (
        response.status_code >= 400
        and method != "HEAD"
        and response.get("Content-Type") == "application/json"
    ):
        assert "error" in response.json()


_admin: list[User] = []


def _fuzz_admin() -> User:
    if not _admin or not User.objects.filter(pk=_admin[0].pk).exists():
        _admin[:] = [
            User.objects.filter(username="fuzz").first()
            or User.objects.create_superuser("fuzz", "f@example.com", "pw")
        ]
    return _admin[0]


_token: list[str] = []


def _fuzz_token() -> str:
    if not _token or ApiToken.authenticate(_token[0]) is None:
        _token[:] = [ApiToken.issue(_fuzz_admin(), "fuzz")[1]]
    return _token[0]


def test_the_fuzzer_reaches_the_job_store() -> None:
    """Guards the fuzz test against testing only its own rejections."""
    client = Client()
    client.force_login(_fuzz_admin())
    assert post(client, {"record": {"label": "fuzz"}}).status_code == 201


# -- making tokens ---------------------------------------------------------------


def test_sisy_token_create_list_revoke(capsys: pytest.CaptureFixture[str]) -> None:
    from django.core.management import CommandError, call_command

    user_with("add_job", username="bot")
    call_command("sisy_token", "create", "bot", "--name", "nightly", "--expires-in", "2")
    out, err = capsys.readouterr()
    token = out.strip()
    assert "shown once" in err
    row = ApiToken.objects.get()
    assert row.name == "nightly" and row.hint == token[:11]
    assert timedelta(days=1.9) < row.expires_at - timezone.now() < timedelta(days=2)
    assert post(Client(headers={"Authorization": f"Bearer {token}"}), SPEC).status_code == 201

    call_command("sisy_token", "list")
    listed = capsys.readouterr().out
    assert "nightly" in listed and "user bot" in listed and token not in listed

    with pytest.raises(CommandError, match="no token with id 999"):
        call_command("sisy_token", "revoke", str(row.pk), "999")
    assert ApiToken.objects.exists()
    call_command("sisy_token", "revoke", str(row.pk))
    assert post(Client(headers={"Authorization": f"Bearer {token}"}), SPEC).status_code == 401

    with pytest.raises(CommandError, match="no user 'ghost'"):
        call_command("sisy_token", "create", "ghost")
    with pytest.raises(CommandError, match="positive number of days"):
        call_command("sisy_token", "create", "bot", "--expires-in", "0")


def test_the_admin_shows_a_new_token_once(admin_client: Client) -> None:
    user = user_with("view_job", username="reader")
    response = admin_client.post(
        reverse("admin:sisy_apitoken_add"), {"name": "dashboard", "user": user.pk}, follow=True
    )
    assert response.status_code == 200
    row = ApiToken.objects.get()
    shown = [str(m) for m in response.context["messages"]]
    token = next(
        word
        for m in shown
        for word in m.replace("<", " ").replace(">", " ").split()
        if word.startswith("sisy_")
    )
    assert ApiToken.authenticate(token) == user and row.name == "dashboard"
    page = admin_client.get(reverse("admin:sisy_apitoken_change", args=[row.pk])).content.decode()
    assert token not in page and row.hint in page
    listing = admin_client.get(reverse("admin:sisy_apitoken_changelist")).content.decode()
    assert token not in listing and "dashboard" in listing
