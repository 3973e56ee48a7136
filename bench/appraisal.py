#!/usr/bin/env python3
"""CPU cost of one full appraisal without the network, against the bare signature check
measured in the same run.

    python bench/appraisal.py [--seconds S]

The evidence document is built in memory once (tests/unit/test_appraisal.py's world): a
FakeTpm ECDSA P-256 quote over sha256 PCRs 0-9, 11-13, the real OVMF firmware event log from
../shared/eventlogs (its PCR 9 LoadOptions rewritten for a roothash= command line), a runtime
log of 10 events with 3 audit anchors, the 3 audit entries, and a registry signed with the
TEST keys. ``appraise`` then does everything a verifier does per contact: base64 decoding,
quote signature + Merkle inclusion + selection + digest + clock, firmware log parse + replay +
facts, runtime log parse + content digests + replay, audit chain, release / verity / platform /
expected-PCR checks. The reference is ``cryptography``'s bare ECDSA P-256 verify of the same
TPMS_ATTEST bytes (what keylime's ~345 µs quote check is compared with in FACTS.md).

Last line:  appraisal appraise_us=… bare_verify_us=… ratio=… firmware_events=… runtime_events=…
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def per_call_us(fn: object, seconds: float) -> float:
    """Median over 5 rounds of the mean time per call, each round ~seconds/5."""
    call = fn  # type: ignore[assignment]
    n = 1
    while True:  # calibrate
        t = time.perf_counter()
        for _ in range(n):
            call()  # type: ignore[operator]
        if time.perf_counter() - t > 0.05:
            break
        n *= 2
    per = (time.perf_counter() - t) / n
    reps = max(1, int(seconds / 5 / per))
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            call()  # type: ignore[operator]
        rounds.append((time.perf_counter() - t) / reps)
    return statistics.median(rounds) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    args = ap.parse_args()

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from tests.unit.test_appraisal import NOW, PLATFORM, SELECTION, make_node, make_registry

    from attest.appraisal import Verdict, appraise
    from attest.eventlog import parse_event_log
    from attest.tpmstruct import parse_signature

    node = make_node()
    registry = make_registry(node)
    nonce = b"n" * 32
    doc = node.evidence(nonce)
    enrollment = node.enrollment

    def one() -> object:
        return appraise(doc, enrollment=enrollment, nonce=nonce, selection=SELECTION,
                        registry=registry, platform_id=PLATFORM, previous=None,
                        tls_binding=None, now=NOW, audit_entries=node.audit)  # fmt: skip

    result = one()
    assert result.verdict is Verdict.AFFIRMING, result.explanations  # type: ignore[attr-defined]

    attest = base64.b64decode(doc["quote"]["attest"])
    sig = parse_signature(base64.b64decode(doc["quote"]["signature"]))
    der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
    key = enrollment.ak.key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    algo = ec.ECDSA(hashes.SHA256())

    def bare() -> None:
        key.verify(der, attest, algo)

    # Interleave to share the machine's drift between both measurements.
    bare_us = per_call_us(bare, args.seconds / 2)
    app_us = per_call_us(one, args.seconds)
    bare_us = (bare_us + per_call_us(bare, args.seconds / 2)) / 2
    fw_events = len(parse_event_log(node.fw).events)
    print(f"firmware log {len(node.fw)} bytes, {fw_events} events; runtime log "
          f"{len(node.records)} events; audit {len(node.audit)} entries")
    print(f"appraise: {app_us:.0f} µs per call; bare ECDSA P-256 verify: {bare_us:.0f} µs")
    print(f"appraisal appraise_us={app_us:.0f} bare_verify_us={bare_us:.0f} "
          f"ratio={app_us / bare_us:.1f} firmware_events={fw_events} "
          f"runtime_events={len(node.records)}")


if __name__ == "__main__":
    main()
