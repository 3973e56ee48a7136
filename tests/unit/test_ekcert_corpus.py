"""Real EK certificates and vendor CAs: every genuine chain verifies (with its deviations named),
every mutated one is refused.

The leaves are real data committed in ``tests/data/ekcerts/`` (``$ATTEST_EK_CORPUS`` points at
another copy), with its ``PROVENANCE.md`` and ``rebuild.py``: ``leaves/`` (EK certificates as
TPMs store them), ``leaves.tsv`` (vendor, the CN prefix of the anchor the chain must reach, the
time to verify at). The vendors' CA certificates are the store shipped with attest,
``src/attest/data/ek_roots/<vendor>/{roots,intermediates}/`` with its own ``PROVENANCE.md``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.cli import main
from attest.ekcert.der import Deviation
from attest.ekcert.parse import ParsedCertificate, parse_certificate, parse_input
from attest.ekcert.verify import verify_ek_chain
from attest.enroll import verify_ek_certificate
from attest.errors import CertificateError, CertificateFormatError
from attest.verifier.ek_roots import CaStore, bundled_ek_roots, load_ca_tree, verifier_ek_roots

NOW_FUZZ = datetime(2026, 6, 1, tzinfo=UTC)
PROVENANCE_ROW = re.compile(r"^\| `([^`]+)` \|.*?\| `([0-9a-f]{64})` \|", re.M)
IN_REPO = Path(__file__).resolve().parents[1] / "data" / "ekcerts"
CORPUS = Path(os.environ.get("ATTEST_EK_CORPUS") or IN_REPO)
#: The bundled vendor EK CA store (package data), the CAs of every chain here.
CAS = Path(__file__).resolve().parents[2] / "src" / "attest" / "data" / "ek_roots"
pytestmark = [
    # the in-repo corpus is never skipped (a missing file fails); only an absent override is
    pytest.mark.skipif(
        CORPUS != IN_REPO and not (CORPUS / "leaves.tsv").is_file(),
        reason=f"the EK certificate corpus ATTEST_EK_CORPUS={CORPUS} is absent (unset it to use "
        f"{IN_REPO})",
    ),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Google's CNs are longer than 64
]

#: What each real EK certificate is known to carry.
EXPECTED_DEVIATIONS = {
    "stm-rsa-ek-ica05-nv-padded.der": {Deviation.TRAILING_DATA},
    "nuvoton-rsa-ek-npct75x-root2111.der": {Deviation.SET_ORDER},
    "intel-ptt-ecc-ek-glk.der": {Deviation.EXPLICIT_DEFAULT},
}


def _leaves() -> list[dict[str, str]]:
    if CORPUS != IN_REPO and not (CORPUS / "leaves.tsv").is_file():
        return []
    with (CORPUS / "leaves.tsv").open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


CHAINED = [row for row in _leaves() if row["anchor_cn_prefix"] != "-"]


@pytest.fixture(scope="module")
def store() -> CaStore:
    return load_ca_tree(CAS)


def _leaf(row: dict[str, str]) -> tuple[bytes, ParsedCertificate]:
    raw = (CORPUS / "leaves" / row["file"]).read_bytes()
    leaf = parse_input(raw)
    return (leaf.der if raw.startswith(b"-----") else raw), leaf


def _now(row: dict[str, str]) -> datetime:
    return datetime.fromisoformat(row["now"])


def _listed_and_present(base: Path, under: Sequence[str]) -> tuple[dict[str, str], set[str]]:
    rows = dict(PROVENANCE_ROW.findall((base / "PROVENANCE.md").read_text()))
    present = {str(f.relative_to(base)) for d in under for f in (base / d).rglob("*")}
    return rows, {p for p in present if (base / p).is_file()}


def test_every_corpus_file_is_listed_in_provenance_with_its_hash() -> None:
    rows, present = _listed_and_present(CORPUS, ["leaves"])
    assert set(rows) == present
    for name, sha256 in rows.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == sha256, name
    assert {f"leaves/{r['file']}" for r in _leaves()} == set(rows)


def test_every_bundled_ca_file_is_listed_in_provenance_with_its_hash() -> None:
    vendors = sorted(p.name for p in CAS.iterdir() if p.is_dir() and p.name != "LICENSES")
    rows, present = _listed_and_present(CAS, vendors)
    assert len(rows) == 198
    assert set(rows) == present
    for name, sha256 in rows.items():
        assert hashlib.sha256((CAS / name).read_bytes()).hexdigest() == sha256, name
    # The licence texts of the repositories they were taken from ship beside them.
    assert {f.name for f in (CAS / "LICENSES").iterdir()} == {
        "Apache-2.0.txt",
        "BSD-3-Clause-tpm-ca-certificates.txt",
    }


def test_every_vendor_ca_file_loads(store: CaStore) -> None:
    assert store.errors == ()
    vendors = {p.name for p in CAS.iterdir()}
    assert {"infineon", "stmicroelectronics", "nuvoton", "intel", "amd", "google"} <= vendors
    kinds = {t.deviation for c in (*store.roots, *store.intermediates) for t in c.deviations}
    # Nuvoton's roots (multi-valued RDNs out of order), Intel's On-Die CA root (ECDSA NULL).
    assert {Deviation.SET_ORDER, Deviation.ECDSA_PARAMETERS} <= kinds


@pytest.mark.parametrize(
    "name", ["stm-rsa-ek-ica05-nv-padded.der", "infineon-ecc-ek-slb9670-mfr035.der"]
)
def test_a_real_leaf_verifies_through_the_default_store_with_no_roots_given(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store shipped with attest (package data, not a path given) is enough: a real node
    enrolls with no flags. The same leaf is refused outside its validity."""
    row = next(r for r in _leaves() if r["file"] == name)
    bundled = bundled_ek_roots()
    assert len(bundled.roots) + len(bundled.intermediates) == 198 and bundled.errors == ()
    raw = (CORPUS / "leaves" / name).read_bytes()
    v = verify_ek_certificate(
        raw, roots=bundled.roots, intermediates=bundled.intermediates, now=_now(row)
    )
    assert f"CN={row['anchor_cn_prefix']}" in v.chain[-1].subject.rfc4514_string()
    # attest ek verify without --roots: the bundled store.
    leaf = str(CORPUS / "leaves" / name)
    assert main(["ek", "verify", leaf, "--now", row["now"], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True
    assert doc["ek_roots"] == "bundled vendor EK CA store (36 roots, 162 intermediates)"
    assert row["anchor_cn_prefix"] in json.dumps(doc["chain"][-1])
    assert main(["ek", "verify", leaf, "--now", "2099-01-01T00:00:00Z", "--json"]) == 1
    # The verifier's default (attest verify without --ek-ca, attest fleet without --ek-roots).
    ek = verifier_ek_roots([])
    assert ek.store == bundled and ek.source.startswith("bundled vendor EK CA store (")
    verify_ek_certificate(raw, roots=ek.roots, intermediates=ek.intermediates, now=_now(row))


def test_named_ek_cas_replace_the_bundled_store_unless_bundled_is_named(tmp_path: Path) -> None:
    """--ek-ca/--ek-roots restrict to the operator's CAs; 'bundled' among them adds the store."""
    private = tmp_path / "private.der"
    private.write_bytes(
        (CAS / "infineon" / "roots" / "Infineon_OPTIGA_TM_ECC_Root_CA.der").read_bytes()
    )
    row = next(r for r in _leaves() if r["file"] == "stm-ecc-ek-ica01.der")
    raw = (CORPUS / "leaves" / row["file"]).read_bytes()
    only = verifier_ek_roots([str(private)])
    assert len(only.roots) == 1 and "bundled" not in only.source
    with pytest.raises(CertificateError, match="no chain from issuer"):
        verify_ek_certificate(
            raw, roots=only.roots, intermediates=only.intermediates, now=_now(row)
        )
    both = verifier_ek_roots(["bundled", str(private)])
    assert both.source.startswith("bundled vendor EK CA store (") and str(private) in both.source
    assert len(both.roots) == len(bundled_ek_roots().roots)  # the private CA is a bundled one
    verify_ek_certificate(raw, roots=both.roots, intermediates=both.intermediates, now=_now(row))


@pytest.mark.parametrize("row", CHAINED, ids=lambda r: r["file"])
def test_real_ek_chain_verifies_with_its_deviations_named(
    row: dict[str, str], store: CaStore
) -> None:
    raw, _ = _leaf(row)
    v = verify_ek_certificate(
        raw, roots=store.roots, intermediates=store.intermediates, now=_now(row)
    )
    anchor_cn = v.chain[-1].subject.rfc4514_string()
    assert f"CN={row['anchor_cn_prefix']}" in anchor_cn, anchor_cn
    leaf_kinds = {t.deviation for who, t in v.deviations if who == v.certificate.describe()}
    assert leaf_kinds == EXPECTED_DEVIATIONS.get(row["file"], set())
    if row["vendor"] != "google" or "shielded" in row["file"]:
        assert v.tpm_manufacturer is not None and v.tpm_manufacturer.startswith("id:")


def test_intel_ptt_certificate_reads_and_names_the_missing_issuer(store: CaStore) -> None:
    row = next(r for r in _leaves() if r["file"] == "intel-ptt-ecc-ek-glk.der")
    _, leaf = _leaf(row)
    assert {t.deviation for t in leaf.deviations} == {Deviation.EXPLICIT_DEFAULT}
    with pytest.raises(CertificateError, match="authorityInfoAccess names https://") as info:
        verify_ek_chain(leaf, anchors=store.roots, intermediates=store.intermediates, now=_now(row))
    assert info.value.reason == "no-path"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize("row", CHAINED, ids=lambda r: r["file"])
def test_mutated_real_chain_is_refused(row: dict[str, str], store: CaStore) -> None:
    raw, leaf = _leaf(row)
    now = _now(row)
    good = verify_ek_certificate(raw, roots=store.roots, intermediates=store.intermediates, now=now)

    def refused(
        cert: bytes,
        roots: Sequence[ParsedCertificate] = store.roots,
        inters: Sequence[ParsedCertificate] = store.intermediates,
        at: datetime = now,
    ) -> None:
        with pytest.raises(CertificateError):
            verify_ek_certificate(cert, roots=roots, intermediates=inters, now=at)

    # One flipped bit anywhere in the signed bytes or in the signature of the EK certificate.
    start = raw.index(leaf.tbs)
    positions = list(range(start, start + len(leaf.tbs), max(1, len(leaf.tbs) // 24)))
    positions += [len(leaf.der) - 1, len(leaf.der) - 8]
    for at in positions:
        refused(_flip(raw, at))
    # ... or in an intermediate CA on the path (its signature and its signed bytes).
    for inter in good.chain[1:-1]:
        for at in (len(inter.der) - 2, len(inter.der) // 2):
            try:
                bad = parse_certificate(_flip(inter.der, at))
            except Exception:  # noqa: BLE001 -- unreadable after the flip: not on any path
                continue
            inters = [bad if c == inter else c for c in store.intermediates]
            refused(raw, inters=inters)
    # Another vendor's roots (everything but this chain's anchor and its vendor's CAs).
    vendor = {c.sha256 for c in _vendor_certs(row["vendor"])}
    foreign = [c for c in store.roots if c.sha256 not in vendor]
    assert foreign and good.chain[-1] not in foreign
    refused(raw, roots=foreign, inters=[c for c in store.intermediates if c.sha256 not in vendor])
    # A time outside the validity of a certificate on the path.
    refused(raw, at=min(c.not_valid_after_utc for c in good.chain) + timedelta(seconds=1))
    refused(raw, at=max(c.not_valid_before_utc for c in good.chain) - timedelta(seconds=1))


def _vendor_certs(vendor: str) -> list[ParsedCertificate]:
    store = load_ca_tree(CAS)
    mine = {f.read_bytes() for f in (CAS / vendor).rglob("*") if f.is_file()}
    return [c for c in (*store.roots, *store.intermediates) if c.der in mine]


@functools.cache
def _real_samples() -> tuple[bytes, ...]:
    out = [parse_input((CORPUS / "leaves" / r["file"]).read_bytes()).der for r in _leaves()]
    out += [f.read_bytes() for f in sorted((CAS / "nuvoton" / "roots").glob("*"))]
    return tuple(out)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_real_certificates_raise_only_the_documented_errors(data: st.DataObject) -> None:
    samples = _real_samples()
    raw = bytearray(data.draw(st.sampled_from(samples)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if op == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 16))]
        elif op == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:]
        if not raw:
            return
    try:
        cert = parse_certificate(bytes(raw))
    except CertificateFormatError:
        return
    with contextlib.suppress(CertificateError):
        verify_ek_chain(cert, anchors=[parse_certificate(s) for s in samples[-1:]], now=NOW_FUZZ)
