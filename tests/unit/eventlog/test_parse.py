from __future__ import annotations

import struct

import pytest

from attest.errors import EventLogFormatError
from attest.eventlog import FORMAT_CRYPTO_AGILE, FORMAT_SHA1, parse_event_log
from attest.eventlog.parse import Event, _new_event
from attest.eventlog.uefi import (
    EV_NO_ACTION,
    ImageLoad,
    MalformedPayload,
    RawPayload,
    SpecIdEvent,
    StartupLocality,
    VariableData,
    decode_device_path,
    guid_str,
)
from attest.model import HashAlg
from conftest import LOGS, corpus_dir, read_log

SHA1_FORMAT = {
    "tpm2tools__event-uefi-sha1-log",
    "goattest__ebs_event_missing_eventlog",
    "goattest__option_rom_eventlog",
    "goattest__short_no_action_eventlog",
    "goattest__windows_gcp_shielded_vm",
}


def test_corpus_has_all_twenty_logs() -> None:
    assert len(list(corpus_dir().glob("*.bin"))) == 20


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem)
def test_every_real_log_parses_with_every_payload_decoded(path) -> None:  # type: ignore[no-untyped-def]
    log = parse_event_log(path.read_bytes(), strict=True)
    assert log.events
    assert log.format == (FORMAT_SHA1 if path.stem in SHA1_FORMAT else FORMAT_CRYPTO_AGILE)
    assert not log.malformed_events
    assert all(
        not isinstance(e.payload, RawPayload) or "unknown" not in e.payload.note for e in log.events
    )


def test_crypto_agile_spec_id_lists_banks_and_sizes() -> None:
    log = parse_event_log(read_log("ovmf__q35-direct-boot"))
    assert isinstance(log.spec_id, SpecIdEvent)
    assert log.spec_id.signature == "Spec ID Event03"
    assert log.banks == (HashAlg.SHA1, HashAlg.SHA256, HashAlg.SHA384, HashAlg.SHA512)
    assert dict(log.digest_sizes) == {4: 20, 11: 32, 12: 48, 13: 64}
    assert all(len(e.digests) == 4 for e in log.events[1:])


def test_short_no_action_log_is_sha1_with_startup_locality_3() -> None:
    # tpm2_eventlog rejects this one ("invalid eventDataSize in specid event").
    log = parse_event_log(read_log("goattest__short_no_action_eventlog"))
    assert log.format == FORMAT_SHA1
    assert log.events[0].payload == StartupLocality(3)
    assert log.startup_locality == 3


def test_option_rom_log_keeps_windows_no_pcr_record() -> None:
    # tpm2_eventlog segfaults on this log: its last record has PCR index 0xFFFFFFFF.
    log = parse_event_log(read_log("goattest__option_rom_eventlog"))
    last = log.events[-1]
    assert last.pcr == 0xFFFFFFFF and last.type == EV_NO_ACTION
    drivers = [e for e in log.events if isinstance(e.payload, ImageLoad) and e.pcr == 2]
    assert any("Pci(" in e.payload.device_path.text for e in drivers)


def test_pcr_index_out_of_range_is_rejected_for_measured_events() -> None:
    data = bytearray(read_log("tpm2tools__event-uefi-sha1-log"))
    struct.pack_into("<I", data, 0, 24)
    with pytest.raises(EventLogFormatError, match="PCR index 24"):
        parse_event_log(bytes(data))


def test_truncated_log_raises_format_error_naming_the_event() -> None:
    data = read_log("tpm2tools__event-bootorder")
    with pytest.raises(EventLogFormatError, match="event"):
        parse_event_log(data[:-7])


def test_huge_claimed_event_size_is_rejected() -> None:
    data = bytearray(read_log("tpm2tools__event-uefi-sha1-log"))
    struct.pack_into("<I", data, 28, 0xFFFFFFF0)
    with pytest.raises(EventLogFormatError, match="event size"):
        parse_event_log(bytes(data))


def test_empty_input_is_a_format_error() -> None:
    with pytest.raises(EventLogFormatError):
        parse_event_log(b"")


def test_unknown_event_type_is_kept_raw_and_reported() -> None:
    ev = struct.pack("<II20sI", 3, 0x0BADF00D, b"\x11" * 20, 3) + b"abc"
    log = parse_event_log(read_log("tpm2tools__event-uefi-sha1-log") + ev)
    assert log.events[-1].payload == RawPayload("unknown event type 0x0badf00d")
    assert log.unknown_event_types == (0x0BADF00D,)


def test_malformed_payload_is_reported_not_fatal_unless_strict() -> None:
    bad_sep = struct.pack("<II20sI", 4, 4, b"\x00" * 20, 3) + b"\x00\x00\x00"
    data = read_log("tpm2tools__event-uefi-sha1-log") + bad_sep
    log = parse_event_log(data)
    assert isinstance(log.events[-1].payload, MalformedPayload)
    assert log.malformed_events == (log.events[-1].index,)
    with pytest.raises(EventLogFormatError, match="separator"):
        parse_event_log(data, strict=True)


def test_zero_padding_after_last_event_is_tolerated_and_counted() -> None:
    data = read_log("tpm2tools__event-uefiaction")
    log = parse_event_log(data + bytes(64))
    assert len(log.events) == 2 and log.trailing_bytes == 64


def test_fast_event_constructor_equals_dataclass_constructor() -> None:
    args = (1, 4, 7, {4: b"\x01" * 20}, b"x", RawPayload("n"))
    assert _new_event(*args) == Event(*args)


def test_secure_boot_variables_decode_signature_lists() -> None:
    log = parse_event_log(read_log("goattest__windows_gcp_shielded_vm"))
    db = next(
        e.payload
        for e in log.events
        if isinstance(e.payload, VariableData) and e.payload.name == "db"
    )
    assert isinstance(db.value, tuple) and db.value
    assert {sl.type_name for sl in db.value} == {"x509"}


def test_boot_option_decodes_description_and_file_path() -> None:
    log = parse_event_log(read_log("tpm2tools__event-bootorder"))
    opts = {
        e.payload.name: e.payload.value
        for e in log.events
        if isinstance(e.payload, VariableData) and e.payload.name.startswith("Boot0")
    }
    assert opts["Boot0001"].description == "UEFI Misc Device"  # type: ignore[union-attr]
    assert opts["Boot0001"].device_path.text == "PciRoot(0x0)/Pci(0x6,0x0)"  # type: ignore[union-attr]
    assert opts["Boot0002"].device_path.text.endswith(  # type: ignore[union-attr]
        "FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)"
    )


def test_device_path_text_and_file_path() -> None:
    log = parse_event_log(read_log("goattest__sb_cert_eventlog"))
    app = next(e.payload for e in log.events if isinstance(e.payload, ImageLoad) and e.pcr == 4)
    assert app.device_path.file_path == "\\EFI\\BOOT\\BOOTX64.EFI"
    assert app.device_path.text.startswith("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x1,0x0)/HD(15,GPT,")


def test_device_path_node_length_below_header_is_rejected() -> None:
    from attest.errors import PayloadError

    with pytest.raises(PayloadError):
        decode_device_path(b"\x04\x04\x02\x00")


def test_guid_text_is_mixed_endian() -> None:
    import uuid

    raw = bytes(range(16))
    assert guid_str(raw) == str(uuid.UUID(bytes_le=raw))
