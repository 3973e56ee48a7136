"""The fleet service's one error shape: every operation of its OpenAPI document declares its
error answers (401 wherever a token is asked for, 422 where it takes input, and ``default``)
with the ``Error`` schema ``{error, check, detail}``; the answers it really gives for each
kind of refusal are that schema, with a status the operation documents. The pages (HTML, for
people) are not in the API's document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.support.openapi import assert_error_answer, operations, problems

from attest.verifier.fleet.access import Access
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.pgconn import DatabaseState
from attest.verifier.fleet.store import SqliteStore

WRITE, READ = "w" * 16, "r" * 16
OPEN = ("/healthz", "/readyz")  # no token asked for


def _app(tmp_path: Path, store: SqliteStore | None = None) -> Any:
    store = store or SqliteStore(str(tmp_path / "fleet.db"))
    return create_fleet_app(store, access=Access(WRITE, READ))


def test_every_operation_documents_its_errors_with_the_error_schema(tmp_path: Path) -> None:
    spec = _app(tmp_path).openapi()
    assert problems(spec) == []
    for name, op in operations(spec):
        if name.split()[1] not in OPEN:
            assert "401" in op["responses"], name
    names = {name for name, _ in operations(spec)}
    assert {"POST /v1/nodes", "DELETE /v1/nodes/{node_id}", "GET /metrics"} <= names
    assert not any(n.startswith("GET /nodes/") or n == "GET /" for n in names)  # pages


class _DownStore(SqliteStore):
    def check(self) -> DatabaseState:
        return DatabaseState(False, "connection refused")


def test_refusals_are_the_documented_error_schema(tmp_path: Path) -> None:
    app = _app(tmp_path)
    spec = app.openapi()
    c = TestClient(app)
    w = {"Authorization": f"Bearer {WRITE}"}
    r = {"Authorization": f"Bearer {READ}"}
    node = {"url": "http://10.0.0.5:7443"}
    answers = [
        ("GET", "/v1/nodes", c.get("/v1/nodes"), 401, ""),
        ("POST", "/v1/nodes", c.post("/v1/nodes", json=node), 401, ""),
        ("POST", "/v1/nodes", c.post("/v1/nodes", json=node, headers=r), 403, ""),
        ("POST", "/v1/nodes", c.post("/v1/nodes", json={"url": "ftp://x"}, headers=w), 422, ""),
        ("POST", "/v1/nodes", c.post("/v1/nodes", json=node, headers=w), 503, ""),
        ("GET", "/v1/nodes/n9", c.get("/v1/nodes/n9", headers=r), 404, "/v1/nodes/{node_id}"),
        (
            "GET",
            "/v1/nodes/n9/results",
            c.get("/v1/nodes/n9/results", params={"limit": 0}, headers=r),
            422,
            "/v1/nodes/{node_id}/results",
        ),
        ("GET", "/v1/verifier-key", c.get("/v1/verifier-key", headers=r), 404, ""),
        ("DELETE", "/v1/nodes/n9", c.delete("/v1/nodes/n9", headers=w), 404, "/v1/nodes/{node_id}"),
        ("GET", "/metrics", c.get("/metrics"), 401, ""),
    ]
    for method, path, answer, status, template in answers:
        assert answer.status_code == status, (method, path, answer.text)
        assert_error_answer(spec, method, path, status, answer.json(), template=template)

    down = TestClient(_app(tmp_path, _DownStore(str(tmp_path / "down.db"))))
    for path in OPEN:
        answer = down.get(path)
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["error"] == "DatabaseUnavailable" and body["check"] == "database"
        assert "connection refused" in body["detail"] and body["ready"] is False
        assert_error_answer(spec, "GET", path, 503, body)


def test_a_bug_is_a_500_in_the_error_schema_naming_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path)
    spec = app.openapi()

    def boom() -> None:
        raise RuntimeError("secret internals /etc/attest/fleet.key")

    app.add_api_route("/v1/boom", boom)
    answer = TestClient(app, raise_server_exceptions=False).get(
        "/v1/boom", headers={"Authorization": f"Bearer {READ}"}
    )
    assert answer.status_code == 500
    assert answer.json() == {
        "error": "InternalError",
        "check": None,
        "detail": "internal error (see the service's log)",
    }
    assert_error_answer(spec, "GET", "/v1/boom", 500, answer.json())


def test_flags_are_json_booleans_not_yes_or_one(tmp_path: Path) -> None:
    """pydantic's lax mode read ``"yes"``, ``"on"`` and ``1`` as true: a flag that replaces an
    enrollment must be said in JSON, ``true``."""
    c = TestClient(_app(tmp_path))
    w = {"Authorization": f"Bearer {WRITE}"}
    for flag, value in [("re_enroll", "yes"), ("re_enroll", 1), ("guest_vtpm", "off")]:
        r = c.post("/v1/nodes", json={"url": "http://10.0.0.5:7443", flag: value}, headers=w)
        assert r.status_code == 422, (flag, value, r.text)
        assert r.json()["check"] == "request-schema" and flag in r.json()["detail"]
