"""``LocalNode``: the node's privileged services in-process, around any ``TpmPort``.

The broker serves one of these over its sockets; the API tests and benchmarks use one directly
(with a ``FakeTpm``), so both paths run the same code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attest.errors import OperationNotAllowed, TpmError
from attest.eventlog.cel import CelRecord
from attest.model import PcrSelection, PcrValues
from attest.node.broker.host import HostFacts, ServesHostFacts
from attest.node.logs.audit import AuditLog
from attest.node.logs.runtime import RuntimeLog
from attest.node.port import (
    LOW_SPACE_BYTES,
    NodeIdentity,
    StateFs,
)
from attest.node.tpm.port import RawQuote, TpmPort
from attest.runtime import AUDIT_KINDS, DEFAULT_RUNTIME_PCR, KIND_SNP_HOST, KIND_VTPM

RUNTIME_LOG_NAME = "runtime.log"
AUDIT_LOG_NAME = "audit.log"
AUDIT_KEY_NAME = "audit.key"

logger = logging.getLogger(__name__)


class LocalNode(ServesHostFacts):
    """Implements ``attest.node.port.NodePort`` in-process. Thread-safe (the TPM port, the runtime
    log and the audit log each are). ``host``: where the firmware log, the kernel command
    line and the verity report come from (``HostFacts``; by default none: the node has none).
    ``close()`` stops the verity watcher and closes the logs and the TPM."""

    def __init__(
        self,
        tpm: TpmPort,
        runtime: RuntimeLog,
        audit: AuditLog,
        *,
        low_space_bytes: int = LOW_SPACE_BYTES,
        host: HostFacts | None = None,
    ) -> None:
        self.tpm = tpm
        self.runtime = runtime
        self.audit = audit
        self.host = host if host is not None else HostFacts()
        self.low_space_bytes = low_space_bytes
        self._low = False  # the last state_fs was low (its warning is logged once)
        self._identity: NodeIdentity | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        tpm: TpmPort,
        state_dir: str | os.PathLike[str],
        *,
        pcr: int = DEFAULT_RUNTIME_PCR,
        low_space_bytes: int = LOW_SPACE_BYTES,
        host: HostFacts | None = None,
    ) -> LocalNode:
        """The node with its logs in ``state_dir`` (``runtime.log``, ``audit.log``,
        ``audit.key``), reconciled with the TPM. Free space below ``low_space_bytes`` on
        that file system is reported as low (``state_fs``)."""
        state = Path(state_dir)
        runtime = RuntimeLog(state / RUNTIME_LOG_NAME, tpm, pcr=pcr)
        audit = AuditLog(state / AUDIT_LOG_NAME, state / AUDIT_KEY_NAME, runtime)
        return cls(tpm, runtime, audit, low_space_bytes=low_space_bytes, host=host)

    def identity(self) -> NodeIdentity:
        with self._lock:
            if self._identity is None:
                try:
                    ek = self.tpm.ek_public()
                except TpmError as exc:
                    if exc.rc:  # the TPM failed: do not cache an identity without the EK
                        raise
                    ek = None  # a TPM without an EK (the fake): no credential activation
                self._identity = NodeIdentity(
                    ak=self.tpm.ak_public(),
                    ek=ek,
                    ek_certificates=self.tpm.ek_certificates(),
                    banks=self.tpm.banks(),
                )
            return self._identity

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        return self.tpm.read_pcrs(selection)

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        """A quote. When the TPM adapter had to recover for it (the TPM restarted or was
        reset since the last command), the runtime log is reconciled first -- after a reset
        it starts afresh and the reset hooks record the start events again -- and the quote
        is taken again, so that it covers the log served with it."""
        before = self.tpm.recoveries()
        quote = self.tpm.quote(selection, qualifying_data)
        if self.tpm.recoveries() == before:
            return quote
        rotated = len(self.runtime.rotated)
        self.runtime.records()  # reconciles with the PCR: rotates on a reset
        if len(self.runtime.rotated) == rotated:
            return quote
        return self.tpm.quote(selection, qualifying_data)

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        return self.tpm.activate_credential(id_object, encrypted_secret)

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        if kind in AUDIT_KINDS:
            raise OperationNotAllowed("audit anchors are written by the audit log only")
        if kind == KIND_VTPM:
            raise OperationNotAllowed("vTPMs are vouched for by vtpm_create / vtpm_record only")
        if kind == KIND_SNP_HOST:
            raise OperationNotAllowed("the host's SEV-SNP chip is recorded by attestd-tpm only")
        return self.runtime.measure(kind, content)

    def runtime_log(self, start: int = 0) -> tuple[CelRecord, ...]:
        return self.runtime.records(start)

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.audit.record(event).to_json()

    def audit_log(self, start: int = 0) -> tuple[Mapping[str, Any], ...]:
        return tuple(e.to_json() for e in self.audit.entries(start))

    def nv_counter_read(self, index: int) -> int:
        return self.tpm.nv_counter_read(index)

    def nv_counter_define(self, index: int) -> int:
        return self.tpm.nv_counter_define(index)

    def nv_counter_increment(self, index: int) -> int:
        return self.tpm.nv_counter_increment(index)

    def state_fs(self) -> StateFs:
        st = os.statvfs(self.runtime.path.parent)
        fs = StateFs(
            free_bytes=st.f_bavail * st.f_frsize,
            total_bytes=st.f_blocks * st.f_frsize,
            threshold_bytes=self.low_space_bytes,
            write_failures=self.runtime.storage_failures + self.audit.storage_failures,
        )
        if fs.low != self._low:
            self._low = fs.low
            log = logger.warning if fs.low else logger.info
            log(
                "state file system of %s: %d bytes free (low below %d bytes): %s",
                self.runtime.path.parent,
                fs.free_bytes,
                fs.threshold_bytes,
                "LOW" if fs.low else "enough again",
            )
        return fs

    def close(self) -> None:
        self.host.close()
        self.audit.close()
        self.runtime.close()
        self.tpm.close()
