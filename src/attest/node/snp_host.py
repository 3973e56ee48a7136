"""An SEV-SNP host names its chip: the adapters (node side) and the ``snp-host`` runtime event.

An SEV-SNP guest's VCEK-signed report names the chip it runs on (CHIP_ID). When the host's own
runtime log holds that chip id, extended into its runtime PCR and served with a quote that
answers the verifier's challenge, the host's TPM vouches that such a guest runs on this host
(docs/snp.md, "A guest without a vTPM"). attestd-tpm records the event itself at start
(``--snp-host``); no socket may measure it (``attest.node.broker.protocol``).

``SnpHost.chip_ids()`` returns the chip ids of the host's sockets (64 bytes each; an all-zero
id, a socket that is not there, is left out). Two implementations, chosen by
``open_snp_host(spec)``:

- ``sev[:DEVICE]`` (``SevHostDevice``): the host's ``/dev/sev`` (include/uapi/linux/psp-sev.h):
  ``SEV_ISSUE_CMD`` = ``_IOWR('S', 0x0, struct sev_issue_cmd {__u32 cmd; __u64 data; __u32
  error;} __packed)`` with ``cmd`` = ``SEV_GET_ID2`` (8) and ``data`` the address of ``struct
  sev_user_data_get_id2 {__u64 address; __u32 length;} __packed``. As the kernel documents
  (drivers/crypto/ccp/sev-dev.c, ``sev_ioctl_do_get_id2``; QEMU's ``sev_get_cpu0_id`` does the
  same), the first call with no buffer fails with ``SEV_RET_INVALID_LEN`` (4) and ``length``
  set to the size needed; the second call passes a buffer of that size (bounded here: at most
  ``MAX_CHIP_IDS`` ids of 64 bytes). The SEV API's GET_ID answers one 64-byte id per socket.
- ``fake:HEX`` (``FakeSnpHost``): the chip id given (128 hex digits), for tests and demos.

``record_chip_ids(runtime, ids)``: the ``snp-host`` events of this boot's runtime log, each id
recorded once per boot (an attestd-tpm restart within a boot adds none); a log that already
records a chip id the host did not name now refuses (``SnpHostError``), so attestd-tpm does
not start: a host whose log names another chip is not this host, or was tampered with.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from attest.errors import SnpHostError
from attest.eventlog.cel import CelRecord
from attest.runtime import CONTENT_TYPE_PREFIX, KIND_SNP_HOST, SnpHostChip, parse_content

logger = logging.getLogger(__name__)

SEV_DEVICE = Path("/dev/sev")
CHIP_ID_SIZE = 64
MAX_CHIP_IDS = 8  # sockets; GET_ID answers two today
SEV_GET_ID2 = 8  # enum in psp-sev.h: FACTORY_RESET 0 .. GET_ID 7, GET_ID2 8
SEV_RET_INVALID_LEN = 4  # sev_ret_code


class SnpHost(Protocol):
    def chip_ids(self) -> tuple[bytes, ...]:
        """The chip ids of this host (64 bytes each, none all zero, at least one). Raises
        ``SnpHostError``."""
        ...


class _IssueCmd(ctypes.Structure):  # struct sev_issue_cmd (__packed)
    _pack_ = 1
    _fields_ = [("cmd", ctypes.c_uint32), ("data", ctypes.c_uint64), ("error", ctypes.c_uint32)]


class _GetId2(ctypes.Structure):  # struct sev_user_data_get_id2 (__packed)
    _pack_ = 1
    _fields_ = [("address", ctypes.c_uint64), ("length", ctypes.c_uint32)]


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("S") << 8) | nr


SEV_ISSUE_CMD = _iowr(0x0, ctypes.sizeof(_IssueCmd))

Ioctl = Callable[[int, int, bytearray], int]


def _ioctl(fd: int, request: int, arg: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, arg, True))


def split_chip_ids(raw: bytes, where: str) -> tuple[bytes, ...]:
    """The 64-byte ids of a GET_ID answer, all-zero ones (absent sockets) left out, duplicates
    once. ``SnpHostError`` for a length that is not a whole number of ids, or no id at all."""
    if not raw or len(raw) % CHIP_ID_SIZE or len(raw) > MAX_CHIP_IDS * CHIP_ID_SIZE:
        raise SnpHostError(
            f"{where}: a chip id answer of {len(raw)} bytes (want 1..{MAX_CHIP_IDS} ids of "
            f"{CHIP_ID_SIZE} bytes)"
        )
    ids: list[bytes] = []
    for i in range(0, len(raw), CHIP_ID_SIZE):
        chip = bytes(raw[i : i + CHIP_ID_SIZE])
        if any(chip) and chip not in ids:
            ids.append(chip)
    if not ids:
        raise SnpHostError(f"{where}: every chip id is all zero (masked): it names no chip")
    return tuple(ids)


class SevHostDevice:
    """``SEV_GET_ID2`` on the host's ``/dev/sev`` (module docstring). ``ioctl``: ``fcntl.ioctl``
    with a mutable buffer (a parameter so that the buffer handling is tested without the
    device)."""

    def __init__(self, path: Path = SEV_DEVICE, *, ioctl: Ioctl = _ioctl) -> None:
        self.path, self._ioctl = path, ioctl
        self._lock = threading.Lock()

    def chip_ids(self) -> tuple[bytes, ...]:
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise SnpHostError(f"cannot open {self.path}: {exc.strerror}") from None
            try:
                return self._request(fd)
            finally:
                os.close(fd)

    def _issue(self, fd: int, arg: _GetId2) -> tuple[OSError | None, int]:
        """One SEV_ISSUE_CMD of SEV_GET_ID2: the OS error (None: it succeeded) and the
        firmware's error code the kernel wrote back."""
        buf = bytearray(bytes(_IssueCmd(SEV_GET_ID2, ctypes.addressof(arg), 0)))
        err: OSError | None = None
        try:
            self._ioctl(fd, SEV_ISSUE_CMD, buf)
        except OSError as exc:
            err = exc
        return err, _IssueCmd.from_buffer_copy(bytes(buf)).error

    def _request(self, fd: int) -> tuple[bytes, ...]:
        query = _GetId2(0, 0)
        err, fw = self._issue(fd, query)
        if err is not None and fw != SEV_RET_INVALID_LEN:
            raise SnpHostError(
                f"{self.path}: SEV_GET_ID2 failed ({err.strerror or err}; firmware error {fw:#x})"
            )
        size = query.length
        if not CHIP_ID_SIZE <= size <= MAX_CHIP_IDS * CHIP_ID_SIZE or size % CHIP_ID_SIZE:
            raise SnpHostError(
                f"{self.path}: the AMD-SP asks for a chip id buffer of {size} bytes (want "
                f"1..{MAX_CHIP_IDS} ids of {CHIP_ID_SIZE} bytes)"
            )
        out = ctypes.create_string_buffer(size)
        arg = _GetId2(ctypes.addressof(out), size)
        err, fw = self._issue(fd, arg)
        if err is not None or fw != 0:
            why = err.strerror if err is not None and err.strerror else err or "no OS error"
            raise SnpHostError(f"{self.path}: SEV_GET_ID2 failed ({why}; firmware error {fw:#x})")
        if arg.length > size:
            raise SnpHostError(f"{self.path}: the AMD-SP wrote {arg.length} bytes into {size}")
        return split_chip_ids(out.raw[: arg.length], str(self.path))


class FakeSnpHost:
    """A host whose chip id is given (``fake:HEX``): tests and demos without SEV-SNP."""

    def __init__(self, chip_id: bytes) -> None:
        if len(chip_id) != CHIP_ID_SIZE:
            raise SnpHostError(f"fake SNP host: one chip id of {CHIP_ID_SIZE} bytes")
        self._ids = split_chip_ids(chip_id, "fake SNP host")

    def chip_ids(self) -> tuple[bytes, ...]:
        return self._ids


def open_snp_host(spec: str) -> SnpHost | None:
    """The adapter a ``--snp-host`` value names: ``off`` (None), ``sev[:DEVICE]`` or
    ``fake:HEX`` (128 hex digits). ``ValueError`` for anything else (``SnpHostError`` for a
    fake chip id that names no chip)."""
    kind, _, arg = spec.partition(":")
    if kind == "off" and not arg:
        return None
    if kind == "sev":
        return SevHostDevice(Path(arg) if arg else SEV_DEVICE)
    if kind == "fake" and arg:
        try:
            chip = bytes.fromhex(arg)
        except ValueError:
            raise ValueError(f"fake:{arg[:16]}... is not hex") from None
        if len(chip) != CHIP_ID_SIZE:
            raise ValueError(f"fake:HEX takes {2 * CHIP_ID_SIZE} hex digits, not {len(arg)}")
        return FakeSnpHost(chip)
    raise ValueError(f"{spec[:40]!r} is not off, sev[:DEVICE] or fake:HEX")


# --- the runtime event ---------------------------------------------------------------------------


class _Runtime(Protocol):
    """What this needs of ``attest.node.logs.runtime.RuntimeLog``."""

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord: ...

    def records(self, start: int = 0) -> tuple[CelRecord, ...]: ...

    def add_reset_hook(self, hook: Callable[[], object]) -> None: ...


def recorded_chip_ids(runtime: _Runtime) -> dict[bytes, int]:
    """The chip ids of this boot's ``snp-host`` events, with the first event's number."""
    out: dict[bytes, int] = {}
    for rec in runtime.records(0):
        if rec.content_type != CONTENT_TYPE_PREFIX + KIND_SNP_HOST:
            continue
        detail = parse_content(KIND_SNP_HOST, rec.content)
        assert isinstance(detail, SnpHostChip)
        out.setdefault(detail.chip_id, rec.recnum)
    return out


def check_chip_ids(runtime: _Runtime, ids: Iterable[bytes]) -> dict[bytes, int]:
    """This boot's recorded chip ids (``recorded_chip_ids``), when all are among ``ids``;
    ``SnpHostError`` when the log already records another chip (attestd-tpm checks this before
    it measures its start, so that a refused start records nothing)."""
    wanted = tuple(ids)
    held = recorded_chip_ids(runtime)
    foreign = [(chip, n) for chip, n in held.items() if chip not in wanted]
    if foreign:
        chip, n = foreign[0]
        raise SnpHostError(
            f"this boot's runtime log already records SEV-SNP chip {chip.hex()[:16]}... "
            f"(runtime event {n}), which is not this host's "
            f"({', '.join(c.hex()[:16] + '...' for c in wanted)}): refusing to record "
            "another chip in the same boot"
        )
    return held


def record_chip_ids(runtime: _Runtime, ids: Iterable[bytes]) -> tuple[int, ...]:
    """Record an ``snp-host`` event for each of ``ids`` that this boot's runtime log does not
    hold yet; returns the new events' numbers (none after a restart within the boot).
    ``SnpHostError`` when the log already records a chip id not among ``ids``: nothing is
    recorded then."""
    wanted = tuple(ids)
    held = check_chip_ids(runtime, wanted)
    new = []
    for chip in wanted:
        if chip in held:
            logger.info(
                "SEV-SNP chip %s... already recorded (event %d)", chip.hex()[:16], held[chip]
            )
            continue
        rec = runtime.measure(KIND_SNP_HOST, {"chip_id": chip.hex()})
        logger.info("SEV-SNP chip %s... recorded in runtime event %d", chip.hex()[:16], rec.recnum)
        new.append(rec.recnum)
    return tuple(new)


def keep_recorded(runtime: _Runtime, ids: Iterable[bytes]) -> tuple[int, ...]:
    """``record_chip_ids`` now, and again whenever the runtime log starts afresh after a TPM
    reset (its reset hook): every boot's log holds the host's chips. attestd-tpm's start."""
    wanted = tuple(ids)
    new = record_chip_ids(runtime, wanted)
    runtime.add_reset_hook(lambda: record_chip_ids(runtime, wanted))
    return new
