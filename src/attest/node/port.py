"""The node port: everything the network-facing daemon may ask of the node's privileged side.

The API process (``attestd``) holds no TPM handle. It talks to a ``NodePort``:

- in production, ``attest.node.broker.client.BrokerClient`` -- a narrow, typed protocol over a Unix
  socket to the privileged helper (``attestd-tpm``) that owns the TPM, the runtime
  measurement log and the audit log;
- in tests and benchmarks, ``attest.node.broker.local.LocalNode`` -- the same services in-process
  around any ``TpmPort`` (a ``FakeTpm`` or an ``EsapiTpm``).

Only the privileged side extends the runtime PCR, so the log and the PCR cannot diverge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from attest.eventlog.cel import CelRecord
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.tpm.port import RawQuote
from attest.tpmstruct import Public
from attest.verity.devices import VerityReport


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What a verifier needs to enroll the node: EK certificates (DER, by NV index), the EK
    public area (for credential activation; None when the TPM has none, e.g. the fake), the
    AK public area, and the PCR banks."""

    ak: Public
    ek: Public | None
    ek_certificates: Mapping[int, bytes] = field(default_factory=dict)
    banks: tuple[HashAlg, ...] = ()


# Below this many free bytes on the state file system the broker reports ``low``
# (docs/runtime-log.md, "A full state file system"); ``attestd-tpm --low-space-bytes``.
LOW_SPACE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StateFs:
    """The file system of the broker's state directory (runtime log, audit log): bytes free
    to the broker, the size, the ``low`` threshold, whether free space is below it, and how
    many records were refused because a log could not be written (since the broker started)."""

    free_bytes: int
    total_bytes: int
    threshold_bytes: int
    write_failures: int = 0

    @property
    def low(self) -> bool:
        return self.free_bytes < self.threshold_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "free_bytes": self.free_bytes,
            "total_bytes": self.total_bytes,
            "threshold_bytes": self.threshold_bytes,
            "low": self.low,
            "write_failures": self.write_failures,
        }


# The firmware event log travels in chunks of at most this many bytes (a request for more is
# capped by the broker); a log over MAX_FIRMWARE_LOG bytes is not served at all.
FIRMWARE_LOG_CHUNK = 1 << 20
MAX_FIRMWARE_LOG = 4 << 20
# The kernel command line is read up to this many bytes (COMMAND_LINE_SIZE is 2048 on x86;
# some architectures allow more).
MAX_KERNEL_CMDLINE = 1 << 16


# An SEV-SNP report and its certificate table (attest.node.snp_guest): the bounds both sides keep.
SNP_REPORT_DATA = 64
MAX_SNP_REPORT = 4000
MAX_SNP_CERTS = 64 * 1024


@dataclass(frozen=True, slots=True)
class SnpGuestReport:
    """An SEV-SNP report as the guest's kernel returned it, and the certificate table the host
    served with it (None: none)."""

    report: bytes
    certs: bytes | None


@dataclass(frozen=True, slots=True)
class FirmwareLogChunk:
    """``data``: the firmware event log's bytes from ``offset`` on (possibly fewer than asked
    for); ``total``: the size of the whole log. ``offset == total`` and no data: the end."""

    offset: int
    total: int
    data: bytes


class NodePort(Protocol):
    def identity(self) -> NodeIdentity: ...

    def read_pcrs(self, selection: PcrSelection) -> PcrValues: ...

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote: ...

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes: ...

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        """Append a runtime event to the runtime log and extend it into the runtime PCR."""
        ...

    def runtime_log(self, start: int = 0) -> tuple[CelRecord, ...]:
        """Runtime log records with recnum >= start."""
        ...

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """Record an operator-access event (pseudonymised, hash-chained, anchored in the
        runtime log); returns the stored entry."""
        ...

    def audit_log(self, start: int = 0) -> tuple[Mapping[str, Any], ...]: ...

    def nv_counter_read(self, index: int) -> int: ...

    def state_fs(self) -> StateFs:
        """Free space on the file system of the node's logs (the low-space report)."""
        ...

    def firmware_log(self, offset: int, max_bytes: int) -> FirmwareLogChunk | None:
        """A chunk of the firmware (TCG PC Client) event log; None when the node has none.
        Which file is read is the privileged side's configuration, never the caller's."""
        ...

    def kernel_cmdline(self) -> str | None:
        """The kernel command line (None when unreadable)."""
        ...

    def verity_report(self) -> VerityReport | None:
        """The latest dm-verity report of the privileged side's watcher (None: not watched)."""
        ...

    def snp_report(self, report_data: bytes) -> SnpGuestReport | None:
        """A fresh SEV-SNP report binding these 64 bytes (None: the privileged side has no
        SEV-SNP guest interface configured). Which interface is its configuration."""
        ...

    def close(self) -> None: ...
