"""The appraisal seam of the fleet service.

The poller calls one function per challenge with the signature of
``attest.appraisal.appraise_incremental`` (the ``Appraiser`` protocol: tests and the benchmark
may inject another): the node's ``NodeMemory`` goes in and the next one comes back with the
result, so each log is fetched and checked only from where the last appraisal ended. It stores
what ``summarize`` reads off the ``AppraisalResult``: the EAR status as the node's
``NodeStatus`` (affirming / warning / contraindicated / none), the explanation of the first
divergence and the others, the release the node *attested to* (only from the authenticated
dm-verity root hash the appraisal matched in the registry -- never the version string the node
claims), the quote's clock for the next appraisal's ``previous``, and the full ``to_json()``.

Every appraisal is made under the service's ``VerifierRules`` (``--policy``; the EAR's policy
id names them) with the node's ``Continuity`` from the store (what this verifier verified of
the node before, across restarts of the service); ``result.continuity`` is stored back. The
incremental ``NodeMemory`` is separate: it lives in the worker only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import orjson

from attest.appraisal import AppraisalResult, Appraised, appraise_incremental
from attest.appraisal.memory import Continuity, FirmwareReplayCache, NodeMemory
from attest.appraisal.rules import VerifierRules
from attest.enroll import Enrollment
from attest.manifest import VerifiedRegistry
from attest.manifest.evaluate import ReleaseStatus
from attest.model import PcrSelection
from attest.tpmstruct import ClockInfo
from attest.verifier.fleet.model import NodeStatus

# A node "runs" a release (for rollout shares) when the appraisal found its authenticated root
# hash in the registry as a blessed release; an overdue embargo is still that release.
RUNNING = (ReleaseStatus.BLESSED, ReleaseStatus.EMBARGOED_OVERDUE)


class Appraiser(Protocol):
    def __call__(
        self,
        evidence_doc: object,
        *,
        memory: NodeMemory,
        enrollment: Enrollment,
        nonce: bytes,
        selection: PcrSelection,
        registry: VerifiedRegistry | None,
        platform_id: str | None,
        previous: ClockInfo | None,
        tls_binding: bytes | None,
        now: datetime,
        rules: VerifierRules,
        continuity: Continuity | None,
    ) -> Appraised: ...


def default_appraiser(cache: FirmwareReplayCache | None = None) -> Appraiser:
    """``appraise_incremental`` with one ``FirmwareReplayCache`` for all the nodes (a node
    whose firmware log and PCRs 0-7 another node already showed costs no parse or replay)."""
    return partial(appraise_incremental, cache=cache or FirmwareReplayCache())


@dataclass(frozen=True, slots=True)
class Summary:
    status: NodeStatus
    explanation: str
    first_divergence: str | None
    release: str | None
    clock: ClockInfo | None
    doc: dict[str, Any] = field(repr=False)


def summarize(result: AppraisalResult) -> Summary:
    status = NodeStatus.of_tier(result.verdict.tier)  # an alarm is contraindicated
    doc = result.to_json()
    reasons = list(doc["explanations"])
    if result.first_divergence and result.first_divergence not in reasons:
        reasons.insert(0, result.first_divergence)
    if not reasons:
        reasons = [f"{result.verdict.value}: every check passed"]
    release = None
    decision = result.release
    if decision is not None and decision.release is not None and decision.status in RUNNING:
        release = decision.release.version
    return Summary(status, "; ".join(reasons), result.first_divergence, release, result.clock, doc)


# The store's ``continuity`` column: one node's ``Continuity.to_json()``; a pair's
# ``{"host": .., "guest": ..}`` (each null until that layer was appraised).


def continuity_of(text: str | None, layer: str | None = None) -> Continuity | None:
    """The stored continuity (of a pair's ``layer``); ``EvidenceFormatError`` when the store
    holds something else (fail closed: never appraise as if nothing had been verified)."""
    if not text:
        return None
    doc = json.loads(text)
    if layer is not None:
        doc = doc.get(layer) if isinstance(doc, dict) else doc
        if doc is None:
            return None
    return Continuity.from_json(doc)


def continuity_text(c: Continuity | None) -> str | None:
    return None if c is None else orjson.dumps(c.to_json()).decode()


def pair_continuity_text(
    host: Continuity | None, guest: Continuity | None, stored: str | None
) -> str | None:
    """A pair's next continuity: each layer's new one, else what was stored for it."""
    if host is None and guest is None:
        return None
    host = host or continuity_of(stored, "host")
    guest = guest or continuity_of(stored, "guest")
    doc = {
        "host": None if host is None else host.to_json(),
        "guest": None if guest is None else guest.to_json(),
    }
    return orjson.dumps(doc).decode()
