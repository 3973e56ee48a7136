from __future__ import annotations

import json
from dataclasses import replace

import pytest

from attest.errors import ReplayError
from attest.eventlog import DigestStatus, parse_event_log, replay, replay_pcrs, replay_self
from attest.eventlog.parse import UnverifiedEventLog
from attest.eventlog.quirks import EBS_INVOCATION, EBS_SUCCESS, QUIRKS
from attest.eventlog.uefi import EV_SEPARATOR
from attest.model import HashAlg, PcrValues, extend
from conftest import corpus_dir, read_log, yaml_pcrs

YAML_VARIANTS = ("raw", "pretty", "pretty-efivar39")
TPM2TOOLS = sorted(p.stem for p in corpus_dir().glob("tpm2tools__*.bin"))


@pytest.mark.parametrize("variant", YAML_VARIANTS)
@pytest.mark.parametrize("name", TPM2TOOLS)
def test_replay_equals_tpm2_tools_expected_pcrs(name: str, variant: str) -> None:
    expected = yaml_pcrs(corpus_dir() / "expected" / variant / f"{name}.yaml")
    assert expected, "the expected YAML has a pcrs: section"
    got = replay_pcrs(parse_event_log(read_log(name))).to_json()
    assert got == expected


def _recorded(name: str) -> dict[str, dict[str, str]]:
    doc = json.loads((corpus_dir() / f"{name}.pcrs.json").read_text())
    pcrs = doc.get("pcrs", doc)
    return {b: v for b, v in pcrs.items() if isinstance(v, dict)}


def test_windows_log_replays_to_its_recorded_pcrs() -> None:
    recorded = _recorded("goattest__windows_gcp_shielded_vm")["sha1"]
    got = replay_pcrs(parse_event_log(read_log("goattest__windows_gcp_shielded_vm")))
    sha1 = got.to_json()["sha1"]
    assert sha1 and all(recorded[p] == v for p, v in sha1.items())
    # PCRs without events hold their reset values (0, or all-ones for DRTM PCRs 17-22).
    for p, v in recorded.items():
        if p not in sha1:
            assert v == ("ff" if 17 <= int(p) <= 22 else "00") * 20


def test_windows_log_verifies_against_the_recorded_quote() -> None:
    recorded = PcrValues.from_json(_recorded("goattest__windows_gcp_shielded_vm"))
    v = replay(parse_event_log(read_log("goattest__windows_gcp_shielded_vm")), recorded)
    assert v.against_quote and v.banks == (HashAlg.SHA1,)
    assert set(v.unlogged_pcrs) >= {17, 23}
    assert not v.untrusted_events


def test_ovmf_boot_replays_to_the_pcrs_its_guest_read() -> None:
    recorded = _recorded("ovmf__q35-direct-boot")["sha256"]
    quoted = PcrValues.from_json({"sha256": {p: h for p, h in recorded.items() if p != "10"}})
    log = parse_event_log(read_log("ovmf__q35-direct-boot"))
    v = replay(log, quoted)
    assert {e.pcr for e in v.events} == {0, 1, 2, 3, 4, 5, 6, 7, 9}
    assert 10 not in v.unlogged_pcrs  # not quoted here
    assert v.pcrs.values[HashAlg.SHA256][4].hex() == recorded["4"]


def test_replay_error_names_every_mismatching_pcr() -> None:
    log = parse_event_log(read_log("tpm2tools__event-bootorder"))
    own = replay_pcrs(log)
    bad = {a: dict(v) for a, v in own.values.items()}
    bad[HashAlg.SHA256][4] = bytes(32)
    bad[HashAlg.SHA1][7] = bytes(20)
    with pytest.raises(ReplayError) as err:
        replay(log, PcrValues(bad))
    assert set(err.value.invalid_pcrs) == {("sha256", 4), ("sha1", 7)}


def test_verified_log_keeps_only_events_of_quoted_pcrs() -> None:
    log = parse_event_log(read_log("tpm2tools__event-bootorder"))
    own = replay_pcrs(log)
    only4 = PcrValues({HashAlg.SHA256: {4: own.values[HashAlg.SHA256][4]}})
    v = replay(log, only4)
    assert v.events and {e.pcr for e in v.events} == {4}


def test_event_less_firmware_pcr_must_hold_its_reset_value() -> None:
    log = parse_event_log(read_log("tpm2tools__event-uefiaction"))  # PCR 4 only
    own = replay_pcrs(log).values[HashAlg.SHA256]
    with pytest.raises(ReplayError) as err:
        replay(log, PcrValues({HashAlg.SHA256: {4: own[4], 0: b"\x01" * 32}}))
    assert err.value.invalid_pcrs == (("sha256", 0),)


def test_no_common_bank_is_a_replay_error() -> None:
    log = parse_event_log(read_log("tpm2tools__event-uefi-sha1-log"))
    with pytest.raises(ReplayError, match="share no PCR bank"):
        replay(log, PcrValues({HashAlg.SHA256: {0: bytes(32)}}))


def test_startup_locality_sets_pcr0_initial_value() -> None:
    log = parse_event_log(read_log("goattest__short_no_action_eventlog"))
    v = replay(log, PcrValues({HashAlg.SHA1: {0: bytes(19) + b"\x03"}}))
    assert v.startup_locality == 3
    with pytest.raises(ReplayError):
        replay(log, PcrValues({HashAlg.SHA1: {0: bytes(20)}}))


def _ebs_quote(log: UnverifiedEventLog) -> PcrValues:
    own = {a: dict(v) for a, v in replay_pcrs(log).values.items()}
    sha1 = HashAlg.SHA1
    pcr5 = own[sha1][5]
    for data in (EBS_INVOCATION, EBS_SUCCESS):
        pcr5 = extend(sha1, pcr5, sha1.digest(data))
    own[sha1][5] = pcr5
    return PcrValues(own)


def test_missing_exit_boot_services_events_need_the_named_quirk() -> None:
    log = parse_event_log(read_log("goattest__ebs_event_missing_eventlog"))
    quoted = _ebs_quote(log)
    with pytest.raises(ReplayError) as err:
        replay(log, quoted, quirks=())
    assert err.value.invalid_pcrs == (("sha1", 5),)
    v = replay(log, quoted)
    applied = [q for q in v.quirks if q.name == "ebs-events-missing"]
    assert applied and applied[0].pcrs == (("sha1", 5),)
    assert [d for _, _, d in v.quirk_events] == [EBS_INVOCATION, EBS_SUCCESS]


def test_strict_replay_applies_no_replay_quirk_when_log_matches() -> None:
    log = parse_event_log(read_log("goattest__ebs_event_missing_eventlog"))
    v = replay(log, replay_pcrs(log))
    assert not [q for q in v.quirks if q.kind.value == "replay"]


def test_relabelled_event_data_is_detected_as_mismatch() -> None:
    # The event type and data are not covered by the digest: swap a separator's data.
    log = parse_event_log(read_log("tpm2tools__event-bootorder"))
    i, sep = next((i, e) for i, e in enumerate(log.events) if e.type == EV_SEPARATOR)
    forged = replace(sep, data=b"\xff\xff\xff\xff")
    events = log.events[:i] + (forged,) + log.events[i + 1 :]
    v = replay_self(replace(log, events=events))
    assert v.digest_status[sep.index] is DigestStatus.MISMATCH
    assert sep.index in v.untrusted_events
    assert not v.trusted_payload(forged)


def test_every_real_log_verifies_against_its_own_replay_without_anomalies() -> None:
    for path in sorted(corpus_dir().glob("*.bin")):
        v = replay_self(parse_event_log(path.read_bytes()))
        assert not v.against_quote
        assert not v.untrusted_events, path.name
        assert not v.anomalies, path.name


def test_shim_authority_quirk_is_needed_for_sb_cert_log() -> None:
    log = parse_event_log(read_log("goattest__sb_cert_eventlog"))
    strict = replay_self(log, quirks=())
    assert len(strict.untrusted_events) == 2
    v = replay_self(log)
    assert "shim-authority-trailing-byte" in {q.name for q in v.quirks}
    assert not v.untrusted_events


def test_ovmf_direct_boot_kernel_before_calling_efi_application_is_a_quirk() -> None:
    log = parse_event_log(read_log("ovmf__q35-direct-boot"))
    assert replay_self(log, quirks=()).anomalies
    v = replay_self(log)
    assert "app-before-calling-efi-application" in {q.name for q in v.quirks}


def test_quirk_registry_names_are_unique_and_versioned() -> None:
    ids = [q.id for q in QUIRKS]
    assert len(ids) == len(set(ids)) and all("@" in i for i in ids)
