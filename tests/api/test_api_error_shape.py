"""attestd's one error shape: every operation of its OpenAPI document (the upgrade routes
included) declares its error answers -- 413 and 429 always, 422 where it takes input, and
``default`` -- with the ``Error`` schema ``{error, check, detail}``; and the answers the app
really gives for each kind of refusal are that schema, with a status the operation documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import AppFactory, _running
from tests.support.openapi import assert_error_answer, operations, problems

from attest.errors import BrokerUnavailable
from attest.node.api.middleware import ChannelApp
from attest.node.api.upgrades import add_upgrade_routes

NONCE = "00" * 16


def _with_upgrades(app_factory: AppFactory, tmp_path: Path, **kw: Any) -> Any:
    """The app as attestd runs it with the upgrade gate on; the gate runs in attestd-tpm
    (not an in-process ``UpgradeGate``), so status and confirm answer 501 here."""
    return app_factory(
        extra_routes=lambda app, ctx: add_upgrade_routes(
            app, ctx, lambda: object(), upload_dir=tmp_path / "spool"
        ),
        **kw,
    )


def test_every_operation_documents_its_errors_with_the_error_schema(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    spec = _with_upgrades(app_factory, tmp_path).fastapi.openapi()
    names = {name for name, _ in operations(spec)}
    assert {"POST /v1/evidence", "POST /v1/enroll/activate", "POST /v1/upgrades"} <= names
    assert {"GET /v1/upgrades", "POST /v1/upgrades/confirm", "GET /metrics"} <= names
    assert "POST /v1/registry" in names
    assert problems(spec, always=(413, 429)) == []
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "check", "detail"]


def test_the_walk_notices_an_operation_without_the_error_schema(app_factory: AppFactory) -> None:
    spec = app_factory().fastapi.openapi()
    spec["paths"]["/v1/audit"]["get"]["responses"]["503"]["content"] = {"text/plain": {}}
    del spec["paths"]["/v1/evidence"]["post"]["responses"]["422"]
    del spec["paths"]["/healthz"]["get"]["responses"]["default"]
    assert set(problems(spec, always=(413, 429))) == {
        "GET /v1/audit: 503 answers {'text/plain': {}}, not the Error schema",
        "POST /v1/evidence: takes input but documents no 422",
        "GET /healthz: no default response",
    }


class _BrokerAway:
    """The node port with attestd-tpm unreachable: every call refused."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: object, **kw: object) -> Any:
            raise BrokerUnavailable("cannot reach attestd-tpm at /run/attest/tpm.sock")

        return call


async def test_refusals_are_the_documented_error_schema(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    app = _with_upgrades(app_factory, tmp_path)
    spec = app.fastapi.openapi()
    async with _running(app, "public") as c:
        answers = [
            ("POST", "/v1/evidence", await c.post("/v1/evidence", json={"nonce": "zz"}), 422),
            (
                "POST",
                "/v1/evidence",
                await c.post("/v1/evidence", json={"nonce": NONCE, "pcrs": {"sha384": [0]}}),
                400,
            ),
            (
                "POST",
                "/v1/evidence",
                await c.post("/v1/evidence", content=b"{" + b" " * 70000 + b"}"),
                413,
            ),
            (
                "POST",
                "/v1/enroll/activate",
                await c.post("/v1/enroll/activate", json={"id_object": "", "encrypted_secret": ""}),
                403,
            ),
            ("GET", "/v1/audit", await c.get("/v1/audit", params={"start": -1}), 422),
            ("POST", "/v1/upgrades", await c.post("/v1/upgrades", content=b""), 403),
            ("GET", "/no/such/path", await c.get("/no/such/path"), 404),
            ("DELETE", "/v1/status", await c.delete("/v1/status"), 405),
        ]
    async with _running(app, "operator") as c:
        answers.append(("GET", "/v1/upgrades", await c.get("/v1/upgrades"), 501))
    for method, path, r, status in answers:
        assert r.status_code == status, (method, path, r.text)
        assert_error_answer(spec, method, path, status, r.json())


async def test_pcr_indices_and_log_offsets_are_json_integers(app_factory: AppFactory) -> None:
    """pydantic's lax mode read ``true`` as PCR 1 and ``"3"`` as record 3: a challenge's
    numbers must be JSON integers."""
    async with _running(app_factory(), "public") as c:
        for body in [
            {"nonce": NONCE, "pcrs": {"sha256": [True]}},
            {"nonce": NONCE, "pcrs": {"sha256": [0, "7"]}},
            {"nonce": NONCE, "logs": {"runtime": {"start": "3"}}},
            {"nonce": NONCE, "logs": {"firmware": {"start": False}}},
        ]:
            r = await c.post("/v1/evidence", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["check"] == "request-schema"
        ok = await c.post("/v1/evidence", json={"nonce": NONCE, "pcrs": {"sha256": [0, 7]}})
        assert ok.status_code == 200, ok.text


async def test_rate_limit_and_an_absent_broker_are_the_error_schema(
    app_factory: AppFactory,
) -> None:
    limited = app_factory(rate_per_second=0.001, rate_burst=1)
    spec = limited.fastapi.openapi()
    async with _running(limited, "public") as c:
        assert (await c.get("/healthz")).status_code == 200
        r = await c.get("/healthz")
    assert r.status_code == 429 and r.headers["retry-after"]
    assert_error_answer(spec, "GET", "/healthz", 429, r.json())

    away = app_factory(node=_BrokerAway(), heartbeat_interval=0.1)
    async with _running(away, "public") as c:
        audit = await c.get("/v1/audit")
        ready = await c.get("/readyz")
    assert audit.status_code == 503 and audit.json()["error"] == "BrokerUnavailable"
    assert_error_answer(spec, "GET", "/v1/audit", 503, audit.json())
    assert ready.status_code == 503
    assert ready.json()["error"] == "NotReady" and ready.json()["check"] == "tpm"
    assert ready.json()["ready"] is False and "attestd-tpm" in ready.json()["detail"]
    assert_error_answer(spec, "GET", "/readyz", 503, ready.json())


async def test_a_bug_is_a_500_in_the_error_schema_naming_nothing(
    app_factory: AppFactory,
) -> None:
    app = app_factory()
    spec = app.fastapi.openapi()

    async def boom() -> None:
        raise RuntimeError("secret internals /etc/attest/key.pem")

    app.fastapi.add_api_route("/v1/boom", boom)
    transport = httpx.ASGITransport(app=ChannelApp(app, "public"), raise_app_exceptions=False)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        r = await c.get("/v1/boom")
    assert r.status_code == 500
    assert r.json() == {
        "error": "InternalError",
        "check": None,
        "detail": "internal error (see attestd's log)",
    }
    assert_error_answer(spec, "GET", "/v1/boom", 500, r.json())


@pytest.mark.parametrize("channel", ["public", "operator"])
async def test_openapi_document_is_served_with_the_error_schema(
    app_factory: AppFactory, channel: str
) -> None:
    async with _running(app_factory(), channel) as c:
        spec = (await c.get("/openapi.json")).json()
    assert problems(spec, always=(413, 429)) == []
