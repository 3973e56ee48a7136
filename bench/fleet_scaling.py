#!/usr/bin/env python3
"""Does the PostgreSQL multi-worker mode scale with the cores given? (issue 18, target 4)

    python bench/fleet_scaling.py [--cpu-quota CORES] [--rounds R] [--nodes N] [--interval S]
                                  [--seconds S] [--warmup S]

Starts a throwaway PostgreSQL cluster on 127.0.0.1 (``attest.testing.pg``: as the fleet tests
start theirs, durability off), then runs ``bench/fleet.py`` against a fresh database of it with
one verifier worker and with two, alternately (1 2 1 2 ...: ``--rounds`` each). Each worker is
held to ``--cpu-quota`` cores by a CPU cgroup of its own (needs root), so "the cores given" are
given even on a machine whose two vCPUs also carry the simulated nodes and PostgreSQL: one
worker gets ``q`` cores, two get ``2q``. The fleet offers more than the workers can do
(``--nodes`` / ``--interval`` appraisals/s), so what each configuration does is its capacity;
the benchmark says so when the offer was not enough (the ratio is then a lower bound).

Prints each run's figures and, last:
    fleet_scaling cpu_quota=… nodes=… interval_s=… offered_aps=… aps_1=… aps_2=… scaling=…
                  efficiency=… scaling_per_verify=… cpu_us_per_appraisal_1=…
                  cpu_us_per_appraisal_2=… bare_verify_us=… double_appraisals=… over_offered=…
``scaling`` is the two workers' appraisals/s over one worker's (medians of the rounds);
``efficiency`` is scaling / 2 (1.0: linear). The machine's speed drifts between runs, so
``scaling_per_verify`` divides it by the runs' speeds: each run's appraisals/s times its bare
verify (measured inside the verifiers at the edges of the window), two workers' over one's.
``double_appraisals``: challenges to a node less than 0.5 s after the previous one, over all
two-worker runs (two workers appraising the same node in one interval).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def last_line(out: str) -> dict[str, str]:
    """The ``fleet …`` line of bench/fleet.py's output as a dict."""
    for line in reversed(out.splitlines()):
        if line.startswith("fleet "):
            return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
    raise SystemExit(f"fleet_scaling.py: bench/fleet.py printed no result line:\n{out[-2000:]}")


def run_fleet(dsn: str, workers: int, args: argparse.Namespace) -> tuple[dict[str, str], str]:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "fleet.py"),
        "--db",
        dsn,
        "--workers",
        str(workers),
        "--cpu-quota",
        f"{args.cpu_quota:g}",
        "--nodes",
        str(args.nodes),
        "--interval",
        f"{args.interval:g}",
        "--seconds",
        f"{args.seconds:g}",
        "--warmup",
        f"{args.warmup:g}",
        "--offline-rounds",  # its offline figures are not used here
        "1",
    ]
    timeout = 300 + args.warmup + args.seconds
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if got.returncode != 0:
        raise SystemExit(
            f"fleet_scaling.py: bench/fleet.py --workers {workers} failed "
            f"(exit {got.returncode}):\n{(got.stdout + got.stderr)[-3000:]}"
        )
    return last_line(got.stdout), got.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-quota", type=float, default=0.4, metavar="CORES")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds before the window: every node's first, full contact falls in it",
    )
    ap.add_argument(
        "--pg",
        default="",
        metavar="DSN",
        help="use this PostgreSQL server (postgresql://user@host:port, a new database per run) "
        "instead of starting a throwaway cluster",
    )
    ap.add_argument("--verbose", action="store_true", help="print bench/fleet.py's whole output")
    args = ap.parse_args()

    from attest.testing.pg import PgServer, PgUnavailable, pg_cluster

    try:
        import psycopg
    except ImportError:
        print("fleet_scaling.py: psycopg (the fleet extra) is not installed", file=sys.stderr)
        return 2

    offered = args.nodes / args.interval
    runs: dict[int, list[dict[str, str]]] = {1: [], 2: []}
    with contextlib.ExitStack() as stack:
        if args.pg:
            server = PgServer(args.pg.rstrip("/"))
        else:
            try:
                server = PgServer(stack.enter_context(pg_cluster()).dsn_base)
            except PgUnavailable as exc:
                print(f"fleet_scaling.py: {exc}", file=sys.stderr)
                return 2
        for r in range(args.rounds):
            for workers in (1, 2):
                t = time.time()
                try:
                    dsn = server.new_database()
                except psycopg.Error as exc:
                    print(
                        f"fleet_scaling.py: cannot create a database on {server.dsn_base}: "
                        f"{str(exc).splitlines()[0]}",
                        file=sys.stderr,
                    )
                    return 2
                got, out = run_fleet(dsn, workers, args)
                runs[workers].append(got)
                if args.verbose:
                    print(out)
                print(
                    f"round {r + 1}, {workers} worker{'s' * (workers > 1)}: "
                    f"{float(got['aps']):6.1f} appraisals/s of {offered:.0f} offered, "
                    f"verifier CPU {got['verifier_cpu']} core "
                    f"({got['verifier_cpu_us_per_appraisal']} µs per appraisal, bare verify "
                    f"{got['bare_verify_us']} µs), p99 {got['p99_ms']} ms, double appraisals "
                    f"{got['double_appraisals']} ({time.time() - t:.0f} s)",
                    flush=True,
                )

    def med(workers: int, key: str) -> float:
        return median(float(g[key]) for g in runs[workers])

    aps1, aps2 = med(1, "aps"), med(2, "aps")
    scaling = aps2 / aps1
    # The machine's speed drifts from one run to the next (the bare verify measured inside the
    # verifiers moves by up to a third): appraisals/s in units of the same run's bare verify.
    work = {
        w: median(float(g["aps"]) * float(g["bare_verify_us"]) / 1e6 for g in runs[w])
        for w in (1, 2)
    }
    over = all(g["keeps_up"] == "0" for g in runs[1] + runs[2])
    doubles = sum(int(g["double_appraisals"]) for g in runs[2])
    if not over:
        print(
            "note: a run kept up with all that was offered: its appraisals/s is the offer, "
            "not its capacity, and the scaling figure is a lower bound (offer more: --nodes)"
        )
    print(
        f"fleet_scaling cpu_quota={args.cpu_quota:g} nodes={args.nodes} "
        f"interval_s={args.interval:g} offered_aps={offered:.0f} rounds={args.rounds} "
        f"aps_1={aps1:.0f} aps_2={aps2:.0f} scaling={scaling:.2f} efficiency={scaling / 2:.2f} "
        f"scaling_per_verify={work[2] / work[1]:.2f} "
        f"cpu_us_per_appraisal_1={med(1, 'verifier_cpu_us_per_appraisal'):.0f} "
        f"cpu_us_per_appraisal_2={med(2, 'verifier_cpu_us_per_appraisal'):.0f} "
        f"bare_verify_us={median(float(g['bare_verify_us']) for g in runs[1] + runs[2]):.0f} "
        f"double_appraisals={doubles} over_offered={int(over)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
