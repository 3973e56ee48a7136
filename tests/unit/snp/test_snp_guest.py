"""The guest side's SEV-SNP adapters (attest.node.snp_guest): configfs-TSM against a fake tree
that behaves as the kernel's (generation counting, outblob made from inblob), /dev/sev-guest
through a fake ioctl that reads and writes the request's buffers as the kernel does, and the
fake that signs with the test chain; the broker operation that serves them."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest
from tests.unit.snp.fakes import FAKE_NOW, fake

from attest.errors import SnpGuestError, TransportError
from attest.node.broker import protocol as p
from attest.node.broker.host import HostFacts
from attest.node.broker.results import snp_report_from_json, snp_report_to_json
from attest.node.port import SnpGuestReport
from attest.node.snp_guest import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    VMM_ERR_INVALID_LEN,
    ConfigfsTsm,
    FakeSnpGuest,
    SevGuestDevice,
    _GuestRequest,
    open_snp_guest,
)
from attest.snp.certtable import VCEK_GUID, parse_cert_table
from attest.snp.report import Product, parse_report
from attest.snp.verify import SnpVerifier
from attest.testing.snp import FakeAmd, fake_guest_dir, guest_cert_table

DATA = bytes(range(64))


@pytest.fixture()
def milan() -> FakeAmd:
    return fake(Product.MILAN)


@pytest.fixture()
def guest(milan: FakeAmd, tmp_path: Path) -> FakeSnpGuest:
    return FakeSnpGuest.from_dir(fake_guest_dir(milan, tmp_path / "fake"))


def _verifies(milan: FakeAmd, got: SnpGuestReport) -> None:
    """The report verifies against the fake chain and carries DATA as REPORT_DATA."""
    assert got.certs is not None
    assert parse_cert_table(got.certs).get(VCEK_GUID) == milan.vcek.der
    verifier = SnpVerifier(pins=milan.pins)
    vr = verifier.verify(
        got.report,
        leaf=milan.vcek.der,
        intermediates=milan.cert_chain(),
        now=FAKE_NOW,
        expected_report_data=DATA,
    )
    assert vr.report.report_data == DATA


def test_fake_guest_signs_each_request_with_the_test_vcek(
    milan: FakeAmd, guest: FakeSnpGuest
) -> None:
    got = guest.get_report(DATA)
    _verifies(milan, got)
    other = guest.get_report(b"\x01" * 64)
    assert parse_report(other.report).report_data == b"\x01" * 64
    with pytest.raises(ValueError, match="64 bytes"):
        guest.get_report(b"short")


def test_fake_guest_dir_without_a_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "report.bin").write_bytes(bytes(1184))
    with pytest.raises(SnpGuestError, match="fake SNP guest"):
        FakeSnpGuest.from_dir(tmp_path)


# --- configfs-TSM ------------------------------------------------------------------------------


class KernelTree(ConfigfsTsm):
    """A tmp_path tree standing in for configfs: each attribute write bumps ``generation`` and
    an ``inblob`` write makes ``outblob`` (and ``auxblob``) as the sev_guest provider does.
    ``racer``: a write some other process makes to the same entry while we read."""

    def __init__(self, root: Path, guest: FakeSnpGuest, *, provider: str = "sev_guest") -> None:
        super().__init__(root, privlevel=0)
        self.guest = guest
        self.racer = False
        self.writes: list[tuple[str, bytes]] = []
        self.dir.mkdir(parents=True)
        (self.dir / "provider").write_text(provider + "\n")
        (self.dir / "generation").write_text("7\n")
        (self.dir / "auxblob").write_bytes(b"")

    def _bump(self) -> None:
        gen = self.dir / "generation"
        gen.write_text(f"{int(gen.read_text()) + 1}\n")

    def _write_attr(self, name: str, data: bytes) -> None:
        super()._write_attr(name, data)
        self.writes.append((name, data))
        self._bump()
        if name == "inblob":
            got = self.guest.get_report(data)
            (self.dir / "outblob").write_bytes(got.report)
            (self.dir / "auxblob").write_bytes(got.certs or b"")
            if self.racer:
                self._bump()  # another writer's inblob, between ours and our reads


def test_configfs_report_answers_our_inblob(
    milan: FakeAmd, guest: FakeSnpGuest, tmp_path: Path
) -> None:
    tree = KernelTree(tmp_path / "report", guest)
    got = tree.get_report(DATA)
    _verifies(milan, got)
    assert tree.writes == [("privlevel", b"0"), ("inblob", DATA)]
    assert got.certs == guest_cert_table(milan)


def test_configfs_generation_race_is_refused(guest: FakeSnpGuest, tmp_path: Path) -> None:
    """Documentation/ABI/testing/configfs-tsm: a generation other than ours plus our writes
    means another writer's request may be what outblob answers."""
    tree = KernelTree(tmp_path / "report", guest)
    tree.racer = True
    with pytest.raises(SnpGuestError, match=r"another process .*generation 7 -> 10, expected 9"):
        tree.get_report(DATA)


def test_configfs_other_provider_is_refused(guest: FakeSnpGuest, tmp_path: Path) -> None:
    tree = KernelTree(tmp_path / "report", guest, provider="tdx_guest")
    with pytest.raises(SnpGuestError, match="provider is 'tdx_guest', not sev_guest"):
        tree.get_report(DATA)


def test_configfs_without_the_interface_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnpGuestError, match="no configfs-TSM report interface"):
        ConfigfsTsm(tmp_path / "absent").get_report(DATA)


@pytest.mark.parametrize(
    ("size", "message"), [(5000, "outblob is over 4000 bytes"), (100, "a report of 100 bytes")]
)
def test_configfs_outblob_out_of_bounds_is_refused(
    guest: FakeSnpGuest, tmp_path: Path, size: int, message: str
) -> None:
    tree = KernelTree(tmp_path / "report", guest)
    real = tree._write_attr

    def odd(name: str, data: bytes) -> None:
        real(name, data)
        if name == "inblob":
            (tree.dir / "outblob").write_bytes(bytes(size))

    tree._write_attr = odd  # type: ignore[method-assign]
    with pytest.raises(SnpGuestError, match=message):
        tree.get_report(DATA)


# --- /dev/sev-guest ----------------------------------------------------------------------------


class FakeDevice:
    """The kernel's side of the sev-guest ioctls over the caller's buffers (addresses in the
    snp_guest_request_ioctl). ``host_certs``: the table the host serves (None: none, the
    extended request fails as on a host without certificates)."""

    def __init__(self, guest: FakeSnpGuest, host_certs: bytes | None, *, status: int = 0) -> None:
        self.guest, self.host_certs, self.status = guest, host_certs, status
        self.calls: list[int] = []

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        self.calls.append(request)
        req = _GuestRequest.from_buffer_copy(bytes(arg))
        data = ctypes.string_at(req.req_data, 64)
        if request == SNP_GET_EXT_REPORT:
            if self.host_certs is None:
                raise OSError(errno.EIO, "no certificates")
            addr = req.req_data + 96
            certs_address = ctypes.c_uint64.from_address(addr).value
            certs_len = ctypes.c_uint32.from_address(addr + 8)
            if certs_len.value < len(self.host_certs):
                certs_len.value = len(self.host_certs)
                out = _GuestRequest(1, req.req_data, req.resp_data, VMM_ERR_INVALID_LEN << 32)
                arg[:] = bytes(out)
                raise OSError(errno.EINVAL, "certificate buffer too small")
            ctypes.memmove(certs_address, self.host_certs, len(self.host_certs))
        else:
            assert request == SNP_GET_REPORT
        report = self.guest.get_report(data).report
        header = self.status.to_bytes(4, "little") + len(report).to_bytes(4, "little")
        ctypes.memmove(req.resp_data, header + bytes(24) + report, 32 + len(report))
        return 0


@pytest.fixture()
def device_path(tmp_path: Path) -> Path:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def test_sev_guest_extended_report_with_a_grown_certificate_buffer(
    milan: FakeAmd, guest: FakeSnpGuest, device_path: Path
) -> None:
    table = guest_cert_table(milan) + bytes(20000)  # over the first 16 KiB buffer
    dev = FakeDevice(guest, table)
    got = SevGuestDevice(device_path, ioctl=dev).get_report(DATA)
    assert dev.calls == [SNP_GET_EXT_REPORT, SNP_GET_EXT_REPORT]
    assert got.certs == table
    _verifies(milan, SnpGuestReport(got.report, guest_cert_table(milan)))


def test_sev_guest_falls_back_to_the_plain_report(
    milan: FakeAmd, guest: FakeSnpGuest, device_path: Path
) -> None:
    dev = FakeDevice(guest, None)
    got = SevGuestDevice(device_path, ioctl=dev).get_report(DATA)
    assert dev.calls == [SNP_GET_EXT_REPORT, SNP_GET_REPORT]
    assert got.certs is None and parse_report(got.report).report_data == DATA


def test_sev_guest_firmware_error_status_is_refused(guest: FakeSnpGuest, device_path: Path) -> None:
    dev = FakeDevice(guest, None, status=0x16)
    with pytest.raises(SnpGuestError, match="status 0x16"):
        SevGuestDevice(device_path, ioctl=dev).get_report(DATA)


def test_sev_guest_huge_certificate_table_is_refused(
    guest: FakeSnpGuest, device_path: Path
) -> None:
    dev = FakeDevice(guest, bytes(100_000))
    with pytest.raises(SnpGuestError, match="over 65536"):
        SevGuestDevice(device_path, ioctl=dev).get_report(DATA)


def test_sev_guest_without_the_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SnpGuestError, match="cannot open"):
        SevGuestDevice(tmp_path / "none").get_report(DATA)


def test_ioctl_numbers_are_the_uapi_ones() -> None:
    # include/uapi/linux/sev-guest.h: _IOWR('S', 0x0 / 0x2, struct snp_guest_request_ioctl)
    assert ctypes.sizeof(_GuestRequest) == 32
    assert (SNP_GET_REPORT, SNP_GET_EXT_REPORT) == (0xC0205300, 0xC0205302)


# --- choosing one, and the broker operation ------------------------------------------------------


def test_open_snp_guest_names(milan: FakeAmd, tmp_path: Path) -> None:
    assert open_snp_guest("off") is None
    assert isinstance(open_snp_guest("configfs"), ConfigfsTsm)
    assert isinstance(open_snp_guest("sev-guest:/dev/x"), SevGuestDevice)
    assert isinstance(open_snp_guest(f"fake:{fake_guest_dir(milan, tmp_path)}"), FakeSnpGuest)
    for bad in ("fake", "tdx", "off:x", ""):
        with pytest.raises(ValueError, match="is not off"):
            open_snp_guest(bad)


def test_broker_serves_the_configured_interface_only(milan: FakeAmd, guest: FakeSnpGuest) -> None:
    assert HostFacts().snp_report(DATA) is None
    got = HostFacts(snp=guest).snp_report(DATA)
    assert got is not None
    _verifies(milan, got)
    # the request carries 64 bytes and nothing else (no path, no VMPL)
    with pytest.raises(TransportError, match="64 bytes"):
        p.SnpReportRequest.from_json({"report_data": "00" * 63})
    with pytest.raises(TransportError, match="unknown member"):
        p.SnpReportRequest.from_json({"report_data": "00" * 64, "vmpl": 1})
    assert snp_report_from_json(snp_report_to_json(got)) == got
    assert snp_report_from_json(snp_report_to_json(None)) is None
    with pytest.raises(TransportError, match="at most 4000"):
        snp_report_from_json({"report": "00" * 4001, "certs": None})
    with pytest.raises(TransportError, match="certificates without a report"):
        snp_report_from_json({"report": None, "certs": "00"})
