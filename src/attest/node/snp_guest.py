"""An SEV-SNP guest asks its AMD-SP for an attestation report: the adapters (node side).

``SnpGuest.get_report(report_data)`` returns the raw ATTESTATION_REPORT (1184 bytes, REPORT_DATA
= the 64 bytes asked for) and, when the host supplies one, the certificate table (the GHCB
extended-report table: VCEK or VLEK, ASK / ASVK, ARK; ``attest.snp.certtable``). Three
implementations, chosen by ``open_snp_guest(spec)`` (attestd-tpm's ``--snp-guest``):

- ``configfs`` (``ConfigfsTsm``): the kernel's configfs-TSM report interface (Linux 6.7+,
  Documentation/ABI/testing/configfs-tsm): an entry directory under
  ``/sys/kernel/config/tsm/report/`` whose ``provider`` must be ``sev_guest``; write
  ``privlevel`` (the VMPL, optional) and ``inblob`` (REPORT_DATA), read ``outblob`` (the
  report) and ``auxblob`` (the certificate table, empty when the host has none). The ABI's
  race check: ``generation`` counts the writes to the entry, so it is read before the writes
  and again after the reads, and any other value than ours plus our writes means another
  process wrote the entry in between -- the blobs may answer its request, and are refused.
- ``sev-guest`` (``SevGuestDevice``): the legacy ``/dev/sev-guest`` ioctls of
  ``include/uapi/linux/sev-guest.h``: ``SNP_GET_EXT_REPORT`` (report and certificate table)
  falling back to ``SNP_GET_REPORT`` when the host serves no certificates. Every buffer is a
  fixed-size ctypes buffer; the certificate buffer grows once, to the size the kernel asks
  for, and never beyond ``MAX_CERTS``.
- ``fake:DIR`` (``FakeSnpGuest``): no hardware. DIR holds ``report.bin`` (a report to copy),
  ``key.pem`` (the P-384 key that signs it -- in tests, a VCEK of the fake AMD chain of
  ``attest.testing.snp``) and optionally ``certs.bin`` (the table served with it); each
  request is the template with REPORT_DATA set and re-signed. For tests and demos without
  SEV-SNP hardware; its reports verify only against the fake chain's pinned root.

Where this runs: in attestd-tpm (``attest.node.broker``, the ``snp_report`` operation), not
in attestd. ``/dev/sev-guest`` is a device node and the configfs-TSM tree needs write access to
``/sys/kernel/config``; attestd runs without device access or write access outside its state
(docs/daemon-hardening.md), like the firmware log and dm-verity reads, which the broker does
for it. The broker takes only the 64 bytes of REPORT_DATA from attestd: no path, VMPL or
device is the caller's to choose.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attest.errors import SnpGuestError
from attest.node.port import MAX_SNP_CERTS, MAX_SNP_REPORT, SNP_REPORT_DATA, SnpGuestReport

logger = logging.getLogger(__name__)

REPORT_DATA_SIZE = SNP_REPORT_DATA
REPORT_SIZE = 1184  # ATTESTATION_REPORT, SEV-SNP ABI
SIGNED_SIZE = 0x2A0
MAX_REPORT = MAX_SNP_REPORT  # snp_report_resp.data
MAX_CERTS = MAX_SNP_CERTS  # a certificate table: VCEK/VLEK + ASK + ARK are ~5 KiB
MAX_PROVIDER = 64
CONFIGFS_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST = Path("/dev/sev-guest")


class SnpGuest(Protocol):
    def get_report(self, report_data: bytes) -> SnpGuestReport:
        """A fresh report whose REPORT_DATA is ``report_data`` (64 bytes). Raises
        ``SnpGuestError``."""
        ...


def _check_data(report_data: bytes) -> bytes:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"REPORT_DATA is {REPORT_DATA_SIZE} bytes, not {len(report_data)}")
    return bytes(report_data)


def _check_report(report: bytes, where: str) -> bytes:
    if len(report) < REPORT_SIZE:
        raise SnpGuestError(f"{where}: a report of {len(report)} bytes (want {REPORT_SIZE})")
    return report[:REPORT_SIZE]


# --- configfs-TSM -------------------------------------------------------------------------------


class ConfigfsTsm:
    """The configfs-TSM report interface (module docstring). ``entry``: the name of the report
    directory this process uses (created when missing, kept: its ``generation`` tells another
    user's writes apart). ``privlevel``: the VMPL to ask for, None to leave the kernel's."""

    def __init__(
        self, root: Path = CONFIGFS_ROOT, *, entry: str = "attest", privlevel: int | None = None
    ) -> None:
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise ValueError("privlevel is 0..3")
        if not entry or "/" in entry or entry.startswith("."):
            raise ValueError(f"bad configfs-TSM entry name {entry!r}")
        self.root = root
        self.dir = root / entry
        self.privlevel = privlevel
        self._lock = threading.Lock()

    def _write_attr(self, name: str, data: bytes) -> None:
        """Write one attribute (the kernel bumps ``generation`` for each write)."""
        with open(self.dir / name, "wb", buffering=0) as fh:
            fh.write(data)

    def _read_attr(self, name: str, limit: int) -> bytes:
        with open(self.dir / name, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise SnpGuestError(f"configfs-TSM {name} is over {limit} bytes")
        return data

    def _generation(self) -> int:
        raw = self._read_attr("generation", 32).strip()
        if not raw.isdigit():
            raise SnpGuestError(f"configfs-TSM generation {raw[:32]!r} is not a number")
        return int(raw)

    def get_report(self, report_data: bytes) -> SnpGuestReport:
        data = _check_data(report_data)
        with self._lock:
            try:
                return self._request(data)
            except OSError as exc:
                raise SnpGuestError(
                    f"configfs-TSM report {self.dir}: {exc.strerror or exc}"
                ) from None

    def _request(self, data: bytes) -> SnpGuestReport:
        if not self.root.is_dir():
            raise SnpGuestError(f"no configfs-TSM report interface at {self.root}")
        self.dir.mkdir(exist_ok=True)
        provider = self._read_attr("provider", MAX_PROVIDER).strip().decode("ascii", "replace")
        if provider != "sev_guest":
            raise SnpGuestError(f"the configfs-TSM provider is {provider!r}, not sev_guest")
        before = self._generation()
        writes = 0
        if self.privlevel is not None:
            self._write_attr("privlevel", str(self.privlevel).encode())
            writes += 1
        self._write_attr("inblob", data)
        writes += 1
        report = self._read_attr("outblob", MAX_REPORT)
        aux_path = self.dir / "auxblob"
        certs = self._read_attr("auxblob", MAX_CERTS) if aux_path.exists() else b""
        after = self._generation()
        # Documentation/ABI/testing/configfs-tsm, "generation": compare it before the writes
        # and after reading the blobs to detect a conflicting writer.
        if after != before + writes:
            raise SnpGuestError(
                f"configfs-TSM report {self.dir.name} was written by another process during "
                f"this request (generation {before} -> {after}, expected {before + writes}): "
                "its blobs may answer another request"
            )
        return SnpGuestReport(_check_report(report, "configfs-TSM outblob"), certs or None)


# --- /dev/sev-guest ----------------------------------------------------------------------------


class _ReportReq(ctypes.Structure):  # struct snp_report_req
    _fields_ = [
        ("user_data", ctypes.c_uint8 * 64),
        ("vmpl", ctypes.c_uint32),
        ("rsvd", ctypes.c_uint8 * 28),
    ]


class _ExtReportReq(ctypes.Structure):  # struct snp_ext_report_req
    _fields_ = [
        ("data", _ReportReq),
        ("certs_address", ctypes.c_uint64),
        ("certs_len", ctypes.c_uint32),
    ]


class _GuestRequest(ctypes.Structure):  # struct snp_guest_request_ioctl
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),  # union { u64; { u32 fw_error; u32 vmm_error; } }
    ]


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("S") << 8) | nr


SNP_GET_REPORT = _iowr(0x0, ctypes.sizeof(_GuestRequest))
SNP_GET_EXT_REPORT = _iowr(0x2, ctypes.sizeof(_GuestRequest))
VMM_ERR_INVALID_LEN = 1  # SNP_GUEST_VMM_ERR_INVALID_LEN: certs_len now holds the size needed
_RESP_HEADER = 32  # struct snp_report_resp: u32 status, u32 report_size, u8 reserved[24]

Ioctl = Callable[[int, int, bytearray], int]


def _ioctl(fd: int, request: int, arg: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, arg, True))


class SevGuestDevice:
    """The ``/dev/sev-guest`` ioctls (module docstring). ``ioctl``: ``fcntl.ioctl`` with a
    mutable buffer (a parameter so that the buffer handling is tested without the device)."""

    def __init__(self, path: Path = SEV_GUEST, *, vmpl: int = 0, ioctl: Ioctl = _ioctl) -> None:
        if not 0 <= vmpl <= 3:
            raise ValueError("vmpl is 0..3")
        self.path, self.vmpl, self._ioctl = path, vmpl, ioctl
        self._lock = threading.Lock()

    def get_report(self, report_data: bytes) -> SnpGuestReport:
        data = _check_data(report_data)
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise SnpGuestError(f"cannot open {self.path}: {exc.strerror}") from None
            try:
                return self._request(fd, data)
            finally:
                os.close(fd)

    def _call(
        self, fd: int, request: int, req: ctypes.Structure, resp: ctypes.Array[ctypes.c_char]
    ) -> _GuestRequest:
        guest = _GuestRequest(1, ctypes.addressof(req), ctypes.addressof(resp), 0)
        buf = bytearray(bytes(guest))
        err: OSError | None = None
        try:
            self._ioctl(fd, request, buf)
        except OSError as exc:
            err = exc
        out = _GuestRequest.from_buffer_copy(bytes(buf))
        if err is not None:  # the firmware / VMM error codes travel with it
            raise _IoctlFailed(err, out.exitinfo2)
        return out

    def _request(self, fd: int, data: bytes) -> SnpGuestReport:
        req = _ReportReq()
        ctypes.memmove(req.user_data, data, len(data))
        req.vmpl = self.vmpl
        resp = ctypes.create_string_buffer(MAX_REPORT)
        certs_len = 4 * 4096
        for _ in range(2):
            certs = ctypes.create_string_buffer(certs_len)
            ext = _ExtReportReq(req, ctypes.addressof(certs), certs_len)
            try:
                self._call(fd, SNP_GET_EXT_REPORT, ext, resp)
            except _IoctlFailed as failed:
                vmm_error = failed.exitinfo2 >> 32
                if vmm_error == VMM_ERR_INVALID_LEN and certs_len < ext.certs_len <= MAX_CERTS:
                    certs_len = ext.certs_len
                    continue
                if vmm_error == VMM_ERR_INVALID_LEN:
                    raise SnpGuestError(
                        f"{self.path}: the host's certificate table of {ext.certs_len} bytes "
                        f"is over {MAX_CERTS}"
                    ) from None
                logger.info("SNP_GET_EXT_REPORT failed (%s): trying SNP_GET_REPORT", failed)
                return SnpGuestReport(self._plain(fd, req, resp), None)
            table = certs.raw[: ext.certs_len]
            return SnpGuestReport(self._parse_resp(resp), table if any(table) else None)
        raise SnpGuestError(f"{self.path}: the certificate table kept growing")

    def _plain(self, fd: int, req: _ReportReq, resp: ctypes.Array[ctypes.c_char]) -> bytes:
        try:
            self._call(fd, SNP_GET_REPORT, req, resp)
        except _IoctlFailed as failed:
            raise SnpGuestError(f"{self.path}: SNP_GET_REPORT failed ({failed})") from None
        return self._parse_resp(resp)

    def _parse_resp(self, resp: ctypes.Array[ctypes.c_char]) -> bytes:
        raw = resp.raw
        status = int.from_bytes(raw[0:4], "little")
        size = int.from_bytes(raw[4:8], "little")
        if status != 0:
            raise SnpGuestError(f"{self.path}: the AMD-SP answered status {status:#x}")
        if size > MAX_REPORT - _RESP_HEADER:
            raise SnpGuestError(f"{self.path}: a report size of {size} bytes is out of bounds")
        return _check_report(raw[_RESP_HEADER : _RESP_HEADER + size], str(self.path))


class _IoctlFailed(Exception):
    def __init__(self, err: OSError, exitinfo2: int) -> None:
        super().__init__(
            f"{err.strerror or err}; fw_error {exitinfo2 & 0xFFFFFFFF:#x}, "
            f"vmm_error {exitinfo2 >> 32:#x}"
        )
        self.exitinfo2 = exitinfo2


# --- no hardware -------------------------------------------------------------------------------


class FakeSnpGuest:
    """Reports made from a template and a signing key (module docstring): tests and demos."""

    def __init__(self, template: bytes, key: ec.EllipticCurvePrivateKey, certs: bytes | None):
        if len(template) != REPORT_SIZE or not isinstance(key.curve, ec.SECP384R1):
            raise ValueError("a fake SNP guest needs a 1184-byte report and a P-384 key")
        self.template, self.key, self.certs = template, key, certs

    @classmethod
    def from_dir(cls, directory: Path) -> FakeSnpGuest:
        try:
            template = (directory / "report.bin").read_bytes()
            key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
            certs_path = directory / "certs.bin"
            certs = certs_path.read_bytes() if certs_path.exists() else None
        except (OSError, ValueError) as exc:
            raise SnpGuestError(f"fake SNP guest {directory}: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SnpGuestError(f"fake SNP guest {directory}: key.pem is not an EC key")
        try:
            return cls(template, key, certs)
        except ValueError as exc:
            raise SnpGuestError(f"fake SNP guest {directory}: {exc}") from None

    def get_report(self, report_data: bytes) -> SnpGuestReport:
        data = _check_data(report_data)
        body = bytearray(self.template)
        body[0x50 : 0x50 + REPORT_DATA_SIZE] = data
        der = self.key.sign(bytes(body[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        body[SIGNED_SIZE:] = bytes(REPORT_SIZE - SIGNED_SIZE)
        body[SIGNED_SIZE : SIGNED_SIZE + 72] = r.to_bytes(72, "little")
        body[SIGNED_SIZE + 72 : SIGNED_SIZE + 144] = s.to_bytes(72, "little")
        return SnpGuestReport(bytes(body), self.certs)


def open_snp_guest(spec: str) -> SnpGuest | None:
    """The adapter a ``--snp-guest`` value names: ``off`` (None), ``configfs[:ROOT]``,
    ``sev-guest[:DEVICE]`` or ``fake:DIR``. ``ValueError`` for anything else."""
    kind, _, arg = spec.partition(":")
    if kind == "off" and not arg:
        return None
    if kind == "configfs":
        return ConfigfsTsm(Path(arg) if arg else CONFIGFS_ROOT)
    if kind == "sev-guest":
        return SevGuestDevice(Path(arg) if arg else SEV_GUEST)
    if kind == "fake" and arg:
        return FakeSnpGuest.from_dir(Path(arg))
    raise ValueError(f"{spec!r} is not off, configfs[:ROOT], sev-guest[:DEVICE] or fake:DIR")
