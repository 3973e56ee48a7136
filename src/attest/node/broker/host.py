"""``HostFacts``: what the node's privileged side reads from the host for attestd's evidence
(an adapter): the firmware event log, the kernel command line, and the dm-verity devices.

These reads need what attestd must not have (docs/daemon-hardening.md, "What attestd-tpm needs
and why"): the firmware log in securityfs is 0440 root:root, ``dmsetup table/status`` asks
``/dev/mapper/control`` (CAP_SYS_ADMIN), the udev monitor is a netlink socket. So attestd-tpm
does them and serves the results as the typed broker operations ``firmware_log``,
``kernel_cmdline`` and ``verity_report`` (``attest.node.broker.protocol.OPS``); in an SEV-SNP
guest it also asks the AMD-SP for reports (``snp_report``; ``/dev/sev-guest`` is a device node,
configfs-TSM needs write access to ``/sys/kernel/config``: ``attest.node.snp_guest``). Which
files are read is fixed when this object is built (attestd-tpm's flags; attestd's own
configuration only in development mode, where attestd runs these services in-process): no
request names a path.

- The firmware log is read once, whole (at most ``max_firmware_log`` bytes; securityfs reports
  no size, so the size is what a read returns), kept, and served in chunks of at most
  ``FIRMWARE_LOG_CHUNK`` bytes. It does not change after boot. A missing or unreadable file is
  retried at the next request; a log over the limit, or shorter than one event header
  (``MIN_FIRMWARE_LOG``), is not served (logged).
- The kernel command line is read at each request, up to ``MAX_KERNEL_CMDLINE`` bytes.
- ``watch_verity`` starts ``attest.node.verity_watch.VerityWatcher`` and records each verity
  device it sees (name, root hash, status) as a ``verity-device`` runtime event, once per
  distinct state, and again after a TPM reset started a fresh runtime log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attest.errors import AttestError
from attest.node.logs.runtime import RuntimeLog
from attest.node.port import (
    FIRMWARE_LOG_CHUNK,
    MAX_FIRMWARE_LOG,
    MAX_KERNEL_CMDLINE,
    FirmwareLogChunk,
    SnpGuestReport,
)
from attest.node.snp_guest import SnpGuest
from attest.node.verity_watch import VerityWatcher
from attest.runtime import KIND_VERITY_DEVICE
from attest.verity.devices import VerityReport

logger = logging.getLogger(__name__)

FIRMWARE_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
KERNEL_CMDLINE = Path("/proc/cmdline")
MAPPER_CONTROL = Path("/dev/mapper/control")
# The first event of a TCG event log alone (TCG_PCR_EVENT, PC Client PFP §10.2.1: PCR index,
# event type, SHA-1 digest, event size) takes 32 bytes: anything shorter is not a log. The unit
# file's stand-in for a node without one (``SetCredential=firmware-log:none``) is such a file.
MIN_FIRMWARE_LOG = 32


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of ``path`` (one more than allowed: the caller sees it is
    over); ``OSError`` when it cannot be read."""
    with path.open("rb") as fh:
        parts: list[bytes] = []
        size = 0
        while size <= limit and (part := fh.read(limit + 1 - size)):
            parts.append(part)
            size += len(part)
    return b"".join(parts)


class HostFacts:
    """The host's firmware log, kernel command line and dm-verity devices (module docstring).
    ``None`` for a path: the node has none. Thread-safe."""

    def __init__(
        self,
        *,
        firmware_log: Path | None = None,
        cmdline: Path | None = None,
        max_firmware_log: int = MAX_FIRMWARE_LOG,
        snp: SnpGuest | None = None,
    ) -> None:
        if max_firmware_log < 0:
            raise ValueError("max_firmware_log must be 0 or more")
        self.snp = snp
        self.firmware_log_path = firmware_log
        self.cmdline_path = cmdline
        self.max_firmware_log = max_firmware_log
        self._firmware: bytes | None = None
        self._lock = threading.Lock()
        self._recorder: _VerityRecorder | None = None

    # --- the firmware event log --------------------------------------------------------------

    def _firmware_log(self) -> bytes | None:
        with self._lock:
            if self._firmware is not None or self.firmware_log_path is None:
                return self._firmware
            path = self.firmware_log_path
            try:
                data = _read_bounded(path, self.max_firmware_log)
            except OSError as exc:
                logger.info("no firmware event log at %s (%s)", path, exc.strerror or exc)
                return None
            if len(data) > self.max_firmware_log:
                logger.error(
                    "firmware event log %s over %d bytes: not served", path, self.max_firmware_log
                )
                return None
            if len(data) < MIN_FIRMWARE_LOG:  # e.g. the unit's "none" credential: no log
                logger.info(
                    "%s holds no firmware event log (%d bytes): not served", path, len(data)
                )
                return None
            self._firmware = data
            return data

    def firmware_log(self, offset: int, max_bytes: int) -> FirmwareLogChunk | None:
        """The log's bytes from ``offset`` on, at most ``max_bytes`` and never more than
        ``FIRMWARE_LOG_CHUNK``; an offset past the end gets no data (and the size)."""
        if offset < 0 or max_bytes < 0:
            raise ValueError("offset and max_bytes must be 0 or more")
        data = self._firmware_log()
        if data is None:
            return None
        start = min(offset, len(data))
        end = start + min(max_bytes, FIRMWARE_LOG_CHUNK)
        return FirmwareLogChunk(offset=start, total=len(data), data=data[start:end])

    # --- the kernel command line -------------------------------------------------------------

    def kernel_cmdline(self) -> str | None:
        if self.cmdline_path is None:
            return None
        try:
            raw = _read_bounded(self.cmdline_path, MAX_KERNEL_CMDLINE)
        except OSError as exc:
            logger.info("kernel command line %s unreadable (%s)", self.cmdline_path, exc.strerror)
            return None
        return raw[:MAX_KERNEL_CMDLINE].decode("utf-8", "replace").strip() or None

    # --- the SEV-SNP report ------------------------------------------------------------------

    def snp_report(self, report_data: bytes) -> SnpGuestReport | None:
        """A fresh report from the guest interface given at start (None: none given)."""
        if self.snp is None:
            return None
        return self.snp.get_report(report_data)

    # --- dm-verity ---------------------------------------------------------------------------

    def watch_verity(
        self,
        runtime: RuntimeLog,
        *,
        watcher: Callable[[Callable[[VerityReport], None]], VerityWatcher] | None = None,
    ) -> None:
        """Start watching dm-verity devices and recording them in ``runtime`` (module
        docstring). ``watcher`` builds the watcher from its callback (tests give a fake sysfs
        and dmsetup); by default it reads this object's command line file. A watcher that
        cannot start is logged, not raised: discovery must never stop the broker."""
        if self._recorder is not None:
            raise RuntimeError("already watching dm-verity devices")
        cmdline = self.cmdline_path or Path("/nonexistent")

        def default(callback: Callable[[VerityReport], None]) -> VerityWatcher:
            return VerityWatcher(callback, cmdline_path=cmdline)

        recorder = _VerityRecorder(runtime)
        recorder.watcher = (watcher or default)(recorder.on_report)
        self._recorder = recorder
        runtime.add_reset_hook(recorder.remeasure)
        try:
            recorder.watcher.start()
        except Exception as exc:
            logger.error("dm-verity discovery unavailable: %s", exc)

    def verity_report(self) -> VerityReport | None:
        recorder = self._recorder
        return None if recorder is None else recorder.latest

    def close(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None and recorder.watcher is not None:
            recorder.watcher.stop()


class _VerityRecorder:
    """Keeps the latest report and records every verity device seen, once per distinct state.
    Measures outside its own lock: a reset hook calls ``remeasure`` holding the runtime log's
    lock, while the watcher's thread calls ``on_report`` and then takes that lock to measure."""

    def __init__(self, runtime: RuntimeLog) -> None:
        self.runtime = runtime
        self.watcher: VerityWatcher | None = None
        self.latest: VerityReport | None = None
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def _new_events(self, report: VerityReport) -> list[dict[str, Any]]:
        events = []
        for dev in report.devices:
            root = dev.table.root_digest.hex() if dev.table is not None else ""
            key = (dev.name, root, str(dev.status))
            if key not in self._seen:
                self._seen.add(key)
                events.append({"name": dev.name, "root_hash": root, "status": str(dev.status)})
        return events

    def _record(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            try:
                self.runtime.measure(KIND_VERITY_DEVICE, event)
            except AttestError as exc:
                logger.error("could not record verity device %s: %s", event["name"], exc)

    def on_report(self, report: VerityReport) -> None:
        with self._lock:
            self.latest = report
            events = self._new_events(report)
        self._record(events)

    def remeasure(self) -> None:
        """Record the current devices again (the runtime log started afresh)."""
        with self._lock:
            self._seen.clear()
            events = [] if self.latest is None else self._new_events(self.latest)
        self._record(events)


class ServesHostFacts:
    """The node port's host-fact operations, answered from ``self.host``: shared by the broker's
    nodes with and without a TPM (``LocalNode``, ``TpmlessNode``)."""

    host: HostFacts

    def firmware_log(self, offset: int, max_bytes: int) -> FirmwareLogChunk | None:
        return self.host.firmware_log(offset, max_bytes)

    def kernel_cmdline(self) -> str | None:
        return self.host.kernel_cmdline()

    def verity_report(self) -> VerityReport | None:
        return self.host.verity_report()

    def snp_report(self, report_data: bytes) -> SnpGuestReport | None:
        return self.host.snp_report(report_data)
