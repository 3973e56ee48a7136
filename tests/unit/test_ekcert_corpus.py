"""Real EK certificates and vendor CAs: every genuine chain verifies (with its deviations named),
every mutated one is refused.

The corpus is real data committed in ``tests/data/ekcerts/`` (``$ATTEST_EK_CORPUS`` points at
another copy), with its ``PROVENANCE.md`` and ``rebuild.py``. Layout: ``leaves/`` (EK
certificates as TPMs store them), ``leaves.tsv`` (vendor, the CN prefix of the anchor the chain
must reach, the time to verify at), ``cas/<vendor>/{roots,intermediates}/`` (the vendors' CA
certificates).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.ekcert.der import Deviation
from attest.ekcert.parse import ParsedCertificate, parse_certificate, parse_input
from attest.ekcert.verify import verify_ek_chain
from attest.enroll import verify_ek_certificate
from attest.errors import CertificateError, CertificateFormatError
from attest.verifier.ek_roots import CaStore, load_ca_tree

NOW_FUZZ = datetime(2026, 6, 1, tzinfo=UTC)
PROVENANCE_ROW = re.compile(r"^\| `([^`]+)` \|.*?\| `([0-9a-f]{64})` \|", re.M)
IN_REPO = Path(__file__).resolve().parents[1] / "data" / "ekcerts"
CORPUS = Path(os.environ.get("ATTEST_EK_CORPUS") or IN_REPO)
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
    return load_ca_tree(CORPUS / "cas")


def _leaf(row: dict[str, str]) -> tuple[bytes, ParsedCertificate]:
    raw = (CORPUS / "leaves" / row["file"]).read_bytes()
    leaf = parse_input(raw)
    return (leaf.der if raw.startswith(b"-----") else raw), leaf


def _now(row: dict[str, str]) -> datetime:
    return datetime.fromisoformat(row["now"])


def test_every_corpus_file_is_listed_in_provenance_with_its_hash() -> None:
    rows = dict(PROVENANCE_ROW.findall((CORPUS / "PROVENANCE.md").read_text()))
    present = {
        str(f.relative_to(CORPUS)) for d in ("leaves", "cas") for f in (CORPUS / d).rglob("*")
    }
    assert set(rows) == {p for p in present if (CORPUS / p).is_file()}
    for name, sha256 in rows.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == sha256, name
    leaves = {r for r in rows if r.startswith("leaves/")}
    assert {f"leaves/{r['file']}" for r in _leaves()} == leaves


def test_every_vendor_ca_file_loads(store: CaStore) -> None:
    assert store.errors == ()
    vendors = {p.name for p in (CORPUS / "cas").iterdir()}
    assert {"infineon", "stmicroelectronics", "nuvoton", "intel", "amd", "google"} <= vendors
    kinds = {t.deviation for c in (*store.roots, *store.intermediates) for t in c.deviations}
    # Nuvoton's roots (multi-valued RDNs out of order), Intel's On-Die CA root (ECDSA NULL).
    assert {Deviation.SET_ORDER, Deviation.ECDSA_PARAMETERS} <= kinds


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
    store = load_ca_tree(CORPUS / "cas")
    mine = {f.read_bytes() for f in (CORPUS / "cas" / vendor).rglob("*") if f.is_file()}
    return [c for c in (*store.roots, *store.intermediates) if c.der in mine]


@functools.cache
def _real_samples() -> tuple[bytes, ...]:
    out = [parse_input((CORPUS / "leaves" / r["file"]).read_bytes()).der for r in _leaves()]
    out += [f.read_bytes() for f in sorted((CORPUS / "cas" / "nuvoton" / "roots").glob("*"))]
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
