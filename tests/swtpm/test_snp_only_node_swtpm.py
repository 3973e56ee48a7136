"""An SEV-SNP guest without a vTPM and its host, with real daemons (no SEV-SNP CPU).

The host is attestd-tpm + attestd on swtpm, its attestd-tpm run with ``--snp-host fake:HEX``
(HEX: the CHIP_ID of the fake guest's reports): its runtime log holds exactly one ``snp-host``
event naming that chip, also after attestd-tpm restarts within the boot; started with another
chip it refuses with one error line and records nothing. The guest has no TPM at all:
attestd-tpm ``--no-tpm --snp-guest fake:DIR`` and attestd ``[snp] only``: ``POST /v1/evidence``
answers the SEV-SNP report alone (``attest.evidence.parse_snp_only``), which verifies against the
fake AMD chain and binds the nonce, no AK; TPM endpoints answer 409.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from tests.swtpm.conftest import SnpOnlyPair, wait
from tests.unit.snp.fakes import FAKE_NOW

from attest.errors import NoTpmError
from attest.evidence import parse_snp_only, runtime_log_of, unb64, verify_evidence
from attest.model import PcrSelection
from attest.node.broker.client import BrokerClient
from attest.runtime import (
    CONTENT_TYPE_PREFIX,
    KIND_DAEMON_START,
    KIND_SNP_HOST,
    SnpHostChip,
    verify_runtime_log,
)
from attest.snp.certtable import chain_of, parse_cert_table
from attest.snp.report import parse_report
from attest.snp.reportdata import verify_report_data
from attest.snp.verify import SnpVerifier
from attest.tpmstruct import parse_public

pytestmark = pytest.mark.slow


def _events(pair: SnpOnlyPair, kind: str) -> list[dict[str, object]]:
    with BrokerClient(pair.host.work / "run" / "tpm.sock", timeout=60) as c:
        records = c.runtime_log(0)
    return [dict(r.content) for r in records if r.content_type == CONTENT_TYPE_PREFIX + kind]


def _restart_broker(pair: SnpOnlyPair) -> None:
    host = pair.host
    host.broker.terminate()
    host.broker.wait(timeout=30)
    host.start_broker()
    with host.client() as c:
        wait(lambda: (host.work / "run" / "tpm.sock").exists() and c.ready(), 60, "host ready")


def test_host_records_its_chip_once_per_boot_also_across_a_restart(
    snp_only_pair: SnpOnlyPair,
) -> None:
    pair = snp_only_pair
    assert _events(pair, KIND_SNP_HOST) == [{"chip_id": pair.chip_id.hex()}]
    _restart_broker(pair)
    assert len(_events(pair, KIND_DAEMON_START)) >= 2  # the restart was recorded ...
    assert _events(pair, KIND_SNP_HOST) == [{"chip_id": pair.chip_id.hex()}]  # ... the chip not
    # the host's own evidence carries it, in a log that replays into its quoted runtime PCR
    nonce = os.urandom(32)
    with pair.host.client() as c:
        ident = c.identity()
        doc = c.evidence(nonce, PcrSelection.parse("sha256:13"), runtime_from=0)
    ak = parse_public(unb64(ident["ak"]["public"], "ak"))
    ve = verify_evidence(doc, nonce=nonce, ak=ak, selection=PcrSelection.parse("sha256:13"))
    held = runtime_log_of(doc)
    assert held is not None
    log = verify_runtime_log(held[1], ve.quote.pcrs, pcr=13)
    chips = [e.detail for e in log.events if isinstance(e.detail, SnpHostChip)]
    assert chips == [SnpHostChip(pair.chip_id)]


def test_host_with_another_chip_in_this_boots_log_refuses_to_start(
    snp_only_pair: SnpOnlyPair,
) -> None:
    pair = snp_only_pair
    host = pair.host
    before = _events(pair, KIND_DAEMON_START)
    host.broker.terminate()
    host.broker.wait(timeout=30)
    other = "fake:" + bytes(range(64, 128)).hex()
    cmd = [other if a.startswith("fake:") else a for a in host.broker_cmd]
    run = subprocess.run(cmd, env=dict(host.env), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "SnpHostError" in errors[0], run.stderr
    assert "already records SEV-SNP chip" in errors[0]
    host.start_broker()  # the right chip again: it starts, nothing was recorded in between
    with host.client() as c:
        wait(lambda: (host.work / "run" / "tpm.sock").exists() and c.ready(), 60, "host ready")
    assert len(_events(pair, KIND_DAEMON_START)) == len(before) + 1
    assert _events(pair, KIND_SNP_HOST) == [{"chip_id": pair.chip_id.hex()}]


def test_guest_without_a_tpm_answers_with_its_report_alone(snp_only_pair: SnpOnlyPair) -> None:
    pair = snp_only_pair
    nonce = os.urandom(32)
    with httpx.Client(base_url=pair.guest.url, timeout=30) as http:
        r = http.post("/v1/evidence", json={"nonce": nonce.hex(), "pcrs": {"sha256": [0]}})
        ident = http.get("/v1/identity").json()
        short = http.post("/v1/evidence", json={"nonce": "ab" * 8})
        audit = http.get("/v1/audit")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"version", "node_id", "snp", "boot", "image", "time"}
    got = parse_snp_only(doc)
    assert got.node_id == "g1" and got.snp.certs is not None and got.snp.tls_spki is None
    report = parse_report(got.snp.report)
    assert report.chip_id == pair.chip_id  # the chip the host recorded
    leaf, chain = chain_of(parse_cert_table(got.snp.certs), report.signer)
    vr = SnpVerifier(pins=pair.amd.pins).verify(
        got.snp.report, leaf=leaf, intermediates=chain, now=FAKE_NOW
    )
    assert verify_report_data(vr.report.report_data, nonce=nonce, tls_spki=None, vtpm_ak=None)
    assert ident["snp_only"] is True and ident["ak"] is None and ident["node_id"] == "g1"
    assert short.status_code == 400
    assert audit.status_code == 409 and audit.json()["error"] == "NoTpmError"
    # the guest's attestd-tpm opened no TPM and keeps no log
    guest_broker = BrokerClient(pair.guest.work / "run" / "tpm.sock", timeout=30)
    with guest_broker as c, pytest.raises(NoTpmError, match="has no TPM"):
        c.runtime_log(0)
    assert not (pair.guest.work / "state" / "runtime.log").exists()
