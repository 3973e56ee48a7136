"""attestd: the node daemon (the network-facing, unprivileged half).

It talks to the privileged ``attestd-tpm`` broker over a Unix socket (``tpm.broker_socket``),
or -- for development and demos only -- runs the node services in-process over a TCTI
(``tpm.tcti`` / ``--tcti``). It serves the HTTP API on up to three listeners:

- public TCP (``api.host``/``api.port``; HTTPS when ``api.tls_cert``/``tls_key`` are set),
- mutual-TLS TCP (``api.mtls_port``, when ``api.client_ca`` is set) for mutating endpoints,
- the operator Unix socket (``api.operator_socket``, mode 0600) for local operators.

``POST /v1/upgrades`` (``upgrade.enabled``) spools uploads in ``upgrade.spool_dir``; the gate
that verifies and writes them is ``attestd-tpm``'s (``BrokerGate``), or in development mode an
in-process ``UpgradeGate`` over the same TPM (``upgrade_routes``). The same gate serves
``POST /v1/registry`` (a registry snapshot pushed without an image: its trust refresh).

The firmware event log, the kernel command line and the dm-verity devices are read by the
node's privileged side, never by this process (it has no device, no capability, no netlink
socket and no /proc beyond its own): ``attestd-tpm`` serves them as broker operations
(``attest.node.broker.host``). In development mode the in-process services read the paths of
``logs.firmware_log`` / ``logs.cmdline`` and watch dm-verity devices here.

Start-up is kept short (a node under TCG emulation runs Python ~14x slower): heavy modules
are imported only once the configuration is known to be good.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attest import __version__, serving
from attest.errors import AttestError, BrokerUnavailable, ConfigError, SnpGuestError
from attest.node import sdnotify
from attest.node.config import Settings, config_path, load_settings, settings_digest
from attest.node.socketlock import SocketLock, lock_socket

logger = logging.getLogger("attestd")


class ListenerFailed(Exception):
    """A listener ended while attestd was not asked to stop (main exits non-zero)."""


def tls_spki(cert_path: str) -> bytes:
    """The TLS certificate's SubjectPublicKeyInfo (DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tls_binding(cert_path: str) -> bytes:
    """sha256 of the TLS certificate's SubjectPublicKeyInfo (what verifiers pin)."""
    return hashlib.sha256(tls_spki(cert_path)).digest()


def open_node(settings: Settings) -> Any:
    if settings.tpm.tcti:
        from attest.node.broker.local import LocalNode
        from attest.node.tpm.esapi import AkSpec, EsapiTpm

        logger.warning(
            "running the TPM in-process (tpm.tcti set): development mode, not least-privilege"
        )
        from attest.node.broker.host import HostFacts

        tpm = EsapiTpm(settings.tpm.tcti, ak=AkSpec(settings.tpm.ak_type))
        state = Path(settings.tpm.state_dir)
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        from attest.node.snp_guest import open_snp_guest

        try:
            snp = open_snp_guest(settings.snp.device) if settings.snp.enabled else None
        except (ValueError, SnpGuestError) as exc:
            raise ConfigError(str(exc), key="snp.device") from None
        host = HostFacts(
            firmware_log=Path(settings.logs.firmware_log),
            cmdline=Path(settings.logs.cmdline),
            max_firmware_log=settings.logs.max_firmware_log_bytes,
            snp=snp,
        )
        node = LocalNode.open(tpm, state, pcr=settings.tpm.runtime_pcr, host=host)
        host.watch_verity(node.runtime)  # as attestd-tpm --watch-verity on
        return node
    from attest.node.broker.client import BrokerClient

    return BrokerClient(settings.tpm.broker_socket)


def upgrade_routes(settings: Settings, node: Any) -> Callable[[Any, Any], dict[str, int]] | None:
    """``create_app``'s ``extra_routes`` for ``POST /v1/upgrades`` (None: upgrades are off).
    Broker mode: the broker's gate reads the spooled upload (least privilege: this process
    writes no slot and moves no counter). Development mode: an in-process gate."""
    from attest.node.api.upgrades import Gate, add_upgrade_routes

    u = settings.upgrade
    if not u.enabled or settings.snp.only:  # [snp] only: the app answers 409 (no TPM)
        return None
    limit = settings.api.max_upload_bytes
    factory: Callable[[], Gate]
    if settings.tpm.tcti:
        from attest.node.upgrade.slots import SlotStore
        from attest.node.upgrade.stager import LocalGateNode, UpgradeGate

        devices = {s: d for s, d in (("a", u.slot_a_device), ("b", u.slot_b_device)) if d}

        def factory() -> Gate:
            slots = SlotStore(u.slots_dir, devices=devices, capacity=u.slot_capacity)
            return UpgradeGate(
                slots, LocalGateNode(node), settings.registry.trust_dir, nv_index=u.nv_index
            )
    else:
        from attest.node.broker.client import BrokerGate

        gate = BrokerGate(settings.tpm.broker_socket, spool_dir=u.spool_dir, max_upload=limit)

        def factory() -> Gate:
            return gate

    def extra(app: Any, ctx: Any) -> dict[str, int]:
        return add_upgrade_routes(app, ctx, factory, upload_dir=u.spool_dir, max_upload=limit)

    return extra


async def serve(settings: Settings, node: Any) -> None:
    import ssl

    import uvicorn

    from attest.node.api.app import create_app
    from attest.node.api.middleware import ChannelApp

    binding = spki = b""
    if settings.api.tls_cert:
        spki = tls_spki(settings.api.tls_cert)
        binding = hashlib.sha256(spki).digest()

    def record_start() -> None:
        try:
            node.measure("daemon-start", {"version": __version__})
            node.measure("config", {"sha256": settings_digest(settings)})
            if binding:
                node.measure("tls-key", {"spki_sha256": binding.hex()})
        except BrokerUnavailable:
            raise  # recorded once attestd-tpm answers (NodeContext.start_recorded)
        except AttestError as exc:
            logger.error("could not record start-up measurements: %s", exc)

    try:
        if settings.snp.only:
            logger.warning("no TPM ([snp] only): evidence is the SEV-SNP report, no runtime log")
        else:
            record_start()
        recorded = True
    except BrokerUnavailable as exc:
        # attestd-tpm not (yet) running: serve not-ready and probe until it answers.
        logger.warning("attestd-tpm not reachable at start-up, not ready: %s", exc)
        recorded = False
    app = create_app(
        settings,
        node=node,
        tls_binding=binding,
        tls_spki=spki,
        status=make_status(settings),
        on_fresh_log=None if settings.snp.only else record_start,
        start_recorded=recorded,
        extra_routes=upgrade_routes(settings, node),
    )
    common: dict[str, Any] = {
        "lifespan": "off",
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local process could
        # then pick the address the rate limit counts it under. Only api.trusted_proxies'.
        "proxy_headers": False,
        "http": serving.protocol(),  # a bounded request head, within a deadline
    }
    configs = []
    tls: dict[str, Any] = {}
    if settings.api.tls_cert:
        tls = {"ssl_certfile": settings.api.tls_cert, "ssl_keyfile": settings.api.tls_key}
    proxies = settings.trusted_proxy_list()
    configs.append(
        uvicorn.Config(
            ChannelApp(app, "public"),
            host=settings.api.host,
            port=settings.api.port,
            **tls,
            **{**common, "proxy_headers": bool(proxies), "forwarded_allow_ips": proxies or None},
        )
    )
    if settings.api.client_ca:
        if settings.api.mtls_cert:
            tls = {"ssl_certfile": settings.api.mtls_cert, "ssl_keyfile": settings.api.mtls_key}
        configs.append(
            uvicorn.Config(
                ChannelApp(app, "mtls"),
                host=settings.api.host,
                port=settings.api.mtls_port,
                ssl_cert_reqs=ssl.CERT_REQUIRED,
                ssl_ca_certs=settings.api.client_ca,
                **tls,
                **common,
            )
        )
    sock = Path(settings.api.operator_socket)
    if sock.parent.is_dir():
        if sock.exists():
            sock.unlink()
        configs.append(uvicorn.Config(ChannelApp(app, "operator"), uds=str(sock), **common))

    class Server(uvicorn.Server):
        """One of several servers in this process: signals are handled once, below."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    servers = [Server(c) for c in configs]
    interval = sdnotify.watchdog_interval()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with _lifespan(app):
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        # Every listener bound (a failed bind ends the process: uvicorn exits non-zero after
        # one error line naming the address), then ready: sd_notify, the watchdog's pings.
        while not all(s.started for s in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        if sock.parent.is_dir() and sock.exists():
            os.chmod(sock, 0o600)
        where = ", ".join(f"{c.host}:{c.port}" if c.uds is None else c.uds for c in configs)
        logger.warning("attestd %s serving on %s", __version__, where)
        sdnotify.notify(f"READY=1\nSTATUS=serving on {where}")
        pings = [asyncio.create_task(_watchdog(interval))] if interval else []
        done_or_stop = asyncio.create_task(stop.wait())
        await asyncio.wait([done_or_stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        sdnotify.notify("STOPPING=1")
        for t in pings:
            t.cancel()
        for s in servers:
            s.should_exit = True
        results = await asyncio.gather(*tasks, return_exceptions=True)
    node.close()
    if not stop.is_set():  # a listener ended by itself: fail, so that Restart= restarts us
        errors = [r for r in results if isinstance(r, BaseException)]
        raise ListenerFailed(f"a listener stopped unexpectedly: {errors[0] if errors else 'exit'}")


async def _watchdog(interval: float) -> None:
    """``WATCHDOG=1`` from the event loop: a loop that stops turning is restarted by systemd."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def make_status(settings: Settings) -> Any:
    """The self-appraisal behind /v1/status: TPM, runtime log replay, verity, and the running
    image's release in the locally trusted registry (attest.appraisal.selfcheck decides)."""
    from datetime import UTC, datetime

    from attest.model import HashAlg, PcrSelection
    from attest.runtime import verify_runtime_log
    from attest.storage.trusted_state import load_state

    pcr = settings.tpm.runtime_pcr
    selection = PcrSelection.of({HashAlg.SHA256: [pcr]})

    def runtime_problem(node: Any) -> str | None:
        for _ in range(3):  # a measurement may land between the two reads: try again
            try:
                quoted = node.read_pcrs(selection)
                verify_runtime_log(node.runtime_log(0), quoted, pcr=pcr)
                return None
            except AttestError as exc:
                problem = str(exc)
        return problem

    def status(ctx: Any) -> dict[str, Any]:
        from attest.appraisal.selfcheck import evaluate_node  # at the first status (basic_status)

        now = datetime.now(UTC)
        tpm_error = None if ctx.ready else (ctx.last_tpm_error or "starting")
        # [snp] only: no runtime log to replay (the report is the evidence)
        runtime_error = runtime_problem(ctx.node) if ctx.ready and not ctx.snp_only else None
        registry = registry_error = None
        try:
            state = load_state(settings.registry.trust_dir)
            if state is None:
                registry_error = f"no trust root in {settings.registry.trust_dir}"
            else:
                registry = state.check_fresh(now=now)
        except AttestError as exc:
            registry_error = str(exc)
        except OSError as exc:
            registry_error = f"{settings.registry.trust_dir}: {exc.strerror}"
        return evaluate_node(
            tpm_error=tpm_error,
            runtime_error=runtime_error,
            verity=ctx.refresh_verity() if ctx.ready else ctx.verity_report,
            registry=registry,
            registry_error=registry_error,
            now=now,
            root_devno=root_devno(),
        ).to_json()

    return status


def root_devno() -> str | None:
    """ "major:minor" of the device mounted at / (None when it cannot be stat'ed)."""
    try:
        dev = os.stat("/").st_dev
    except OSError:
        return None
    return f"{os.major(dev)}:{os.minor(dev)}"


class _lifespan:
    """Run the FastAPI lifespan once for all listeners."""

    def __init__(self, app: Any) -> None:
        self.app = app.fastapi

    async def __aenter__(self) -> None:
        self.cm = self.app.router.lifespan_context(self.app)
        await self.cm.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self.cm.__aexit__(*exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attestd", description="attest node daemon")
    parser.add_argument("--version", action="version", version=f"attestd {__version__}")
    parser.add_argument(
        "--config",
        help="TOML configuration file (also ATTEST_CONFIG; default: "
        "/etc/attest/attestd.toml when it exists)",
    )
    parser.add_argument("--tcti", help="development: run the TPM in-process over this TCTI")
    parser.add_argument("--port", type=int, help="public API port (overrides api.port)")
    parser.add_argument("--state-dir", help="overrides tpm.state_dir")
    parser.add_argument("--operator-socket", help="overrides api.operator_socket")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("esys").setLevel(logging.CRITICAL)
    if not args.verbose:  # libtss2's own ERROR lines (development mode's in-process TPM)
        os.environ.setdefault("TSS2_LOG", "all+NONE")
    env = dict(os.environ)
    for flag, key in (
        (args.tcti, "ATTEST_TPM_TCTI"),
        (args.port, "ATTEST_API_PORT"),
        (args.state_dir, "ATTEST_TPM_STATE_DIR"),
        (args.operator_socket, "ATTEST_API_OPERATOR_SOCKET"),
    ):
        if flag is not None:
            env[key] = str(flag)
    try:
        settings = load_settings(config_path(args.config, env), environ=env)
        lock = lock_operator_socket(settings)
        node = open_node(settings)
    except AttestError as exc:
        print(f"attestd: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings, node))
    except ListenerFailed as exc:
        logger.error("%s", exc)
        return 1
    finally:
        if lock is not None:
            lock.release()
    return 0


def lock_operator_socket(settings: Settings) -> SocketLock | None:
    """Hold the operator socket's lock (``attest.node.socketlock``) before anything replaces a
    stale socket there: a second attestd with the same configuration stops with one line
    instead of taking the first one's socket. None when the socket's directory does not
    exist (then there is no operator listener)."""
    sock = Path(settings.api.operator_socket)
    if not sock.parent.is_dir():
        return None
    try:
        return lock_socket(sock)
    except OSError as exc:
        raise ConfigError(
            f"cannot lock {sock}: {exc.strerror} (the directory must be attestd's to write: "
            "RuntimeDirectory=attestd in the unit)",
            key="api.operator_socket",
        ) from None


def run() -> None:
    sys.exit(main())
