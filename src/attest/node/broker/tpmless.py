"""``TpmlessNode``: the broker's services on a node without a TPM (``attestd-tpm --no-tpm``).

An SEV-SNP guest launched without a (v)TPM proves itself with its SEV-SNP report alone
(docs/snp.md, "A guest without a vTPM"). Its attestd-tpm opens no TPM and keeps no runtime
or audit log -- a log that no PCR anchors would be the node's word only, so none is kept
rather than one that looks anchored. It still does what attestd may not: asks the AMD-SP for
reports (``snp_report``, ``--snp-guest``) and reads the kernel command line and the firmware
log (when there is one). dm-verity devices are not watched: their events go in the runtime log.

Every TPM operation (identity, PCRs, quotes, credential activation, measurements, the logs,
the NV counter) answers ``NoTpmError`` naming why, never a crash; the API maps it to 409.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from attest.errors import NoTpmError
from attest.eventlog.cel import CelRecord
from attest.model import PcrSelection, PcrValues
from attest.node.broker.host import HostFacts, ServesHostFacts
from attest.node.port import (
    LOW_SPACE_BYTES,
    NodeIdentity,
    StateFs,
)
from attest.node.tpm.port import RawQuote

logger = logging.getLogger(__name__)


def no_tpm(what: str) -> NoReturn:
    raise NoTpmError(f"this node has no TPM (attestd-tpm --no-tpm): {what} needs one")


class TpmlessNode(ServesHostFacts):
    """Implements the broker's node (``attest.node.broker.services.BrokerNode``) without a TPM:
    the host facts and SEV-SNP reports of ``host``, the free space of ``state_dir``."""

    def __init__(
        self, host: HostFacts, state_dir: Path, *, low_space_bytes: int = LOW_SPACE_BYTES
    ) -> None:
        self.host = host
        self.state_dir = state_dir
        self.low_space_bytes = low_space_bytes

    def identity(self) -> NodeIdentity:
        no_tpm("an identity (AK, EK)")

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        no_tpm("reading PCRs")

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        no_tpm("a quote")

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        no_tpm("credential activation")

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        no_tpm("a runtime measurement")

    def runtime_log(self, start: int = 0) -> tuple[CelRecord, ...]:
        no_tpm("the runtime log")

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        no_tpm("the audit log (anchored in the runtime PCR)")

    def audit_log(self, start: int = 0) -> tuple[Mapping[str, Any], ...]:
        no_tpm("the audit log (anchored in the runtime PCR)")

    def nv_counter_read(self, index: int) -> int:
        no_tpm("the NV counter")

    def nv_counter_define(self, index: int) -> int:
        no_tpm("the NV counter")

    def nv_counter_increment(self, index: int) -> int:
        no_tpm("the NV counter")

    def state_fs(self) -> StateFs:
        st = os.statvfs(self.state_dir)
        return StateFs(
            free_bytes=st.f_bavail * st.f_frsize,
            total_bytes=st.f_blocks * st.f_frsize,
            threshold_bytes=self.low_space_bytes,
        )

    def close(self) -> None:
        self.host.close()
