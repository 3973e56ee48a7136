from __future__ import annotations

import struct

import pytest

from attest.errors import EventLogFormatError, ReplayError
from attest.eventlog import (
    dumps_cel,
    dumps_cel_record,
    loads_cel,
    new_record,
    parse_ima_log,
    read_systemd_measure_log,
    replay_cel,
    replay_ima,
    verify_cel,
)
from attest.model import HashAlg, PcrValues, extend

BANKS = (HashAlg.SHA256, HashAlg.SHA384)


def _records():  # type: ignore[no-untyped-def]
    return [
        new_record(i, 15, m, content_type="attest", content={"event": n}, banks=BANKS)
        for i, (n, m) in enumerate([("policy", b"p" * 10), ("tls-key", b"k"), ("upgrade", b"u")])
    ]


def _expected(alg: HashAlg, measured: list[bytes]) -> bytes:
    v = bytes(alg.digest_size)
    for m in measured:
        v = extend(alg, v, alg.digest(m))
    return v


def test_cel_json_round_trip_and_replay() -> None:
    recs = _records()
    back = loads_cel(dumps_cel(recs))
    assert back == tuple(recs)
    assert replay_cel(back, HashAlg.SHA256)[15] == _expected(
        HashAlg.SHA256, [b"p" * 10, b"k", b"u"]
    )


def test_cel_json_seq_lines_as_systemd_writes_them() -> None:
    recs = _records()
    text = "".join(dumps_cel_record(r) for r in recs)
    assert text.startswith("\x1e")
    assert read_systemd_measure_log(text.encode()) == tuple(recs)


def test_systemd_measure_log_record() -> None:
    d = "ab" * 32
    line = (
        '\x1e{"pcr":11,"digests":[{"hashAlg":"sha256","digest":"' + d + '"}],'
        '"content_type":"systemd","content":{"string":"enter-initrd","eventType":"phase"}}\n'
    )
    (rec,) = read_systemd_measure_log(line)
    assert rec.pcr == 11 and rec.content["string"] == "enter-initrd"
    assert rec.digests[HashAlg.SHA256] == bytes.fromhex(d)


def test_verify_cel_accepts_matching_and_rejects_tampered_log() -> None:
    recs = _records()
    good = PcrValues({HashAlg.SHA256: {15: replay_cel(recs, HashAlg.SHA256)[15]}})
    assert verify_cel(recs, good, pcrs=[15]) == tuple(recs)
    with pytest.raises(ReplayError) as err:
        verify_cel(recs[:-1], good, pcrs=[15])
    assert err.value.invalid_pcrs == (("sha256", 15),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[1]",
        '{"pcr": 99, "digests": []}',
        "[",
        "\xff",
        '{"pcr":1,"digests":[{"hashAlg":"sha256","digest":"00"}]}',
    ],
)
def test_bad_cel_raises_format_error(text: str) -> None:
    if text == "":
        assert loads_cel(text) == ()
        return
    with pytest.raises(EventLogFormatError):
        loads_cel(text)


def _ima_ng(path: bytes, filedata: bytes) -> bytes:
    d = b"sha256:\x00" + filedata
    tdata = struct.pack("<I", len(d)) + d + struct.pack("<I", len(path) + 1) + path + b"\x00"
    thash = HashAlg.SHA1.digest(tdata)
    name = b"ima-ng"
    head = struct.pack("<I20sI", 10, thash, len(name)) + name
    return head + struct.pack("<I", len(tdata)) + tdata


def test_ima_binary_log_parses_and_replays_sha1_and_sha256() -> None:
    fd = bytes(range(32))
    data = _ima_ng(b"boot_aggregate", fd) + _ima_ng(b"/usr/bin/attestd", fd[::-1])
    entries = parse_ima_log(data)
    assert [e.path for e in entries] == ["boot_aggregate", "/usr/bin/attestd"]
    assert entries[1].file_digest == "sha256:" + fd[::-1].hex()
    sha1 = replay_ima(entries)[10]
    want = bytes(20)
    for e in entries:
        want = extend(HashAlg.SHA1, want, e.template_hash)
    assert sha1 == want
    want256 = bytes(32)
    for e in entries:
        want256 = extend(HashAlg.SHA256, want256, HashAlg.SHA256.digest(e.template_data))
    assert replay_ima(entries, HashAlg.SHA256)[10] == want256


def test_truncated_ima_log_raises_format_error() -> None:
    data = _ima_ng(b"boot_aggregate", bytes(32))
    for cut in (1, 10, 30, len(data) - 1):
        with pytest.raises(EventLogFormatError):
            parse_ima_log(data[:cut])
