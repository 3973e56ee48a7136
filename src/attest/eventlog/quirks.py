"""Named, versioned tolerances for firmware that does not follow the profile to the letter.

A quirk is data: a name, a version, what it tolerates and where it comes from. Replay and the
authenticity / structure checks are strict first; a quirk is tried only when the strict check
fails, and every quirk that was applied is listed in the result (``AppliedQuirk``), so that an
auditor sees exactly what was tolerated. Callers choose which quirks they allow by passing a
subset of ``QUIRKS`` (``()`` means: strict, tolerate nothing).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from attest.eventlog.uefi import (
    EV_EFI_ACTION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_S_CRTM_VERSION,
)


class QuirkKind(enum.Enum):
    REPLAY = "replay"  # the log alone does not replay into the quote; unlogged events are added
    DIGEST = "digest"  # an event's digest is not the hash of its data in the profile's form
    STRUCTURE = "structure"  # events in an order or number the profile does not allow
    FACTS = "facts"  # a value that needs interpretation before a policy can use it


@dataclass(frozen=True, slots=True)
class Quirk:
    """A named, versioned firmware workaround, applied only when a strict replay fails."""

    name: str
    version: int
    kind: QuirkKind
    description: str
    seen_on: str
    # REPLAY quirks: events the firmware extended but did not log, appended to ``pcr`` in order
    # (event type, event data); their digest is the hash of the data in each bank.
    pcr: int | None = None
    appended_events: tuple[tuple[int, bytes], ...] = ()
    # DIGEST quirks: the event types they apply to.
    event_types: frozenset[int] = frozenset()

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True)
class AppliedQuirk:
    """A quirk that was needed, where: the PCRs (bank, index) or event indices it explains."""

    name: str
    version: int
    kind: QuirkKind
    pcrs: tuple[tuple[str, int], ...] = ()
    events: tuple[int, ...] = ()
    detail: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, object]:
        return {
            "quirk": self.id,
            "kind": self.kind.value,
            "pcrs": [f"{b}:{i}" for b, i in self.pcrs],
            "events": list(self.events),
            "detail": self.detail,
        }


EBS_INVOCATION = b"Exit Boot Services Invocation"
EBS_SUCCESS = b"Exit Boot Services Returned with Success"

EBS_EVENTS_MISSING = Quirk(
    name="ebs-events-missing",
    version=1,
    kind=QuirkKind.REPLAY,
    description=(
        "PCR 5 was extended with the ExitBootServices EV_EFI_ACTION events after the OS copied "
        "the log (no final-events table, e.g. SHA1-format logs): replay appends 'Exit Boot "
        "Services Invocation' and 'Exit Boot Services Returned with Success'."
    ),
    seen_on="goattest__ebs_event_missing_eventlog (go-attestation TestEBSVerifyWorkaround)",
    pcr=5,
    appended_events=((EV_EFI_ACTION, EBS_INVOCATION), (EV_EFI_ACTION, EBS_SUCCESS)),
)

EBS_SUCCESS_MISSING = Quirk(
    name="ebs-success-missing",
    version=1,
    kind=QuirkKind.REPLAY,
    description=(
        "As ebs-events-missing, but the log already holds the invocation event: only 'Exit "
        "Boot Services Returned with Success' is appended to PCR 5."
    ),
    seen_on="firmware that logs the invocation before the OS reads the log",
    pcr=5,
    appended_events=((EV_EFI_ACTION, EBS_SUCCESS),),
)

BOOT_VARIABLE_DATA_DIGEST = Quirk(
    name="boot-variable-data-digest",
    version=1,
    kind=QuirkKind.DIGEST,
    description=(
        "EV_EFI_VARIABLE_BOOT digest is the hash of VariableData only, not of the whole "
        "UEFI_VARIABLE_DATA (EDK2 Tcg2Dxe MeasureVariable). The variable's value is authentic, "
        "its GUID and name are not covered by the digest."
    ),
    seen_on="EDK2/OVMF and most vendor firmware built on it",
    event_types=frozenset({EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2}),
)

SHIM_AUTHORITY_TRAILING_BYTE = Quirk(
    name="shim-authority-trailing-byte",
    version=1,
    kind=QuirkKind.DIGEST,
    description=(
        "shim's EV_EFI_VARIABLE_AUTHORITY for its built-in vendor certificate ('Shim', "
        "SHIM_LOCK_GUID) logs more bytes than it hashes: the digest is the hash of the event "
        "data without its last byte. GUID, name and certificate are all inside the hashed part."
    ),
    seen_on="goattest__sb_cert_eventlog, tpm2tools__event-postcode (shim 15)",
    event_types=frozenset({EV_EFI_VARIABLE_AUTHORITY}),
)

SCRTM_VERSION_ODD = Quirk(
    name="scrtm-version-odd",
    version=1,
    kind=QuirkKind.DIGEST,
    description=(
        "EV_S_CRTM_VERSION whose digest is not the hash of its data (a version GUID or string "
        "measured in another form). Tolerated because the event is informational; its text is "
        "not used as a fact."
    ),
    seen_on="Google Compute Engine and some vendor firmware",
    event_types=frozenset({EV_S_CRTM_VERSION}),
)

APP_BEFORE_CALLING_EFI_APPLICATION = Quirk(
    name="app-before-calling-efi-application",
    version=1,
    kind=QuirkKind.STRUCTURE,
    description=(
        "An EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4 before the 'Calling EFI Application from "
        "Boot Option' EV_EFI_ACTION (firmware-internal applications, e.g. a setup menu or "
        "option ROM application)."
    ),
    seen_on="vendor firmware with built-in applications",
)

DUPLICATE_SEPARATOR = Quirk(
    name="duplicate-separator",
    version=1,
    kind=QuirkKind.STRUCTURE,
    description="More than one EV_SEPARATOR in one of PCRs 0-7.",
    seen_on="firmware that re-runs ReadyToBoot (boot retries)",
)

SECUREBOOT_EMPTY_VARIABLE = Quirk(
    name="secureboot-empty-variable",
    version=1,
    kind=QuirkKind.FACTS,
    description=(
        "The SecureBoot variable was measured with no data: read as Secure Boot disabled."
    ),
    seen_on="firmware that measures the variable when it is absent",
)

QUIRKS: tuple[Quirk, ...] = (
    EBS_EVENTS_MISSING,
    EBS_SUCCESS_MISSING,
    BOOT_VARIABLE_DATA_DIGEST,
    SHIM_AUTHORITY_TRAILING_BYTE,
    SCRTM_VERSION_ODD,
    APP_BEFORE_CALLING_EFI_APPLICATION,
    DUPLICATE_SEPARATOR,
    SECUREBOOT_EMPTY_VARIABLE,
)


def by_name(names: Iterable[str]) -> tuple[Quirk, ...]:
    """Select quirks by ``name`` or ``name@version``; unknown names raise ``ValueError``."""
    out = []
    for n in names:
        for q in QUIRKS:
            if n in (q.name, q.id):
                out.append(q)
                break
        else:
            raise ValueError(f"unknown quirk {n!r}")
    return tuple(out)


def allowed(quirks: Iterable[Quirk], name: str) -> Quirk | None:
    for q in quirks:
        if q.name == name:
            return q
    return None
