"""``attest fleet``: the fleet verifier service and its node list.

    attest fleet serve [--db URL] [--listen HOST:PORT] [--interval S] [--concurrency N]
                       [--worker-id ID] [--webhook URL --webhook-secret-file F
                        [--webhook-outbox-max N] [--webhook-timeout S]
                        [--webhook-backoff S] [--webhook-max-backoff S]]
                       (--trust-dir DIR | --policy RULES allowing unidentified releases)
                       [--policy RULES] [--registry-refresh S] [--ear-key PEM]
                       (--api-token-file F | --insecure-no-auth) [--read-token-file F]
                       [--listen-cert C --listen-key K] [--allow-nodes CIDR[,CIDR]]
                       [--trusted-proxies IP|CIDR[,...]]
                       (--ek-roots PEM|DIR --client-cert C --client-key K | --tofu)
    attest fleet add URL [--host HOST_URL] [--id ID] [--db URL] [--re-enroll] [--policy RULES]
                     (--ek-roots PEM|DIR [--client-cert C --client-key K | --operator-socket S]
                      | --tofu)
    attest fleet ls [--json] [--db URL] [--interval S] [--stale-after N]
    attest fleet show ID [--json] [--db URL] [--interval S] [--stale-after N]

``--db``: ``sqlite:///path`` (default ``$ATTEST_FLEET_DB`` or ``sqlite:///attest-fleet.db`` in
the working directory) or ``postgresql://...`` when several ``serve`` processes share the fleet
(give each its own ``--worker-id``).

``serve`` fails closed without a registry: without ``--trust-dir`` it refuses to start unless
``--policy`` holds the developer rule ``allow_unidentified_release``; with one, a missing,
unreadable or expired registry makes every node could-not-appraise until a valid fresh one is
back. ``add`` refuses an id that is already enrolled unless ``--re-enroll``. ``ls`` and ``show``
give each verdict its age and show ``stale`` one not appraised within ``--stale-after``
intervals. See docs/fleet.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from attest.appraisal.layers import LAYERS as PAIR_LAYERS
from attest.cli._common import error_line, print_json
from attest.cli._fleet_common import freshness_of, settings_of, store_of
from attest.errors import AttestError, ConfigError, NodeIdRefused
from attest.verifier.fleet.admission import check_node_id
from attest.verifier.fleet.config import (
    DEFAULT_EAR_KEY,
    DEFAULT_OUTBOX_MAX,
    DEFAULT_REFRESH,
    DEFAULT_SELECTION,
)
from attest.verifier.fleet.model import DEFAULT_STALE_INTERVALS, iso, node_json


def _service(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``serve`` (``attest.cli._fleet_service``) or ``add`` (``attest.cli._fleet_add``),
    imported when it runs: ``ls`` and ``show`` read the store without loading the service
    (FastAPI, the poller, HTTP, X.509), and ``add`` enrolls without loading FastAPI."""

    def run(args: argparse.Namespace) -> int:
        command = getattr(importlib.import_module(f"attest.cli.{module}"), name)
        rc: int = command(args)
        return rc

    return run


def _age(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f} s ago"


def cmd_ls(args: argparse.Namespace) -> int:
    """Each node's verdict with its age; ``stale`` (and the last verdict) when it was not
    appraised within the freshness bound."""
    fleet = settings_of(args)
    fresh = freshness_of(args)
    store = store_of(args, fleet)
    try:
        nodes = store.list_nodes(ear=args.json)
    finally:
        store.close()
    now = time.time()
    if args.json:
        print_json([node_json(n, now=now, freshness=fresh) for n in nodes])
        return 0
    for n in nodes:
        shown = f"stale (was {n.verdict})" if fresh.stale(n, now) else n.verdict
        print(
            f"{n.node_id:<24} {shown:<28} {n.enrollment or 'unenrolled':<19} "
            f"{_age(fresh.age(n, now)):<12} {n.explanation[:100]}"
        )
        for name, lay in (n.layers or {}).items():
            if name in PAIR_LAYERS and isinstance(lay, dict):
                print(
                    f"  {name:<22} {str(lay.get('verdict')):<16} "
                    f"{str(lay.get('explanation') or '')[:100]}"
                )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    fleet = settings_of(args)
    fresh = freshness_of(args)
    try:  # every stored id follows the rule; another (e.g. not UTF-8) cannot be queried
        check_node_id(args.node_id)
    except NodeIdRefused as exc:
        raise ConfigError(
            f"no node {args.node_id[:80]!r} in the fleet ({exc})", key="node_id"
        ) from None
    store = store_of(args, fleet)
    try:
        n = store.get_node(args.node_id)
        changes = store.changes(args.node_id, 20) if n is not None else []
    finally:
        store.close()
    if n is None:
        raise ConfigError(f"no node {args.node_id!r} in the fleet", key="node_id")
    now = time.time()
    if args.json:
        doc = node_json(n, now=now, freshness=fresh)
        doc["history"] = [{**c, "at": iso(c["at"])} for c in changes]
        print_json(doc)
        return 0
    shown = f"STALE (last {n.verdict})" if fresh.stale(n, now) else n.verdict.upper()
    print(f"{n.node_id}: {shown}  ({n.url}{', host ' + n.host_url if n.host_url else ''})")
    print(f"  explanation: {n.explanation}")
    print(f"  enrollment: {n.enrollment or 'not enrolled'}")
    for name, lay in (n.layers or {}).items():
        if name in PAIR_LAYERS and isinstance(lay, dict):
            print(
                f"  {name} {lay.get('node_id')}: {lay.get('verdict')} — "
                f"{lay.get('explanation') or ''}"
            )
    print(
        f"  release: {n.release or '—'}; last appraised {iso(n.last_appraised) or 'never'} "
        f"({_age(fresh.age(n, now))}, {n.appraisals} appraisals)"
    )
    ear = f"signed, {len(n.ear)} bytes (--json prints it)" if n.ear else "none yet"
    print(f"  EAR: {ear}")
    for c in changes:
        print(f"  {iso(c['at'])}  {c['from']} → {c['to']}: {c['explanation'][:160]}")
    return 0


def _db_option(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--db",
        help="sqlite:///PATH or postgresql://... "
        "(default $ATTEST_FLEET_DB or sqlite:///attest-fleet.db)",
    )


def _freshness_options(q: argparse.ArgumentParser, *, interval: bool = True) -> None:
    if interval:
        q.add_argument(
            "--interval",
            type=float,
            default=10.0,
            help="the fleet's polling interval, seconds (default %(default)s)",
        )
    q.add_argument(
        "--stale-after",
        type=int,
        default=DEFAULT_STALE_INTERVALS,
        metavar="N",
        help="a node not appraised within N intervals is shown stale (its stored verdict "
        "is kept) (default %(default)s)",
    )


def _enrollment_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--policy",
        metavar="FILE",
        help="the verifier's rules (JSON or TOML: runtime_pcr, allow_unidentified_release, "
        "waive_platform; attest verify --policy's): named in every EAR; a node claiming "
        "another runtime PCR is refused at enrollment",
    )
    g = q.add_argument_group(
        "enrollment (fails closed: EK roots, default the bundled store; or --tofu)"
    )
    g.add_argument(
        "--ek-roots",
        action="append",
        metavar="PEM|DIR",
        help="TPM vendors' EK certificate CAs (self-signed: roots, others: "
        "intermediates; repeat; default $ATTEST_FLEET_EK_ROOTS, else the vendor EK CA store "
        "bundled with attest unless --tofu); given, they replace the bundled store -- the "
        "word 'bundled' among them keeps it (a private CA beside it): the EK "
        "certificate must chain to them, and credential activation must "
        "prove the AK lives beside that EK",
    )
    g.add_argument(
        "--host-ek-roots",
        action="append",
        metavar="PEM|DIR",
        help="a pair's host layer: its EK CAs (default: --ek-roots, which are "
        "then the guests' vTPM CA)",
    )
    g.add_argument(
        "--tofu",
        action="store_true",
        help="allow trust on first use: enroll without EK roots (no --ek-roots: the EK "
        "certificate is not checked), or without credential activation (said in the "
        "enrollment)",
    )
    g.add_argument(
        "--client-cert",
        help="client certificate for the nodes' mutual-TLS listener (credential activation)",
    )
    g.add_argument("--client-key", help="its private key")
    g.add_argument("--tls-ca", help="CA of the nodes' TLS certificates (https URLs)")


def _serve_polling_options(s: argparse.ArgumentParser) -> None:
    """Where the service listens; how and what it polls."""
    s.add_argument("--listen", default="127.0.0.1:7500", help="HOST:PORT (default %(default)s)")
    s.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds between appraisals of one node (default %(default)s)",
    )
    s.add_argument("--jitter", type=float, default=0.1, help="fraction of the interval")
    s.add_argument("--concurrency", type=int, default=256, help="challenges in flight")
    s.add_argument("--timeout", type=float, default=5.0, help="per challenge, seconds")
    s.add_argument(
        "--lease-ttl",
        type=float,
        help="seconds a dead worker's nodes wait before "
        "another worker takes them (default max(60, 4 × timeout))",
    )
    s.add_argument("--worker-id", help="this worker's name in leases (default host-pid)")
    s.add_argument(
        "--selection",
        default=DEFAULT_SELECTION,
        help="PCRs to quote (the runtime PCR is added) (default %(default)s)",
    )
    s.add_argument(
        "--platform",
        "--platform-id",
        dest="platform_id",
        help="the nodes' platform id in the registry: firmware PCRs 0-7 are appraised against "
        "its signed reference (none named: a warning, unless the policy has waive_platform)",
    )


def _serve_registry_options(s: argparse.ArgumentParser) -> None:
    """The trusted registries (the nodes' and a pair's host layer's) and platforms."""
    s.add_argument(
        "--trust-dir",
        help="trusted manifest state (attest manifest verify --state); required unless "
        "--policy allows unidentified releases. Without a valid fresh registry in it, every "
        "node is could-not-appraise",
    )
    s.add_argument(
        "--registry-refresh",
        type=float,
        default=DEFAULT_REFRESH,
        metavar="S",
        help="seconds between two reads of --trust-dir (default %(default)s)",
    )
    s.add_argument(
        "--host-trust-dir",
        help="a pair's host layer: its trusted manifest state (default --trust-dir)",
    )
    s.add_argument(
        "--host-platform",
        "--host-platform-id",
        dest="host_platform_id",
        help="a pair's host layer: its platform reference (default --platform)",
    )


def _serve_access_options(s: argparse.ArgumentParser) -> None:
    """Webhooks, who may use the service, which nodes it may contact, its EAR key."""
    s.add_argument("--webhook", help="URL to POST signed verdict changes to")
    s.add_argument("--webhook-secret-file", help="HMAC-SHA256 key for the webhook (≥ 16 bytes)")
    s.add_argument(
        "--webhook-outbox-max",
        type=int,
        default=DEFAULT_OUTBOX_MAX,
        metavar="N",
        help="undelivered webhook events kept in the database; beyond it the oldest are dropped "
        "and counted (default %(default)s)",
    )
    s.add_argument(
        "--webhook-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds per delivery attempt, all told (default %(default)s)",
    )
    s.add_argument(
        "--webhook-backoff",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds before the first retry, doubling per failure (default %(default)s)",
    )
    s.add_argument(
        "--webhook-max-backoff",
        type=float,
        default=60.0,
        metavar="S",
        help="the longest pause between two attempts (default %(default)s)",
    )
    s.add_argument(
        "--api-token-file",
        help="the write token: needed to register/remove nodes (required, unless "
        "--insecure-no-auth); it also reads",
    )
    s.add_argument(
        "--read-token-file",
        help="a read token: when given, the API, pages and metrics need it or the write token "
        "(/healthz stays open)",
    )
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="without --api-token-file: let anyone who reaches the listener register and "
        "remove nodes (a loopback --listen only)",
    )
    s.add_argument("--listen-cert", help="TLS certificate (PEM) of the service's listener")
    s.add_argument("--listen-key", help="its private key (a non-loopback --listen needs TLS)")
    s.add_argument(
        "--allow-nodes",
        metavar="CIDR[,CIDR]",
        help="networks nodes may be registered in: every address a node's host resolves to "
        "must lie inside (default: any address)",
    )
    s.add_argument(
        "--trusted-proxies",
        metavar="IP|CIDR[,...]",
        help="reverse proxies whose X-Forwarded-For/-Proto are believed (default: none)",
    )
    s.add_argument(
        "--ear-key",
        help="P-256 private key (PEM) that signs the attestation "
        "results (EAR); created (mode 0600) when missing (default "
        f"$ATTEST_FLEET_EAR_KEY or {DEFAULT_EAR_KEY}); give all workers the same",
    )
    s.add_argument(
        "--snp",
        choices=["auto", "require"],
        default="auto",
        help="a pair's guest SEV-SNP report (layer guest-snp, docs/snp.md): appraised when "
        "sent (auto), or required of every pair's guest (default %(default)s)",
    )
    s.add_argument(
        "--snp-crl",
        action="append",
        default=[],
        type=Path,
        metavar="CRL",
        help="an AMD CRL for guest-snp layers (repeatable; read at start)",
    )


def _serve_parser(fs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = fs.add_parser(
        "serve",
        help="appraise the registered nodes continuously; serve the "
        "REST API, metrics and the web page",
    )
    _db_option(s)
    _serve_polling_options(s)
    _serve_registry_options(s)
    _serve_access_options(s)
    _freshness_options(s, interval=False)
    _enrollment_options(s)
    s.set_defaults(func=_service("_fleet_service", "cmd_serve"))


def _add_parser(fs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = fs.add_parser("add", help="enroll a node (or a host + guest pair) and register it")
    a.add_argument(
        "url", help="the node API's base URL, e.g. http://10.0.0.5:7443 (with --host: the guest's)"
    )
    a.add_argument("--id", help="node id (default: the node's own; a pair's: the guest's)")
    a.add_argument(
        "--host",
        metavar="HOST_URL",
        help="register URL as the guest VM of this "
        "host, appraised as one node (docs/host-guest.md)",
    )
    a.add_argument("--guest-id", help="the guest's id on the host (default: its node id)")
    a.add_argument(
        "--no-guest-vtpm",
        action="store_true",
        help="the guest has no vTPM: enroll the host only; the guest is appraised by its "
        "SEV-SNP report alone, tied to the host by the chip the host records (layers host "
        "and guest-snp; docs/fleet.md)",
    )
    a.add_argument("--activation-url", help="the node's mutual-TLS listener (default: URL)")
    a.add_argument("--host-activation-url", help="the host's mutual-TLS listener")
    a.add_argument(
        "--operator-socket",
        help="the node's operator socket, for credential activation when run on the node",
    )
    a.add_argument("--host-operator-socket", help="the host's operator socket")
    a.add_argument(
        "--re-enroll",
        action="store_true",
        help="replace the enrollment (URL, AK) of an id that is already enrolled: recorded in "
        "its history (weaker said so), its continuity reset; refused without it",
    )
    a.add_argument("--json", action="store_true")
    _db_option(a)
    _enrollment_options(a)
    a.set_defaults(func=_service("_fleet_add", "cmd_add"))


def _ls_parser(fs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = fs.add_parser("ls", help="list registered nodes, verdicts and their age")
    ls.add_argument("--json", action="store_true", help="with each node's latest signed EAR")
    _db_option(ls)
    _freshness_options(ls)
    ls.set_defaults(func=cmd_ls)


def _show_parser(fs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sh = fs.add_parser("show", help="one node: verdict, layers, explanation, history, EAR")
    sh.add_argument("node_id")
    sh.add_argument("--json", action="store_true")
    _db_option(sh)
    _freshness_options(sh)
    sh.set_defaults(func=cmd_show)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fleet", help="the fleet verifier service")
    fs = p.add_subparsers(dest="fleet_cmd", metavar="COMMAND")
    fs.required = True
    _serve_parser(fs)
    _add_parser(fs)
    _ls_parser(fs)
    _show_parser(fs)


def main(argv: Sequence[str] | None = None) -> int:
    """``attest fleet`` on its own (until it is wired into ``attest.cli``)."""

    parser = argparse.ArgumentParser(prog="attest")
    sub = parser.add_subparsers(dest="group")
    register(sub)
    args = parser.parse_args(["fleet", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
        return rc
    except (AttestError, OSError) as exc:  # one line, as attest.cli.main
        code, line = error_line(exc)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
