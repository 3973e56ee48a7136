"""A confidential guest without a vTPM and its host as one node, with real daemons (no SEV-SNP CPU).

The host is attestd-tpm + attestd on swtpm, its attestd-tpm recording the fake chip's id
(``--snp-host fake:HEX``, an ``snp-host`` runtime event); the guest has no TPM at all
(attestd-tpm ``--no-tpm --snp-guest fake:DIR``, attestd ``[snp] only``): its evidence is its
SEV-SNP report alone. ``attest verify GUEST --host HOST --no-guest-vtpm`` gives one EAR over
the host's quote and the guest's report, both answering one challenge, the guest tied to the
host by the chip. A guest answering with a report of an earlier challenge, or one claimed
beside a host that runs on another chip, is contraindicated, naming the layer; the saved pair
appraises offline as it did live.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.cli import verify_main
from tests.support.replay import splicing
from tests.support.snp import guest_registry_args
from tests.swtpm.conftest import (
    Node,
    NodeFactory,
    SnpOnlyPair,
    host_verify_args,
    no_release_policy,
    verify_json,
)

import attest.cli.verify_snp
from attest import cmw
from attest.appraisal.ear import b64url, verify_ear
from attest.verifier.contact import selection_for

pytestmark = pytest.mark.slow

BLESSED = b"\x5d" * 48  # the launch measurement of the fake guest's reports


def _verify(
    capsys: pytest.CaptureFixture[str],
    pair: SnpOnlyPair,
    tmp_path: Path,
    key: Path,
    *extra: str,
    guest_url: str | None = None,
    host: Node | None = None,
) -> tuple[int, dict[str, Any]]:
    h = host or pair.host
    args = [
        guest_url or pair.guest.url,
        "--host",
        h.url,
        "--no-guest-vtpm",
        "--state",
        str(tmp_path / "verifier"),
        "--ear-key",
        str(key),
        "--json",
        *host_verify_args(h, operator="--evidence" not in extra),
        "--policy",
        no_release_policy(tmp_path),
        *guest_registry_args(tmp_path, pair.amd, BLESSED, version="4.0.0"),
        *extra,
    ]
    return verify_json(capsys, args)


@pytest.fixture()
def pair(node_factory: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SnpOnlyPair:
    from tests.swtpm.conftest import start_snp_only_pair

    started = start_snp_only_pair(node_factory, tmp_path, measurement=BLESSED)
    # the verifier pins the fake chain's ARK in AMD's place (as the snp CLI tests do)
    monkeypatch.setattr(attest.cli.verify_snp, "AMD_ARK_PINS", started.amd.pins)
    return started


def _earlier_report(pair: SnpOnlyPair) -> Any:
    """A genuine SEV-SNP member the guest made for an earlier challenge."""
    with pair.guest.client() as c:
        earlier: dict[str, Any] = c.evidence(os.urandom(32), selection_for(13))
    assert "quote" not in earlier and earlier["snp"] is not None
    return earlier["snp"]


def test_host_quote_and_guest_report_make_one_affirming_ear_of_two_layers(
    pair: SnpOnlyPair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = _verify(capsys, pair, tmp_path, ear_key[0])
    why = {name: layer["explanation"] for name, layer in doc["layers"].items()}
    assert code == 0, (doc["explanation"], why)
    assert doc["verdict"] == "affirming" and doc["failed_layer"] is None
    assert set(doc["layers"]) == {"host", "guest-snp"}
    assert doc["vouch"]["check"] == "host-vouch" and doc["vouch"]["value"] == 2
    assert pair.chip_id.hex()[:16] in doc["vouch"]["explanation"]
    snp = doc["layers"]["guest-snp"]["result"]
    assert snp["trustworthiness_vector"]["executables"] == 3  # a blessed launch
    assert "appraised under release 4.0.0" in snp["notes"]
    assert doc["layers"]["guest-snp"]["enrollment"] is None  # no TPM: nothing enrolled
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert set(claims["submods"]) == {"host", "guest-snp"}
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
    assert claims["eat_nonce"] == b64url(bytes.fromhex(doc["challenge"]))

    # the verifier chooses: without --no-guest-vtpm this guest (no TPM) cannot be enrolled
    args = [pair.guest.url, "--host", pair.host.url, "--state", str(tmp_path / "v2"), "--json"]
    capsys.readouterr()
    assert verify_main(args) != 0
    assert json.loads(capsys.readouterr().out)["verdict"] != "affirming"


def test_guest_replaying_an_earlier_report_is_contraindicated_naming_guest_snp(
    pair: SnpOnlyPair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    earlier = _earlier_report(pair)
    with splicing(pair.guest.url, "snp", earlier) as url:
        code, doc = _verify(capsys, pair, tmp_path, ear_key[0], guest_url=url)
    assert code == 11, doc
    assert doc["verdict"] == "contraindicated" and doc["failed_layer"] == "guest-snp"
    assert doc["explanation"].startswith("guest-snp layer (g1): ")
    assert "stale or replayed" in doc["explanation"]
    assert doc["layers"]["host"]["verdict"] == "affirming"
    claims = verify_ear(doc["ear"], ear_key[1].public_key())
    assert claims["submods"]["guest-snp"]["ear.status"] == "contraindicated"


def test_a_host_that_recorded_no_chip_vouches_for_nothing(
    pair: SnpOnlyPair,
    node_factory: NodeFactory,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The guest named beside another host (no --snp-host: not the machine it runs on)."""
    other = node_factory("other-host", env={"ATTEST_NODE_ID": "host-2"})
    code, doc = _verify(capsys, pair, tmp_path, ear_key[0], host=other)
    assert code == 11, doc
    assert doc["failed_layer"] == "guest-snp"
    assert doc["layers"]["host"]["verdict"] == "affirming"
    assert "recorded no SEV-SNP chip" in doc["vouch"]["explanation"]


def test_saved_pair_affirms_offline_and_refuses_a_swapped_report(
    pair: SnpOnlyPair,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = tmp_path / "pair.cmw.json"
    code, live = _verify(capsys, pair, tmp_path, ear_key[0], "--save-evidence", str(saved))
    assert code == 0, live["explanation"]
    nonce = ["--evidence", str(saved), "--nonce", live["challenge"]]
    code, doc = _verify(capsys, pair, tmp_path, ear_key[0], *nonce)
    assert code == 0, doc["explanation"]
    assert set(doc["layers"]) == {"host", "guest-snp"}
    # another nonce: neither half answers it
    other = ["--evidence", str(saved), "--nonce", os.urandom(32).hex()]
    assert _verify(capsys, pair, tmp_path, ear_key[0], *other)[0] == 11

    collection = cmw.decode(saved.read_bytes())
    assert isinstance(collection, cmw.Collection)
    docs = {
        str(n): json.loads(r.value)
        for n, r in collection.items.items()
        if isinstance(r, cmw.Record)
    }
    swapped = {**docs["guest"], "snp": _earlier_report(pair)}
    both = cmw.pair_collection(json.dumps(docs["host"]).encode(), json.dumps(swapped).encode())
    saved.write_bytes(cmw.encode_json(both))
    code, doc = _verify(capsys, pair, tmp_path, ear_key[0], *nonce)
    assert code == 11, doc
    assert doc["failed_layer"] == "guest-snp" and "stale or replayed" in doc["explanation"]
