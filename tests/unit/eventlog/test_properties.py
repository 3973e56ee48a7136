"""Property tests: any bytes either parse or raise EventLogFormatError, nothing else."""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.errors import EventLogFormatError
from attest.eventlog import loads_cel, parse_event_log, parse_ima_log, replay_pcrs, replay_self
from attest.eventlog.uefi import DECODERS, decode_device_path, decode_payload
from conftest import read_log

SEEDS = [
    read_log(n)
    for n in (
        "tpm2tools__event-bootorder",
        "tpm2tools__event-uefi-sha1-log",
        "ovmf__q35-direct-boot",
        "goattest__sb_cert_eventlog",
    )
]
FAST = settings(
    max_examples=int(os.environ.get("EVENTLOG_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _parse_or_format_error(data: bytes) -> None:
    try:
        log = parse_event_log(data)
    except EventLogFormatError:
        return
    replay_pcrs(log)
    replay_self(log)


@FAST
@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_format_error(data: bytes) -> None:
    _parse_or_format_error(data)


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_real_logs_parse_or_raise_format_error(
    seed: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _parse_or_format_error(bytes(data))


@FAST
@given(st.sampled_from(SEEDS), st.integers(0, 2**20))
def test_truncated_real_logs_parse_or_raise_format_error(seed: bytes, cut: int) -> None:
    _parse_or_format_error(seed[: cut % len(seed)])


@FAST
@given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=512))
def test_payload_decoders_never_raise(event_type: int, data: bytes) -> None:
    decode_payload(event_type, data)  # malformed data comes back as MalformedPayload


@FAST
@given(st.binary(max_size=256))
def test_device_paths_parse_or_raise_format_error(data: bytes) -> None:
    with contextlib.suppress(EventLogFormatError):
        decode_device_path(data)


@FAST
@given(st.binary(max_size=512))
def test_ima_and_cel_readers_parse_or_raise_format_error(data: bytes) -> None:
    for fn in (parse_ima_log, loads_cel):
        with contextlib.suppress(EventLogFormatError):
            fn(data)
