"""Issue 14 item 8: a tamper is not an outage. The runtime PCR of a real node (swtpm +
attestd-tpm + attestd) is extended behind the broker's back, directly on the swtpm TCTI. The
node keeps serving what it has (the quote, the PCR values, its runtime log as recorded) and the
verifier decides: contraindicated, PCR 13 named; ``attest verify`` exits 11, not 12 (node
unreachable). The node keeps its own safety: it refuses to extend new records onto a PCR it
cannot account for, and its /v1/status self-appraisal says degraded with the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.swtpm.conftest import Node, appraise_contact, attest_verify

from attest.appraisal.claims import Verdict
from attest.errors import ReplayError
from attest.node.broker.client import BrokerClient
from attest.verifier.contact import enroll

PCR = 13


def extend_behind_the_broker(node: Node, digest: bytes) -> None:
    """TPM2_PCR_Extend of the runtime PCR on the swtpm, not through attestd-tpm."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

    esapi = ESAPI(node.swtpm.tcti)
    try:
        value = TPMT_HA.unmarshal((0x000B).to_bytes(2, "big") + digest)[0]  # sha256
        esapi.pcr_extend(ESYS_TR.parse(f"PCR{PCR}"), TPML_DIGEST_VALUES([value]))
    finally:
        esapi.close()


def test_pcr_extended_behind_the_broker_is_contraindicated_not_unreachable(
    node: Node, tmp_path: Path
) -> None:
    state = tmp_path / "verifier"
    before = attest_verify(node, state)  # enrolls; no registry: a warning, not an outage
    assert before.returncode == 10, before.stdout + before.stderr

    extend_behind_the_broker(node, b"\x01" * 32)

    # the verifier's path (gather + appraise_incremental): the node answered, the log it
    # serves as recorded does not replay into the quoted PCR 13
    roots, inters = node.roots()
    with node.client() as c, node.operator() as op:
        e = enroll(c, now=datetime.now(UTC), ek_roots=roots, ek_intermediates=inters, activator=op)
        done = appraise_contact(c, e, operator=op)
    result = done.result
    assert result.verdict is Verdict.CONTRAINDICATED, result.to_json()
    assert result.first_divergence is not None and f"PCR {PCR}" in result.first_divergence
    assert "runtime" in result.first_divergence

    # the CLI: contraindicated (11), never "node unreachable" (12)
    after = attest_verify(node, state)
    assert after.returncode == 11, after.stdout + after.stderr
    doc = json.loads(after.stdout)
    assert doc["verdict"] == "contraindicated"
    assert f"PCR {PCR}" in json.dumps(doc)

    # the node's own safety: no new record onto a PCR it cannot account for ...
    with BrokerClient(str(node.broker_operator_sock)) as broker:
        with pytest.raises(ReplayError, match=f"PCR {PCR}"):
            broker.measure("config", {"sha256": "00" * 32})
        assert broker.runtime_log()  # ... but the log is still served
    # ... and its self-appraisal says degraded, with the reason
    status = httpx.get(f"{node.url}/v1/status", timeout=30).json()
    assert status["verdict"] == "degraded", status
    assert any(f"PCR {PCR}" in r or f":{PCR}" in r for r in status["reasons"]), status
