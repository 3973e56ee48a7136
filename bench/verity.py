#!/usr/bin/env python3
"""dm-verity root hash: attest (Python, streaming, plus the artifact SHA-256 in the same read)
against `veritysetup format --no-superblock` on the same 256 MiB file, same salt.

    python bench/verity.py [--rounds N] [--quick]      (BENCH_VERITY_MIB sets the size)

The sides alternate (A B A B ...) for N rounds (default 5) after one untimed pass of each that
warms the page cache; each side reports its min and median. ``ratio`` is attest's min over
veritysetup's min (< 1: attest is faster); ``ratio_median`` the same for the medians.
Last line: ``verity attest_s=.. veritysetup_s=.. ratio=.. attest_median_s=..
veritysetup_median_s=.. ratio_median=.. rounds=N mib=M``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attest.verity.hashtree import hash_image

SIZE = int(os.environ.get("BENCH_VERITY_MIB", "256")) << 20


def veritysetup_root(tool: str, image: Path, salt: bytes) -> bytes:
    out = subprocess.run(
        [tool, "format", "--no-superblock", f"--salt={salt.hex()}", str(image), f"{image}.hash"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"Root hash:\s+([0-9a-f]+)", out)
    if not m:
        raise SystemExit("verity error=no-root-hash-in-veritysetup-output")
    return bytes.fromhex(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 rounds over 64 MiB")
    args = ap.parse_args()
    size = 64 << 20 if args.quick else SIZE
    rounds = 3 if args.quick else args.rounds
    tool = shutil.which("veritysetup") or "/usr/sbin/veritysetup"
    if not os.path.exists(tool):
        print("verity skipped=veritysetup-missing")
        return 0
    salt = bytes(range(32))
    ours_t: list[float] = []
    theirs_t: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "img"
        with image.open("wb") as f:
            chunk = os.urandom(1 << 20)
            for i in range(size >> 20):
                f.write(bytes([i & 0xFF]) + chunk[1:])
        ours = hash_image(image, salt=salt).verity.root_hash  # warms the page cache
        if veritysetup_root(tool, image, salt) != ours:
            print("verity error=root-hash-mismatch", file=sys.stderr)
            return 1
        for _ in range(rounds):
            t0 = time.perf_counter()
            hash_image(image, salt=salt)
            t1 = time.perf_counter()
            veritysetup_root(tool, image, salt)
            t2 = time.perf_counter()
            ours_t.append(t1 - t0)
            theirs_t.append(t2 - t1)
    a, v = min(ours_t), min(theirs_t)
    am, vm = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"attest      min {a:.3f} s  median {am:.3f} s  ({rounds} rounds, {size >> 20} MiB)")
    print(f"veritysetup min {v:.3f} s  median {vm:.3f} s")
    print(
        f"verity attest_s={a:.3f} veritysetup_s={v:.3f} ratio={a / v:.2f} "
        f"attest_median_s={am:.3f} veritysetup_median_s={vm:.3f} ratio_median={am / vm:.2f} "
        f"rounds={rounds} mib={size >> 20}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
