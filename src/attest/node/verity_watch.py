"""Adapter: discover dm-verity devices (pyudev, sysfs, ``dmsetup``) and watch them change.

``discover()`` enumerates block devices, keeps the device-mapper ones (``dm-N``) whose dm uuid
starts with ``CRYPT-VERITY-`` (the uuid libcryptsetup gives verity devices; systemd-veritysetup
uses libcryptsetup too), and reads each one's table and status from the kernel with
``dmsetup table -u UUID`` / ``dmsetup status -u UUID``. Devices are addressed by uuid, not
name: the kernel resolves the uuid in the same ioctl, so a device renamed or replaced between
enumeration and the query cannot be mistaken for another. ``--showkeys`` is not used: dmsetup
masks only crypt/integrity keys and a verity root digest is printed anyway, so asking for keys
would only widen what a mistake could leak. ``dmsetup`` comes with Debian's ``dmsetup`` package.

The uuid is read from sysfs (``<device>/dm/uuid``, the kernel's own copy) and falls back to the
udev property ``DM_UUID`` (set by the dm udev rules, absent without them). The name comes from
``<device>/dm/name`` (fallback ``DM_NAME``).

Not covered: verity devices created without libcryptsetup (``dm-mod.create=`` on the kernel
command line, a hand-made ``dmsetup create``) have whatever uuid their creator chose and are
not discovered; a root hash they back is reported as unbacked (fail closed).

``VerityWatcher`` calls back with a fresh ``VerityReport`` on udev add/change/remove events of
``dm-*`` block devices. The kernel sends a change uevent when dm-verity detects a corrupted
block (``DM_VERITY_ERR_BLOCK_NR``), so corruption is reported when it happens. If udev or
netlink is unavailable (no libudev, no netlink socket) the watcher logs one warning and polls
instead; a slow poll also runs beside the udev monitor as a backstop for missed events (no
udevd, a full socket buffer).

The unit tests drive all of this with a fake sysfs tree, a fake ``run`` and a fake observer;
the real-device path (pyudev, netlink, dmsetup on a live verity device) is exercised by the VM
harness, inside a guest, because the host kernel has no device-mapper (FACTS.md).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from attest.errors import VerityFormatError
from attest.verity.devices import (
    UUID_PREFIX,
    VerityDevice,
    VerityReport,
    VerityStatus,
    VerityTable,
    evaluate_verity,
    parse_verity_status,
    parse_verity_table,
)

logger = logging.getLogger(__name__)

DMSETUP = "dmsetup"
DMSETUP_TIMEOUT = 10.0
PROC_CMDLINE = Path("/proc/cmdline")
SYSFS = Path("/sys")
MAX_SYSFS_READ = 4096
MAX_CMDLINE = 1 << 16  # COMMAND_LINE_SIZE is 2048 on x86; some architectures allow more
DEFAULT_POLL_INTERVAL = 60.0
WATCHED_ACTIONS = frozenset({"add", "change", "remove"})

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


class UdevDevice(Protocol):
    """The part of ``pyudev.Device`` this module uses."""

    @property
    def sys_name(self) -> str: ...

    @property
    def sys_path(self) -> str: ...

    @property
    def properties(self) -> Mapping[str, str]: ...


class UdevContext(Protocol):
    """The part of ``pyudev.Context`` this module uses."""

    def list_devices(self, **kwargs: Any) -> Iterable[UdevDevice]: ...


class Observer(Protocol):
    """The part of ``pyudev.MonitorObserver`` this module uses."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


# An observer factory is given the event callback ``(action, device)`` and returns an observer
# that has not been started; it raises when udev / netlink is unavailable.
ObserverFactory = Callable[[Callable[[str, UdevDevice], None]], Observer]


# --- sysfs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SysfsDevice:
    sys_name: str
    sys_path: str
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SysfsContext:
    """A ``UdevContext`` over ``<root>/class/block``: no libudev, no udev database. Used when
    pyudev cannot start (an initramfs, a container without libudev) and by the tests."""

    root: Path = SYSFS

    def list_devices(self, **kwargs: Any) -> Iterator[SysfsDevice]:
        if kwargs.get("subsystem", "block") != "block":
            return
        base = self.root / "class" / "block"
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return
        for name in names:
            yield SysfsDevice(name, os.path.realpath(base / name))


def _read_attr(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SYSFS_READ)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip()
    return text or None


def default_context() -> UdevContext:
    """``pyudev.Context()``, or ``SysfsContext()`` (with one warning) when pyudev or libudev is
    missing. pyudev is imported here, not at module import: it is optional, and start-up time
    in the guest is dear (FACTS.md)."""
    try:
        import pyudev  # type: ignore[import-untyped]

        ctx: UdevContext = pyudev.Context()
        return ctx
    except (ImportError, OSError) as e:
        logger.warning("pyudev unavailable, enumerating sysfs directly", extra={"reason": str(e)})
        return SysfsContext()


# --- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmIdentity:
    sys_name: str
    name: str
    uuid: str
    devno: str | None


def dm_identity(device: UdevDevice) -> DmIdentity | None:
    """Name, uuid and device number of a ``dm-N`` block device with a verity uuid, else None."""
    if not device.sys_name.startswith("dm-"):
        return None
    props = device.properties
    sys_path = Path(device.sys_path)
    uuid = _read_attr(sys_path / "dm" / "uuid") or props.get("DM_UUID") or ""
    if not uuid.startswith(UUID_PREFIX):
        return None
    name = _read_attr(sys_path / "dm" / "name") or props.get("DM_NAME") or device.sys_name
    devno = _read_attr(sys_path / "dev")
    if devno is None and "MAJOR" in props and "MINOR" in props:
        devno = f"{props['MAJOR']}:{props['MINOR']}"
    return DmIdentity(device.sys_name, name, uuid, devno)


def _dmsetup(run: Runner, command: str, uuid: str) -> str:
    args = [DMSETUP, command, "-u", uuid]
    try:
        proc = run(args, capture_output=True, text=True, timeout=DMSETUP_TIMEOUT, check=False)
    except FileNotFoundError as e:
        raise OSError(f"{DMSETUP} not found (install Debian's dmsetup package)") from e
    except subprocess.TimeoutExpired as e:
        raise OSError(f"{DMSETUP} {command} timed out after {DMSETUP_TIMEOUT} s") from e
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        reason = lines[-1][:200] if lines else f"exit status {proc.returncode}"
        raise OSError(f"{DMSETUP} {command} failed: {reason}")
    return str(proc.stdout)


def read_device(ident: DmIdentity, *, run: Runner = subprocess.run) -> VerityDevice:
    """Table and status of one device. Failures are reported in the device, not raised."""
    table: VerityTable | None = None
    status = VerityStatus.UNKNOWN
    errors: list[str] = []
    try:
        table = parse_verity_table(_dmsetup(run, "table", ident.uuid))
    except (OSError, VerityFormatError) as e:
        errors.append(f"table: {e}")
    try:
        status = parse_verity_status(_dmsetup(run, "status", ident.uuid))
    except (OSError, VerityFormatError) as e:
        errors.append(f"status: {e}")
    if errors:
        logger.warning(
            "verity device not fully read",
            extra={"device": ident.name, "uuid": ident.uuid, "errors": errors},
        )
    return VerityDevice(
        name=ident.name,
        uuid=ident.uuid,
        devno=ident.devno,
        table=table,
        status=status,
        error="; ".join(errors) or None,
    )


def discover(
    *, context: UdevContext | None = None, run: Runner = subprocess.run
) -> list[VerityDevice]:
    """Every active dm-verity device (``CRYPT-VERITY-`` uuid), sorted by name."""
    ctx = context if context is not None else default_context()
    idents = [i for d in ctx.list_devices(subsystem="block") if (i := dm_identity(d)) is not None]
    return [read_device(i, run=run) for i in sorted(idents, key=lambda i: (i.name, i.uuid))]


def read_cmdline(path: Path = PROC_CMDLINE) -> str:
    """The kernel command line; empty (so no root hash is backed: fail closed) if unreadable."""
    try:
        with path.open("rb") as f:
            return f.read(MAX_CMDLINE).decode("utf-8", "replace").strip()
    except OSError as e:
        logger.warning(
            "kernel command line unreadable", extra={"path": str(path), "reason": str(e)}
        )
        return ""


def verity_report(
    *,
    context: UdevContext | None = None,
    run: Runner = subprocess.run,
    cmdline_path: Path = PROC_CMDLINE,
) -> VerityReport:
    """``discover()`` combined with the command line's root hashes."""
    return evaluate_verity(discover(context=context, run=run), cmdline=read_cmdline(cmdline_path))


# --- watching --------------------------------------------------------------------------------


def udev_observer(context: UdevContext, on_event: Callable[[str, UdevDevice], None]) -> Observer:
    """A ``pyudev.MonitorObserver`` on block-device uevents (raises when netlink or libudev is
    unavailable). Without a running udevd, udev-source events never arrive, so kernel-source
    events are used then (this module reads sysfs and dmsetup, never the udev database)."""
    import pyudev

    source = "udev" if os.path.exists("/run/udev/control") else "kernel"
    monitor = pyudev.Monitor.from_netlink(context, source=source)
    monitor.filter_by("block")

    def forward(device: Any) -> None:
        on_event(str(device.action), device)

    observer: Observer = pyudev.MonitorObserver(
        monitor, callback=forward, name="attest-verity-udev", daemon=True
    )
    return observer


class VerityWatcher:
    """Call ``callback(report)`` with a fresh ``VerityReport`` when dm devices change.

    ``start()`` reads the report once and calls back synchronously, then watches in background
    threads: udev events (add/change/remove of ``dm-*`` block devices) call back every time;
    the poll (every ``poll_interval`` seconds) calls back only when the report changed. If the
    udev observer cannot be created, one warning is logged and the watcher only polls
    (``mode == "polling"``); discovery failures are reported inside the report, never raised
    from a thread. Callbacks come from the watcher's threads, one at a time; a callback must
    not call ``stop()``.
    """

    def __init__(
        self,
        callback: Callable[[VerityReport], None],
        *,
        context: UdevContext | None = None,
        run: Runner = subprocess.run,
        cmdline_path: Path = PROC_CMDLINE,
        observer_factory: ObserverFactory | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._callback = callback
        self._context = context
        self._run = run
        self._cmdline_path = cmdline_path
        self._observer_factory = observer_factory
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Observer | None = None
        self._poller: threading.Thread | None = None
        self._last: VerityReport | None = None
        self.mode: str | None = None  # "udev" or "polling" once started

    @property
    def last_report(self) -> VerityReport | None:
        return self._last

    def start(self) -> None:
        if self.mode is not None:
            raise RuntimeError("VerityWatcher already started")
        if self._context is None:
            self._context = default_context()
        context = self._context
        self._refresh(reason="start", only_if_changed=False)
        try:
            if self._observer_factory is not None:
                observer = self._observer_factory(self._on_event)
            else:
                observer = udev_observer(context, self._on_event)
            observer.start()
        except Exception as e:  # any failure of udev/netlink means: poll
            logger.warning(
                "udev monitor unavailable, polling dm devices instead",
                extra={"reason": f"{type(e).__name__}: {e}", "interval": self._poll_interval},
            )
            self.mode = "polling"
        else:
            self._observer = observer
            self.mode = "udev"
        self._poller = threading.Thread(target=self._poll, name="attest-verity-poll", daemon=True)
        self._poller.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
            except Exception:  # stopping must not fail the daemon's shutdown
                logger.exception("stopping the udev observer failed")
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None

    def refresh(self) -> VerityReport:
        """Read the report now and call back (from the caller's thread)."""
        return self._refresh(reason="refresh", only_if_changed=False)

    def _on_event(self, action: str, device: UdevDevice) -> None:
        if self._stop.is_set() or action not in WATCHED_ACTIONS:
            return
        if not device.sys_name.startswith("dm-"):
            return
        self._guarded(f"udev {action} {device.sys_name}", only_if_changed=False)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval):
            self._guarded("poll", only_if_changed=True)

    def _guarded(self, reason: str, *, only_if_changed: bool) -> None:
        try:
            self._refresh(reason=reason, only_if_changed=only_if_changed)
        except Exception:  # a background thread must survive a bad callback
            logger.exception("verity refresh failed", extra={"reason": reason})

    def _refresh(self, *, reason: str, only_if_changed: bool) -> VerityReport:
        with self._lock:
            report = verity_report(
                context=self._context, run=self._run, cmdline_path=self._cmdline_path
            )
            changed = report != self._last
            self._last = report
            if changed or not only_if_changed:
                logger.info(
                    "verity report",
                    extra={
                        "reason": reason,
                        "devices": [d.name for d in report.devices],
                        "cmdline_backed": report.cmdline_backed,
                        "corrupted": report.corrupted,
                    },
                )
                self._callback(report)
            return report
