"""attestd's API with a fake TPM injected through the app factory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import SEL, AppFactory, _running, challenge
from tests.support.prom import samples

from attest.errors import BrokerUnavailable, NonceError, PcrSelectionError
from attest.evidence import unb64, verify_evidence
from attest.model import PcrSelection
from attest.node.tpm.fake import FakeTpm
from attest.tpmstruct import parse_public


async def test_evidence_verifies_against_identity(client: httpx.AsyncClient) -> None:
    ident = (await client.get("/v1/identity")).json()
    ak = parse_public(unb64(ident["ak"]["public"], "ak"))
    nonce, r = await challenge(client)
    assert r.status_code == 200, r.text
    ve = verify_evidence(r.json(), nonce=nonce, ak=ak, selection=PcrSelection.parse("sha256:0-7"))
    assert ve.quote.selection == PcrSelection.parse("sha256:0-7")
    assert r.json()["node_id"] == "node-under-test"


async def test_evidence_for_another_nonce_is_refused(client: httpx.AsyncClient) -> None:
    ident = (await client.get("/v1/identity")).json()
    ak = parse_public(unb64(ident["ak"]["public"], "ak"))
    _, r = await challenge(client)
    with pytest.raises(NonceError):
        verify_evidence(
            r.json(), nonce=os.urandom(32), ak=ak, selection=PcrSelection.parse("sha256:0-7")
        )


async def test_evidence_selection_must_be_what_was_asked(client: httpx.AsyncClient) -> None:
    ident = (await client.get("/v1/identity")).json()
    ak = parse_public(unb64(ident["ak"]["public"], "ak"))
    nonce, r = await challenge(client)
    with pytest.raises(PcrSelectionError):
        verify_evidence(r.json(), nonce=nonce, ak=ak, selection=PcrSelection.parse("sha256:0-8"))


async def test_concurrent_challenges_share_quotes(app_factory: AppFactory, tmp_path: Path) -> None:
    """With a slow TPM, challenges that arrive while a quote is in flight are answered by
    one quote over their Merkle root; every verifier's proof checks out."""
    slow = FakeTpm(quote_delay=0.2)
    from attest.node.broker.local import LocalNode

    (tmp_path / "slow").mkdir()
    node = LocalNode.open(slow, tmp_path / "slow", pcr=13)
    app = app_factory(node=node)
    async with _running(app, "public") as client:
        ident = (await client.get("/v1/identity")).json()
        ak = parse_public(unb64(ident["ak"]["public"], "ak"))
        results = await asyncio.gather(*(challenge(client) for _ in range(60)))
        for nonce, r in results:
            assert r.status_code == 200, r.text
            verify_evidence(
                r.json(), nonce=nonce, ak=ak, selection=PcrSelection.parse("sha256:0-7")
            )
        sizes = {r.json()["batch"]["size"] for _, r in results}
    assert slow.quotes < 60 / 4, f"{slow.quotes} quotes for 60 challenges"
    assert max(sizes) > 1
    node.close()


async def test_batching_off_quotes_each_challenge(app_factory: AppFactory, tmp_path: Path) -> None:
    fake = FakeTpm()
    from attest.node.broker.local import LocalNode

    (tmp_path / "fast").mkdir()
    node = LocalNode.open(fake, tmp_path / "fast", pcr=13)
    app = app_factory(node=node, batching=False)
    async with _running(app, "public") as client:
        results = await asyncio.gather(*(challenge(client) for _ in range(10)))
    assert all(r.json()["batch"]["size"] == 1 for _, r in results)
    assert fake.quotes == 10
    node.close()


@pytest.mark.parametrize(
    "body,why",
    [
        ({"nonce": "ab", "pcrs": SEL}, "short nonce"),
        ({"nonce": "zz" * 16, "pcrs": SEL}, "not hex"),
        ({"nonce": "ab" * 65, "pcrs": SEL}, "over 64 bytes"),
        ({"nonce": "ab" * 16, "pcrs": {"md5": [0]}}, "unknown bank"),
        ({"nonce": "ab" * 16, "pcrs": {"sha256": [24]}}, "PCR out of range"),
        ({"nonce": "ab" * 16, "pcrs": {"sha256": []}}, "empty selection"),
        ({"nonce": "ab" * 16, "pcrs": SEL, "surprise": 1}, "unknown field"),
    ],
)
async def test_bad_challenges_are_client_errors(
    client: httpx.AsyncClient, body: Any, why: str
) -> None:
    r = await client.post("/v1/evidence", json=body)
    assert r.status_code in (400, 422), why


async def test_bank_not_active_is_reported(client: httpx.AsyncClient) -> None:
    _, r = await challenge(client, pcrs={"sha384": [0]})
    assert r.status_code == 400
    assert "sha384" in r.json()["detail"] and "active" in r.json()["detail"]


async def test_runtime_log_is_served_incrementally(client: httpx.AsyncClient, node: Any) -> None:
    node.measure("config", {"sha256": "00" * 32})
    _, r = await challenge(client, logs={"runtime": {"start": 0}})
    records = r.json()["runtime_log"]["records"]
    assert records and records[0]["recnum"] == 0
    assert records[-1]["content_type"] == "attest/config"
    assert records[-1]["content"] == {"sha256": "00" * 32}
    _, r2 = await challenge(client, logs={"runtime": {"start": len(records)}})
    assert r2.json()["runtime_log"]["records"] == []


@pytest.fixture()
def host_node(fake_tpm: FakeTpm, tmp_path: Path, shared_dir: Path) -> Iterator[Any]:
    """A node whose privileged side serves a real firmware log and a command line."""
    from attest.node.broker.host import HostFacts
    from attest.node.broker.local import LocalNode

    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz roothash=" + "ab" * 32 + " ro\n")
    host = HostFacts(
        firmware_log=shared_dir / "eventlogs" / "goattest__option_rom_eventlog.bin",
        cmdline=cmdline,
    )
    (tmp_path / "host-state").mkdir()
    n = LocalNode.open(fake_tpm, tmp_path / "host-state", pcr=13, host=host)
    yield n
    n.close()


async def test_firmware_log_from_offset(
    app_factory: AppFactory, host_node: Any, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app assembles the node's log from chunks (here of 4 KiB: 18 of them) and serves
    it from any offset the verifier asks."""
    import attest.node.api.app as app_module

    monkeypatch.setattr(app_module, "FIRMWARE_LOG_CHUNK", 4096)
    log = (shared_dir / "eventlogs" / "goattest__option_rom_eventlog.bin").read_bytes()
    asked: list[tuple[int, int]] = []
    real = host_node.firmware_log

    def counted(offset: int, max_bytes: int) -> Any:
        asked.append((offset, max_bytes))
        return real(offset, max_bytes)

    monkeypatch.setattr(host_node, "firmware_log", counted)
    app = app_factory(node=host_node)
    async with _running(app, "public") as client:
        _, r = await challenge(client, logs={"firmware": {"start": 0}})
        fw = r.json()["firmware_log"]
        assert unb64(fw["data"], "fw") == log and fw["total"] == len(log)
        assert asked == [(o, 4096) for o in range(0, len(log), 4096)]
        _, r = await challenge(client, logs={"firmware": {"start": 100}})
        assert unb64(r.json()["firmware_log"]["data"], "fw") == log[100:]
        _, r = await challenge(client, logs={"firmware": {"start": len(log) + 1}})
        assert r.status_code == 400
        assert len(asked) == len(range(0, len(log), 4096))  # fetched once, then kept
        assert r.json()  # a clear error body, not a 5xx


async def test_kernel_cmdline_comes_from_the_node(app_factory: AppFactory, host_node: Any) -> None:
    app = app_factory(node=host_node)
    async with _running(app, "public") as client:
        _, r = await challenge(client)
        assert r.json()["boot"]["cmdline"] == "BOOT_IMAGE=/vmlinuz roothash=" + "ab" * 32 + " ro"


async def test_node_without_host_facts_serves_neither(client: httpx.AsyncClient) -> None:
    _, r = await challenge(client, logs={"firmware": {"start": 0}})
    assert r.status_code == 200
    assert r.json()["firmware_log"] is None and r.json()["boot"]["cmdline"] is None


async def test_activation_needs_an_authenticated_channel(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/enroll/activate", json={"id_object": "AA==", "encrypted_secret": "AA=="}
    )
    assert r.status_code == 403


async def test_activation_on_operator_channel_reaches_the_tpm(
    operator_client: httpx.AsyncClient,
) -> None:
    body = {"id_object": "AA==", "encrypted_secret": "AA=="}
    r = await operator_client.post("/v1/enroll/activate", json=body)
    # The fake TPM has no EK: the request got past authentication to the TPM, which refused.
    assert r.status_code == 503 and r.json()["error"] == "TpmError"


async def test_oversized_request_is_refused(app_factory: AppFactory) -> None:
    app = app_factory(max_request_bytes=2048)
    async with _running(app, "public") as client:
        r = await client.post(
            "/v1/evidence",
            content=b"{" + b" " * 4096 + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413

        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1024

        r = await client.post(
            "/v1/evidence", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_abusive_client_is_rate_limited(app_factory: AppFactory) -> None:
    app = app_factory(rate_per_second=1.0, rate_burst=5)
    async with _running(app, "public") as client:
        codes = [(await client.get("/healthz")).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5
    assert 429 in codes[5:]
    async with _running(app, "operator") as client:
        assert (await client.get("/healthz")).status_code == 200  # operators are not limited


async def test_tpm_gone_turns_readiness_off_and_recovers(
    app_factory: AppFactory, fake_tpm: FakeTpm
) -> None:
    app = app_factory()
    async with _running(app, "public") as client:
        assert (await client.get("/readyz")).status_code == 200
        fake_tpm.available = False
        _, r = await challenge(client)
        assert r.status_code == 503 and r.json()["error"] == "TpmError"
        assert r.headers.get("retry-after")
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        fake_tpm.available = True
        for _ in range(50):
            await asyncio.sleep(0.1)
            if (await client.get("/readyz")).status_code == 200:
                break
        else:
            pytest.fail("readiness did not come back with the TPM")
        _, r = await challenge(client)
        assert r.status_code == 200


class _BrokerLink:
    """The node as attestd sees it through ``BrokerClient``: every call fails with
    ``BrokerUnavailable`` while ``up`` is False (attestd-tpm killed or not yet started)."""

    def __init__(self, node: Any, *, up: bool = True) -> None:
        self.node = node
        self.up = up

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.node, name)
        if not callable(target):
            return target

        def call(*args: Any, **kw: Any) -> Any:
            if not self.up:
                raise BrokerUnavailable("cannot reach attestd-tpm at /run/attest/tpm.sock")
            return target(*args, **kw)

        return call


async def _until_ready(client: httpx.AsyncClient, code: int) -> None:
    for _ in range(50):
        if (await client.get("/readyz")).status_code == code:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"/readyz never answered {code}")


async def test_lost_broker_is_not_ready_without_a_request_and_recovers(
    app_factory: AppFactory, node: Any
) -> None:
    link = _BrokerLink(node)
    app = app_factory(node=link, heartbeat_interval=0.1)
    async with _running(app, "public") as client:
        await _until_ready(client, 200)
        link.up = False  # no request in between: the heartbeat notices
        await _until_ready(client, 503)
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] is False and "attestd-tpm" in ready["reason"]
        _, r = await challenge(client)
        assert r.status_code == 503 and r.headers.get("retry-after") == "1"
        assert r.json()["error"] == "BrokerUnavailable" and set(r.json()) == {
            "error",
            "check",
            "detail",
        }
        assert samples((await client.get("/metrics")).text)["attest_broker_up"] == 0
        link.up = True
        await _until_ready(client, 200)
        assert samples((await client.get("/metrics")).text)["attest_broker_up"] == 1
        _, r = await challenge(client)
        assert r.status_code == 200


async def test_app_started_before_the_broker_records_its_start_events_later(
    app_factory: AppFactory, node: Any
) -> None:
    link = _BrokerLink(node, up=False)
    recorded: list[int] = []

    def record() -> None:
        link.measure("config", {"sha256": "22" * 32})
        recorded.append(1)

    app = app_factory(node=link, on_fresh_log=record, start_recorded=False)
    async with _running(app, "public") as client:
        assert (await client.get("/readyz")).status_code == 503
        assert recorded == []
        link.up = True
        await _until_ready(client, 200)
        await asyncio.sleep(0.1)  # check_log runs right after readiness turns on
        assert recorded == [1]
        assert [r.content_type for r in node.runtime_log(0)] == ["attest/config"]


async def test_metrics_and_status(client: httpx.AsyncClient) -> None:
    await challenge(client)
    got = samples((await client.get("/metrics")).text)
    assert got["attest_challenges_total"] == 1 and got["attest_quotes_total"] == 1
    status = (await client.get("/v1/status")).json()
    assert status["tpm_ready"] is True and status["verdict"]


async def test_openapi_is_published(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/evidence" in spec["paths"] and "/v1/enroll/activate" in spec["paths"]
