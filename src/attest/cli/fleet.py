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
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from attest import serving
from attest.appraisal.layers import LAYERS as PAIR_LAYERS
from attest.appraisal.rules import DEFAULT_RULES, MAX_RULES_BYTES, VerifierRules, parse_rules
from attest.cli._common import error_line, print_json
from attest.errors import (
    AttestError,
    ConfigError,
    DatabaseUnavailable,
    NodeIdRefused,
    NodeUrlRefused,
)
from attest.model import PcrSelection
from attest.snp.certs import load_crl
from attest.storage.files import read_bytes
from attest.verifier.fleet.access import Access, read_token_file, serve_warnings
from attest.verifier.fleet.admission import (
    MAX_URL,
    NodeAddresses,
    check_node_id,
    check_node_url,
    parse_networks,
)
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.config import (
    DEFAULT_EAR_KEY,
    DEFAULT_OUTBOX_MAX,
    DEFAULT_REFRESH,
    DEFAULT_SELECTION,
    FleetSettings,
    load_fleet_settings,
)
from attest.verifier.fleet.enrolled import PairEnrollment
from attest.verifier.fleet.enrollment import (
    Enroller,
    EnrollPolicy,
    Registration,
    with_roots,
)
from attest.verifier.fleet.heap import collect_periodically, tune_gc
from attest.verifier.fleet.model import DEFAULT_STALE_INTERVALS, Freshness, iso, node_json
from attest.verifier.fleet.pairs import SnpCollateral
from attest.verifier.fleet.poller import Poller, PollSettings
from attest.verifier.fleet.rollout import completed_embargoes, rollout
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.staleness import StaleWatch, watch_staleness
from attest.verifier.fleet.store import Store, open_store
from attest.verifier.fleet.trust import (
    NO_REGISTRY,
    RegistrySource,
    RegistryState,
)
from attest.verifier.fleet.webhooks import (
    WebhookSender,
    WebhookSettings,
    verdict_event,
)

logger = logging.getLogger(__name__)

MIN_INTERVAL = 0.1  # seconds: the fleet's polling interval at its shortest
MAX_WEBHOOK_SECRET = 4096  # an HMAC key; /dev/zero is not read without end


def _settings(args: argparse.Namespace) -> FleetSettings:
    """The command's options over its ``ATTEST_FLEET_*`` environment, read once, first: an
    unknown variable or a bad value fails before anything starts."""
    given = vars(args)
    return load_fleet_settings(
        os.environ,
        db=given.get("db"),
        ek_roots=given.get("ek_roots"),
        tofu=bool(given.get("tofu")),
        ear_key=given.get("ear_key"),
    )


def _store(args: argparse.Namespace, fleet: FleetSettings) -> Store:
    """The fleet's database, a bad ``--db`` (or ``ATTEST_FLEET_DB``) refused with its name."""
    given = vars(args).get("db") is not None
    key = "ATTEST_FLEET_DB" if not given and os.environ.get("ATTEST_FLEET_DB") else "--db"
    return open_store(fleet.db, key=key)


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


def _registries(
    args: argparse.Namespace, rules: VerifierRules
) -> tuple[Callable[[], RegistryState], Callable[[], RegistryState]]:
    """The registry sources (the nodes', a pair's host layer's). Fails closed: without a
    --trust-dir the service starts only under the developer rule allow_unidentified_release
    (nothing is then appraised against a registry, and every result says so)."""
    if args.trust_dir is None:
        if args.host_trust_dir is not None:
            raise ConfigError("--host-trust-dir needs --trust-dir", key="--host-trust-dir")
        if not rules.allow_unidentified_release:
            raise ConfigError(
                "the fleet appraises releases against a trusted registry: give --trust-dir "
                "(attest manifest verify --state DIR), or --policy with the developer rule "
                "allow_unidentified_release = true",
                key="--trust-dir",
            )
        logger.warning(
            "no --trust-dir: releases are not appraised (developer rule "
            "allow_unidentified_release, policy %s)",
            rules.policy_id,
        )
        return (lambda: NO_REGISTRY), (lambda: NO_REGISTRY)
    registry = RegistrySource(args.trust_dir, refresh=args.registry_refresh)
    registry()  # the first read now: its problem, if any, is logged at start
    if args.host_trust_dir is None:
        return registry, registry
    host = RegistrySource(args.host_trust_dir, refresh=args.registry_refresh)
    host()
    return registry, host


def _tls_context(ca: str | None) -> ssl.SSLContext | None:
    """How the poller checks the nodes' TLS certificates on https URLs: against ``--tls-ca``
    (a private CA), else the system's CAs. Host names are checked either way."""
    if not ca:
        return None
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the nodes' TLS CA {ca}: {exc}", key="--tls-ca") from None


def _webhook_settings(args: argparse.Namespace) -> WebhookSettings | None:
    """The webhook's settings from the options (None without --webhook)."""
    if not args.webhook:
        return None
    _webhook_url(args.webhook)
    if not args.webhook_secret_file:
        raise ConfigError("a webhook needs --webhook-secret-file", key="--webhook")
    for key, value in (
        ("--webhook-outbox-max", args.webhook_outbox_max),
        ("--webhook-timeout", args.webhook_timeout),
        ("--webhook-backoff", args.webhook_backoff),
        ("--webhook-max-backoff", args.webhook_max_backoff),
    ):
        if not (math.isfinite(value) and value > 0):  # nan passed `value <= 0`
            raise ConfigError(f"must be a finite number over 0, not {value:g}", key=key)
    return WebhookSettings(
        max_events=args.webhook_outbox_max,
        timeout=args.webhook_timeout,
        backoff=args.webhook_backoff,
        max_backoff=max(args.webhook_max_backoff, args.webhook_backoff),
    )


def _webhook_url(url: str) -> str:
    """The webhook's URL, if it is one the sender can use: http(s), a host, a valid port, no
    user information (refused without echoing it: the events are authenticated by the HMAC
    secret, and the URL would be shown). Checked at start: before, ``notaurl`` or ``ftp://``
    started a service whose every delivery failed."""

    def refuse(rule: str) -> ConfigError:
        return ConfigError(f"the webhook URL: {rule}", key="--webhook")

    if len(url) > MAX_URL or not all("!" <= c <= "~" for c in url):
        raise refuse(f"at most {MAX_URL} printable ASCII characters without spaces")
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - parses the port, raising on a bad one
    except ValueError:
        raise refuse("not a URL with a valid host and port") from None
    if u.scheme not in ("http", "https"):
        raise refuse("the scheme must be http or https")
    if "@" in u.netloc:
        raise refuse("no user information (the events are signed with --webhook-secret-file)")
    if not u.hostname:
        raise refuse("a host is needed")
    return url


def _webhook_secret(path: str) -> bytes:
    """The webhook's HMAC key: read bounded (``/dev/zero`` was read without end), at least
    16 bytes once stripped (a short one was a bug line, exit 70)."""
    secret = read_bytes(path, max_size=MAX_WEBHOOK_SECRET).strip()
    if len(secret) < 16:
        raise ConfigError(
            f"{path}: the webhook secret must be at least 16 bytes", key="--webhook-secret-file"
        )
    return secret


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{text!r} is not HOST:PORT", key="--listen") from None
    if not 0 <= number <= 65535:  # uvicorn's bind raised OverflowError: a traceback
        raise ConfigError(f"{text!r}: the port is not in 0..65535", key="--listen")
    return host or "127.0.0.1", number


def _security(args: argparse.Namespace, host: str) -> tuple[Access, NodeAddresses, dict[str, Any]]:
    """Who may use the service, which nodes it may contact, and uvicorn's TLS and proxy
    options; refuse (``ConfigError``) an unsafe combination, log one warning per open thing."""
    access = Access(
        read_token_file(args.api_token_file, key="--api-token-file")
        if args.api_token_file
        else None,
        read_token_file(args.read_token_file, key="--read-token-file")
        if args.read_token_file
        else None,
        insecure_no_auth=args.insecure_no_auth,
    )
    if bool(args.listen_cert) != bool(args.listen_key):
        raise ConfigError("give --listen-cert and --listen-key together", key="--listen-key")
    allow = parse_networks(args.allow_nodes, key="--allow-nodes") if args.allow_nodes else None
    for line in serve_warnings(
        listen_host=host, access=access, tls=bool(args.listen_cert), allow_nodes=bool(allow)
    ):
        logger.warning("%s", line)
    proxies = (
        [str(n) for n in parse_networks(args.trusted_proxies, key="--trusted-proxies")]
        if args.trusted_proxies
        else []
    )
    options: dict[str, Any] = {
        # uvicorn would believe X-Forwarded-For from 127.0.0.1: only from --trusted-proxies.
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or None,
    }
    if args.listen_cert:
        _check_listen_tls(args.listen_cert, args.listen_key)
        options.update(ssl_certfile=args.listen_cert, ssl_keyfile=args.listen_key)
    return access, NodeAddresses(allow), options


def _check_listen_tls(cert: str, key: str) -> None:
    """Load the listener's certificate and key as uvicorn will, so that a problem is one line
    naming both files (uvicorn's read "cannot access: [SSL] PEM lib" or "No such file or
    directory", naming neither). A key that needs a password is refused here, not prompted for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
        return
    except ssl.SSLError as exc:  # OpenSSL's "[SSL] PEM lib (_ssl.c:3905)" says nothing here
        if exc.reason == "KEY_VALUES_MISMATCH":
            why = "the key is not the certificate's"
        else:
            why = "not a PEM certificate (chain) and an unencrypted PEM private key"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise ConfigError(
        f"cannot load the listener's certificate {cert} and key {key}: {why}",
        key="--listen-cert",
    ) from None


def _positive(value: float, key: str, *, above: float = 0.0, what: str = "") -> float:
    """A finite number over ``above`` (argparse's ``float`` takes ``nan``, ``inf`` and -1)."""
    if not (math.isfinite(value) and value > above):
        raise ConfigError(f"{value} is not a finite number over {what}{above:g}", key=key)
    return value


def _poll_settings(args: argparse.Namespace) -> PollSettings:
    """The poller's settings, each option checked with its name (before anything starts)."""
    timeout = _positive(args.timeout, "--timeout")
    if not (math.isfinite(args.jitter) and 0 <= args.jitter < 1):
        raise ConfigError(f"{args.jitter} is not a fraction in [0, 1)", key="--jitter")
    if args.concurrency < 1:
        raise ConfigError(f"{args.concurrency} is not at least 1", key="--concurrency")
    _positive(args.registry_refresh, "--registry-refresh")
    try:  # written to every lease: bytes that are not UTF-8 failed each lease, for ever
        (args.worker_id or "").encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{args.worker_id[:40]!r} is not UTF-8 text", key="--worker-id") from None
    try:  # the poller parses it again when it starts: a bad one was a bug line (exit 70)
        PcrSelection.parse(args.selection)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--selection") from None
    interval = _positive(args.interval, "--interval")
    if interval < MIN_INTERVAL:  # 1e-300 challenged every node without pause
        raise ConfigError(
            f"{interval:g} s is under the least interval, {MIN_INTERVAL:g} s", key="--interval"
        )
    for key, name in (("--platform", args.platform_id), ("--host-platform", args.host_platform_id)):
        if name is not None and not name.strip():
            raise ConfigError("an empty platform id names no platform reference", key=key)
    return PollSettings(
        worker_id=args.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        interval=interval,
        jitter=args.jitter,
        concurrency=args.concurrency,
        timeout=timeout,
        selection=args.selection,
        platform_id=args.platform_id,
        host_platform_id=args.host_platform_id,
        lease_ttl=(
            max(60.0, 4 * timeout)
            if args.lease_ttl is None
            else _positive(
                args.lease_ttl, "--lease-ttl", above=2 * timeout, what="2 × --timeout = "
            )
        ),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    fleet = _settings(args)
    host, port = _listen(args.listen)
    access, nodes, listen_options = _security(args, host)  # before anything starts
    rules = _rules(args)
    enroller = _enroller(args, fleet, rules)  # a bad policy fails here, before anything starts
    settings = _poll_settings(args)
    freshness = _freshness(args)
    registry, host_registry = _registries(args, rules)
    hook = _webhook_settings(args)
    secret = _webhook_secret(args.webhook_secret_file) if hook is not None else b""
    store = _store(args, fleet)
    sender = None
    if hook is not None:  # its outbox is the fleet's database
        sender = WebhookSender(
            args.webhook, secret, store=store, worker_id=settings.worker_id, settings=hook
        )
    signer = load_or_create_key(fleet.ear_key)
    poller = Poller(
        store,
        settings=settings,
        appraise=default_appraiser(),
        registry=registry,
        on_change=sender.notify if sender else None,
        outbox=verdict_event if sender else None,
        signer=signer,
        host_registry=host_registry,
        ssl_context=_tls_context(args.tls_ca),
        rules=rules,
        snp=SnpCollateral(
            crls=tuple(load_crl(read_bytes(p, max_size=1 << 20)) for p in args.snp_crl),
            require=args.snp == "require",
        ),
    )
    app = create_fleet_app(
        store,
        registry=registry,
        poller=poller,
        webhooks=sender,
        enroll=enroller,
        access=access,
        nodes=nodes,
        signer=signer,
        freshness=freshness,
    )
    logger.warning(
        "enrollment policy: %s; verifier rules %s: %s",
        enroller.policy.describe(),
        rules.policy_id,
        rules.to_json(),
    )

    class Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which would kill the process
        # before the poller flushes its last results: this shell handles the signals itself.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async def main() -> None:
        stop = asyncio.Event()
        server = Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                access_log=False,
                http=serving.protocol(),  # a bounded request head, within a deadline
                **listen_options,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        tasks = [
            asyncio.create_task(poller.run(stop)),
            asyncio.create_task(watch_rollout(store, registry, stop)),
            asyncio.create_task(collect_periodically(stop)),
        ]
        if sender is not None:
            tasks.append(asyncio.create_task(sender.run(stop)))
            watch = StaleWatch(freshness, sender)
            tasks.append(
                asyncio.create_task(
                    watch_staleness(store, watch, stop, period=min(5.0, args.interval / 2))
                )
            )
        logger.warning(
            "fleet service on %s://%s:%d (worker %s, EAR key id %s)",
            "https" if args.listen_cert else "http",
            host,
            port,
            settings.worker_id,
            signer.kid,
        )
        try:
            await server.serve()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    tune_gc()
    try:
        asyncio.run(main())
    finally:
        poller.close()
        store.close()
    return 0


async def watch_rollout(
    store: Store,
    registry: Callable[[], RegistryState],
    stop: asyncio.Event,
    every: float = 5.0,
) -> None:
    """Record the moment the whole fleet first runs an embargoed release."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:

            def check() -> None:
                now = time.time()
                report = rollout(
                    store.list_nodes(),
                    registry().registry,
                    store.release_marks(),
                    now=datetime.fromtimestamp(now, UTC),
                )
                for version in completed_embargoes(report):
                    if store.mark_fleet_complete(version, now):
                        logger.warning(
                            "the whole fleet runs embargoed release %s: quiet period starts now",
                            version,
                        )

            await loop.run_in_executor(None, check)
        except DatabaseUnavailable:  # logged by the store once per outage
            pass
        except Exception:
            logger.exception("rollout check failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


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
    fleet = _settings(args)
    enroller = _enroller(args, fleet, _rules(args))
    store = _store(args, fleet)
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


def _freshness(args: argparse.Namespace) -> Freshness:
    _positive(args.interval, "--interval")
    if args.stale_after < 1:
        raise ConfigError("--stale-after must be at least 1 interval", key="--stale-after")
    return Freshness(args.interval, args.stale_after)


def _age(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f} s ago"


def cmd_ls(args: argparse.Namespace) -> int:
    """Each node's verdict with its age; ``stale`` (and the last verdict) when it was not
    appraised within the freshness bound."""
    fleet = _settings(args)
    fresh = _freshness(args)
    store = _store(args, fleet)
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
    fleet = _settings(args)
    fresh = _freshness(args)
    try:  # every stored id follows the rule; another (e.g. not UTF-8) cannot be queried
        check_node_id(args.node_id)
    except NodeIdRefused as exc:
        raise ConfigError(
            f"no node {args.node_id[:80]!r} in the fleet ({exc})", key="node_id"
        ) from None
    store = _store(args, fleet)
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
    s.set_defaults(func=cmd_serve)


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
    a.set_defaults(func=cmd_add)


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
