#!/usr/bin/env python3
"""What a user waits for: whole ``attest`` processes against the tpm2-tools binaries doing the
same job on the same files, run alternately (A B A B ...) in one run so that load on the
machine hits both sides alike.

    python bench/cli_start.py [--rounds N] [--quick] [--baseline REF]

Pairs (the reference is the tpm2-tools binary):
- ``attest quote verify`` (tpm2-tools quote fixture)   vs ``tpm2_checkquote`` on the same files;
- ``attest eventlog replay LOG --json`` (OVMF q35 log) vs ``tpm2_eventlog LOG``;
- ``attest --help``                                     vs ``tpm2_checkquote --version`` (a
  process that parses its arguments and exits: the floor of a process start).

Byte code is compiled first (``compileall``), as an installed wheel has it. Reports the median
and min wall time of each side and two ratios: the ratio of the medians and the median of the
per-round ratios (each attest run divided by the tpm2-tools run next to it: the figure least
moved by other load on the machine). ``--baseline REF`` adds a third side, the same attest
command from the ``src/`` of git revision REF (exported to a temporary directory and compiled
likewise), run in the same alternation: before/after in one run. Targets (issue 18): quote
verify and eventlog replay ≤ 150 ms and ≤ 10x the tpm2-tools binary; ``attest --help``
≤ 100 ms.
Last line:  cli_start quote_ms=… checkquote_ms=… quote_ratio=… replay_ms=… eventlog_ms=…
            replay_ratio=… help_ms=… floor_ms=… help_ratio=… [baseline_quote_ratio=… ...]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def run_once(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    took = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"cli_start: {' '.join(cmd[:4])} … exited {done.returncode}")
    return took * 1000


def export_src(ref: str, into: Path) -> Path:
    """``src/`` of git revision ``ref``, exported under ``into`` and compiled."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(str(into / "src"), quiet=1)
    return into / "src"


def with_src(src: Path) -> dict[str, str]:
    """The environment that makes ``attest`` import from ``src``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def measure(
    rounds: int, baseline: Path | None
) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Per pair: attest's times, tpm2-tools' times, the baseline's times (empty without one);
    run A B [C] A B [C] ... so that load hits every side alike."""
    ours_env = with_src(ROOT / "src")
    base_env = with_src(baseline) if baseline else None
    results = {}
    for name, (ours, ref) in pairs().items():
        run_once(ours, ours_env), run_once(ref)  # warm the page cache
        if base_env:
            run_once(ours, base_env)
        a: list[float] = []
        b: list[float] = []
        c: list[float] = []
        for _ in range(rounds):
            a.append(run_once(ours, ours_env))
            b.append(run_once(ref))
            if base_env:
                c.append(run_once(ours, base_env))
        results[name] = (a, b, c)
    return results


def paired_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="5 rounds")
    ap.add_argument("--baseline", metavar="REF", help="also run attest from git revision REF")
    args = ap.parse_args()
    rounds = 5 if args.quick else args.rounds
    for tool in ("tpm2_checkquote", "tpm2_eventlog"):
        if shutil.which(tool) is None:
            raise SystemExit(f"cli_start: {tool} not found (apt-get install tpm2-tools)")
    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    env_note = "PYTHONDONTWRITEBYTECODE set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    with tempfile.TemporaryDirectory(prefix="cli_start-") as tmp:
        baseline = export_src(args.baseline, Path(tmp)) if args.baseline else None
        results = measure(rounds, baseline)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", env_note)
    print(
        f"{'pair':8} {'attest med/min ms':>18} {'tpm2-tools med/min ms':>22} "
        f"{'ratio of medians':>17} {'median ratio':>13}"
        + (f" {'baseline med ms':>16} {'median ratio':>13}" if baseline else "")
    )
    last = "cli_start"
    for name, (a, b, c) in results.items():
        ma, mb = statistics.median(a), statistics.median(b)
        line = (
            f"{name:8} {ma:10.1f} /{min(a):6.1f} {mb:14.1f} /{min(b):6.1f} "
            f"{ma / mb:16.1f}x {paired_ratio(a, b):12.1f}x"
        )
        if c:
            line += f" {statistics.median(c):16.1f} {paired_ratio(c, b):12.1f}x"
        print(line)
        ref = {"quote": "checkquote", "replay": "eventlog", "help": "floor"}[name]
        last += f" {name}_ms={ma:.1f} {ref}_ms={mb:.1f} {name}_ratio={paired_ratio(a, b):.2f}"
        if c:
            last += (
                f" baseline_{name}_ms={statistics.median(c):.1f}"
                f" baseline_{name}_ratio={paired_ratio(c, b):.2f}"
            )
    print(last)


if __name__ == "__main__":
    main()
