"""``attest fleet``: the fleet verifier service and its node list.

    attest fleet serve [--db URL] [--listen HOST:PORT] [--interval S] [--concurrency N]
                       [--worker-id ID] [--webhook URL --webhook-secret-file F]
                       [--trust-dir DIR] [--api-token-file F]
    attest fleet add URL [--id ID] [--db URL]
    attest fleet ls [--json] [--db URL]

``--db``: ``sqlite:///path`` (default ``$ATTEST_FLEET_DB`` or ``sqlite:///attest-fleet.db`` in
the working directory) or ``postgresql://...`` when several ``serve`` processes share the fleet
(give each its own ``--worker-id``). See docs/fleet.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from attest.appraisal import Enrollment
from attest.client import NodeClient
from attest.errors import ConfigError
from attest.fleet.api import create_fleet_app, iso
from attest.fleet.appraiser import default_appraiser
from attest.fleet.poller import DEFAULT_SELECTION, Poller, PollSettings
from attest.fleet.rollout import completed_embargoes, rollout
from attest.fleet.store import Store, open_store
from attest.fleet.webhooks import WebhookSender
from attest.manifest import VerifiedRegistry
from attest.manifest.store import load_state
from attest.verifier import enroll

logger = logging.getLogger(__name__)

DEFAULT_DB = "sqlite:///attest-fleet.db"  # relative to the working directory


def _db(args: argparse.Namespace) -> Store:
    return open_store(args.db or os.environ.get("ATTEST_FLEET_DB") or DEFAULT_DB)


def enroll_url(url: str) -> Enrollment:
    """Enroll a node over its API: identity and AK attributes (trust in the AK on first use;
    credential activation needs an authenticated channel, see docs/fleet.md)."""
    with NodeClient(url) as client:
        e = enroll(client, now=datetime.now(UTC))
    return Enrollment.from_json(e.to_json())


def _registry_source(trust_dir: str | None) -> Callable[[], VerifiedRegistry | None]:
    """The trusted registry from ``attest manifest verify --state DIR``'s directory, re-read
    every minute (fresh only: an expired registry is not used, and that is logged)."""
    if trust_dir is None:
        return lambda: None
    cache: dict[str, object] = {"at": 0.0, "registry": None}

    def current() -> VerifiedRegistry | None:
        now = time.monotonic()
        if now - float(cache["at"]) > 60.0:  # type: ignore[arg-type]
            cache["at"] = now
            reg = None
            try:
                state = load_state(trust_dir)
                if state is None:
                    logger.error("no trusted state in %s", trust_dir)
                else:
                    reg = state.check_fresh(now=datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - any failure: appraise without a registry
                logger.error("trusted registry unusable: %s", exc)
            cache["registry"] = reg
        r = cache["registry"]
        return r if isinstance(r, VerifiedRegistry) else None

    current()
    return current


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError(f"{text!r} is not HOST:PORT", key="--listen") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    store = _db(args)
    host, port = _listen(args.listen)
    registry = _registry_source(args.trust_dir)
    settings = PollSettings(
        worker_id=args.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        interval=args.interval, jitter=args.jitter, concurrency=args.concurrency,
        timeout=args.timeout, selection=args.selection, platform_id=args.platform_id,
        lease_ttl=args.lease_ttl or max(60.0, 4 * args.timeout),
    )  # fmt: skip
    sender = None
    if args.webhook:
        if not args.webhook_secret_file:
            raise ConfigError("a webhook needs --webhook-secret-file", key="--webhook")
        secret = Path(args.webhook_secret_file).read_bytes().strip()
        sender = WebhookSender(args.webhook, secret)
    token = None
    if args.api_token_file:
        token = Path(args.api_token_file).read_text().strip()
    poller = Poller(store, settings=settings, appraise=default_appraiser(), registry=registry,
                    on_change=sender.notify if sender else None)  # fmt: skip
    app = create_fleet_app(store, registry=registry, poller=poller, webhooks=sender,
                           enroll=enroll_url, api_token=token)  # fmt: skip

    class Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which would kill the process
        # before the poller flushes its last results: this shell handles the signals itself.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async def main() -> None:
        stop = asyncio.Event()
        server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                       access_log=False))  # fmt: skip
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        tasks = [asyncio.create_task(poller.run(stop)),
                 asyncio.create_task(watch_rollout(store, registry, stop))]  # fmt: skip
        if sender is not None:
            tasks.append(asyncio.create_task(sender.run(stop)))
        logger.warning("fleet service on http://%s:%d (worker %s)", host, port,
                       settings.worker_id)  # fmt: skip
        try:
            await server.serve()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        poller.close()
        store.close()
    return 0


async def watch_rollout(store: Store, registry: Callable[[], VerifiedRegistry | None],
                        stop: asyncio.Event, every: float = 5.0) -> None:  # fmt: skip
    """Record the moment the whole fleet first runs an embargoed release."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            def check() -> None:
                now = time.time()
                report = rollout(store.list_nodes(), registry(), store.release_marks(),
                                 now=datetime.fromtimestamp(now, UTC))  # fmt: skip
                for version in completed_embargoes(report):
                    if store.mark_fleet_complete(version, now):
                        logger.warning("the whole fleet runs embargoed release %s: quiet period "
                                       "starts now", version)  # fmt: skip

            await loop.run_in_executor(None, check)
        except Exception:
            logger.exception("rollout check failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def cmd_add(args: argparse.Namespace) -> int:
    store = _db(args)
    try:
        e = enroll_url(args.url)
        node_id = args.id or e.node_id or args.url
        store.add_node(node_id, args.url, e, now=time.time())
    finally:
        store.close()
    print(f"{node_id}: enrolled (AK {e.ak_name.hex()[:16]}…, activated={e.activated})")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from attest.cli import print_json

    store = _db(args)
    try:
        nodes = store.list_nodes()
    finally:
        store.close()
    if args.json:
        from attest.fleet.api import node_json

        print_json([node_json(n) for n in nodes])
        return 0
    for n in nodes:
        print(f"{n.node_id:<24} {n.verdict:<16} {iso(n.last_appraised) or 'never':<34} "
              f"{n.explanation[:100]}")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("fleet", help="the fleet verifier service")
    fs = p.add_subparsers(dest="fleet_cmd", metavar="COMMAND")
    fs.required = True

    def db(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", help="sqlite:///PATH or postgresql://... "
                       "(default $ATTEST_FLEET_DB or sqlite:///attest-fleet.db)")  # fmt: skip

    s = fs.add_parser("serve", help="appraise the registered nodes continuously; serve the "
                      "REST API, metrics and the web page")  # fmt: skip
    db(s)
    s.add_argument("--listen", default="127.0.0.1:7500", help="HOST:PORT (default %(default)s)")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between appraisals "
                   "of one node (default %(default)s)")  # fmt: skip
    s.add_argument("--jitter", type=float, default=0.1, help="fraction of the interval")
    s.add_argument("--concurrency", type=int, default=256, help="challenges in flight")
    s.add_argument("--timeout", type=float, default=5.0, help="per challenge, seconds")
    s.add_argument("--lease-ttl", type=float, help="seconds a dead worker's nodes wait before "
                   "another worker takes them (default max(60, 4 × timeout))")
    s.add_argument("--worker-id", help="this worker's name in leases (default host-pid)")
    s.add_argument("--selection", default=DEFAULT_SELECTION,
                   help="PCRs to quote (the runtime PCR is added) (default %(default)s)")
    s.add_argument("--platform-id", help="platform reference to appraise firmware against")
    s.add_argument("--trust-dir", help="trusted manifest state (attest manifest verify --state)")
    s.add_argument("--webhook", help="URL to POST signed verdict changes to")
    s.add_argument("--webhook-secret-file", help="HMAC-SHA256 key for the webhook (≥ 16 bytes)")
    s.add_argument("--api-token-file", help="bearer token required to register/remove nodes")
    s.set_defaults(func=cmd_serve)

    a = fs.add_parser("add", help="enroll a node and register it")
    a.add_argument("url", help="the node API's base URL, e.g. http://10.0.0.5:7443")
    a.add_argument("--id", help="node id (default: the node's own)")
    db(a)
    a.set_defaults(func=cmd_add)

    ls = fs.add_parser("ls", help="list registered nodes and verdicts")
    ls.add_argument("--json", action="store_true")
    db(ls)
    ls.set_defaults(func=cmd_ls)


def main(argv: Sequence[str] | None = None) -> int:
    """``attest fleet`` on its own (until it is wired into ``attest.cli``)."""
    from attest.cli import error_line

    parser = argparse.ArgumentParser(prog="attest")
    sub = parser.add_subparsers(dest="group")
    register(sub)
    args = parser.parse_args(["fleet", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
        return rc
    except Exception as exc:  # noqa: BLE001 - mapped to one line like attest.cli.main
        from attest.errors import AttestError

        if not isinstance(exc, AttestError | OSError):
            raise
        code, line = error_line(exc)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
