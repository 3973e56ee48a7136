"""What the ``attest fleet`` commands share (a shell): the fleet's settings over its
``ATTEST_FLEET_*`` environment, its store, the freshness bound and a number check."""

from __future__ import annotations

import argparse
import math
import os

from attest.errors import ConfigError
from attest.verifier.fleet.config import FleetSettings, load_fleet_settings
from attest.verifier.fleet.model import Freshness
from attest.verifier.fleet.store import Store, open_store


def settings_of(args: argparse.Namespace) -> FleetSettings:
    """The command's options over its ``ATTEST_FLEET_*`` environment, read once, first: an
    unknown variable or a bad value fails before anything starts."""
    given = vars(args)
    return load_fleet_settings(
        os.environ,
        db=given.get("db"),
        ek_roots=given.get("ek_roots"),
        tofu=bool(given.get("tofu")),
        ear_key=given.get("ear_key"),
    )


def store_of(args: argparse.Namespace, fleet: FleetSettings) -> Store:
    """The fleet's database, a bad ``--db`` (or ``ATTEST_FLEET_DB``) refused with its name."""
    given = vars(args).get("db") is not None
    key = "ATTEST_FLEET_DB" if not given and os.environ.get("ATTEST_FLEET_DB") else "--db"
    return open_store(fleet.db, key=key)


def positive(value: float, key: str, *, above: float = 0.0, what: str = "") -> float:
    """A finite number over ``above`` (argparse's ``float`` takes ``nan``, ``inf`` and -1)."""
    if not (math.isfinite(value) and value > above):
        raise ConfigError(f"{value} is not a finite number over {what}{above:g}", key=key)
    return value


def freshness_of(args: argparse.Namespace) -> Freshness:
    positive(args.interval, "--interval")
    if args.stale_after < 1:
        raise ConfigError("--stale-after must be at least 1 interval", key="--stale-after")
    return Freshness(args.interval, args.stale_after)
