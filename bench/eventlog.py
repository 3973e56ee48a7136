"""Benchmark: attest's event-log engine against tpm2_eventlog on the same logs, same run.

    python bench/eventlog.py DIR [--rounds N] [--attest-repeats K]

For every *.bin in DIR: attest parses, decodes every payload and replays every bank in-process;
tpm2_eventlog (the peer) runs once per log as a process, with --eventlog-version=2 for the logs
tpm2-tools' own test-suite runs that way.

The machine is shared and noisy, so the two sides are interleaved: each of the N rounds times K
attest passes and one peer pass over all the logs, and each side keeps its minimum (the
least-disturbed pass; the same statistic on both sides). Last line (machine-readable):

    eventlog attest_s=... tpm2_eventlog_s=... ratio=... logs=N handled=N

``handled`` counts logs attest parsed and replayed, or rejected with a precise
EventLogFormatError; anything else is a failure.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from attest.errors import EventLogFormatError
from attest.eventlog import parse_event_log, replay_pcrs

# tpm2-tools runs these with --eventlog-version=2 (shared/eventlogs/PROVENANCE.md).
_V2 = (
    "event-arch-linux",
    "event-gce-ubuntu-2104-log",
    "event-sd-boot-fedora37",
    "event-moklisttrusted",
)


def _attest_once(blobs: list[bytes]) -> tuple[int, int]:
    """(logs handled, payloads that did not decode). ``malformed_events`` reads every event's
    payload: the work timed is parse + decode + replay, however the parser schedules decoding."""
    handled = malformed = 0
    for data in blobs:
        try:
            log = parse_event_log(data)
            malformed += len(log.malformed_events)
            replay_pcrs(log)
        except EventLogFormatError:
            pass
        handled += 1
    return handled, malformed


def _peer_commands(tool: str, files: list[Path]) -> list[list[str]]:
    cmds = []
    for f in files:
        cmd = [tool]
        if any(f.name.endswith(f"{n}.bin") for n in _V2):
            cmd.append("--eventlog-version=2")
        cmd.append(str(f))
        cmds.append(cmd)
    return cmds


def _peer_once(cmds: list[list[str]]) -> int:
    failed = 0
    for cmd in cmds:
        rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        failed += rc != 0
    return failed


def _ms(times: list[float]) -> str:
    if not times:
        return "n/a"
    return f"min {min(times) * 1000:.2f} ms, median {statistics.median(times) * 1000:.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument(
        "--attest-repeats", type=int, default=5, help="attest passes per round (a pass is ms)"
    )
    args = ap.parse_args()
    files = sorted(args.dir.glob("*.bin"))
    if not files:
        print(f"no *.bin in {args.dir}", file=sys.stderr)
        return 2
    blobs = [f.read_bytes() for f in files]
    tool = shutil.which("tpm2_eventlog")
    cmds = _peer_commands(tool, files) if tool is not None else []

    handled, malformed = _attest_once(blobs)  # warm-up (first-call costs), not timed
    attest_times: list[float] = []
    peer_times: list[float] = []
    peer_failed = 0
    for _ in range(max(1, args.rounds)):
        for _ in range(max(1, args.attest_repeats)):
            t0 = time.perf_counter()
            handled, malformed = _attest_once(blobs)
            attest_times.append(time.perf_counter() - t0)
        if cmds:
            t0 = time.perf_counter()
            peer_failed = _peer_once(cmds)
            peer_times.append(time.perf_counter() - t0)

    best = min(attest_times)
    peer = min(peer_times) if peer_times else float("nan")
    ratio = peer / best if best > 0 else float("inf")
    print(
        f"attest: {_ms(attest_times)} for {len(files)} logs ({len(attest_times)} passes, "
        f"{malformed} payload(s) kept as MalformedPayload)"
    )
    print(
        f"tpm2_eventlog: {_ms(peer_times)} ({len(peer_times)} passes, "
        f"{peer_failed} log(s) crashed or rejected)"
    )
    print(
        f"eventlog attest_s={best:.6f} tpm2_eventlog_s={peer:.6f} ratio={ratio:.1f} "
        f"logs={len(files)} handled={handled}"
    )
    return 0 if handled == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
