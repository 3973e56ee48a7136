#!/usr/bin/env python3
"""SEV-SNP report verification throughput against the floor: the bare P-384 ECDSA verify of
the same report by the same key, measured in the same run.

    python bench/snp.py [--reports N] [--rounds R]

attest's side is ``SnpVerifier.verify`` with the chain cached (what a verifier does for a
chip it has seen): parse the 1184-byte report, look the chain up, re-check validity at
``now``, verify the ECDSA signature, compare the TCB and chip id. The floor is
``EllipticCurvePublicKey.verify`` on pre-decoded inputs. The data is synthetic, made at start:
a Turin v5 report signed by the VCEK of ``attest.testing.snp``'s fake AMD, whose ARK the
verifier is given as pinned (``pins=``), with its KDS-shaped cert_chain (ASK + ARK); the
per-report work is the same as for a real report (same sizes, one P-384 verify). Rounds
interleave short runs of each side; the minimum per side is the least disturbed by other load
on the machine.

Prints a table and, last, one machine-readable line:
    snp reports_per_s=… floor_per_s=… attest_us=… floor_us=… ratio=…
Target (issue 19): ratio <= 1.2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature  # noqa: E402

from attest.snp.report import Product, parse_report  # noqa: E402
from attest.snp.verify import SnpVerifier  # noqa: E402
from attest.testing.snp import make_fake_amd  # noqa: E402

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)  # the fake chain is valid from 2024-01-01


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reports", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    amd = make_fake_amd(Product.TURIN, rsa_bits=4096)  # AMD's ARK and ASK are RSA-4096
    report, leaf, certs = amd.report(version=5), amd.vcek.der, amd.cert_chain()
    reports = [bytes(report) for _ in range(args.reports)]  # distinct objects: no shared caches
    verifier = SnpVerifier(pins=amd.pins)
    chain = verifier.verify(report, leaf=leaf, intermediates=certs, now=NOW).chain  # then cached
    parsed = parse_report(report)
    der = encode_dss_signature(parsed.signature_r, parsed.signature_s)
    signed = parsed.signed_bytes
    key, algo = chain.leaf_key, ec.ECDSA(hashes.SHA384())

    def floor() -> float:
        t = time.perf_counter()
        for _ in reports:
            key.verify(der, signed, algo)
        return (time.perf_counter() - t) / len(reports)

    def ours() -> float:
        t = time.perf_counter()
        for r in reports:
            verifier.verify(r, leaf=leaf, intermediates=certs, now=NOW)
        return (time.perf_counter() - t) / len(reports)

    floor(), ours()  # warm up
    floors, oursl = [], []
    for _ in range(args.rounds):
        floors.append(floor())
        oursl.append(ours())
    f, o = min(floors), min(oursl)
    med = statistics.median(oursl) / statistics.median(floors)
    print(f"{'':10} {'µs/report':>10} {'reports/s':>10}")
    print(f"{'floor':10} {f * 1e6:10.1f} {1 / f:10.0f}")
    print(f"{'attest':10} {o * 1e6:10.1f} {1 / o:10.0f}   ratio {o / f:.3f} (median {med:.3f})")
    print(
        f"snp reports_per_s={1 / o:.0f} floor_per_s={1 / f:.0f} attest_us={o * 1e6:.1f} "
        f"floor_us={f * 1e6:.1f} ratio={o / f:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
