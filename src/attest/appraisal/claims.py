"""The AR4SI vocabulary: claims, their values and tiers, findings, verdicts. Pure.

The attestation-result claims of draft-ietf-rats-ar4si §2.3, in the spelling of EAR
(draft-fv-rats-ear) and Veraison's EAR libraries. A check states a ``Finding`` (one claim, one
value, why); a claim's value is the worst of its findings (``claim_results``); the overall
``Verdict`` is the worst claim (``verdict_of``; the AR4SI tiers: affirming 2-31 < warning 32-95
< contraindicated 96-127).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Claim(enum.Enum):
    """The AR4SI trustworthiness claims (draft-ietf-rats-ar4si §2.3), in EAR spelling."""

    INSTANCE_IDENTITY = "instance-identity"
    CONFIGURATION = "configuration"
    EXECUTABLES = "executables"
    FILE_SYSTEM = "file-system"
    HARDWARE = "hardware"
    RUNTIME_OPAQUE = "runtime-opaque"
    STORAGE_OPAQUE = "storage-opaque"
    SOURCED_DATA = "sourced-data"


class Tier(enum.IntEnum):
    """The AR4SI tiers, ordered by severity; ``value`` is the EAR ``ear.status`` string."""

    NONE = 0
    AFFIRMING = 1
    WARNING = 2
    CONTRAINDICATED = 3

    @property
    def label(self) -> str:
        return _TIER_LABELS[self]

    @classmethod
    def of(cls, value: int) -> Tier:
        """AR4SI §2.3.1: 2..31 affirming, 32..95 warning, 96..127 contraindicated; -1 (verifier
        malfunction), 0 (no claim), 1 (unexpected evidence) carry no tier."""
        return _tier_of(value)

    @classmethod
    def of_label(cls, label: object) -> Tier:
        """The tier an EAR's ``ear.status`` names; ``ValueError`` for anything else."""
        for tier in cls:
            if tier.label == label:
                return tier
        raise ValueError(f"not an ear.status: {label!r}")


_NONE_TIER = Tier.NONE
_TIERS: tuple[Tier, ...] = tuple(
    Tier.AFFIRMING
    if 2 <= v <= 31
    else Tier.WARNING
    if 32 <= v <= 95
    else Tier.CONTRAINDICATED
    if v >= 96
    else Tier.NONE
    for v in range(128)
)
_TIER_LABELS: dict[Tier, str] = {t: t.name.lower() for t in Tier}


def _tier_of(value: int) -> Tier:
    """``Tier.of`` without a class-method call (the appraisal's hot path)."""
    return _TIERS[value] if 0 <= value <= 127 else _NONE_TIER


# The label of each value's tier, by value (0..127; the rest have no tier): the result
# documents' hot path, without an enum hash or a property per finding.
_VALUE_LABELS: tuple[str, ...] = tuple(_TIER_LABELS[t] for t in _TIERS)
_NONE_LABEL = _TIER_LABELS[_NONE_TIER]


def tier_label(value: int) -> str:
    """``Tier.of(value).label``."""
    return _VALUE_LABELS[value] if 0 <= value <= 127 else _NONE_LABEL


# Values (draft-ietf-rats-ar4si §2.3.3-§2.3.10, as in Veraison's EAR libraries).
NO_CLAIM = 0
VERIFIER_MALFUNCTION = -1
UNEXPECTED_EVIDENCE = 1
CRYPTO_VALIDATION_FAILED = 99
TRUSTWORTHY_INSTANCE = 2
UNTRUSTWORTHY_INSTANCE = 96
UNRECOGNIZED_INSTANCE = 97
APPROVED_CONFIG = 2
UNSAFE_CONFIG = 32
UNSUPPORTABLE_CONFIG = 96
APPROVED_RUNTIME = 2
APPROVED_BOOT = 3
UNSAFE_RUNTIME = 32
UNRECOGNIZED_RUNTIME = 33
CONTRAINDICATED_RUNTIME = 96
APPROVED_FILES = 2
UNRECOGNIZED_FILES = 32
CONTRAINDICATED_FILES = 96
GENUINE_HARDWARE = 2
UNSAFE_HARDWARE = 32
CONTRAINDICATED_HARDWARE = 96
UNRECOGNIZED_HARDWARE = 97


class Verdict(enum.Enum):
    """The overall outcome. ``ALARM``: the node's AK or EK is not the enrolled one (reported
    as contraindicated in the EAR); ``UNAPPRAISABLE``: the evidence could not be read."""

    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"
    ALARM = "alarm"
    UNAPPRAISABLE = "could-not-appraise"

    @property
    def tier(self) -> Tier:
        """The tier the EAR reports (an alarm is contraindicated; could-not-appraise, none)."""
        return _VERDICT_TIERS[self]

    @property
    def ear_status(self) -> str:
        """The EAR's ``ear.status``: the label of ``tier``."""
        return self.tier.label


_VERDICT_TIERS = {
    Verdict.AFFIRMING: Tier.AFFIRMING,
    Verdict.WARNING: Tier.WARNING,
    Verdict.CONTRAINDICATED: Tier.CONTRAINDICATED,
    Verdict.ALARM: Tier.CONTRAINDICATED,
    Verdict.UNAPPRAISABLE: Tier.NONE,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's statement about one claim: the AR4SI value and why."""

    claim: Claim
    value: int
    check: str  # stable check name: quote, identity, firmware-replay, platform, release-pcrs, ...
    explanation: str

    @property
    def tier(self) -> Tier:
        return Tier.of(self.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "claim": self.claim._value_,  # ``.value`` is a Python-level property of Enum
            "value": self.value,
            "tier": tier_label(self.value),
            "check": self.check,
            "explanation": self.explanation,
        }


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    value: int
    findings: tuple[Finding, ...]

    @property
    def tier(self) -> Tier:
        return Tier.of(self.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "tier": tier_label(self.value),
            "explanations": [f.explanation for f in self.findings],
        }


_CLAIMS: tuple[Claim, ...] = tuple(Claim)
# A claim no finding was about: the same immutable result every time.
_UNCLAIMED: dict[str, ClaimResult] = {c.value: ClaimResult(c, NO_CLAIM, ()) for c in Claim}


def claim_results(findings: Sequence[Finding]) -> tuple[ClaimResult, ...]:
    """One result per ``Claim``, in ``Claim`` order: the value of its worst finding (no
    finding: ``NO_CLAIM``)."""
    # Keyed by the claims' strings (an Enum member hashes in Python); one pass.
    mine: dict[str, list[Finding]] = {}
    worst: dict[str, int] = {}
    for f in findings:
        key = f.claim._value_
        group = mine.get(key)
        if group is None:
            mine[key] = [f]
            worst[key] = f.value
            continue
        group.append(f)
        # The worst tier wins; within a tier the highest value (the more specific one).
        w = worst[key]
        v = f.value
        tv, tw = _tier_of(v), _tier_of(w)
        if tv > tw or (tv == tw and v > w):
            worst[key] = v
    return tuple(
        _UNCLAIMED[key]
        if (group := mine.get(key := claim._value_)) is None
        else ClaimResult(claim, worst[key], tuple(group))
        for claim in _CLAIMS
    )


def verdict_of(claims: Sequence[ClaimResult]) -> Verdict:
    """The tier of the worst claim; when no claim has a tier, the node could not be appraised."""
    worst = max((_tier_of(c.value) for c in claims), default=Tier.NONE)
    if worst is Tier.CONTRAINDICATED:
        return Verdict.CONTRAINDICATED
    if worst is Tier.WARNING:
        return Verdict.WARNING
    if worst is Tier.AFFIRMING:
        return Verdict.AFFIRMING
    return Verdict.UNAPPRAISABLE


def first_divergence(findings: Sequence[Finding], verdict: Verdict) -> str | None:
    """The first finding, in check order, of the worst tier found (what made the verdict: a
    contraindicated node is explained by a contraindication, not by an earlier warning); when
    the node could not be appraised and no finding is worse than affirming, the first finding
    (or that no claim could be made)."""
    worst = max((_tier_of(f.value) for f in findings), default=Tier.NONE)
    first = None
    if worst > Tier.AFFIRMING:
        first = next(f.explanation for f in findings if _tier_of(f.value) is worst)
    if first is None and verdict is Verdict.UNAPPRAISABLE:
        first = next((f.explanation for f in findings), "no claim could be made")
    return first
