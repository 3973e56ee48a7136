#!/usr/bin/env python3
"""Every fuzz target of ``attest.testing.fuzz_targets`` for N mutated inputs each (default
1,000,000): an undocumented exception escaping a parser is a finding.

    python bench/fuzz.py [--inputs N] [--seed S] [--target NAME ...]

The seed defaults to a fresh one from ``os.urandom`` and is printed; the same seed replays
the same inputs. The firmware event logs of ``../shared/eventlogs`` join the event-log seeds
when present. Prints, per target, inputs, seconds, inputs/s, refused inputs and findings (the
first few findings with their input in hex), then one machine-readable line:
    fuzz targets=… inputs=… seconds=… findings=… seed=… per_target=name:inputs:rate:findings,…
Exit status 1 if anything was found.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cryptography.utils import CryptographyDeprecationWarning  # noqa: E402

from attest.testing.fuzz import Result, run_target  # noqa: E402
from attest.testing.fuzz_targets import targets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--inputs", type=float, default=1e6, help="inputs per target (default 1e6)")
    ap.add_argument("--seed", type=int, default=None, help="default: fresh from os.urandom")
    ap.add_argument("--target", action="append", default=[], help="only these targets")
    args = ap.parse_args(argv)
    # mutated EK serial numbers: tolerated by attest.ekcert, warned about by cryptography
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "big")
    inputs = int(args.inputs)
    chosen = [
        t
        for t in targets(eventlog_dirs=[(ROOT / ".." / "shared" / "eventlogs").resolve()])
        if not args.target or t.name in args.target
    ]
    print(f"fuzz seed={seed} inputs per target={inputs}", flush=True)
    print(f"{'target':<20} {'inputs':>10} {'seconds':>9} {'inputs/s':>10} {'refused':>10} findings")
    results: list[Result] = []
    for target in chosen:
        r = run_target(target, seed, inputs=inputs)
        results.append(r)
        print(
            f"{r.target:<20} {r.inputs:>10} {r.seconds:>9.1f} {r.rate:>10.0f} {r.refused:>10} "
            f"{r.finding_count}",
            flush=True,
        )
        for f in r.findings[:3]:
            print(f"    finding {f.describe()[:600]}", flush=True)
    total = sum(r.inputs for r in results)
    seconds = sum(r.seconds for r in results)
    findings = sum(r.finding_count for r in results)
    per = ",".join(f"{r.target}:{r.inputs}:{r.rate:.0f}:{r.finding_count}" for r in results)
    print(
        f"fuzz targets={len(results)} inputs={total} seconds={seconds:.1f} "
        f"findings={findings} seed={seed} per_target={per}"
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
