"""Benchmark: attest's event-log engine against tpm2_eventlog on the same logs, same run.

    python bench/eventlog.py [DIR] [--rounds N] [--attest-repeats K] [--quick]

For every *.bin in DIR (default ../shared/eventlogs: 20 logs): attest parses, decodes every
payload and replays every bank in-process; tpm2_eventlog (the peer) runs once per log as a
process, with --eventlog-version=2 for the logs tpm2-tools' own test-suite runs that way. A
process per log includes process start, so each round also times ``tpm2_eventlog --version``
once per log (the floor of a tpm2_eventlog process): ``ratio`` compares attest with the whole
peer pass, ``ratio_work`` with the peer pass minus that floor (what the peer spends on logs).

The machine is shared and noisy, so the sides are interleaved: each of the N rounds times K
attest passes, one peer pass and one floor pass over all the logs, and each side keeps its
minimum (the least-disturbed pass; the same statistic on every side). Last line:

    eventlog attest_s=... tpm2_eventlog_s=... floor_s=... ratio=... ratio_work=... logs=N
             replayed=N rejected=N peer_failed=N

``replayed`` counts logs attest parsed and replayed; ``rejected`` those it refused with an
EventLogFormatError (counted, not timed as success); anything else is a crash. Exit status 0
only when every log was replayed.
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


def _attest_once(blobs: list[bytes]) -> tuple[int, int, int]:
    """(logs parsed and replayed, logs rejected, payloads that did not decode).
    ``malformed_events`` reads every event's payload: the work timed is parse + decode +
    replay, however the parser schedules decoding."""
    replayed = rejected = malformed = 0
    for data in blobs:
        try:
            log = parse_event_log(data)
            malformed += len(log.malformed_events)
            replay_pcrs(log)
        except EventLogFormatError:
            rejected += 1
            continue
        replayed += 1
    return replayed, rejected, malformed


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
    ap.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=Path(__file__).resolve().parents[2] / "shared/eventlogs",
    )
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument(
        "--attest-repeats", type=int, default=5, help="attest passes per round (a pass is ms)"
    )
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 attest passes")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.attest_repeats = 3, 2
    files = sorted(args.dir.glob("*.bin"))
    if not files:
        print(f"no *.bin in {args.dir}", file=sys.stderr)
        return 2
    blobs = [f.read_bytes() for f in files]
    tool = shutil.which("tpm2_eventlog")
    cmds = _peer_commands(tool, files) if tool is not None else []

    floor_cmds = [[tool, "--version"]] * len(files) if tool is not None else []

    replayed, rejected, malformed = _attest_once(blobs)  # warm-up (first-call costs), not timed
    attest_times: list[float] = []
    peer_times: list[float] = []
    floor_times: list[float] = []
    peer_failed = 0
    for _ in range(max(1, args.rounds)):
        for _ in range(max(1, args.attest_repeats)):
            t0 = time.perf_counter()
            replayed, rejected, malformed = _attest_once(blobs)
            attest_times.append(time.perf_counter() - t0)
        if cmds:
            t0 = time.perf_counter()
            peer_failed = _peer_once(cmds)
            peer_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _peer_once(floor_cmds)
            floor_times.append(time.perf_counter() - t0)

    best = min(attest_times)
    peer = min(peer_times) if peer_times else float("nan")
    floor = min(floor_times) if floor_times else float("nan")
    ratio = peer / best if best > 0 else float("inf")
    ratio_work = (peer - floor) / best if best > 0 else float("inf")
    print(
        f"attest: {_ms(attest_times)} for {len(files)} logs ({len(attest_times)} passes; "
        f"{replayed} parsed and replayed, {rejected} rejected with EventLogFormatError, "
        f"{malformed} payload(s) kept as MalformedPayload)"
    )
    print(
        f"tpm2_eventlog: {_ms(peer_times)} ({len(peer_times)} passes, a process per log; "
        f"{peer_failed} log(s) crashed or rejected)"
    )
    print(f"tpm2_eventlog --version per log (process start): {_ms(floor_times)}")
    print(
        f"eventlog attest_s={best:.6f} tpm2_eventlog_s={peer:.6f} floor_s={floor:.6f} "
        f"ratio={ratio:.1f} ratio_work={ratio_work:.1f} logs={len(files)} replayed={replayed} "
        f"rejected={rejected} peer_failed={peer_failed}"
    )
    return 0 if replayed == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
