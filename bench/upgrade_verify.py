#!/usr/bin/env python3
"""Upgrade-gate verification speed: attest vs `openssl dgst -sha256` + `veritysetup verify`.

    .venv/bin/python bench/upgrade_verify.py [--mib 1024] [--rounds 3]

Writes a random image (default 1 GiB) and its hash tree in a temporary directory (deleted
afterwards), warms the page cache, then per round, back to back on the same file:

- reference: `openssl dgst -sha256 IMG` (artifact digest) + `veritysetup verify IMG TREE ROOT`
  (the dm-verity tree against the root hash) -- two reads, two hash passes;
- attest: ``attest.verity.hashtree.hash_image`` -- one read, the artifact SHA-256 in a worker
  thread and
  the verity tree in the calling thread, concurrently;
- one SHA-256 pass (`openssl dgst`) alone: the floor attest approaches with two free cores.

Also measures how much parallel SHA-256 throughput the machine really has (two `openssl dgst`
at once vs one): on a VM whose two vCPUs share one core, no concurrency can beat ~1x.
Minimum of the rounds (robust on a shared machine). Last line, machine-readable:

    upgrade_verify mib=... attest_s=... openssl_s=... veritysetup_s=... reference_s=...
        speedup=... target=1.5 single_pass_ratio=... single_pass_target=1.2 parallel_sha=...
        tree_ratio=... floor_s=... floor_ratio=... attest_over_floor=...

Issue 18's target 5: ``speedup`` >= 1.5 and, when a second core is free (``parallel_sha``
near 2), ``single_pass_ratio`` (attest over one ``openssl dgst``) <= 1.2. With one core's worth
of SHA-256 (``parallel_sha`` near 1) attest must hash every byte twice on it, so neither can be
shown: the floor is then about 2x one pass.

The two-core floor, measured in the same run (in-process, single-threaded, same chunking as
``hash_image``): R = the read alone (``readinto`` of every chunk), B = read + one bulk SHA-256,
T = read + the dm-verity tree (one salted SHA-256 per 4 KiB block). Whatever the split between
two threads, the work is B + T - R (one read), so no scheme finishes before (B + T - R) / 2:
``floor_s``, and ``floor_ratio`` = that over one ``openssl dgst``; ``tree_ratio`` is T over one
``openssl dgst``: the floor of ``hash_image`` as built, which keeps the whole tree on one thread
(hashlib's per-call cost is paid per 4 KiB block with the GIL held, and a prototype that moved
part of the tree onto the SHA-256 thread lost more to GIL hand-offs between the two per-block
loops than it gained). ``attest_over_floor`` is attest over ``floor_s``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from attest.verity.hashtree import READ_CHUNK, VerityHasher, hash_image  # noqa: E402


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def floor_components(img: Path, salt: bytes) -> tuple[float, float, float]:
    """Seconds for the read alone, read + one bulk SHA-256, read + the dm-verity tree: one
    thread each, the chunking of ``hash_image`` (module docstring: the two-core floor)."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)

    def run(feed: object) -> float:
        t = time.perf_counter()
        with img.open("rb", buffering=0) as f:
            while n := f.readinto(buf):
                if feed is not None:
                    feed(view[:n])  # type: ignore[operator]
        return time.perf_counter() - t

    read = run(None)
    bulk = run(hashlib.sha256().update)
    tree = VerityHasher(salt=salt)
    verity = run(tree.update)
    tree.finish()
    return read, bulk, verity


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("openssl", "veritysetup"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="attest-bench-") as tmp:
        img, tree = Path(tmp) / "image", Path(tmp) / "tree"
        with img.open("wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        salt = secrets.token_bytes(32)
        out = subprocess.run(
            ["veritysetup", "format", str(img), str(tree), f"--salt={salt.hex()}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        root = next(line.split()[-1] for line in out.splitlines() if line.startswith("Root hash"))
        timed(["openssl", "dgst", "-sha256", str(img)])  # warm the page cache
        got = hash_image(img, salt=salt)
        if got.verity.root_hash.hex() != root:
            print("attest and veritysetup disagree on the root hash", file=sys.stderr)
            return 1
        ssl, ver, att, pair, rd, bulk, vt = [], [], [], [], [], [], []
        for _ in range(args.rounds):
            ssl.append(timed(["openssl", "dgst", "-sha256", str(img)]))
            ver.append(timed(["veritysetup", "verify", str(img), str(tree), root]))
            t = time.perf_counter()
            hash_image(img, salt=salt)
            att.append(time.perf_counter() - t)
            t = time.perf_counter()
            procs = [
                subprocess.Popen(
                    ["openssl", "dgst", "-sha256", str(img)], stdout=subprocess.DEVNULL
                )
                for _ in range(2)
            ]
            for p in procs:
                p.wait()
            pair.append(time.perf_counter() - t)
            r, b, v = floor_components(img, salt)
            rd.append(r)
            bulk.append(b)
            vt.append(v)
    o, v, a = min(ssl), min(ver), min(att)
    parallel = 2 * o / min(pair)  # 2.0 = two real cores of SHA-256, 1.0 = one
    r, b, tr = min(rd), min(bulk), min(vt)
    floor = max(b, (b + tr - r) / 2)  # two threads, one read (module docstring)
    print(
        f"openssl dgst {o:.2f} s, veritysetup verify {v:.2f} s, attest {a:.2f} s "
        f"({args.mib} MiB, min of {args.rounds}); two SHA-256 streams run "
        f"{parallel:.2f}x as fast as one on this machine"
    )
    print(
        f"in-process, one thread: read {r:.2f} s, read + SHA-256 {b:.2f} s, read + dm-verity "
        f"tree {tr:.2f} s ({tr / o:.2f}x one openssl pass: the floor with the tree on one "
        f"thread); ideal two-core floor (B + T - R) / 2 = {floor:.2f} s = {floor / o:.2f}x one "
        f"openssl pass; attest is {a / floor:.2f}x that floor"
    )
    print(
        f"upgrade_verify mib={args.mib} attest_s={a:.3f} openssl_s={o:.3f} "
        f"veritysetup_s={v:.3f} reference_s={o + v:.3f} speedup={(o + v) / a:.2f} "
        f"target=1.5 single_pass_ratio={a / o:.2f} single_pass_target=1.2 "
        f"parallel_sha={parallel:.2f} tree_ratio={tr / o:.2f} floor_s={floor:.3f} "
        f"floor_ratio={floor / o:.2f} "
        f"attest_over_floor={a / floor:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
