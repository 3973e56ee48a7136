"""A confidential guest and its host as one node, with real daemons on swtpm (no SEV-SNP CPU).

As ``test_pair_swtpm``: the host is attestd-tpm + attestd on swtpm A with a vTPM manager that
creates swtpm B for guest ``g1`` and vouches for it; the guest is attestd-tpm + attestd on B.
Here the guest is also an SEV-SNP guest: its attestd-tpm runs ``--snp-guest fake:DIR`` (reports
of a fake AMD chip, signed by its VCEK; the verifier pins that chain's ARK in AMD's place) and
its attestd ``[snp] enabled``. ``attest verify --host`` then gives one EAR over the host quote,
the guest's SNP report and the guest's vTPM quote, all answering one challenge; the guest's
registry blesses the report's launch measurement. A guest answering with the SNP report of an
earlier challenge (beside a fresh vTPM quote) is contraindicated, naming ``guest-snp``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cli import verify_main
from tests.support.replay import splicing
from tests.support.snp import guest_registry_args
from tests.swtpm.conftest import NodeFactory, Pair, no_release_policy, verify_pair
from tests.unit.snp.fakes import fake

import attest.cli.verify_snp
from attest import cmw
from attest.appraisal.ear import b64url, verify_ear
from attest.node.broker.client import BrokerClient
from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState
from attest.snp.report import Product
from attest.testing.snp import fake_guest_dir
from attest.verifier.contact import selection_for

pytestmark = pytest.mark.slow

BLESSED = b"\x5b" * 48  # the launch measurement of the fake guest's reports


@pytest.fixture()
def snp_pair(
    node_factory: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    amd = fake(Product.MILAN)
    # the verifier pins the fake chain's ARK in AMD's place (as the snp CLI tests do)
    monkeypatch.setattr(attest.cli.verify_snp, "AMD_ARK_PINS", amd.pins)
    snp_dir = fake_guest_dir(amd, tmp_path / "fake-snp", measurement=BLESSED)
    vtpm_dir = tmp_path / "host-vtpm"
    host = node_factory(
        "host", broker_args=["--vtpm-dir", str(vtpm_dir)], env={"ATTEST_NODE_ID": "host-1"}
    )
    with BrokerClient(host.broker_operator_sock, timeout=300) as c:
        created = c.vtpm_create("g1")
    state = Path(created.vtpm.state_dir)
    sw = SwtpmProcess(state).start()
    try:
        guest = node_factory(
            "guest",
            tpm=(sw, SwtpmState(state, vtpm_dir / "ca")),
            broker_args=["--snp-guest", f"fake:{snp_dir}"],
            env={"ATTEST_NODE_ID": "g1", "ATTEST_SNP_ENABLED": "true"},
        )
        yield Pair(host, vtpm_dir, guest, sw)
    finally:
        sw.stop()


def _guest_registry(tmp_path: Path) -> tuple[str, ...]:
    return guest_registry_args(tmp_path, fake(Product.MILAN), BLESSED)


def test_host_quote_guest_snp_report_and_vtpm_quote_make_one_affirming_ear(
    snp_pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = _guest_registry(tmp_path)
    code, doc = verify_pair(capsys, snp_pair, tmp_path / "verifier", ear_key[0], *extra)
    why = {name: layer["explanation"] for name, layer in doc["layers"].items()}
    assert code == 0, (doc["explanation"], why)
    assert doc["verdict"] == "affirming" and doc["failed_layer"] is None
    assert set(doc["layers"]) == {"host", "guest-snp", "guest-vtpm"}
    snp = doc["layers"]["guest-snp"]["result"]
    assert snp["trustworthiness_vector"]["instance-identity"] == 2
    assert snp["trustworthiness_vector"]["executables"] == 3  # a blessed launch
    assert "appraised under release 3.0.0" in snp["notes"]
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert set(claims["submods"]) == {"host", "guest-snp", "guest-vtpm"}
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
    # the draft has no top-level ear.status: the pair's status (the worst) is the CLI's
    assert doc["status"] == "affirming"
    assert claims["eat_nonce"] == b64url(bytes.fromhex(doc["challenge"]))

    # the verifier chooses: --snp off leaves the pair as it was without SEV-SNP
    code, doc = verify_pair(capsys, snp_pair, tmp_path / "verifier", ear_key[0], "--snp", "off")
    assert code == 0 and set(doc["layers"]) == {"host", "guest"}, doc["explanation"]


def test_guest_replaying_an_earlier_snp_report_is_contraindicated_naming_guest_snp(
    snp_pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = _guest_registry(tmp_path)
    state = tmp_path / "verifier"
    assert verify_pair(capsys, snp_pair, state, ear_key[0], *extra)[0] == 0
    with snp_pair.guest.client() as c:  # a genuine SNP report of an earlier challenge
        earlier: dict[str, Any] = c.evidence(os.urandom(32), selection_for(13))
    assert earlier["snp"] is not None
    with splicing(snp_pair.guest.url, "snp", earlier["snp"]) as url:
        guest = dataclasses.replace(snp_pair.guest, port=int(url.rsplit(":", 1)[1]))
        code, doc = verify_pair(capsys, snp_pair, state, ear_key[0], *extra, guest=guest)
    assert code == 11, doc
    assert doc["verdict"] == "contraindicated" and doc["failed_layer"] == "guest-snp"
    assert doc["explanation"].startswith("guest-snp layer (g1): ")
    assert "stale or replayed" in doc["explanation"]
    # the other halves answered this challenge: host and guest vTPM stay affirming
    assert doc["layers"]["host"]["verdict"] == "affirming"
    assert doc["layers"]["guest-vtpm"]["verdict"] == "affirming"
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert doc["status"] == "contraindicated"
    assert claims["submods"]["guest-snp"]["ear.status"] == "contraindicated"
    assert claims["submods"]["guest-vtpm"]["ear.status"] == "affirming"


def test_saved_snp_pair_affirms_offline_and_refuses_a_swapped_snp_report(
    snp_pair: Pair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The saved three-layer pair appraises offline as it did live (the host's nonce recomputed
    from the saved guest document, its ``snp`` report included); the guest member's report
    swapped for one of an earlier challenge names ``guest-snp`` -- the host's quote, committed
    to the original report, no longer fits either, but the guest's half is the one that is
    stale."""
    extra = _guest_registry(tmp_path)
    state = tmp_path / "verifier"
    saved = tmp_path / "pair.cmw.json"
    code, live = verify_pair(
        capsys, snp_pair, state, ear_key[0], *extra, "--save-evidence", str(saved)
    )
    assert code == 0, live["explanation"]
    collection = cmw.decode(saved.read_bytes())
    assert isinstance(collection, cmw.Collection)
    docs = {
        str(n): json.loads(r.value)
        for n, r in collection.items.items()
        if isinstance(r, cmw.Record)
    }
    assert docs["guest"]["snp"] is not None

    def offline() -> tuple[int, dict[str, Any]]:
        args = [snp_pair.guest.url, "--host", snp_pair.host.url, "--state", str(state), "--json"]
        args += ["--evidence", str(saved), "--nonce", live["challenge"], *extra]
        args += ["--policy", no_release_policy(state.parent), "--ear-key", str(ear_key[0])]
        capsys.readouterr()
        code = verify_main(args)
        return code, json.loads(capsys.readouterr().out)

    code, doc = offline()
    assert code == 0, doc["explanation"]
    assert set(doc["layers"]) == {"host", "guest-snp", "guest-vtpm"}

    with snp_pair.guest.client() as c:  # a genuine SNP report of an earlier challenge
        earlier: dict[str, Any] = c.evidence(os.urandom(32), selection_for(13))
    swapped = {**docs["guest"], "snp": earlier["snp"]}
    both = cmw.pair_collection(json.dumps(docs["host"]).encode(), json.dumps(swapped).encode())
    saved.write_bytes(cmw.encode_json(both))
    code, doc = offline()
    assert code == 11, doc
    assert doc["failed_layer"] == "guest-snp" and "stale or replayed" in doc["explanation"]
    assert doc["layers"]["host"]["verdict"] == "contraindicated"  # committed to the original
    assert doc["layers"]["guest-vtpm"]["verdict"] == "contraindicated"  # so it vouches for none
