"""``attestd-tpm``: the privileged helper that owns the TPM (a shell).

Opens the TPM, reconciles the runtime log and the audit log with it, records a
``daemon-start`` event, and serves ``attest.node.port.NodePort`` on two Unix sockets until SIGTERM
or SIGINT. Only this process ever extends the runtime PCR.

With ``--slots-dir`` it also owns the upgrade gate (``attest.node.broker.upgrades``): the slots, the
trusted registry (``--trust-dir``), the NV counter (``--nv-index``) and the spool directory the
API puts uploads in (``--spool-dir``). It then catches the NV counter up with the committed
slot at start (``UpgradeGate.reconcile``).

It reads for attestd what attestd may not (``attest.node.broker.host``): the firmware event
log (``--firmware-log``), the kernel command line (``--cmdline``), and, with
``--watch-verity`` (``auto``: when ``/dev/mapper/control`` exists), the dm-verity devices,
which it records as ``verity-device`` runtime events itself.

On an SEV-SNP host, ``--snp-host`` reads the host's chip id from the AMD-SP before the TPM is
touched and records it as an ``snp-host`` runtime event after the start event, once per boot
(``attest.node.snp_host``); a read failure, or another chip already in this boot's log, stops
it. In an SEV-SNP guest without a (v)TPM, ``--no-tpm`` opens no TPM and keeps no log: it serves
``snp_report`` and the host facts, and refuses every TPM operation
(``attest.node.broker.tpmless``).
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import logging
import os
import pwd
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from attest import __version__
from attest.errors import AttestError, ConfigError, SnpGuestError, SnpHostError
from attest.node import sdnotify
from attest.node.broker import protocol as p
from attest.node.broker.client import DEFAULT_OPERATOR_SOCKET, DEFAULT_SOCKET
from attest.node.broker.host import FIRMWARE_LOG, KERNEL_CMDLINE, MAPPER_CONTROL, HostFacts
from attest.node.broker.local import LocalNode
from attest.node.broker.server import BrokerServer
from attest.node.broker.services import BrokerNode
from attest.node.broker.tpmless import TpmlessNode
from attest.node.broker.upgrades import BrokerUpgrades, Spool
from attest.node.port import LOW_SPACE_BYTES, MAX_FIRMWARE_LOG
from attest.node.snp_guest import open_snp_guest
from attest.node.snp_host import check_chip_ids, keep_recorded, open_snp_host
from attest.node.socketlock import SocketLock, lock_socket
from attest.node.tpm.vtpm import VtpmManager
from attest.node.upgrade.slots import DEFAULT_CAPACITY, SlotStore
from attest.node.upgrade.stager import DEFAULT_NV_INDEX
from attest.runtime import DEFAULT_RUNTIME_PCR, KIND_DAEMON_START, KIND_POLICY

logger = logging.getLogger("attest.node.broker")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SELINUX_POLICY = Path("/sys/fs/selinux/policy")


def _parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(prog="attestd-tpm", description="attest privileged TPM broker")
    a.add_argument("--version", action="version", version=f"attestd-tpm {__version__}")
    a.add_argument("--tcti", default="device:/dev/tpmrm0", help="TPM TCTI (default %(default)s)")
    a.add_argument(
        "--socket",
        type=Path,
        default=Path(DEFAULT_SOCKET),
        help="API socket, mode 0660 (default %(default)s)",
    )
    a.add_argument("--socket-group", help="group owning the API socket (e.g. attest)")
    a.add_argument(
        "--operator-socket",
        type=Path,
        default=Path(DEFAULT_OPERATOR_SOCKET),
        help="operator socket, mode 0600; 'none' to disable (default %(default)s)",
    )
    a.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/attest"),
        help="runtime log, audit log and audit key (default %(default)s)",
    )
    a.add_argument(
        "--low-space-bytes",
        type=int,
        default=LOW_SPACE_BYTES,
        help="report the state file system as low on space below this many free bytes "
        "(attestd /v1/status state_fs, /metrics; default %(default)s)",
    )
    a.add_argument(
        "--runtime-pcr",
        type=int,
        default=DEFAULT_RUNTIME_PCR,
        help="PCR of the runtime log (default %(default)s)",
    )
    a.add_argument(
        "--ak-type", default="ecc256", choices=["ecc256", "ecc384", "rsa2048", "rsa2048-pss"]
    )
    a.add_argument(
        "--measure-kinds",
        default=",".join(sorted(p.DEFAULT_MEASURE_KINDS)),
        help="runtime event kinds the API socket may measure (default %(default)s)",
    )
    g = a.add_argument_group("upgrade gate (docs/upgrade.md; off without --slots-dir)")
    g.add_argument(
        "--slots-dir",
        type=Path,
        help="slot files and the boot pointer boot.json (enables the gate)",
    )
    g.add_argument(
        "--slot-device",
        action="append",
        default=[],
        metavar="SLOT=DEV",
        help="a block device for a slot, e.g. b=/dev/vda3 (repeatable)",
    )
    g.add_argument(
        "--slot-capacity",
        type=int,
        default=DEFAULT_CAPACITY,
        help="size of a file slot in bytes (default %(default)s)",
    )
    g.add_argument(
        "--trust-dir",
        type=Path,
        default=Path("/var/lib/attest/trust"),
        help="trusted root.json / registry.json (default %(default)s)",
    )
    g.add_argument(
        "--nv-index",
        type=lambda s: int(s, 0),
        default=DEFAULT_NV_INDEX,
        help=f"NV counter index (default 0x{DEFAULT_NV_INDEX:08x})",
    )
    g.add_argument(
        "--spool-dir",
        type=Path,
        help="where attestd spools uploads (mode 2770, group attest); without "
        "it, upgrade_stage is refused",
    )
    g.add_argument(
        "--spool-group", help="group spooled files must have (default: the spool directory's)"
    )
    g.add_argument(
        "--spool-user",
        action="append",
        default=[],
        help="a user that may own spooled files (repeatable; e.g. attest and root; default: any)",
    )
    a.add_argument(
        "--mac-policy",
        type=Path,
        default=SELINUX_POLICY,
        help="the loaded SELinux policy, measured as a 'policy' event at start when "
        "present (default %(default)s)",
    )
    h = a.add_argument_group("host facts served to attestd (read-only; docs/daemon-hardening.md)")
    h.add_argument(
        "--firmware-log",
        type=_optional_path,
        default=default_firmware_log(os.environ),
        help="the firmware (TCG) event log; 'none': the node has none (default: the systemd "
        f"credential {FIRMWARE_LOG_CREDENTIAL!r} when the unit passes it, else {FIRMWARE_LOG}; "
        "here %(default)s)",
    )
    h.add_argument(
        "--max-firmware-log-bytes",
        type=int,
        default=MAX_FIRMWARE_LOG,
        help="a larger firmware log is not served (default %(default)s)",
    )
    h.add_argument(
        "--cmdline",
        type=_optional_path,
        default=KERNEL_CMDLINE,
        help="the kernel command line; 'none': not served (default %(default)s)",
    )
    h.add_argument(
        "--watch-verity",
        choices=["auto", "on", "off"],
        default="auto",
        help="watch dm-verity devices (udev, dmsetup) and record them in the runtime log; "
        f"auto: when {MAPPER_CONTROL} exists (default %(default)s)",
    )
    h.add_argument(
        "--snp-guest",
        default="off",
        metavar="off|configfs[:ROOT]|sev-guest[:DEVICE]|fake:DIR",
        help="in an SEV-SNP guest: where to ask for attestation reports (snp_report; "
        "docs/snp.md); fake:DIR signs with a test key (default %(default)s)",
    )
    h.add_argument(
        "--snp-host",
        default="off",
        metavar="off|sev[:DEVICE]|fake:HEX",
        help="on an SEV-SNP host: read this host's chip id from the AMD-SP (/dev/sev, "
        "SEV_GET_ID2) and record it as an snp-host runtime event at start, once per boot "
        "(docs/snp.md); fake:HEX: a 64-byte chip id in hex (default %(default)s)",
    )
    a.add_argument(
        "--no-tpm",
        action="store_true",
        help="an SEV-SNP guest without a (v)TPM: open no TPM and keep no runtime or audit "
        "log; serve SEV-SNP reports (needs --snp-guest) and host facts, refuse every TPM "
        "operation (docs/snp.md, 'A guest without a vTPM')",
    )
    a.add_argument(
        "--vtpm-dir",
        type=Path,
        help="host side: create guest vTPMs here and vouch for them in the runtime "
        "log (operator socket: vtpm_create, vtpm_record; docs/host-guest.md)",
    )
    a.add_argument("-v", "--verbose", action="count", default=0)
    return a


FIRMWARE_LOG_CREDENTIAL = "firmware-log"


def default_firmware_log(environ: Mapping[str, str]) -> Path:
    """``$CREDENTIALS_DIRECTORY/firmware-log`` when systemd passed that credential (the unit's
    ``LoadCredential=``: PID 1 reads the root-only securityfs file for the broker), else the
    securityfs file itself."""
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        cred = Path(creds) / FIRMWARE_LOG_CREDENTIAL
        if cred.is_file():
            return cred
    return FIRMWARE_LOG


def _optional_path(value: str) -> Path | None:
    return None if value == "none" else Path(value)


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip()[:64] or None
    except OSError:
        return None


def mac_policy_event(path: Path, *, mac: str = "selinux") -> dict[str, str] | None:
    """The ``policy`` runtime event for the MAC policy loaded from ``path``; None when the
    node has none there (the event is then not recorded)."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return {"mac": mac, "sha256": h.hexdigest()}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO - 10 * min(args.verbose, 1), format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("esys").setLevel(logging.CRITICAL)
    if not args.verbose:
        # libtss2 prints an ERROR line for every failed ESYS call, including the expected ones
        # of a normal start (probing which EK certificate indices exist): our errors say what
        # failed once, with the response code. -v shows the library's lines again.
        os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        return _run(args)
    except AttestError as exc:
        logger.error("attestd-tpm cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    except OSError as exc:
        logger.error("attestd-tpm cannot start: %s", exc)
        return 1


def _run(args: argparse.Namespace) -> int:
    if not 0 <= args.runtime_pcr < 24:
        raise ConfigError("must be 0..23", key="runtime_pcr")
    kinds = frozenset(k.strip() for k in args.measure_kinds.split(",") if k.strip())
    if kinds - p.OPERATOR_MEASURE_KINDS:
        raise ConfigError(
            f"unknown or reserved kinds {sorted(kinds - p.OPERATOR_MEASURE_KINDS)}",
            key="measure_kinds",
        )
    if args.no_tpm:
        _check_tpmless(args)
    # One broker per socket, before the TPM is touched: a second attestd-tpm with the same
    # options stops here, measuring nothing and leaving the first one's sockets alone.
    operator = None if str(args.operator_socket) == "none" else args.operator_socket
    locks = [lock_socket(path) for path in (args.socket, operator) if path is not None]
    gid = None
    if args.socket_group:
        try:
            gid = grp.getgrnam(args.socket_group).gr_gid
        except KeyError:
            raise ConfigError(f"no group {args.socket_group!r}", key="socket_group") from None
    args.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if args.low_space_bytes < 0:
        raise ConfigError("must be 0 or more", key="low_space_bytes")
    if args.max_firmware_log_bytes < 0:
        raise ConfigError("must be 0 or more", key="max_firmware_log_bytes")
    try:
        snp = open_snp_guest(args.snp_guest)
    except (ValueError, SnpGuestError) as exc:
        raise ConfigError(str(exc), key="snp_guest") from None
    try:
        snp_host = open_snp_host(args.snp_host)
    except (ValueError, SnpHostError) as exc:
        raise ConfigError(str(exc), key="snp_host") from None
    # Read before the TPM is touched: a host whose AMD-SP does not name its chip does not start.
    chips = snp_host.chip_ids() if snp_host is not None else ()
    host = HostFacts(
        firmware_log=args.firmware_log,
        cmdline=args.cmdline,
        max_firmware_log=args.max_firmware_log_bytes,
        snp=snp,
    )
    if args.no_tpm:
        logger.warning(
            "no TPM (--no-tpm): serving SEV-SNP reports and host facts only; no runtime or "
            "audit log is kept"
        )
        tpmless = TpmlessNode(host, args.state_dir, low_space_bytes=args.low_space_bytes)
        server = BrokerServer(tpmless, args.socket, operator_socket_path=operator, socket_group=gid)
        return _serve(args, server, tpmless, None, locks)
    node = _open_node(args, host, chips)
    try:
        if chips:
            keep_recorded(node.runtime, chips)
        if args.watch_verity == "on" or (args.watch_verity == "auto" and MAPPER_CONTROL.exists()):
            host.watch_verity(node.runtime)
        else:
            logger.info("not watching dm-verity devices (--watch-verity %s)", args.watch_verity)
        vtpms = None
        if args.vtpm_dir is not None:
            vtpms = VtpmManager(args.vtpm_dir, node.runtime, audit=node.audit)
            logger.info("guest vTPMs in %s (%d created)", args.vtpm_dir, len(vtpms.created()))
        upgrades = _upgrades(args, node)
    except BaseException:
        node.close()
        raise
    server = BrokerServer(
        node,
        args.socket,
        operator_socket_path=operator,
        socket_group=gid,
        measure_kinds=kinds,
        upgrades=upgrades,
        vtpms=vtpms,
    )
    return _serve(args, server, node, upgrades, locks)


def _check_tpmless(args: argparse.Namespace) -> None:
    """``--no-tpm`` takes none of the options that need a TPM or a runtime log."""
    if args.snp_guest == "off":
        raise ConfigError(
            "--no-tpm needs --snp-guest: a node without a TPM proves itself by its SEV-SNP "
            "report alone",
            key="snp_guest",
        )
    for key, value in (
        ("snp_host", args.snp_host != "off"),
        ("vtpm_dir", args.vtpm_dir is not None),
        ("slots_dir", args.slots_dir is not None),
        ("spool_dir", args.spool_dir is not None),
        ("watch_verity", args.watch_verity == "on"),
    ):
        if value:
            raise ConfigError("needs the TPM's runtime log, and --no-tpm opens no TPM", key=key)
    args.watch_verity = "off"


def _open_node(args: argparse.Namespace, host: HostFacts, chips: Sequence[bytes]) -> LocalNode:
    """The TPM, the logs reconciled with it, and the start events (daemon-start, policy).
    Refused before anything is measured when this boot's log records another SEV-SNP chip
    than ``chips`` (``--snp-host``)."""
    from attest.node.tpm.esapi import AkSpec, EsapiTpm  # the only importer of tpm2_pytss

    tpm = EsapiTpm(args.tcti, ak=AkSpec(args.ak_type))
    node = LocalNode.open(
        tpm,
        args.state_dir,
        pcr=args.runtime_pcr,
        low_space_bytes=args.low_space_bytes,
        host=host,
    )
    if chips:
        try:
            check_chip_ids(node.runtime, chips)
        except BaseException:
            node.close()
            raise
    start_event: dict[str, str] = {"version": __version__}
    boot_id = _boot_id()
    if boot_id:
        start_event["boot_id"] = boot_id
    node.runtime.measure(KIND_DAEMON_START, start_event)
    # After a TPM reset while running, the new runtime log starts with a daemon-start again.
    node.runtime.add_reset_hook(lambda: node.runtime.measure(KIND_DAEMON_START, start_event))
    policy = mac_policy_event(args.mac_policy)
    if policy is not None:
        node.runtime.measure(KIND_POLICY, policy)
        node.runtime.add_reset_hook(lambda: node.runtime.measure(KIND_POLICY, policy))
        logger.info("MAC policy %s measured: sha256 %s", args.mac_policy, policy["sha256"])
    return node


def _serve(
    args: argparse.Namespace,
    server: BrokerServer,
    node: BrokerNode,
    upgrades: BrokerUpgrades | None,
    locks: Sequence[SocketLock],
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    # Ready for systemd (Type=notify): the TPM answered, the logs are reconciled with it, the
    # start is measured and both sockets are bound. The watchdog's pings come from this loop.
    sdnotify.notify(f"READY=1\nSTATUS=serving on {args.socket}")
    interval = sdnotify.watchdog_interval()
    try:
        while not stop.wait(min(1.0, interval or 1.0)):
            if interval:
                sdnotify.notify("WATCHDOG=1")
    finally:
        sdnotify.notify("STOPPING=1")
        server.shutdown()
        if upgrades is not None:
            upgrades.close()
        node.close()
        for lock in locks:
            lock.release()
    logger.info("attestd-tpm stopped")
    return 0


def _devices(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        slot, sep, dev = item.partition("=")
        if not sep or slot not in ("a", "b") or not dev:
            raise ConfigError(f"{item!r} is not SLOT=DEVICE with SLOT a or b", key="slot_device")
        out[slot] = dev
    return out


def _upgrades(args: argparse.Namespace, node: LocalNode) -> BrokerUpgrades | None:
    if args.slots_dir is None:
        if args.spool_dir is not None:
            raise ConfigError("the upgrade gate needs --slots-dir", key="spool_dir")
        return None
    spool = None
    if args.spool_dir is not None:
        gid = uids = None
        try:
            if args.spool_group:
                gid = grp.getgrnam(args.spool_group).gr_gid
            if args.spool_user:
                uids = {pwd.getpwnam(u).pw_uid for u in args.spool_user}
        except KeyError as exc:
            raise ConfigError(f"no such user or group {exc}", key="spool_user") from None
        spool = Spool(args.spool_dir, gid=gid, uids=uids)
    args.slots_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    slots = SlotStore(
        args.slots_dir, devices=_devices(args.slot_device), capacity=args.slot_capacity
    )
    upgrades = BrokerUpgrades(node, slots, args.trust_dir, spool=spool, nv_index=args.nv_index)
    try:
        upgrades.gate.reconcile()  # a crash between confirm's pointer switch and its increments
    except AttestError as exc:
        logger.error("upgrade gate: could not reconcile the NV counter: %s", exc)
    logger.info("upgrade gate on %s (spool %s)", args.slots_dir, args.spool_dir)
    return upgrades


def run() -> None:
    sys.exit(main())
