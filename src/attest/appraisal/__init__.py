"""Appraisal of one node's evidence: verified facts in, an AR4SI-shaped decision out. Pure.

``appraise(evidence_doc, *, enrollment, nonce, ...) -> AppraisalResult`` never raises for a
problem with the evidence: every problem becomes a claim value and a human sentence, and the
first one in check order is ``first_divergence``. It raises only for programming errors
(``ValueError`` / ``TypeError`` for arguments of the wrong shape). ``appraise_incremental`` is
the same appraisal for a verifier that keeps a ``NodeMemory`` per node (``memory``).

Two layers:

1. *verification* (``stages``): the evidence is parsed and checked in the spec's order --
   AK and EK against the enrollment (a change is an alarm, never a silent re-enrollment); the
   quote (signature, Merkle inclusion of our nonce, PCR selection, digest, clock and counters
   against the previous quote: ``attest.evidence.verify_evidence``); the firmware event log
   replayed into the quoted PCRs and its facts; the runtime log replayed into the runtime PCR;
   the audit chain against the runtime log's anchors; the release the node runs, found in the
   verified registry by its authenticated dm-verity root hash. The outcome is an
   ``AppraisalContext``: verified values, or the error that stopped each stage.
2. *policy* (``checks``: ``AppraisalPolicy``, one method ``evaluate(ctx) -> tuple[Finding,
   ...]``, combinable with ``AllOf`` / ``AnyOf``): reads the context and says, per AR4SI claim
   (draft-ietf-rats-ar4si §2.3), what the verifier believes and why.

A claim's value is the worst of its findings; the overall status is the worst claim (the AR4SI
tiers: affirming 2-31 < warning 32-95 < contraindicated 96-127; ``claims``).

``engine`` holds ``appraise``, ``appraise_incremental`` and the result; this face re-exports
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attest._lazy import lazy_attributes

if TYPE_CHECKING:
    from attest.appraisal.engine import (
        AppraisalResult,
        Appraised,
        appraise,
        appraise_incremental,
        enrollment_refused,
        identity_alarm,
        result_of,
        unappraisable,
        with_findings,
    )

__all__ = [
    "AppraisalResult",
    "Appraised",
    "appraise",
    "appraise_incremental",
    "enrollment_refused",
    "identity_alarm",
    "result_of",
    "unappraisable",
    "with_findings",
]

# Imported on first use (PEP 562): importing one part (``attest.appraisal.claims`` for the
# AR4SI vocabulary, ``attest.appraisal.ear`` to verify an attestation result) no longer loads the
# checks, the stages and the engine (~0.1 s).
__getattr__, __dir__ = lazy_attributes(
    __name__, dict.fromkeys(__all__, "attest.appraisal.engine"), __all__
)
