"""ATTESTATION_REPORT parsing: fake reports of every version and product, and every malformation
refused (real reports: test_snp_corpus.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests.unit.snp.fakes import fake

from attest.errors import SnpFormatError
from attest.snp.report import (
    REPORT_SIZE,
    Product,
    Signer,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)

VERSIONS = [(p, v) for p in Product for v in (2, 3, 5) if not (v == 2 and p.fmc_in_tcb)]


@pytest.mark.parametrize(("product", "version"), VERSIONS, ids=lambda x: str(x))
@pytest.mark.parametrize("signer", [Signer.VCEK, Signer.VLEK], ids=lambda s: s.name)
def test_parses_reports_of_every_version(product: Product, version: int, signer: Signer) -> None:
    raw = fake(product).report(version=version, signer=signer)
    r = parse_report(raw)
    assert (r.version, r.signer, r.signature_algo) == (version, signer, 1)
    assert r.signed_bytes == raw[:0x2A0]
    if version >= 3:
        assert r.cpuid_product is product
    else:
        assert r.cpuid is None and r.cpuid_product is None
    assert (r.launch_mit_vector is not None) == (version >= 5)


def test_turin_report_fields() -> None:
    turin = fake(Product.TURIN)
    r = parse_report(turin.report(version=5))
    assert r.cpuid == (0x1A, 0x02, 0x01)
    assert r.chip_id[8:] == bytes(56) and r.chip_id[:8] == turin.chip_id[:8]
    tcb = TcbVersion.decode(r.reported_tcb, Product.TURIN)
    assert tcb == turin.tcb and tcb.fmc == 1
    assert tcb.encode(Product.TURIN) == r.reported_tcb
    assert r.reported_tcb[0] == 1  # FMC first on Turin


def test_milan_tcb_layout_differs_from_turin() -> None:
    raw = bytes([4, 0, 0, 0, 0, 0, 0x18, 0xDB])
    assert TcbVersion.decode(raw, Product.MILAN) == TcbVersion(4, 0, 0x18, 0xDB)
    assert TcbVersion.decode(raw, Product.TURIN).fmc == 4


def test_debug_and_vmpl_fields() -> None:
    milan = fake(Product.MILAN)
    assert parse_report(milan.report(version=2, policy=0x30000 | 1 << 19)).policy.debug
    assert not parse_report(milan.report(version=2)).policy.debug
    vlek = parse_report(milan.report(signer=Signer.VLEK, vmpl=1))
    assert vlek.vmpl == 1 and vlek.signer is Signer.VLEK


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, Product.MILAN),
        (0x19, 0x11, Product.GENOA),
        (0x19, 0xA0, Product.GENOA),
        (0x1A, 0x02, Product.TURIN),
        (0x1A, 0x50, None),
        (0x17, 0x31, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: Product | None) -> None:
    assert product_from_cpuid(family, model) is product


GOOD = fake(Product.MILAN).report(version=3)
GOOD_V2 = fake(Product.MILAN).report(version=2)


def _set(data: bytes, off: int, value: bytes) -> bytes:
    return data[:off] + value + data[off + len(value) :]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (GOOD[:-1], "1184 bytes"),
        (GOOD + b"\0", "1184 bytes"),
        (_set(GOOD, 0, (4).to_bytes(4, "little")), "version 4"),
        (_set(GOOD, 0, (1).to_bytes(4, "little")), "version 1"),
        (_set(GOOD, 0x4C, b"\1"), "0x04C"),
        (_set(GOOD, 0x18B, b"\1"), "0x18B"),
        (_set(GOOD_V2, 0x188, b"\1"), "0x188"),  # v2 has no CPUID fields
        (_set(GOOD, 0x1EB, b"\1"), "0x1EB"),
        (_set(GOOD, 0x1EF, b"\1"), "0x1EF"),
        (_set(GOOD, 0x1F8, b"\1"), "0x1F8"),  # v3: no mitigation vectors
        (_set(GOOD, 0x29F, b"\1"), "0x29F"),
        (_set(GOOD, 0x2A0 + 48, b"\1"), "zero"),  # R padded to 72 bytes with zeros
        (_set(GOOD, 0x2A0 + 72 + 71, b"\1"), "zero"),  # S likewise
        (_set(GOOD, 0x4A0 - 1, b"\1"), "zero"),
        (_set(GOOD, 0x034, (2).to_bytes(4, "little")), "SIGNATURE_ALGO"),
        (_set(GOOD, 0x048, (2 << 2).to_bytes(4, "little")), "SIGNING_KEY 2"),
        (_set(GOOD, 0x048, (1 << 5).to_bytes(4, "little")), "31:5"),
        (_set(GOOD, 0x008, (0x1F).to_bytes(8, "little")), "bit 17"),
        (_set(GOOD, 0x008, (0x3001F | 1 << 40).to_bytes(8, "little")), "63:26"),
    ],
)
def test_refuses_malformed_reports(data: bytes, message: str) -> None:
    with pytest.raises(SnpFormatError, match=message):
        parse_report(data)


def test_v5_reads_mitigation_vectors() -> None:
    turin = fake(Product.TURIN).report(version=5)
    r = parse_report(_set(turin, 0x1F8, (7).to_bytes(8, "little")))
    assert r.launch_mit_vector == 7
    with pytest.raises(SnpFormatError, match="0x208"):
        parse_report(_set(turin, 0x208, b"\1"))


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=REPORT_SIZE + 8),
        st.integers(0, len(data)).map(lambda n: data[:n]),
        st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)).map(
            lambda t: data[: t[0]] + bytes([t[1]]) + data[t[0] + 1 :]
        ),
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=8).map(
            lambda ts: bytes(dict(ts).get(i, b) for i, b in enumerate(data))
        ),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(*(_mutations(fake(p).report(version=v)) for p, v in VERSIONS)))
@example(b"")
@example(b"\xff" * REPORT_SIZE)
@example(bytes(REPORT_SIZE))
def test_parser_raises_only_snp_format_error(data: bytes) -> None:
    with contextlib.suppress(SnpFormatError):
        parse_report(data)
