"""``attest fleet serve`` (a shell): the fleet verifier service. ``attest.cli.fleet`` holds the
commands' parser and imports this module only when ``serve`` runs, so ``fleet ls``, ``show``
and ``add`` (``attest.cli._fleet_add``, whose enrollment policies the service uses for the
nodes that register themselves) start without the service."""

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
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from attest import serving
from attest.appraisal.rules import VerifierRules
from attest.cli._fleet_add import _enroller, _rules
from attest.cli._fleet_common import freshness_of, positive, settings_of, store_of
from attest.errors import ConfigError, DatabaseUnavailable
from attest.model import PcrSelection
from attest.snp.certs import load_crl
from attest.storage.files import read_bytes
from attest.verifier.fleet.access import Access, read_token_file, serve_warnings
from attest.verifier.fleet.admission import (
    MAX_URL,
    NodeAddresses,
    parse_networks,
)
from attest.verifier.fleet.api import create_fleet_app
from attest.verifier.fleet.appraiser import default_appraiser
from attest.verifier.fleet.heap import collect_periodically, tune_gc
from attest.verifier.fleet.pairs import SnpCollateral
from attest.verifier.fleet.poller import Poller, PollSettings
from attest.verifier.fleet.rollout import completed_embargoes, rollout
from attest.verifier.fleet.signing import load_or_create_key
from attest.verifier.fleet.staleness import StaleWatch, watch_staleness
from attest.verifier.fleet.store import Store
from attest.verifier.fleet.trust import NO_REGISTRY, RegistrySource, RegistryState
from attest.verifier.fleet.webhooks import WebhookSender, WebhookSettings, verdict_event

logger = logging.getLogger(__name__)

MIN_INTERVAL = 0.1  # seconds: the fleet's polling interval at its shortest
MAX_WEBHOOK_SECRET = 4096  # an HMAC key; /dev/zero is not read without end


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


def _poll_settings(args: argparse.Namespace) -> PollSettings:
    """The poller's settings, each option checked with its name (before anything starts)."""
    timeout = positive(args.timeout, "--timeout")
    if not (math.isfinite(args.jitter) and 0 <= args.jitter < 1):
        raise ConfigError(f"{args.jitter} is not a fraction in [0, 1)", key="--jitter")
    if args.concurrency < 1:
        raise ConfigError(f"{args.concurrency} is not at least 1", key="--concurrency")
    positive(args.registry_refresh, "--registry-refresh")
    try:  # written to every lease: bytes that are not UTF-8 failed each lease, for ever
        (args.worker_id or "").encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{args.worker_id[:40]!r} is not UTF-8 text", key="--worker-id") from None
    try:  # the poller parses it again when it starts: a bad one was a bug line (exit 70)
        PcrSelection.parse(args.selection)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--selection") from None
    interval = positive(args.interval, "--interval")
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
            else positive(args.lease_ttl, "--lease-ttl", above=2 * timeout, what="2 × --timeout = ")
        ),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    fleet = settings_of(args)
    host, port = _listen(args.listen)
    access, nodes, listen_options = _security(args, host)  # before anything starts
    rules = _rules(args)
    enroller = _enroller(args, fleet, rules)  # a bad policy fails here, before anything starts
    settings = _poll_settings(args)
    freshness = freshness_of(args)
    registry, host_registry = _registries(args, rules)
    hook = _webhook_settings(args)
    secret = _webhook_secret(args.webhook_secret_file) if hook is not None else b""
    store = store_of(args, fleet)
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
