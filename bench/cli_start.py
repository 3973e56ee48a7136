#!/usr/bin/env python3
"""What a user waits for: whole ``attest`` processes against the tpm2-tools binaries doing the
same job on the same files, run alternately (A B A B ...) in one run so that load on the
machine hits both sides alike.

    python bench/cli_start.py [--rounds N]

Pairs (the reference is the tpm2-tools binary):
- ``attest quote verify`` (tpm2-tools quote fixture)   vs ``tpm2_checkquote`` on the same files;
- ``attest eventlog replay LOG --json`` (OVMF q35 log) vs ``tpm2_eventlog LOG``;
- ``attest --help``                                     vs ``tpm2_checkquote --version`` (a
  process that parses its arguments and exits: the floor of a process start).

Byte code is compiled first (``compileall``), as an installed wheel has it. Reports the median
and min wall time of each side and their ratio. Targets (issue 18): quote verify and eventlog
replay ≤ 150 ms and ≤ 10x the tpm2-tools binary; ``attest --help`` ≤ 100 ms.
Last line:  cli_start quote_ms=… checkquote_ms=… quote_ratio=… replay_ms=… eventlog_ms=…
            replay_ratio=… help_ms=… floor_ms=…
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "unit" / "fixtures" / "tpm2tools-quote"
LOG = ROOT.parent / "shared" / "eventlogs" / "ovmf__q35-direct-boot.bin"
NONCE = "c0ffee" * 8


def _attest() -> list[str]:
    exe = Path(sys.executable).with_name("attest")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "attest"]


def pairs() -> dict[str, tuple[list[str], list[str]]]:
    q = ["-m", str(FIX / "quote.msg"), "-s", str(FIX / "quote.sig"), "-f", str(FIX / "quote.pcrs")]
    a = _attest()
    return {
        "quote": (
            [*a, "quote", "verify", "--ak", str(FIX / "ak.pem"), *q, "--nonce", NONCE],
            ["tpm2_checkquote", "-u", str(FIX / "ak.pem"), *q, "-g", "sha256", "-q", NONCE],
        ),
        "replay": (
            [*a, "eventlog", "replay", str(LOG), "--json"],
            ["tpm2_eventlog", str(LOG)],
        ),
        "help": ([*a, "--help"], ["tpm2_checkquote", "--version"]),
    }


def run_once(cmd: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"cli_start: {' '.join(cmd[:4])} … exited {done.returncode}")
    return took * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    for tool in ("tpm2_checkquote", "tpm2_eventlog"):
        if shutil.which(tool) is None:
            raise SystemExit(f"cli_start: {tool} not found (apt-get install tpm2-tools)")
    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    env_note = "PYTHONDONTWRITEBYTECODE set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    results: dict[str, tuple[list[float], list[float]]] = {}
    for name, (ours, ref) in pairs().items():
        run_once(ours), run_once(ref)  # warm the page cache
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(run_once(ours))
            b.append(run_once(ref))
        results[name] = (a, b)
    print(
        f"{'pair':8} {'attest med/min ms':>18} {'tpm2-tools med/min ms':>22} {'ratio':>6}",
        env_note,
    )
    fields = {}
    for name, (a, b) in results.items():
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:8} {ma:10.1f} /{min(a):6.1f} {mb:14.1f} /{min(b):6.1f} {ma / mb:6.1f}x")
        fields[name] = (ma, mb)
    q, r, h = fields["quote"], fields["replay"], fields["help"]
    print(
        f"cli_start quote_ms={q[0]:.1f} checkquote_ms={q[1]:.1f} quote_ratio={q[0] / q[1]:.2f} "
        f"replay_ms={r[0]:.1f} eventlog_ms={r[1]:.1f} replay_ratio={r[0] / r[1]:.2f} "
        f"help_ms={h[0]:.1f} floor_ms={h[1]:.1f}"
    )


if __name__ == "__main__":
    main()
