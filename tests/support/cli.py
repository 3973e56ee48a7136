"""The ``attest`` command as a test calls it: the real parser and error mapping
(``attest.cli.main``), one function per command group."""

from __future__ import annotations

from collections.abc import Sequence

from attest.cli import main


def verify_main(argv: Sequence[str]) -> int:
    """``attest verify ARGV``."""
    return main(["verify", *argv])


def ear_main(argv: Sequence[str]) -> int:
    """``attest ear ARGV``."""
    return main(["ear", *argv])


def vtpm_main(argv: Sequence[str]) -> int:
    """``attest vtpm ARGV``."""
    return main(["vtpm", *argv])


def fleet_main(argv: Sequence[str]) -> int:
    """``attest fleet ARGV``."""
    return main(["fleet", *argv])
