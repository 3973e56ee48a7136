"""The SEV-SNP host's chip id (``attest.node.snp_host``, attestd-tpm ``--snp-host``): ``/dev/sev``
through a fake ioctl that reads and writes the caller's buffers as the kernel does, the fake,
the ``snp-host`` runtime event recorded once per boot (a broker restart adds none; another chip
in this boot's log refuses), and that no socket can measure ``snp-host``."""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest.errors import OperationNotAllowed, SnpHostError
from attest.node.broker import protocol as p
from attest.node.broker.client import BrokerClient
from attest.node.broker.local import RUNTIME_LOG_NAME, LocalNode
from attest.node.broker.server import BrokerServer
from attest.node.logs.runtime import RuntimeLog
from attest.node.snp_host import (
    SEV_GET_ID2,
    SEV_ISSUE_CMD,
    SEV_RET_INVALID_LEN,
    FakeSnpHost,
    SevHostDevice,
    _GetId2,
    _IssueCmd,
    keep_recorded,
    open_snp_host,
    record_chip_ids,
    recorded_chip_ids,
)
from attest.node.tpm.fake import FakeTpm
from attest.runtime import CONTENT_TYPE_PREFIX, KIND_SNP_HOST

CHIP_A = bytes(range(1, 65))
CHIP_B = bytes(range(65, 129))


class FakeSevDevice:
    """The kernel's side of ``SEV_ISSUE_CMD(SEV_GET_ID2)`` (drivers/crypto/ccp/sev-dev.c): with
    no buffer, or one too small, the firmware fails with INVALID_LEN and the length needed is
    written back; else the ids are copied to the caller's buffer. ``fail``: an errno for every
    call; ``firmware_error``: the firmware's answer to the second call."""

    def __init__(
        self, ids: bytes, *, fail: int | None = None, firmware_error: int = 0, wrote: int = 0
    ) -> None:
        self.ids, self.fail, self.firmware_error, self.wrote = ids, fail, firmware_error, wrote
        self.calls = 0

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        assert request == SEV_ISSUE_CMD and len(arg) == ctypes.sizeof(_IssueCmd)
        self.calls += 1
        cmd = _IssueCmd.from_buffer_copy(bytes(arg))
        assert cmd.cmd == SEV_GET_ID2
        if self.fail is not None:
            raise OSError(self.fail, "injected")
        get = _GetId2.from_address(cmd.data)
        if not get.address or get.length < len(self.ids):
            get.length = len(self.ids)
            struct.pack_into("<I", arg, 12, SEV_RET_INVALID_LEN)
            raise OSError(errno.EIO, "Input/output error")
        if self.firmware_error:
            struct.pack_into("<I", arg, 12, self.firmware_error)
            raise OSError(errno.EIO, "Input/output error")
        ctypes.memmove(get.address, self.ids, len(self.ids))
        get.length = self.wrote or len(self.ids)
        return 0


@pytest.fixture()
def device_path(tmp_path: Path) -> Path:
    path = tmp_path / "sev"
    path.write_bytes(b"")
    return path


def test_ioctl_layout_is_the_uapi_one() -> None:
    # include/uapi/linux/psp-sev.h: both structures __packed; _IOWR('S', 0x0, sev_issue_cmd)
    assert ctypes.sizeof(_IssueCmd) == 16 and ctypes.sizeof(_GetId2) == 12
    assert SEV_ISSUE_CMD == 0xC0105300 and SEV_GET_ID2 == 8 and SEV_RET_INVALID_LEN == 4


def test_two_sockets_name_two_chips_after_the_length_query(device_path: Path) -> None:
    dev = FakeSevDevice(CHIP_A + CHIP_B)
    assert SevHostDevice(device_path, ioctl=dev).chip_ids() == (CHIP_A, CHIP_B)
    assert dev.calls == 2  # the length query, then the read


def test_an_absent_second_socket_is_left_out(device_path: Path) -> None:
    dev = FakeSevDevice(CHIP_A + bytes(64))
    assert SevHostDevice(device_path, ioctl=dev).chip_ids() == (CHIP_A,)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (CHIP_A[:32], "buffer of 32 bytes"),  # short: not a whole id
        (CHIP_A * 9, "buffer of 576 bytes"),  # long: over MAX_CHIP_IDS
        (bytes(128), "all zero"),  # masked: names no chip
        (CHIP_A + CHIP_A[:10], "buffer of 74 bytes"),
    ],
)
def test_chip_ids_of_a_wrong_size_or_all_zero_are_refused(
    device_path: Path, ids: bytes, match: str
) -> None:
    with pytest.raises(SnpHostError, match=match):
        SevHostDevice(device_path, ioctl=FakeSevDevice(ids)).chip_ids()


def test_a_short_write_by_the_firmware_is_refused(device_path: Path) -> None:
    with pytest.raises(SnpHostError, match="answer of 32 bytes"):
        SevHostDevice(device_path, ioctl=FakeSevDevice(CHIP_A, wrote=32)).chip_ids()
    with pytest.raises(SnpHostError, match="wrote 128 bytes into 64"):
        SevHostDevice(device_path, ioctl=FakeSevDevice(CHIP_A, wrote=128)).chip_ids()


def test_an_ioctl_errno_is_refused_with_its_reason(device_path: Path) -> None:
    with pytest.raises(SnpHostError, match=r"SEV_GET_ID2 failed \(injected; firmware error 0x0\)"):
        SevHostDevice(device_path, ioctl=FakeSevDevice(CHIP_A, fail=errno.ENOTTY)).chip_ids()


def test_a_firmware_error_is_refused(device_path: Path) -> None:
    dev = FakeSevDevice(CHIP_A, firmware_error=0x13)
    with pytest.raises(SnpHostError, match="firmware error 0x13"):
        SevHostDevice(device_path, ioctl=dev).chip_ids()


def test_without_the_device_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnpHostError, match="cannot open"):
        SevHostDevice(tmp_path / "absent").chip_ids()


def test_open_snp_host_names(tmp_path: Path) -> None:
    assert open_snp_host("off") is None
    dev = open_snp_host(f"sev:{tmp_path}/sev")
    assert isinstance(dev, SevHostDevice) and dev.path == tmp_path / "sev"
    fake = open_snp_host("fake:" + CHIP_A.hex())
    assert isinstance(fake, FakeSnpHost) and fake.chip_ids() == (CHIP_A,)
    for bad in ("fake:" + CHIP_A.hex()[:-2], "fake:zz", "fake:", "tpm", "off:x", "sev-guest"):
        with pytest.raises(ValueError):
            open_snp_host(bad)
    with pytest.raises(SnpHostError, match="all zero"):
        open_snp_host("fake:" + "00" * 64)


# --- the runtime event ------------------------------------------------------------------------


def _snp_host_events(log: RuntimeLog) -> list[str]:
    return [
        r.content["chip_id"]
        for r in log.records(0)
        if r.content_type == CONTENT_TYPE_PREFIX + KIND_SNP_HOST
    ]


def test_the_chip_is_recorded_once_per_boot_and_not_again_after_a_restart(
    tmp_path: Path,
) -> None:
    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, tpm, pcr=13)
    assert record_chip_ids(log, (CHIP_A,)) == (0,)
    assert record_chip_ids(log, (CHIP_A,)) == ()
    log.close()
    # attestd-tpm restarts within the boot: the log replays to the PCR and is kept
    again = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, tpm, pcr=13)
    assert record_chip_ids(again, (CHIP_A,)) == ()
    assert _snp_host_events(again) == [CHIP_A.hex()]
    # a second socket's chip joins
    assert record_chip_ids(again, (CHIP_A, CHIP_B)) == (1,)
    assert recorded_chip_ids(again) == {CHIP_A: 0, CHIP_B: 1}
    again.close()


def test_after_a_tpm_reset_the_fresh_log_records_the_chip_again(tmp_path: Path) -> None:
    tpm = FakeTpm()
    log = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, tpm, pcr=13)
    assert keep_recorded(log, (CHIP_A,)) == (0,)
    tpm.reset()  # a reboot (or a restarted simulator) while attestd-tpm runs
    log.records()  # reconciles: the log is rotated and the reset hooks run
    assert len(log.rotated) == 1
    assert _snp_host_events(log) == [CHIP_A.hex()] and recorded_chip_ids(log) == {CHIP_A: 0}
    log.close()


def test_another_chip_in_this_boots_log_refuses_and_records_nothing(tmp_path: Path) -> None:
    log = RuntimeLog(tmp_path / RUNTIME_LOG_NAME, FakeTpm(), pcr=13)
    record_chip_ids(log, (CHIP_B,))
    with pytest.raises(SnpHostError, match="already records SEV-SNP chip 4142434445464748"):
        record_chip_ids(log, (CHIP_A,))
    assert _snp_host_events(log) == [CHIP_B.hex()]
    log.close()


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    node = LocalNode.open(FakeTpm(), tmp_path)
    api, op = tmp_path / "api.sock", tmp_path / "op.sock"
    all_kinds = p.OPERATOR_MEASURE_KINDS
    server = BrokerServer(node, api, operator_socket_path=op, measure_kinds=all_kinds).start()
    yield api, op
    server.shutdown()
    node.close()


def test_no_socket_and_no_caller_can_measure_snp_host(broker: tuple[Path, Path]) -> None:
    assert KIND_SNP_HOST not in p.OPERATOR_MEASURE_KINDS
    with pytest.raises(ValueError, match="snp-host"):
        BrokerServer(None, "/nonexistent", measure_kinds={KIND_SNP_HOST})  # type: ignore[arg-type]
    for path in broker:
        client = BrokerClient(path, timeout=5)
        with pytest.raises(OperationNotAllowed, match="not allowed"):
            client.measure(KIND_SNP_HOST, {"chip_id": CHIP_A.hex()})
        client.close()
    (broker[0].parent / "other").mkdir()
    node = LocalNode.open(FakeTpm(), broker[0].parent / "other")
    try:
        with pytest.raises(OperationNotAllowed, match="recorded by attestd-tpm only"):
            node.measure(KIND_SNP_HOST, {"chip_id": CHIP_A.hex()})
    finally:
        node.close()


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (["--snp-host", "fake:00"], "ConfigError: snp_host: fake:HEX takes 128 hex digits"),
        (["--snp-host", "fake:" + "00" * 64], "ConfigError: snp_host: fake SNP host: every"),
        (["--snp-host", "sev:/nonexistent/sev"], "SnpHostError: cannot open /nonexistent/sev"),
        (["--no-tpm"], "ConfigError: snp_guest: --no-tpm needs --snp-guest"),
        (
            ["--no-tpm", "--snp-guest", "off:x", "--snp-host", "fake:" + CHIP_A.hex()],
            "ConfigError: snp_host: needs the TPM's runtime log",
        ),
        (["--no-tpm", "--snp-guest", "x", "--vtpm-dir", "/v"], "ConfigError: vtpm_dir: needs"),
        (["--no-tpm", "--snp-guest", "x", "--slots-dir", "/s"], "ConfigError: slots_dir: needs"),
    ],
)
def test_attestd_tpm_refuses_to_start_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: list[str], line: str
) -> None:
    from attest.node.broker.main import main

    base = ["--socket", str(tmp_path / "api.sock"), "--operator-socket", "none"]
    argv = [*base, "--state-dir", str(tmp_path / "state"), "--tcti", "none:", *extra]
    assert main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and line in errors[0], errors
    assert not (tmp_path / "api.sock").exists()
