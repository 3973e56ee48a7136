"""REPORT_DATA binds nonce, TLS key and vTPM AK under encoding v1; anything else is refused."""

from __future__ import annotations

import hashlib

import pytest

from attest.errors import SnpCheckError
from attest.snp.reportdata import DOMAIN, encode_report_data, verify_report_data

NONCE, SPKI, AK = b"n" * 32, b"\x30\x59" + b"k" * 89, b"\x00\x58" + b"a" * 88


def test_encoding_v1_is_the_documented_sha512() -> None:
    body = DOMAIN + b"\x01" + b"\x01" + (32).to_bytes(4, "big") + NONCE
    body += b"\x02" + len(SPKI).to_bytes(4, "big") + SPKI
    assert encode_report_data(nonce=NONCE, tls_spki=SPKI) == hashlib.sha512(body).digest()


def test_round_trips_with_and_without_a_vtpm_ak() -> None:
    for ak in (None, AK):
        rd = encode_report_data(nonce=NONCE, tls_spki=SPKI, vtpm_ak=ak)
        assert len(rd) == 64
        assert verify_report_data(rd, nonce=NONCE, tls_spki=SPKI, vtpm_ak=ak) == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"nonce": b"m" * 32},
        {"tls_spki": SPKI + b"x"},
        {"vtpm_ak": AK},  # the AK is part of the binding when present
    ],
)
def test_refuses_any_other_value(kw: dict[str, bytes]) -> None:
    rd = encode_report_data(nonce=NONCE, tls_spki=SPKI)
    args = {"nonce": NONCE, "tls_spki": SPKI, "vtpm_ak": None} | kw
    with pytest.raises(SnpCheckError, match="does not bind") as exc:
        verify_report_data(rd, **args)  # type: ignore[arg-type]
    assert exc.value.check == "snp-report-data"


def test_refuses_other_encodings_of_the_same_values() -> None:
    for other in (
        NONCE.ljust(64, b"\0"),  # the raw nonce, as many guests do
        hashlib.sha512(NONCE + SPKI).digest(),  # no domain, no lengths
        hashlib.sha512(NONCE[:16] + NONCE[16:] + SPKI).digest(),
    ):
        with pytest.raises(SnpCheckError):
            verify_report_data(other, nonce=NONCE, tls_spki=SPKI)


def test_length_prefixes_keep_fields_apart() -> None:
    a = encode_report_data(nonce=NONCE + b"\x02", tls_spki=SPKI)
    b = encode_report_data(nonce=NONCE, tls_spki=b"\x02" + SPKI)
    assert a != b


@pytest.mark.parametrize(
    "kw", [{"nonce": b"x" * 15}, {"nonce": b"x" * 65}, {"tls_spki": b""}, {"version": 2}]
)
def test_bad_arguments_are_programming_errors(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"nonce": NONCE, "tls_spki": SPKI} | kw
    with pytest.raises(ValueError):
        encode_report_data(**args)  # type: ignore[arg-type]


def test_a_guest_without_tls_binds_no_key_and_that_is_not_an_empty_key() -> None:
    """No TLS (plain HTTP, the operator socket): field 2 is absent, which no present key --
    not even an empty one, which the encoding refuses -- can stand in for."""
    body = DOMAIN + b"\x01" + b"\x01" + (32).to_bytes(4, "big") + NONCE
    body += b"\x03" + len(AK).to_bytes(4, "big") + AK
    rd = encode_report_data(nonce=NONCE, tls_spki=None, vtpm_ak=AK)
    assert rd == hashlib.sha512(body).digest()
    assert verify_report_data(rd, nonce=NONCE, tls_spki=None, vtpm_ak=AK) == 1
    with pytest.raises(SnpCheckError, match="nonce, TLS key, vTPM AK"):
        verify_report_data(rd, nonce=NONCE, tls_spki=SPKI, vtpm_ak=AK)
    with pytest.raises(ValueError, match="tls_spki"):
        encode_report_data(nonce=NONCE, tls_spki=b"", vtpm_ak=AK)
