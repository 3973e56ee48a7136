"""Firmware event logs: parse, decode, replay, verify and explain (pure core).

log = parse_event_log(data)                 # bytes -> UnverifiedEventLog
verified = replay(log, quoted_pcrs)         # -> VerifiedEventLog, or ReplayError
boot = facts(verified)                      # -> BootFacts (from verified events only)
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from attest._lazy import lazy_attributes

if TYPE_CHECKING:
    from attest.eventlog.cel import (
        CelRecord,
        ImaEntry,
        dumps_cel,
        dumps_cel_record,
        loads_cel,
        new_record,
        parse_ima_log,
        read_systemd_measure_log,
        replay_cel,
        replay_ima,
        verify_cel,
    )
    from attest.eventlog.diff import Divergence, describe, diff_logs
    from attest.eventlog.facts import BootFacts, facts, load_options_digest, verity_root_hashes
    from attest.eventlog.parse import (
        FORMAT_CRYPTO_AGILE,
        FORMAT_SHA1,
        Event,
        UnverifiedEventLog,
        parse_event_log,
    )
    from attest.eventlog.quirks import QUIRKS, AppliedQuirk, Quirk, QuirkKind
    from attest.eventlog.replay import (
        DigestStatus,
        VerifiedEventLog,
        replay,
        replay_pcrs,
        replay_self,
    )

# Imported on first use (PEP 562): a process start pays only for what it uses (their frozen
# dataclasses each generate their methods at import, and ``uefi`` builds its tables). The node's
# daemons import ``attest.eventlog.cel`` (the runtime log), never parsing or replay.
_LAZY = {
    **dict.fromkeys(
        ("FORMAT_CRYPTO_AGILE", "FORMAT_SHA1", "Event", "UnverifiedEventLog", "parse_event_log"),
        "attest.eventlog.parse",
    ),
    **dict.fromkeys(("QUIRKS", "AppliedQuirk", "Quirk", "QuirkKind"), "attest.eventlog.quirks"),
    **dict.fromkeys(
        ("DigestStatus", "VerifiedEventLog", "replay", "replay_pcrs", "replay_self"),
        "attest.eventlog.replay",
    ),
    **dict.fromkeys(
        (
            "CelRecord",
            "ImaEntry",
            "dumps_cel",
            "dumps_cel_record",
            "loads_cel",
            "new_record",
            "parse_ima_log",
            "read_systemd_measure_log",
            "replay_cel",
            "replay_ima",
            "verify_cel",
        ),
        "attest.eventlog.cel",
    ),
    **dict.fromkeys(("Divergence", "describe", "diff_logs"), "attest.eventlog.diff"),
    **dict.fromkeys(
        ("BootFacts", "facts", "load_options_digest", "verity_root_hashes"),
        "attest.eventlog.facts",
    ),
}


class _Package(types.ModuleType):
    """The package's ``facts`` and ``replay`` are the functions, as when this module imported
    them eagerly: the import system binds a loaded submodule as an attribute of its package,
    which would make ``attest.eventlog.replay`` the module once anything imported it."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("facts", "replay") and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "FORMAT_CRYPTO_AGILE",
    "FORMAT_SHA1",
    "QUIRKS",
    "AppliedQuirk",
    "BootFacts",
    "CelRecord",
    "DigestStatus",
    "Divergence",
    "Event",
    "ImaEntry",
    "Quirk",
    "QuirkKind",
    "UnverifiedEventLog",
    "VerifiedEventLog",
    "describe",
    "diff_logs",
    "dumps_cel",
    "dumps_cel_record",
    "facts",
    "load_options_digest",
    "loads_cel",
    "new_record",
    "parse_event_log",
    "parse_ima_log",
    "read_systemd_measure_log",
    "replay",
    "replay_cel",
    "replay_ima",
    "replay_pcrs",
    "replay_self",
    "verify_cel",
    "verity_root_hashes",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
