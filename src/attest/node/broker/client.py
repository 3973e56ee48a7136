"""``BrokerClient``: ``attest.node.port.NodePort`` over the broker's Unix socket (an adapter).

``BrokerClient.call(op, args)`` sends any operation of the table ``protocol.OPS`` and returns
its typed result (``call(OPS.quote, Quote(selection, nonce))`` is a ``RawQuote`` to mypy); the
named methods are thin typed calls of it. One connection, used by one request at a time
(thread-safe). A dropped connection (the broker restarted, or closed an idle connection) is
re-established transparently: a request that could not be *sent* is always retried once; a
request that was sent but not answered is retried only when its entry is ``idempotent``, so an
event is never recorded twice by a retry. A broker that cannot be reached (not running, not
answering within ``timeout``) is ``BrokerUnavailable`` (the node is not ready); a garbled
answer is a plain ``TransportError``. Errors the broker reports are raised as their own
attest class (a gate refusal as ``UpgradeRefused`` with its reason code).

``BrokerGate`` is the upgrade gate as the unprivileged API sees it (``add_upgrade_routes``'s
gate in broker mode): ``stage`` sends the spooled upload's path to the broker's gate.
``spool_file`` copies a file into the spool directory, for callers whose file is elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from attest.errors import (
    BrokerUnavailable,
    EvidenceFormatError,
    RegistryRefused,
    TransportError,
    UpgradeRefused,
)
from attest.eventlog.cel import CelRecord
from attest.gate import UPLOAD_TOO_LARGE, RegistryRefresh
from attest.model import PcrSelection, PcrValues
from attest.node.broker import protocol as p
from attest.node.broker.protocol import OPS
from attest.node.broker.results import (
    BootChoice,
    Confirmed,
    GateStatus,
    StagedUpgrade,
    VtpmVouched,
)
from attest.node.broker.transport import recv_frame, send_frame
from attest.node.broker.wire import MAX_REQUEST, MAX_RESPONSE
from attest.node.port import (
    FIRMWARE_LOG_CHUNK,
    FirmwareLogChunk,
    NodeIdentity,
    SnpGuestReport,
    StateFs,
)
from attest.node.tpm.port import RawQuote
from attest.node.tpm.vtpm import CreatedVtpm
from attest.verity.devices import VerityReport

DEFAULT_SOCKET = "/run/attest/tpm.sock"
DEFAULT_OPERATOR_SOCKET = "/run/attest/tpm-operator.sock"
DEFAULT_SPOOL_DIR = "/var/lib/attest/spool"
# Staging reads the whole image twice (verify, read back) and writes it once: allow for
# several GiB on a slow disk.
STAGE_TIMEOUT = 3600.0
A = TypeVar("A")
R = TypeVar("R")


class BrokerClient:
    def __init__(
        self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, *, timeout: float = 60.0
    ) -> None:
        self.socket_path = Path(socket_path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self._timeout)
        try:
            s.connect(str(self.socket_path))
        except OSError:
            s.close()
            raise
        return s

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def call(self, op: p.Op[A, R], args: A) -> R:
        """Send ``op`` with ``args`` and return its typed result (module docstring)."""
        frame_body = p.encode_request(op, args)
        with self._lock:
            for attempt in (1, 2):
                sent = False
                try:
                    if self._sock is None:
                        self._sock = self._connect()
                    send_frame(self._sock, frame_body, limit=MAX_REQUEST)
                    sent = True
                    body = recv_frame(self._sock, limit=MAX_RESPONSE)
                    if body is None:
                        raise ConnectionResetError("attestd-tpm closed the connection")
                except TimeoutError:
                    self._drop()
                    raise BrokerUnavailable(
                        f"attestd-tpm at {self.socket_path} did not answer {op.name} within "
                        f"{self._timeout:.0f} s"
                    ) from None
                except TransportError:
                    self._drop()  # a garbled frame: the stream is out of step
                    raise
                except OSError as exc:
                    self._drop()
                    if attempt == 1 and (not sent or op.idempotent):
                        continue
                    raise BrokerUnavailable(
                        f"cannot reach attestd-tpm at {self.socket_path}: {exc.strerror or exc}"
                    ) from None
                return p.decode_response(op, body)
            raise AssertionError("unreachable")

    # --- NodePort -------------------------------------------------------------------------

    def identity(self) -> NodeIdentity:
        return self.call(OPS.identity, None)

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        return self.call(OPS.read_pcrs, p.ReadPcrs(selection))

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        return self.call(OPS.quote, p.Quote(selection, qualifying_data))

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        return self.call(OPS.activate_credential, p.ActivateCredential(id_object, encrypted_secret))

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        return self.call(OPS.measure, p.Measure(kind, content))

    def runtime_log(self, start: int = 0) -> tuple[CelRecord, ...]:
        return self.call(OPS.runtime_log, p.LogRead(start))

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.call(OPS.audit_record, p.AuditRecord(event))

    def audit_log(self, start: int = 0) -> tuple[Mapping[str, Any], ...]:
        return self.call(OPS.audit_log, p.LogRead(start))

    def nv_counter_read(self, index: int) -> int:
        return self.call(OPS.nv_counter_read, p.NvIndex(index))

    def state_fs(self) -> StateFs:
        return self.call(OPS.state_fs, None)

    def firmware_log(
        self, offset: int, max_bytes: int = FIRMWARE_LOG_CHUNK
    ) -> FirmwareLogChunk | None:
        return self.call(OPS.firmware_log, p.FirmwareLogRead(offset, max_bytes))

    def kernel_cmdline(self) -> str | None:
        return self.call(OPS.kernel_cmdline, None)

    def verity_report(self) -> VerityReport | None:
        return self.call(OPS.verity_report, None)

    def snp_report(self, report_data: bytes) -> SnpGuestReport | None:
        return self.call(OPS.snp_report, p.SnpReportRequest(report_data))

    # --- the upgrade gate (attest.node.upgrade.stager.GateNode, and the gate itself) ---

    def nv_counter_define(self, index: int) -> int:
        return self.call(OPS.nv_counter_define, p.NvIndex(index))

    def nv_counter_increment(self, index: int) -> int:
        return self.call(OPS.nv_counter_increment, p.NvIndex(index))

    def upgrade_stage(self, req: p.UpgradeStage) -> StagedUpgrade:
        """The accepted decision (with ``slot``); ``UpgradeRefused`` for every refusal."""
        return self.call(OPS.upgrade_stage, req)

    def upgrade_refuse_upload(self, limit: int, *, actor: str) -> UpgradeRefused:
        """Have the broker record an ``upload-too-large`` refusal; returns it."""
        try:
            self.call(OPS.upgrade_refuse_upload, p.UpgradeRefuseUpload(limit, actor))
        except UpgradeRefused as exc:
            return exc
        raise TransportError("attestd-tpm did not refuse an upload over the limit")

    def registry_refresh(self, req: p.RegistryPush) -> RegistryRefresh:
        """The accepted trust refresh; ``RegistryRefused`` for every refusal."""
        return self.call(OPS.registry_refresh, req)

    def upgrade_status(self) -> GateStatus:
        return self.call(OPS.upgrade_status, None)

    def upgrade_confirm(self, *, actor: str) -> Confirmed:
        return self.call(OPS.upgrade_confirm, p.UpgradeConfirm(actor))

    def upgrade_boot(self) -> BootChoice:
        return self.call(OPS.upgrade_boot, None)

    # --- the host's guest vTPMs (attest.node.tpm.vtpm; operator socket) ---

    def vtpm_create(self, guest_id: str) -> VtpmVouched:
        return self.call(OPS.vtpm_create, p.VtpmCreate(guest_id))

    def vtpm_record(self, guest_id: str, ek_public: bytes) -> VtpmVouched:
        return self.call(OPS.vtpm_record, p.VtpmRecord(guest_id, ek_public))

    def vtpm_list(self) -> tuple[CreatedVtpm, ...]:
        return self.call(OPS.vtpm_list, None)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def spool_file(
    spool_dir: str | os.PathLike[str],
    *,
    source: Path | None = None,
    data: bytes | None = None,
    suffix: str = ".img",
) -> Iterator[Path]:
    """A file in the spool directory holding ``source``'s bytes (or ``data``), mode 0640 (the
    broker reads it through the spool group), deleted on exit. A ``source`` already in the
    spool directory is used as it is."""
    spool = Path(spool_dir)
    if source is not None and Path(os.path.realpath(source.parent)) == Path(
        os.path.realpath(spool)
    ):
        yield source.absolute()
        return
    fd, name = tempfile.mkstemp(prefix=".spool.", suffix=suffix, dir=spool)
    path = Path(name).absolute()
    try:
        os.fchmod(fd, 0o640)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                with source.open("rb") as src:
                    shutil.copyfileobj(src, out, 4 << 20)
            elif data is not None:
                out.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def stage_offer(
    socket_path: str | os.PathLike[str],
    spool_dir: str | os.PathLike[str],
    offer: Any,
    *,
    timeout: float = STAGE_TIMEOUT,
) -> StagedUpgrade:
    """Offer an upgrade (``attest.node.upgrade.stager.Offer``) to the gate of the broker at
    ``socket_path``: its image and hash tree are spooled in ``spool_dir`` (where the broker
    reads them), the rest travels in the request; the broker's clock decides expiry."""
    if len(offer.snapshot) > p.MAX_STAGE_SNAPSHOT:
        raise EvidenceFormatError(
            f"snapshot of {len(offer.snapshot)} bytes: attestd-tpm "
            f"takes at most {p.MAX_STAGE_SNAPSHOT}"
        )
    with contextlib.ExitStack() as stack:
        tree = None
        if offer.hash_tree is not None:
            tree = str(
                stack.enter_context(spool_file(spool_dir, data=offer.hash_tree, suffix=".tree"))
            )
        image = stack.enter_context(spool_file(spool_dir, source=Path(offer.image)))
        req = p.UpgradeStage(
            str(image),
            offer.snapshot,
            offer.actor,
            roots=offer.roots,
            hash_tree_path=tree,
            version=offer.version,
        )
        with BrokerClient(socket_path, timeout=timeout) as client:
            return client.upgrade_stage(req)


class BrokerGate:
    """The upgrade gate run by ``attestd-tpm``, for ``attest.node.api.upgrades.add_upgrade_routes``.

    ``stage`` sends the offer (its image already spooled in ``spool_dir`` by the API; a hash
    tree is spooled here) to the broker, which verifies, decides, records and writes; ``now``
    is ignored (the broker's clock decides). ``refuse_upload`` has the broker record an
    ``upload-too-large`` refusal of an upload over ``max_upload``."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        spool_dir: str | os.PathLike[str],
        max_upload: int,
        timeout: float = STAGE_TIMEOUT,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.spool_dir = Path(spool_dir)
        self.max_upload = max_upload
        self.timeout = timeout

    def stage(self, offer: Any, *, now: datetime) -> StagedUpgrade:
        return stage_offer(self.socket_path, self.spool_dir, offer, timeout=self.timeout)

    def refresh_registry(
        self, snapshot: bytes, *, roots: tuple[bytes, ...] = (), actor: str, now: datetime
    ) -> RegistryRefresh:
        """The broker's trust refresh of a pushed snapshot (its clock decides expiry)."""
        if len(snapshot) > p.MAX_STAGE_SNAPSHOT:
            return self._api_refused(
                UPLOAD_TOO_LARGE,
                f"snapshot of {len(snapshot)} bytes: attestd-tpm takes at most "
                f"{p.MAX_STAGE_SNAPSHOT}",
                actor=actor,
            )
        with BrokerClient(self.socket_path, timeout=self.timeout) as client:
            return client.registry_refresh(p.RegistryPush(snapshot, actor, roots=roots))

    def refuse_registry(self, reason: str, message: str, *, actor: str) -> RegistryRefused:
        """Have the broker record a push the API refused before the trust refresh."""
        try:
            self._api_refused(reason, message, actor=actor)
        except RegistryRefused as exc:
            return exc
        raise TransportError("attestd-tpm did not refuse a refused registry push")

    def _api_refused(self, reason: str, message: str, *, actor: str) -> RegistryRefresh:
        req = p.RegistryPush(b"", actor, refused=reason, detail=message[: p.MAX_DETAIL])
        with BrokerClient(self.socket_path, timeout=self.timeout) as client:
            return client.registry_refresh(req)  # raises RegistryRefused

    def refuse_upload(self, reason: str, message: str, *, actor: str) -> UpgradeRefused:
        if reason != UPLOAD_TOO_LARGE:
            raise ValueError(f"the broker records only {UPLOAD_TOO_LARGE} refusals of uploads")
        with BrokerClient(self.socket_path, timeout=self.timeout) as client:
            return client.upgrade_refuse_upload(self.max_upload, actor=actor)
