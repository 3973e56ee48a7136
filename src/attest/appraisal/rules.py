"""The verifier's rules: what the *verifier* decides about every node, never the node. Pure.

The default (``DEFAULT_RULES``, policy id ``attest/default@3``) fails closed:

- ``runtime_pcr`` (13): the PCR the runtime log must replay into. A node's identity answer
  names the PCR it uses; enrollment refuses a node whose claim differs (``docs/verify.md``),
  and the appraisal replays into this PCR whatever an old enrollment recorded. Never 16-23
  (PCR 16 is the debug PCR and 16-23 are resettable from locality 0 or by the OS) and never a
  firmware PCR (0-7): only 8-15.
- ``allow_unidentified_release`` (false): with a registry, a node whose running release is not
  identified by an authenticated dm-verity root hash is contraindicated; without a registry the
  release is "not appraised" and the verdict is at best a warning. True (a developer's rule)
  turns both into no claim, shown in the result.
- ``waive_platform`` (false): with a registry, the firmware PCRs (0-7) must equal the signed
  reference of the platform the *verifier* names (``--platform``); a verifier that names none
  gets a warning ("platform not appraised"), never affirming. True (for platforms without a
  reference, such as a software TPM with no firmware) turns that into no claim, and the result
  says the platform was waived by this policy. A platform that is named is always appraised.

A rules file (``attest verify --policy FILE``, ``attest fleet serve --policy FILE``) is a JSON
or TOML object with exactly these keys; its policy id is ``attest/custom@<sha256 of the
canonical rules, 16 hex digits>`` so that an EAR names the rules it was appraised under.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attest.errors import ConfigError

DEFAULT_POLICY_ID = "attest/default@3"  # @3: the platform reference is required
RUNTIME_PCRS = range(8, 16)  # neither firmware (0-7) nor resettable/debug (16-23)
# PCRs a full appraisal asks for besides the runtime PCR: firmware (0-7), boot loader and
# kernel command line (8, 9), unified kernel image (11) and its command line (12), the dm-verity
# root hash measured before switch_root (15; docs/runtime-log.md).
APPRAISAL_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 15)
MAX_RULES_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class VerifierRules:
    runtime_pcr: int = 13
    allow_unidentified_release: bool = False
    waive_platform: bool = False

    def __post_init__(self) -> None:
        if type(self.runtime_pcr) is not int or self.runtime_pcr not in RUNTIME_PCRS:
            raise ConfigError(
                f"{self.runtime_pcr!r} is not a PCR from 8 to 15 (0-7 are the firmware's, "
                "16-23 can be reset)",
                key="runtime_pcr",
            )
        for key in ("allow_unidentified_release", "waive_platform"):
            if type(getattr(self, key)) is not bool:
                raise ConfigError("must be true or false", key=key)

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime_pcr": self.runtime_pcr,
            "allow_unidentified_release": self.allow_unidentified_release,
            "waive_platform": self.waive_platform,
        }

    @property
    def policy_id(self) -> str:
        if self == DEFAULT_RULES:
            return DEFAULT_POLICY_ID
        canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return f"attest/custom@{hashlib.sha256(canon).hexdigest()[:16]}"


DEFAULT_RULES = VerifierRules()


def parse_rules(data: bytes) -> VerifierRules:
    """A rules file (JSON or TOML) -> ``VerifierRules``; ``ConfigError`` naming the key."""
    if len(data) > MAX_RULES_BYTES:
        raise ConfigError(f"larger than {MAX_RULES_BYTES} bytes", key="policy")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", key="policy") from None
    doc: object
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
        try:
            doc = tomllib.loads(text)
        except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
            raise ConfigError(f"neither JSON nor TOML: {exc}", key="policy") from None
    if not isinstance(doc, Mapping):
        raise ConfigError("must be an object of rules", key="policy")
    known = set(DEFAULT_RULES.to_json())
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError("unknown rule", key=str(unknown[0]))
    return VerifierRules(**{k: doc[k] for k in known if k in doc})
