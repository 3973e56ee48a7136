"""``attest fleet add``: enroll one node (or a host and its guest) in the fleet's database,
and the enrollment policies and rules that ``attest fleet serve`` uses for the nodes that
register themselves. Loaded when ``add`` or ``serve`` runs; not the service (FastAPI, the
poller), which ``add`` does not need."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from attest.appraisal.rules import DEFAULT_RULES, MAX_RULES_BYTES, VerifierRules, parse_rules
from attest.cli._common import print_json
from attest.cli._fleet_common import settings_of, store_of
from attest.errors import ConfigError, NodeIdRefused, NodeUrlRefused
from attest.storage.files import read_bytes
from attest.verifier.fleet.admission import check_node_id, check_node_url
from attest.verifier.fleet.config import FleetSettings
from attest.verifier.fleet.enrolled import PairEnrollment
from attest.verifier.fleet.enrollment import Enroller, EnrollPolicy, Registration, with_roots
from attest.verifier.fleet.model import iso


def _rules(args: argparse.Namespace) -> VerifierRules:
    """The verifier's rules (``--policy``; ``attest.appraisal.rules``), as ``attest verify``."""
    if args.policy is None:
        return DEFAULT_RULES
    try:
        return parse_rules(read_bytes(args.policy, max_size=MAX_RULES_BYTES))
    except ConfigError as exc:
        raise ConfigError(f"{args.policy}: {exc}", key="--policy") from None


def _enroller(args: argparse.Namespace, settings: FleetSettings, rules: VerifierRules) -> Enroller:
    """The enrollment policies (``attest.verifier.fleet.enrollment``; fails closed: EK roots,
    or an explicit ``--tofu``; ``$ATTEST_FLEET_EK_ROOTS``/``$ATTEST_FLEET_TOFU`` are the
    defaults) and the options of the channels. ``fleet add --no-guest-vtpm`` enrolls the host
    alone: its policy is the only one (the guests' options would check nothing)."""
    if getattr(args, "no_guest_vtpm", False):
        host_roots = args.host_ek_roots or list(settings.ek_roots)
        only = EnrollPolicy.from_paths(
            host_roots,
            tofu=settings.tofu,
            tls_ca=args.tls_ca,
            client_cert=args.client_cert,
            client_key=args.client_key,
            operator_socket=args.host_operator_socket,
            key="--host-ek-roots" if args.host_ek_roots else "--ek-roots",
        )
        return Enroller(only, host_policy=only, runtime_pcr=rules.runtime_pcr)
    policy = EnrollPolicy.from_paths(
        list(settings.ek_roots),
        tofu=settings.tofu,
        tls_ca=args.tls_ca,
        client_cert=args.client_cert,
        client_key=args.client_key,
        operator_socket=getattr(args, "operator_socket", None),
    )
    host = replace(
        with_roots(policy, args.host_ek_roots, key="--host-ek-roots"),
        operator_socket=getattr(args, "host_operator_socket", None),
    )
    if getattr(args, "host", None):  # a pair: the host's activation channel is its own
        host.validate(key="--host-operator-socket")
    return Enroller(policy, host_policy=host, runtime_pcr=rules.runtime_pcr)


def cmd_add(args: argparse.Namespace) -> int:
    if args.host is None and (args.guest_id or args.host_ek_roots or args.no_guest_vtpm):
        raise ConfigError(
            "--guest-id, --host-ek-roots and --no-guest-vtpm are for a pair (--host HOST_URL)",
            key="--host",
        )
    if args.no_guest_vtpm and (args.activation_url or args.operator_socket):
        raise ConfigError(
            "--activation-url and --operator-socket activate a guest vTPM's credential: a guest "
            "without a vTPM (--no-guest-vtpm) has none",
            key="--no-guest-vtpm",
        )
    for key, url in (
        ("url", args.url),
        ("--host", args.host),
        ("--activation-url", args.activation_url),
        ("--host-activation-url", args.host_activation_url),
    ):
        if url is not None:
            try:
                check_node_url(url, what=key)
            except NodeUrlRefused as exc:  # an argument of this command: a usage error
                shown = repr(url if len(url) <= 80 else url[:77] + "...")
                if any(c in url for c in "@?#"):  # never echoed: it may hold a password/token
                    shown = "the URL (not shown: it has user information, a query or fragment)"
                raise ConfigError(
                    f"{shown} is not a node's URL ({str(exc).removeprefix(key + ': ')})",
                    key=key,
                ) from None
    if args.id is not None:  # before the database or the node: the rule every id follows
        try:
            check_node_id(args.id)
        except NodeIdRefused as exc:
            raise ConfigError(f"{args.id[:80]!r}: {exc}", key="--id") from None
    fleet = settings_of(args)
    enroller = _enroller(args, fleet, _rules(args))
    store = store_of(args, fleet)
    try:
        if args.id is not None and not args.re_enroll:  # before contacting the node
            known = store.get_node(args.id)
            if known is not None and known.enrolled:
                store.add_node(args.id, args.url, None, now=time.time())  # raises NodeIdTaken
        e = enroller(
            Registration(
                args.url,
                args.host,
                args.guest_id,
                args.activation_url,
                args.host_activation_url,
                guest_vtpm=not args.no_guest_vtpm,
            )
        )
        node_id = args.id or e.node_id or args.url
        change = store.add_node(
            node_id,
            args.url,
            e,
            now=time.time(),
            host_url=args.host,
            re_enroll=args.re_enroll,
            by="operator re-enroll with attest fleet add --re-enroll",
        )
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "node_id": node_id,
                "url": args.url,
                "host_url": args.host,
                "enrollment_strength": e.strength.value,
                "enrollment": e.to_json(),
                "re_enrolled": None if change is None else {**change, "at": iso(change["at"])},
            }
        )
        return 0
    layers = (
        [("host", e.host), ("guest", e.guest)] if isinstance(e, PairEnrollment) else [("node", e)]
    )
    print(
        f"{node_id}: enrolled{' as a host + guest pair' if args.host else ''} "
        f"(enrollment: {e.strength.value})"
    )
    if change is not None:
        print(f"  {change['explanation']}")
    if isinstance(e, PairEnrollment) and e.guest is None:
        print(
            f"  guest {e.guest_id}: no vTPM, nothing enrolled -- appraised by its SEV-SNP report "
            "at every poll, tied to the host by the chip the host records (layer guest-snp)"
        )
    for name, le in layers:
        if le is None:
            continue
        ek = (
            f"EK certificate {le.ek_certificate}"
            if le.ek_certificate
            else "EK certificate NOT checked (--tofu)"
        )
        act = (
            "credential activation ok"
            if le.activated
            else "NO credential activation: AK trusted on first use (--tofu)"
        )
        print(f"  {name} {le.node_id}: AK {le.ak_name.hex()[:16]}…; {ek}; {act}")
    return 0
