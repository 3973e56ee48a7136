"""The evidence document's members beyond the quote, read in attest.evidence alone."""

from __future__ import annotations

import pytest

from attest.errors import EvidenceFormatError
from attest.evidence import (
    MAX_RUNTIME_RECORDS,
    ak_public_of,
    b64,
    boot_cmdline_of,
    ek_public_of,
    evidence_node_id,
    firmware_log_of,
    image_version_of,
    required_ak_public,
    runtime_log_of,
)


def test_absent_logs_read_as_none_and_non_objects_are_refused() -> None:
    assert firmware_log_of({}) is None
    assert firmware_log_of({"firmware_log": None}) is None
    assert runtime_log_of({"runtime_log": None}) is None
    with pytest.raises(EvidenceFormatError, match="^firmware_log is not an object$"):
        firmware_log_of({"firmware_log": "AAAA"})
    with pytest.raises(EvidenceFormatError, match="^runtime_log is not an object$"):
        runtime_log_of({"runtime_log": []})


def test_firmware_log_from_elsewhere_than_byte_0_needs_the_held_size() -> None:
    doc = {"firmware_log": {"start": 40, "data": b64(b"")}}
    with pytest.raises(EvidenceFormatError, match="^firmware_log does not start at byte 0$"):
        firmware_log_of(doc)
    assert firmware_log_of(doc, resume=40) == (40, b"")
    assert firmware_log_of({"firmware_log": {"data": b64(b"log")}}, resume=40) == (0, b"log")
    # a boolean is no byte offset, even where True == 1
    with pytest.raises(EvidenceFormatError, match="does not start at byte 0"):
        firmware_log_of({"firmware_log": {"start": True, "data": ""}}, resume=1)
    with pytest.raises(EvidenceFormatError, match="^firmware_log.data is not valid base64$"):
        firmware_log_of({"firmware_log": {"start": 0, "data": "!!"}})


def test_runtime_log_bounds_count_the_held_records() -> None:
    doc = {"runtime_log": {"start": 5, "records": [{}] * 3}}
    with pytest.raises(EvidenceFormatError, match="^runtime_log does not start at record 0$"):
        runtime_log_of(doc)
    resumed = {"runtime_log": {"start": MAX_RUNTIME_RECORDS - 2, "records": [{}] * 3}}
    with pytest.raises(EvidenceFormatError, match=f"at most {MAX_RUNTIME_RECORDS} records"):
        runtime_log_of(resumed, resume=MAX_RUNTIME_RECORDS - 2)
    assert runtime_log_of({"runtime_log": {"start": 5, "records": []}}, resume=5) == (5, ())
    with pytest.raises(EvidenceFormatError, match="^runtime_log.records is not a list"):
        runtime_log_of({"runtime_log": {"records": {"0": {}}}})


def test_ak_and_ek_public_areas_are_bounded() -> None:
    assert ak_public_of({"ak": [1, 2]}) is None
    with pytest.raises(EvidenceFormatError, match="^ak.public is not a base64 string of at most"):
        required_ak_public({"ak": [1, 2]})
    with pytest.raises(EvidenceFormatError, match="at most 2048 bytes"):
        ak_public_of({"ak": {"public": b64(bytes(4096))}})
    assert required_ak_public({"ak": {"public": b64(b"ak")}}) == b"ak"
    assert ek_public_of({"ek": "not an object"}) is None
    assert ek_public_of({"ek": None}, strict=True) is None
    with pytest.raises(EvidenceFormatError, match="^ek is not an object$"):
        ek_public_of({"ek": "not an object"}, strict=True)
    assert ek_public_of({"ek": {"public": b64(b"ek")}}) == b"ek"


def test_unauthenticated_claims_are_typed_and_bounded() -> None:
    assert evidence_node_id({"node_id": 7}) is None
    assert evidence_node_id({"node_id": "n1"}) == "n1"
    assert image_version_of({"image": {"version": "1.2"}}) == "1.2"
    assert image_version_of({"image": {"version": "v" * 129}}) is None
    assert image_version_of({"image": "1.2"}) is None
    assert boot_cmdline_of({"boot": {"cmdline": "ro quiet"}}) == "ro quiet"
    assert boot_cmdline_of({"boot": {"cmdline": "x" * 4097}}) is None
    assert boot_cmdline_of({"boot": {"cmdline": None}}) is None
