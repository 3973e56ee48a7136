"""What ``attest fleet`` takes from its ``ATTEST_FLEET_*`` environment: one typed, frozen
``FleetSettings``, built once per command from its options and the environment (an option wins
over its variable). Pure: the shell passes the environment in.

    ATTEST_FLEET_DB         the store (``--db``; default sqlite:///attest-fleet.db)
    ATTEST_FLEET_EK_ROOTS   EK CAs, paths separated by ``os.pathsep`` (``--ek-roots``)
    ATTEST_FLEET_TOFU       allow trust on first use (``--tofu``): 1/0, true/false, yes/no, on/off
    ATTEST_FLEET_EAR_KEY    the EAR signing key (``--ear-key``; default attest-fleet-ear.pem)

Any other ``ATTEST_FLEET_*`` variable is refused with its name (a typo must not be ignored, as
attestd refuses unknown ``ATTEST_*`` settings); so is a boolean that is not one of those words
(``ATTEST_FLEET_TOFU=enabled`` is an error, never a silent false).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attest.appraisal.rules import APPRAISAL_PCRS
from attest.errors import ConfigError

DEFAULT_DB = "sqlite:///attest-fleet.db"  # relative to the working directory
DEFAULT_EAR_KEY = "attest-fleet-ear.pem"  # relative to the working directory
# The same PCRs as `attest verify` (firmware, boot loader, kernel, UKI, verity root; the rules'
# runtime PCR is added): a release's expected PCRs are checked only where quoted.
DEFAULT_SELECTION = "sha256:" + ",".join(str(p) for p in APPRAISAL_PCRS)
DEFAULT_REFRESH = 60.0  # seconds between two reads of the registry's state directory
DEFAULT_OUTBOX_MAX = 100_000  # undelivered webhook events kept
PREFIX = "ATTEST_FLEET_"
ENVIRONMENT = (
    "ATTEST_FLEET_DB",
    "ATTEST_FLEET_EK_ROOTS",
    "ATTEST_FLEET_TOFU",
    "ATTEST_FLEET_EAR_KEY",
)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    db: str = DEFAULT_DB
    ek_roots: tuple[str, ...] = ()
    tofu: bool = False
    ear_key: str = DEFAULT_EAR_KEY


def env_bool(environ: Mapping[str, str], name: str) -> bool:
    """A boolean variable (unset or empty: false); anything but a boolean word is refused."""
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(
        f"{value[:32]!r} is not a boolean (1/0, true/false, yes/no, on/off)", key=name
    )


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse an ``ATTEST_FLEET_*`` variable the fleet does not know."""
    for var in sorted(environ):
        if var.startswith(PREFIX) and var not in ENVIRONMENT:
            raise ConfigError("unknown environment variable of attest fleet", key=var)


def load_fleet_settings(
    environ: Mapping[str, str],
    *,
    db: str | None = None,
    ek_roots: Sequence[str] | None = None,
    tofu: bool = False,
    ear_key: str | None = None,
) -> FleetSettings:
    """The settings of one command: its options (None/False: not given) over ``environ``'s
    ``ATTEST_FLEET_*`` variables over the defaults. Every variable is checked, given the option
    or not."""
    check_environment(environ)
    env_tofu = env_bool(environ, "ATTEST_FLEET_TOFU")
    env_roots = tuple(p for p in environ.get("ATTEST_FLEET_EK_ROOTS", "").split(os.pathsep) if p)
    return FleetSettings(
        db=db if db is not None else (environ.get("ATTEST_FLEET_DB") or DEFAULT_DB),
        ek_roots=tuple(ek_roots) if ek_roots else env_roots,
        tofu=tofu or env_tofu,
        ear_key=ear_key or environ.get("ATTEST_FLEET_EAR_KEY") or DEFAULT_EAR_KEY,
    )
