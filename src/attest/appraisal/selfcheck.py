"""The node's self-appraisal (``GET /v1/status``): a plain verdict with reasons, for the node
provider. Pure: the daemon gathers the inputs, this decides.

Verdicts, worst first: ``degraded`` (the TPM or the runtime log is not sound -- the node cannot
prove anything), ``revoked``, ``not-blessed``, ``corrupted`` (a verity device reported a bad
block), ``unknown`` (no trusted registry, or no verity root hash to look up), ``warning``
(blessed, with an overdue embargo disclosure), ``blessed``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from attest.manifest import VerifiedRegistry, evaluate_release
from attest.manifest.evaluate import ReleaseStatus
from attest.verity.devices import VerityReport, VerityStatus


class SelfVerdict(enum.StrEnum):
    """The node's verdict of itself, worst first (``OK``: attestd's own health check, without
    a registry, found the TPM usable; it is never worse than a problem the others name)."""

    DEGRADED = "degraded"
    REVOKED = "revoked"
    NOT_BLESSED = "not-blessed"
    CORRUPTED = "corrupted"
    UNKNOWN = "unknown"
    WARNING = "warning"
    BLESSED = "blessed"
    OK = "ok"


class CheckState(enum.StrEnum):
    """One input's state in ``NodeVerdict.checks`` (tpm, runtime_log, verity, registry)."""

    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CORRUPTED = "corrupted"
    NONE = "none"  # verity: no root hash named anywhere
    UNBACKED = "unbacked"  # verity: the command line's root hash has no active device


_ORDER = tuple(SelfVerdict)


@dataclass(frozen=True, slots=True)
class NodeVerdict:
    verdict: SelfVerdict
    reasons: tuple[str, ...]
    release: dict[str, Any] | None = None
    checks: dict[str, CheckState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "release": self.release,
            "checks": dict(self.checks),
        }


def evaluate_node(
    *,
    tpm_error: str | None,
    runtime_error: str | None,
    verity: VerityReport | None,
    registry: VerifiedRegistry | None,
    registry_error: str | None,
    now: datetime,
    root_devno: str | None = None,
) -> NodeVerdict:
    """``root_devno`` ("major:minor" of the device mounted at /) names the root's verity device
    when the kernel command line carries no root hash (a root hash chosen and measured by the
    initramfs, as the VM harness's A/B slots do): that device's root digest is looked up."""
    found: list[tuple[SelfVerdict, str]] = []  # (verdict, reason)
    checks: dict[str, CheckState] = {}
    checks["tpm"] = CheckState.OK if tpm_error is None else CheckState.FAILED
    if tpm_error is not None:
        found.append((SelfVerdict.DEGRADED, f"TPM unavailable: {tpm_error}"))
    checks["runtime_log"] = CheckState.OK if runtime_error is None else CheckState.FAILED
    if runtime_error is not None:
        found.append((SelfVerdict.DEGRADED, f"runtime log: {runtime_error}"))
    release_doc = None
    root_hashes: list[bytes] = []
    if verity is None:
        checks["verity"] = CheckState.UNKNOWN
        found.append((SelfVerdict.UNKNOWN, "dm-verity state unknown (discovery unavailable)"))
    else:
        root_hashes = [h.root_hash for h in verity.cmdline_root_hashes]
        if verity.corrupted:
            checks["verity"] = CheckState.CORRUPTED
            bad = [d.name for d in verity.devices if d.status is VerityStatus.CORRUPTED]
            found.append(
                (SelfVerdict.CORRUPTED, f"dm-verity reported corruption on {', '.join(bad)}")
            )
        elif not root_hashes and (root_dev := _root_device(verity, root_devno)) is not None:
            checks["verity"] = CheckState.OK
            root_hashes = [root_dev]
        elif not root_hashes:
            checks["verity"] = CheckState.NONE
            found.append(
                (
                    SelfVerdict.UNKNOWN,
                    "neither the kernel command line nor the device mounted at "
                    "/ names a dm-verity root hash",
                )
            )
        elif not verity.cmdline_backed:
            checks["verity"] = CheckState.UNBACKED
            missing = ", ".join(h.root_hash.hex()[:16] for h in verity.unbacked)
            found.append(
                (
                    SelfVerdict.NOT_BLESSED,
                    f"root hash(es) {missing}… on the kernel command line "
                    f"are not backed by an active verity device",
                )
            )
        else:
            checks["verity"] = CheckState.OK
    if registry is None:
        checks["registry"] = CheckState.UNKNOWN
        found.append(
            (SelfVerdict.UNKNOWN, f"no trusted registry: {registry_error or 'not configured'}")
        )
    elif root_hashes:
        checks["registry"] = CheckState.OK
        for root in root_hashes:
            decision = evaluate_release(registry, verity_root_hash=root, now=now)
            release_doc = decision.to_json()
            if decision.status is ReleaseStatus.BLESSED:
                continue
            verdict = {
                ReleaseStatus.REVOKED: SelfVerdict.REVOKED,
                ReleaseStatus.NOT_BLESSED: SelfVerdict.NOT_BLESSED,
                ReleaseStatus.EMBARGOED_OVERDUE: SelfVerdict.WARNING,
            }[decision.status]
            found.append((verdict, "; ".join(decision.reasons)))
    if not found:
        return NodeVerdict(
            SelfVerdict.BLESSED,
            ("image, verity root and runtime log check out",),
            release_doc,
            checks,
        )
    worst = min(found, key=lambda f: _ORDER.index(f[0]))[0]
    return NodeVerdict(worst, tuple(reason for _, reason in found), release_doc, checks)


def _root_device(verity: VerityReport, root_devno: str | None) -> bytes | None:
    """The root digest of the verity device mounted at / (``root_devno``), if it is one."""
    if root_devno is None:
        return None
    for d in verity.devices:
        if d.devno == root_devno and d.root_digest is not None:
            return d.root_digest
    return None
