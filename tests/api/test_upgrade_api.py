"""The upgrade gate's HTTP API (``POST /v1/upgrades``, ``GET /v1/upgrades``, ``POST
/v1/upgrades/confirm``) with the gate in-process: authenticated channels only, refusals with
their reason codes, uploads bounded while streaming and when declared, confirm only a booted
staged slot."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.gate import World, gate_app, gate_client, upload_body

from attest.runtime import check_records


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


async def test_api_stages_an_upload_on_an_authenticated_channel(w: World) -> None:
    async with gate_client(w, "mtls") as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(), w.v1.path.read_bytes()))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] is True and r.json()["slot"] == "b"
    assert not list((w.tmp / "uploads").iterdir())  # the spooled upload is gone


async def test_api_refusal_is_409_with_the_reason_code(w: World) -> None:
    bad = bytearray(w.v1.path.read_bytes())
    bad[9] ^= 1
    async with gate_client(w, "operator") as c:  # type: ignore[attr-defined]
        r = await c.post(
            "/v1/upgrades", params={"version": "1.0.0"}, content=upload_body(w.snap(), bytes(bad))
        )
    assert r.status_code == 409 and r.json()["check"] == "verity-root-mismatch"


async def test_api_refuses_unauthenticated_caller(w: World) -> None:
    async with gate_client(w, "public") as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(), w.v1.path.read_bytes()))
    assert r.status_code == 403
    assert not w.node.slots_dir.exists() or not list(w.node.slots_dir.iterdir())


async def test_api_refuses_upload_over_the_limit_while_streaming(w: World) -> None:
    async def stream():  # type: ignore[no-untyped-def]  # no Content-Length: chunked
        yield upload_body(w.snap(), b"")
        for _ in range(64):
            yield b"\0" * 4096

    async with gate_client(w, "mtls", max_upload=100_000) as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=stream())
    assert r.status_code == 413 and r.json()["check"] == "upload-too-large"
    entry = w.local.audit_log()[-1]
    assert entry["service"] == "upgrade.upload-too-large" and entry["result"] == "denied"
    assert not list((w.tmp / "uploads").iterdir())


def test_api_records_an_upload_declared_over_the_limit(w: World) -> None:
    """A Content-Length over max_upload_bytes is refused at once (nothing read or spooled),
    and recorded like a streamed one: 413 ``upload-too-large``, audit entry and
    ``upgrade-decision`` runtime event. Through a real uvicorn server on 127.0.0.1."""
    import httpx
    from tests.conftest import uvicorn_server

    def decisions() -> list[object]:
        events = check_records(w.local.runtime_log(), pcr=w.local.runtime.pcr)
        return [e for e in events if e.kind == "upgrade-decision"]

    before = len(decisions())
    body = upload_body(w.snap(), b"\0" * 200_000)
    with uvicorn_server(gate_app(w, "mtls", max_upload=100_000)) as url:
        r = httpx.post(f"{url}/v1/upgrades", content=body, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["check"] == "upload-too-large" and "100000" in r.json()["detail"]
    after = decisions()
    assert len(after) == before + 1
    last = after[-1]
    assert last.content["accepted"] is False and last.content["reason"] == "upload-too-large"  # type: ignore[attr-defined]
    entry = w.local.audit_log()[-1]
    assert entry["service"] == "upgrade.upload-too-large" and entry["result"] == "denied"
    assert not (w.tmp / "uploads").exists() or not list((w.tmp / "uploads").iterdir())


async def test_status_and_confirm_refuse_unauthenticated_callers(w: World) -> None:
    async with gate_client(w, "public") as c:  # type: ignore[attr-defined]
        assert (await c.get("/v1/upgrades")).status_code == 403
        assert (await c.post("/v1/upgrades/confirm")).status_code == 403


async def test_confirm_without_a_booted_staged_slot_is_409_and_changes_nothing(
    w: World,
) -> None:
    async with gate_client(w, "mtls") as c:  # type: ignore[attr-defined]
        before = (await c.get("/v1/upgrades")).json()
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(), w.v1.path.read_bytes()))
        assert r.status_code == 200, r.text
        staged = (await c.get("/v1/upgrades")).json()
        assert staged["pending"] == "b" and staged["tries"] == 1
        assert staged["generation"] > before["generation"]
        r = await c.post("/v1/upgrades/confirm")  # staged, but not booted: nothing to confirm
        assert r.status_code == 409 and r.json()["check"] == "nothing-to-confirm"
        assert (await c.get("/v1/upgrades")).json() == staged


async def test_confirm_commits_the_booted_staged_slot(w: World) -> None:
    async with gate_client(w, "operator") as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(), w.v1.path.read_bytes()))
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


async def test_api_upload_into_an_unusable_spool_is_507_naming_it(w: World) -> None:
    """A spool that cannot take the upload (here: a file where the directory should be; on a
    node: a state file system full or remounted read-only) is the documented StorageError,
    507 naming the directory, not a 500; nothing is staged."""
    (w.tmp / "uploads").write_bytes(b"not a directory")
    async with gate_client(w, "mtls") as c:  # type: ignore[attr-defined]
        r = await c.post("/v1/upgrades", content=upload_body(w.snap(), w.v1.path.read_bytes()))
    assert r.status_code == 507, r.text
    doc = r.json()
    assert doc["error"] == "StorageError" and "uploads" in doc["detail"]
    assert "cannot create the upload file" in doc["detail"]
    assert not w.node.slots_dir.exists() or not list(w.node.slots_dir.iterdir())


def test_a_new_app_removes_the_upload_files_a_killed_attestd_left(w: World) -> None:
    """A power cut mid-upload leaves the spooled image behind (the finally never ran): the
    next attestd removes every upload file of the spool, and nothing else in it."""
    spool = w.tmp / "uploads"
    spool.mkdir()
    (spool / ".upload.abc123.img").write_bytes(b"\0" * 4096)
    (spool / ".upload.def456.img").write_bytes(b"")
    (spool / "keep.txt").write_text("not an upload")
    gate_app(w, "mtls")
    assert sorted(p.name for p in spool.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("path", ["/v1/upgrades", "/v1/registry"])
def test_a_refused_upload_closes_the_connection_instead_of_draining_the_body(
    w: World, path: str
) -> None:
    """A public client refused (403) before its body is read: the server answers with
    ``Connection: close`` and closes, rather than keep reading (and discarding) a body the
    client may stream for as long as it likes."""
    import socket
    import time

    from tests.conftest import uvicorn_server

    from attest import serving

    with uvicorn_server(gate_app(w, "public"), http=serving.protocol()) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".encode()
                + b"\0" * 65536
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += s.recv(65536)
            head = answer.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 403 ") and b"connection: close" in head, head
            t0, closed = time.monotonic(), False
            s.settimeout(0.2)
            while time.monotonic() - t0 < 5:  # keep streaming: the server must hang up
                try:
                    s.sendall(b"\0" * 65536)
                    if s.recv(65536) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except OSError:  # reset: closed
                    closed = True
                    break
            assert closed, "the server kept reading the refused body"
