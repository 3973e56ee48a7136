"""``Services``: what the operations of ``attest.node.broker.protocol.OPS`` run against in the
broker -- the node, the upgrade gate and the guest vTPMs -- as seen from one connection (its
socket, the kinds that socket may measure, its peer's uid)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from attest.errors import OperationNotAllowed
from attest.eventlog.cel import CelRecord
from attest.node.broker.upgrades import BrokerUpgrades
from attest.node.port import NodePort
from attest.node.tpm.vtpm import VtpmManager


class BrokerNode(NodePort, Protocol):
    """What the broker serves: ``attest.node.broker.local.LocalNode`` (a TPM), or
    ``attest.node.broker.tpmless.TpmlessNode`` (``--no-tpm``: every TPM operation refused)."""

    def nv_counter_define(self, index: int) -> int: ...

    def nv_counter_increment(self, index: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Services:
    node: BrokerNode
    gate: BrokerUpgrades | None
    vtpm_manager: VtpmManager | None
    socket: str  # "api" or "operator", for messages
    measure_kinds: frozenset[str]
    uid: int

    @property
    def operator(self) -> str:
        """The peer as the vTPM manager's audit entries name it (pseudonymised there)."""
        return f"uid:{self.uid}"

    def upgrades(self) -> BrokerUpgrades:
        if self.gate is None:
            raise OperationNotAllowed("attestd-tpm does not run the upgrade gate (--slots-dir)")
        return self.gate

    def vtpms(self) -> VtpmManager:
        if self.vtpm_manager is None:
            raise OperationNotAllowed("attestd-tpm does not manage guest vTPMs (--vtpm-dir)")
        return self.vtpm_manager

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        """``BrokerNode.measure`` for the kinds this socket may measure."""
        if kind not in self.measure_kinds:
            raise OperationNotAllowed(
                f"measuring {kind!r} events is not allowed on the {self.socket} socket"
            )
        return self.node.measure(kind, content)
