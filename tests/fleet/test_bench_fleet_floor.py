"""bench/fleet_floor.py measures what it says: the floor client really checks each quote
(a wrong signature layout or challenge would fail every check), signs real EARs that verify,
and stores them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_floor_checks_every_quote_and_stores_ears_that_verify() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fleet_floor.py"),
            "--nodes",
            "100",
            "--interval",
            "1",
            "--seconds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = dict(kv.split("=", 1) for kv in done.stdout.strip().splitlines()[-1].split()[1:])
    assert last["failures"] == "0" and last["ears_verified"] == "20"
    assert int(last["cycles_per_s"]) > 0
    assert float(last["floor_over_verify"]) > 1.0  # the verify itself is part of the cycle
