"""bench/fleet.py measures the service's shape: a small run end to end (the benchmark is a
claim, so it must keep measuring what it says -- nodes appraised affirming against a signed
registry, EARs signed, the service's garbage-collection policy, no node appraised twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_a_small_fleet_run_appraises_every_node_affirming_in_the_services_shape() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fleet.py"),
            "--nodes",
            "40",
            "--interval",
            "1",
            "--seconds",
            "2",
            "--warmup",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    last = dict(kv.split("=", 1) for kv in out.strip().splitlines()[-1].split()[1:])
    assert last["registry"] == "1" and last["ear"] == "1" and last["gc"] == "service"
    assert last["mode"] == "incremental" and last["double_appraisals"] == "0"
    assert int(last["aps"]) > 0 and float(last["cpu_per_appraisal_over_verify"]) > 0
    verdicts = re.search(r"verdicts (\{.*?\})", out)
    assert verdicts is not None, out
    assert re.fullmatch(r"\{'affirming': \d+\}", verdicts.group(1)), verdicts.group(1)
    assert "of it the garbage collector" in out and "a full collection after the window" in out
