"""bench/fleet_scaling.py measures what it says: one worker and two, each held to the CPU quota
it was given (a CPU cgroup), against the same PostgreSQL server, no node appraised twice, and a
scaling figure computed from the runs it printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from attest.testing.pg import PgServer

ROOT = Path(__file__).resolve().parents[2]
QUOTA = 0.25

pytestmark = pytest.mark.slow


def test_one_and_two_workers_under_a_cpu_quota_each(pg_server: PgServer) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fleet_scaling.py"),
            "--pg",
            pg_server.dsn_base,
            "--rounds",
            "1",
            "--cpu-quota",
            str(QUOTA),
            "--nodes",
            "200",
            "--interval",
            "1",
            "--warmup",
            "3",
            "--seconds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    runs = re.findall(
        r"round 1, (\d) workers?: +([\d.]+) appraisals/s of 200 offered, verifier CPU ([\d.]+) "
        r"core",
        out,
    )
    assert [w for w, _, _ in runs] == ["1", "2"], out
    for workers, aps, cpu in runs:
        assert float(aps) > 0
        # the quota held: the workers together used no more than they were given
        assert float(cpu) <= int(workers) * QUOTA * 1.15, out
    last = dict(kv.split("=", 1) for kv in out.strip().splitlines()[-1].split()[1:])
    assert last["double_appraisals"] == "0", out
    aps1, aps2 = (float(aps) for _, aps, _ in runs)
    assert float(last["scaling"]) == pytest.approx(aps2 / aps1, abs=0.02)
    assert float(last["efficiency"]) == pytest.approx(float(last["scaling"]) / 2, abs=0.01)
