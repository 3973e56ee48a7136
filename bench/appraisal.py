#!/usr/bin/env python3
"""CPU cost of one appraisal without the network -- full (the first contact: whole logs) and
incremental (every later contact: ``appraise_incremental`` with the node's memory, logs asked
for from where they ended) -- against the bare signature check measured in the same run.

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

The three are measured in interleaved rounds (bare, full, incremental, bare, ...); each figure
is the median of the rounds, the minimum is printed too.

Last line:  appraisal appraise_us=… incremental_us=… bare_verify_us=… ratio=…
            incremental_ratio=… firmware_events=… runtime_events=…
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def calibrate(fn: Callable[[], object], seconds: float) -> int:
    """Calls per round so that a round lasts about ``seconds``."""
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - t
        if took > 0.05:
            return max(1, int(n * seconds / took))
        n *= 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from tests.support.appraisal import PLATFORM, SELECTION, make_node, make_registry
    from tests.support.manifest import NOW

    from attest.appraisal import appraise, appraise_incremental
    from attest.appraisal.claims import Verdict
    from attest.appraisal.memory import NodeMemory
    from attest.eventlog import parse_event_log
    from attest.evidence import b64
    from attest.tpmstruct import parse_signature

    node = make_node()
    registry = make_registry(node)
    nonce = b"n" * 32
    doc = node.evidence(nonce)
    enrollment = node.enrollment
    kw: dict[str, Any] = {
        "enrollment": enrollment,
        "nonce": nonce,
        "selection": SELECTION,
        "registry": registry,
        "platform_id": PLATFORM,
        "previous": None,
        "tls_binding": None,
        "now": NOW,
    }

    def full() -> object:
        return appraise(doc, audit_entries=node.audit, **kw)

    result = appraise(doc, audit_entries=node.audit, **kw)
    assert result.verdict is Verdict.AFFIRMING, result.explanations

    # The memory of the first contact; then the same quote answered from where the logs ended
    # (nothing new: the steady state of a node between two runtime events).
    first = appraise_incremental(doc, memory=NodeMemory(), audit_entries=node.audit, **kw)
    memory = first.memory
    n_fw, n_rt = len(node.fw), len(node.records)
    later = {
        **doc,
        "firmware_log": {"start": n_fw, "total": n_fw, "data": ""},
        "runtime_log": {**doc["runtime_log"], "start": n_rt, "records": []},
    }
    assert b64(node.fw) == doc["firmware_log"]["data"]

    def incremental() -> object:
        return appraise_incremental(later, memory=memory, audit_entries=[], **kw)

    inc = appraise_incremental(later, memory=memory, audit_entries=[], **kw)
    assert inc.complete and inc.result.to_json() == result.to_json()

    attest = base64.b64decode(doc["quote"]["attest"])
    sig = parse_signature(base64.b64decode(doc["quote"]["signature"]))
    der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
    key = enrollment.ak.key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    algo = ec.ECDSA(hashes.SHA256())

    def bare() -> None:
        key.verify(der, attest, algo)

    per_round = args.seconds / args.rounds
    fns = {"bare": bare, "full": full, "incremental": incremental}
    reps = {name: calibrate(fn, per_round / 3) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):  # interleaved: the machine's drift hits all three alike
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            times[name].append((time.perf_counter() - t) / reps[name] * 1e6)
    bare_us, app_us, inc_us = (statistics.median(times[k]) for k in ("bare", "full", "incremental"))
    fw_events = len(parse_event_log(node.fw).events)
    print(
        f"firmware log {len(node.fw)} bytes, {fw_events} events; runtime log "
        f"{len(node.records)} events; audit {len(node.audit)} entries"
    )
    for k in fns:
        print(f"{k:12s} min {min(times[k]):7.0f} µs  median {statistics.median(times[k]):7.0f} µs")
    print(
        f"appraisal appraise_us={app_us:.0f} incremental_us={inc_us:.0f} "
        f"bare_verify_us={bare_us:.0f} ratio={app_us / bare_us:.1f} "
        f"incremental_ratio={inc_us / bare_us:.1f} firmware_events={fw_events} "
        f"runtime_events={len(node.records)}"
    )


if __name__ == "__main__":
    main()
