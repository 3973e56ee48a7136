"""bench/peer_memory.py holds: the verifiers' memory stays within its bound (50 MiB over the
same process idle) while 20 peers stream endless bodies at them -- ``attest verify`` and
``attest fleet serve`` polling and registering them at once. It runs here so that a change
which lets a peer's bytes outlive their read (a reference cycle, a collector setting) fails
CI, as the young-generation change did unseen (7155c05: 176 MiB over idle)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_the_verifiers_stay_within_the_memory_bound_against_endless_peers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peer_memory.py"), "--seconds", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("peer_memory "), done.stdout[-2000:] + done.stderr[-2000:]
    fields = dict(kv.split("=") for kv in last.split()[1:])
    # the peers did stream: gigabytes an unbounded reader would have held
    assert float(fields["peers_sent_gib"]) > 0.5, last
    assert float(fields["verify_excess_mib"]) <= float(fields["bound_mib"]), last
    assert float(fields["serve_excess_mib"]) <= float(fields["bound_mib"]), last
    assert fields["ok"] == "1" and done.returncode == 0, last
    assert re.search(r"fleet serve: .*alive True", done.stdout), done.stdout[-2000:]
