"""The parser's fast paths (one-unpack event headers, slot-descriptor constructors, codec
functions, C-split signature lists) must give exactly what the plain code gives."""

from __future__ import annotations

import dataclasses
import inspect
import struct
import uuid

import pytest

from attest.errors import EventLogFormatError
from attest.eventlog import parse_event_log, uefi
from attest.eventlog.parse import FORMAT_CRYPTO_AGILE
from attest.eventlog.uefi import (
    EFI_CERT_SHA256,
    GptEvent,
    SignatureList,
    decode_gpt,
    decode_signature_lists,
    guid_str,
    utf16,
)
from conftest import LOGS, read_log

PAYLOAD_CLASSES = [
    c
    for c in vars(uefi).values()
    if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == uefi.__name__
]


def _first_event2(data: bytes) -> int:
    """Offset of the first TCG_PCR_EVENT2, after the SHA1-format Spec ID event."""
    return 32 + struct.unpack_from("<I", data, 28)[0]


def test_every_payload_class_keeps_its_dataclass_signature_and_stays_frozen() -> None:
    assert len(PAYLOAD_CLASSES) >= 20
    for cls in PAYLOAD_CLASSES:
        fields = dataclasses.fields(cls)
        params = list(inspect.signature(cls).parameters.values())
        assert [p.name for p in params] == [f.name for f in fields], cls
        assert [p.default for p in params] == [
            inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            for f in fields
        ], cls
        obj = cls(*[f"v{i}" for i in range(len(fields))])
        assert obj == cls(*[f"v{i}" for i in range(len(fields))])
        assert [getattr(obj, f.name) for f in fields] == [f"v{i}" for i in range(len(fields))]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, fields[0].name, "changed")


def test_digests_out_of_spec_id_order_parse_like_in_order() -> None:
    # The fast path only takes digests in the Spec ID order; any other order takes the
    # per-digest loop and must give the same event.
    data = read_log("tpm2tools__event-bootorder")
    log = parse_event_log(data)
    assert log.format == FORMAT_CRYPTO_AGILE and len(log.digest_sizes) == 2
    off = _first_event2(data)
    (a, sa), (b, sb) = log.digest_sizes.items()
    da = data[off + 12 : off + 14 + sa]
    db = data[off + 14 + sa : off + 16 + sa + sb]
    swapped = data[: off + 12] + db + da + data[off + 16 + sa + sb :]
    again = parse_event_log(swapped, strict=True)
    assert again.events[1].digests == log.events[1].digests
    assert [e.data for e in again.events] == [e.data for e in log.events]


def test_event_header_cut_before_its_size_field_names_the_event() -> None:
    data = read_log("tpm2tools__event-bootorder")
    off = _first_event2(data)
    sizes = parse_event_log(data).digest_sizes
    cut = off + 12 + sum(2 + s for s in sizes.values()) + 2  # digests whole, eventSize half
    with pytest.raises(EventLogFormatError, match="event 1 at offset .*truncated event size"):
        parse_event_log(data[:cut])


@pytest.mark.parametrize("path", LOGS, ids=[p.stem for p in LOGS])
def test_every_real_log_parses_the_same_strict_and_lenient(path) -> None:  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    lenient = parse_event_log(data)
    strict = parse_event_log(data, strict=True)
    assert strict.events == lenient.events


def test_signature_lists_keep_each_entry_owner() -> None:
    owners = [uuid.uuid4().bytes_le, uuid.uuid4().bytes_le]
    entries = b"".join(owners[i % 2] + bytes([i]) * 32 for i in range(5))
    header = struct.pack("<III", 28 + len(entries), 0, 48)
    stype = uuid.UUID(EFI_CERT_SHA256).bytes_le
    (sl,) = decode_signature_lists(stype + header + entries)
    assert isinstance(sl, SignatureList) and sl.type_name == "sha256"
    assert sl.signatures == tuple((guid_str(owners[i % 2]), bytes([i]) * 32) for i in range(5))


def test_gpt_without_partitions_accepts_any_entry_size() -> None:
    # NumberOfPartitions 0 with SizeOfPartitionEntry 0 used to reach range(..., step=0).
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<I", header, 12, 92)
    struct.pack_into("<I", header, 84, 0)
    gpt = decode_gpt(bytes(header) + struct.pack("<Q", 0))
    assert gpt == GptEvent(guid_str(bytes(16)), ())


@pytest.mark.parametrize(
    "raw",
    [b"a\x00b\x00", b"a\x00\x00\xd8", b"\x00\xd8a\x00", b"\x00\xdc", b"a\x00b", b"", b"\xff\xfe"],
)
def test_utf16_matches_the_named_codec(raw: bytes) -> None:
    even = raw[: len(raw) // 2 * 2]
    assert utf16(raw) == even.decode("utf-16-le", errors="replace").split("\x00", 1)[0]
