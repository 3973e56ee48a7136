"""The real daemon processes (attestd-tpm + attestd) on a swtpm, with the verifier library
as client: enrollment, appraisal (``gather`` + ``appraise``, the path of ``attest verify``),
recovery when the TPM goes away, a bounded load test."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import SwtpmFactory
from tests.swtpm.conftest import BIN, NO_RELEASE_RULES, Node, NodeFactory, appraise_contact
from tests.swtpm.conftest import wait as _wait

from attest.appraisal import appraise
from attest.appraisal.claims import Verdict
from attest.errors import CredentialError, TransportError
from attest.model import PcrSelection
from attest.node.tpm.swtpm import SwtpmProcess
from attest.verifier.contact import enroll

SEL = PcrSelection.parse("sha256:0-7")


def test_enroll_and_attest_through_the_daemons(node: Node) -> None:
    roots, inter = node.roots()
    with node.client() as c, node.operator() as op:
        e = enroll(c, now=datetime.now(UTC), ek_roots=roots, ek_intermediates=inter, activator=op)
        assert e.activated and e.ek_certificate and e.node_id == "swtpm-node"
        a1 = appraise_contact(c, e, pcrs=SEL, operator=op)
        assert a1.result.clock is not None
        a2 = appraise_contact(c, e, pcrs=SEL, operator=op, previous=a1.result.clock)
    for a in (a1, a2):
        assert a.result.verdict is Verdict.AFFIRMING, a.result.first_divergence
        checks = {f.check for f in a.result.findings if f.tier.label == "affirming"}
        assert {"quote", "runtime-log", "audit-chain"} <= checks
    assert a1.memory.runtime is not None
    kinds = {ev.kind for ev in a1.memory.runtime.log.events}
    assert {"daemon-start", "config"} <= kinds
    assert a2.result.clock is not None and a2.result.clock.clock >= a1.result.clock.clock


def test_activation_is_refused_on_the_public_listener(node: Node) -> None:
    """The public listener answers 403 to activation: a failed credential activation (the
    enrollment is refused, naming the check), not an unreachable node."""
    with (
        node.client() as c,
        pytest.raises(CredentialError, match="credential activation failed: .*403") as exc,
    ):
        enroll(c, now=datetime.now(UTC), activator=c)
    assert exc.value.check == "credential-activation"


def test_activation_for_another_tpm_fails(
    node: Node, swtpm_factory: SwtpmFactory, tmp_path: Path
) -> None:
    """A credential made for another TPM's EK cannot be activated by this node."""
    from attest.enroll import start_enrollment
    from attest.node.tpm.esapi import EsapiTpm
    from attest.node.tpm.swtpm import manufacture

    other_state = manufacture(tmp_path / "other")
    with SwtpmProcess(other_state.state_dir) as other, EsapiTpm(other.tcti) as t:
        other_ek = t.ek_public()
    with node.client() as c, node.operator() as op:
        ident = enroll(c, now=datetime.now(UTC))
        ch, expected = start_enrollment(other_ek, ident.ak)
        with pytest.raises(TransportError):
            op.activate(ch.id_object, ch.encrypted_secret)
        with pytest.raises(CredentialError):
            from attest.enroll import finish_enrollment

            finish_enrollment(expected, os.urandom(len(expected)))


def test_tpm_loss_and_return_through_the_daemons(node: Node) -> None:
    with node.client() as c:
        e = enroll(c, now=datetime.now(UTC))
        sel = PcrSelection.parse("sha256:0")
        assert appraise_contact(c, e, pcrs=sel).result.verdict is Verdict.AFFIRMING
        node.swtpm.stop(orderly=False)  # the TPM disappears (power cut of the TPM)
        with pytest.raises(TransportError, match="503"):
            appraise_contact(c, e, pcrs=sel)
        _wait(lambda: not c.ready(), 10, "readiness off")
        node.swtpm.start()
        _wait(c.ready, 30, "readiness back")
        # The TPM lost power: it honestly reports an unsafe clock until its next NV save.
        after = appraise_contact(c, e, pcrs=sel).result
    assert after.verdict is Verdict.CONTRAINDICATED
    assert [f.check for f in after.findings if f.tier.label != "affirming"] == ["quote:clock"]
    assert "clockInfo.safe is NO" in (after.first_divergence or "")


def test_load_on_loopback_is_batched_and_bounded(node: Node) -> None:
    """300 concurrent challenges against swtpm: all answered, every answer appraises
    affirming, and they share quotes."""
    import httpx

    with node.client() as c:
        e = enroll(c, now=datetime.now(UTC))
    sel = PcrSelection.parse("sha256:0-7,13")

    async def run() -> list[int]:
        sizes = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.port}", timeout=60
        ) as client:

            async def one() -> None:
                nonce = os.urandom(32)
                body = {
                    "nonce": nonce.hex(),
                    "pcrs": {"sha256": [*range(8), 13]},
                    "logs": {"runtime": {"start": 0}},
                }
                r = await client.post("/v1/evidence", json=body)
                assert r.status_code == 200, r.text
                result = appraise(
                    r.json(),
                    enrollment=e,
                    nonce=nonce,
                    selection=sel,
                    registry=None,
                    platform_id=None,
                    previous=None,
                    tls_binding=None,
                    now=datetime.now(UTC),
                    rules=NO_RELEASE_RULES,
                )
                assert result.verdict is Verdict.AFFIRMING, result.first_divergence
                sizes.append(r.json()["batch"]["size"])

            await asyncio.gather(*(one() for _ in range(300)))
        return sizes

    sizes = asyncio.run(run())
    assert len(sizes) == 300
    assert max(sizes) > 1  # challenges shared quotes


def test_schemathesis_finds_no_server_error(node: Node) -> None:
    """Property-based requests against the published OpenAPI spec: no 5xx but the documented
    TPM-unavailable 503."""
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"http://127.0.0.1:{node.port}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--exclude-method",
            "GET",
            "--exclude-path",
            "/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def _healthz_codes(node: Node, forwarded_for: list[str]) -> list[int]:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{node.port}", timeout=10) as client:
        return [
            client.get("/healthz", headers={"X-Forwarded-For": ip}).status_code
            for ip in forwarded_for
        ]


def test_forwarded_for_does_not_bypass_the_rate_limit(node_factory: NodeFactory) -> None:
    """By default attestd ignores X-Forwarded-For (uvicorn would believe it from 127.0.0.1):
    a local client that invents a new address per request is still counted as itself."""
    env = {"ATTEST_API_RATE_PER_SECOND": "0.2", "ATTEST_API_RATE_BURST": "5"}
    node = node_factory("limited", env=env)
    codes = _healthz_codes(node, [f"198.51.100.{i}" for i in range(12)])
    assert codes.count(200) <= 5 and codes[-1] == 429, codes


def test_forwarded_for_is_believed_only_from_configured_proxies(
    node_factory: NodeFactory,
) -> None:
    """With api.trusted_proxies naming the proxy (here: loopback), each forwarded client has
    its own bucket; one forwarded client alone is still limited."""
    env = {
        "ATTEST_API_RATE_PER_SECOND": "0.2",
        "ATTEST_API_RATE_BURST": "5",
        "ATTEST_API_TRUSTED_PROXIES": "127.0.0.0/8",
    }
    node = node_factory("proxied", env=env)
    many = _healthz_codes(node, [f"198.51.100.{i}" for i in range(12)])
    one = _healthz_codes(node, ["203.0.113.9"] * 8)
    assert many == [200] * 12, many
    assert one[:5] == [200] * 5 and one[-1] == 429, one


def test_a_normal_start_logs_no_tss_errors(node: Node) -> None:
    """attestd-tpm probes which EK certificate indices exist at every start; libtss2 reports
    each miss as an ERROR line of its own unless told otherwise (issue 16, N7)."""
    with node.client() as c:
        assert c.identity()["node_id"] == "swtpm-node"
    for f in node.logs:
        f.flush()
    text = (node.work / "broker.log").read_text(errors="replace")
    assert text.strip()  # the broker logged its start
    assert "ERROR:esys" not in text and "ERROR:tcti" not in text, text[-2000:]
