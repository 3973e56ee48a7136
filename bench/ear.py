#!/usr/bin/env python3
"""CPU cost of signing and verifying one attestation result (EAR, draft-ietf-rats-ear), as a
JWT and as a CWT, against the bare ``cryptography`` ECDSA P-256 sign and verify of the same
JWS signing input measured in the same run (the physical floor: what is left is encoding).
The fleet signs one EAR per appraisal (``Poller._complete``, on the writer thread).

    python bench/ear.py [--seconds S] [--rounds N] [--src DIR]

The claims are those of one fleet appraisal (``submod`` of an appraisal with an explanation
and the attest.* extensions, a 32-byte nonce). ``--src`` measures another source tree's
``attest.appraisal.ear`` (e.g. an export of an earlier commit: the "before" figure); a tree
without ``sign_cwt`` is measured for the JWT only.

Each operation is measured in interleaved rounds; each figure is the median of the rounds.

Last line:  ear jwt_sign_us=… cwt_sign_us=… bare_sign_us=… jwt_verify_us=… cwt_verify_us=…
            bare_verify_us=… jwt_sign_ratio=… cwt_sign_ratio=… jwt_bytes=… cwt_bytes=…
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from appraisal import calibrate  # noqa: E402 -- bench/appraisal.py's, calls per round


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="per round and operation")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the attest source tree")
    args = ap.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    sys.path.insert(1, str(ROOT))

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from attest.appraisal import ear as ear_mod
    from attest.appraisal.claims import Claim, Finding
    from attest.appraisal.engine import _summarise

    now = datetime(2025, 6, 1, tzinfo=UTC)
    result = _summarise(
        [
            Finding(Claim.INSTANCE_IDENTITY, 2, "quote", "quote ok"),
            Finding(Claim.HARDWARE, 2, "firmware", "firmware log replays to PCRs 0-7"),
            Finding(Claim.EXECUTABLES, 2, "runtime", "runtime log replays to PCR 15"),
            Finding(Claim.FILE_SYSTEM, 2, "verity", "dm-verity root hash blessed as 1.0.0"),
        ],
        node_id="node-0042",
        nonce=b"\x5a" * 32,
        now=now,
        policy_id="attest/default@1",
    )
    claims = ear_mod.ear_claims({"node-0042": ear_mod.submod(result)}, now=now, nonce=result.nonce)
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key()
    jwt = ear_mod.sign_ear(claims, key, kid="k")
    signing_input = jwt.rsplit(".", 1)[0].encode()
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))

    ops: dict[str, Callable[[], object]] = {
        "bare_sign": lambda: key.sign(signing_input, ec.ECDSA(hashes.SHA256())),
        "jwt_sign": lambda: ear_mod.sign_ear(claims, key, kid="k"),
        "bare_verify": lambda: pub.verify(der, signing_input, ec.ECDSA(hashes.SHA256())),
        "jwt_verify": lambda: ear_mod.verify_ear(jwt, pub),
    }
    cwt = b""
    if hasattr(ear_mod, "sign_cwt"):
        cwt = ear_mod.sign_cwt(claims, key, kid="k")
        ops["cwt_sign"] = lambda: ear_mod.sign_cwt(claims, key, kid="k")
        ops["cwt_verify"] = lambda: ear_mod.verify_cwt(cwt, pub)
    calls = {name: calibrate(fn, args.seconds) for name, fn in ops.items()}
    rounds: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.rounds):
        for name, fn in ops.items():
            n = calls[name]
            t = time.perf_counter()
            for _ in range(n):
                fn()
            rounds[name].append((time.perf_counter() - t) / n * 1e6)
    us = {name: statistics.median(r) for name, r in rounds.items()}
    for name, r in rounds.items():
        print(f"{name:12s} median {us[name]:8.1f} us  min {min(r):8.1f} us  ({calls[name]}/round)")
    fields = {f"{k}_us": f"{v:.1f}" for k, v in us.items()}
    fields["jwt_sign_ratio"] = f"{us['jwt_sign'] / us['bare_sign']:.2f}"
    if "cwt_sign" in us:
        fields["cwt_sign_ratio"] = f"{us['cwt_sign'] / us['bare_sign']:.2f}"
        fields["cwt_verify_ratio"] = f"{us['cwt_verify'] / us['bare_verify']:.2f}"
    fields["jwt_verify_ratio"] = f"{us['jwt_verify'] / us['bare_verify']:.2f}"
    fields["jwt_bytes"] = str(len(jwt))
    if cwt:
        fields["cwt_bytes"] = str(len(cwt))
    print("ear " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
