#!/usr/bin/env python3
"""dm-verity root hash: attest (Python, streaming, plus the artifact SHA-256 in the same read)
against `veritysetup format --no-superblock` on the same 256 MiB file, same salt.

Last line: ``verity attest_s=.. veritysetup_s=.. ratio=..`` (ratio = attest / veritysetup).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attest.verity.hashtree import hash_image

SIZE = int(os.environ.get("BENCH_VERITY_MIB", "256")) << 20


def main() -> int:
    tool = shutil.which("veritysetup") or "/usr/sbin/veritysetup"
    if not os.path.exists(tool):
        print("verity skipped=veritysetup-missing")
        return 0
    salt = bytes(range(32))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "img"
        with image.open("wb") as f:
            chunk = os.urandom(1 << 20)
            for i in range(SIZE >> 20):
                f.write(bytes([i & 0xFF]) + chunk[1:])
        hash_image(image, salt=salt)  # warm the page cache
        t0 = time.perf_counter()
        ours = hash_image(image, salt=salt).verity.root_hash
        t1 = time.perf_counter()
        out = subprocess.run(
            [
                tool,
                "format",
                "--no-superblock",
                f"--salt={salt.hex()}",
                str(image),
                str(image) + ".hash",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        t2 = time.perf_counter()
    m = re.search(r"Root hash:\s+([0-9a-f]+)", out)
    if not m or bytes.fromhex(m.group(1)) != ours:
        print("verity error=root-hash-mismatch", file=sys.stderr)
        return 1
    a, v = t1 - t0, t2 - t1
    print(f"verity attest_s={a:.3f} veritysetup_s={v:.3f} ratio={a / v:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
