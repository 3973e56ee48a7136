"""``GET /v1/upgrades`` and ``POST /v1/upgrades/confirm`` (in-process gate): authenticated
channels only; confirm commits only a booted staged slot, and says why when there is none."""

from __future__ import annotations

from tests.unit.test_gate import World, _body, _client, w  # noqa: F401 -- the fixture


async def test_status_and_confirm_refuse_unauthenticated_callers(w: World) -> None:  # noqa: F811
    async with _client(w, "public") as c:  # type: ignore[attr-defined]
        assert (await c.get("/v1/upgrades")).status_code == 403
        assert (await c.post("/v1/upgrades/confirm")).status_code == 403


async def test_confirm_without_a_booted_staged_slot_is_409_and_changes_nothing(
    w: World,  # noqa: F811
) -> None:
    async with _client(w, "mtls") as c:  # type: ignore[attr-defined]
        before = (await c.get("/v1/upgrades")).json()
        r = await c.post("/v1/upgrades", content=_body(w.snap(), w.v1.path.read_bytes()))
        assert r.status_code == 200, r.text
        staged = (await c.get("/v1/upgrades")).json()
        assert staged["pending"] == "b" and staged["tries"] == 1
        assert staged["generation"] > before["generation"]
        r = await c.post("/v1/upgrades/confirm")  # staged, but not booted: nothing to confirm
        assert r.status_code == 409 and r.json()["check"] == "nothing-to-confirm"
        assert (await c.get("/v1/upgrades")).json() == staged


async def test_confirm_commits_the_booted_staged_slot(w: World) -> None:  # noqa: F811
    async with _client(w, "operator") as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=_body(w.snap(), w.v1.path.read_bytes()))
        assert r.status_code == 200, r.text
        w.gate.slots.boot()  # the boot loader gives slot b its try
        r = await c.post("/v1/upgrades/confirm")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["active"] == "b" and doc["pending"] is None and not doc["pending_confirmation"]
    assert doc["nv_counter"]["committed_sequence"] == doc["slots"]["b"]["sequence"]


def test_mtls_certificate_settings_go_together_and_enable_mutual_tls_alone() -> None:
    import pytest

    from attest.errors import ConfigError
    from attest.node.config import load_settings

    s = load_settings(
        environ={
            "ATTEST_API_CLIENT_CA": "/ca.pem",
            "ATTEST_API_MTLS_CERT": "/c",
            "ATTEST_API_MTLS_KEY": "/k",
        }
    )
    assert s.api.mtls_cert == "/c" and not s.api.tls_cert  # the public listener stays HTTP
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ATTEST_API_MTLS_CERT": "/c"})
    assert info.value.key == "api.mtls_cert"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ATTEST_API_CLIENT_CA": "/ca.pem"})
    assert info.value.key == "api.client_ca"
