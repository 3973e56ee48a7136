"""The upgrade gate inside the broker (an adapter): ``BrokerUpgrades`` owns the
``attest.node.upgrade.stager.UpgradeGate`` -- slots, trust directory, NV counter -- and serves the
``upgrade_*`` operations of ``attest.node.broker.protocol``.

The image never travels through the socket: the API spools an upload in the **spool
directory** and names it. The broker opens it itself, and only if

- the name's directory, with every symbolic link resolved, *is* the spool directory, and the
  last component is opened relative to it with ``O_NOFOLLOW`` (no symbolic link);
- it is a regular file with one link (a hard link to a file the broker may read -- its audit
  key, a slot -- is refused), of the spool group (the directory's group: set-group-id, so
  uploads inherit it) and, when configured, owned by one of the allowed users (the API's user,
  root).

The gate then reads that open file (``/proc/self/fd/N``: the inode that was checked, not
whatever the name points to later). A file changed while it is read is caught by the gate's
read-back of the slot (``write-verify-failed``). Gate work runs in one worker thread, one
operation at a time; a second ``upgrade_stage`` while one runs is refused at once. Time is the
broker's clock: a request cannot choose the ``now`` that snapshot expiry is judged at.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn, TypeVar

from attest.errors import ConfigError, EvidenceFormatError, OperationNotAllowed, RegistryRefused
from attest.gate import UPLOAD_TOO_LARGE, RegistryRefresh
from attest.node.broker import protocol as p
from attest.node.broker.local import LocalNode
from attest.node.broker.results import (
    BootChoice,
    Confirmed,
    GateStatus,
    StagedUpgrade,
)
from attest.node.upgrade.slots import SlotStore
from attest.node.upgrade.stager import (
    DEFAULT_NV_INDEX,
    MAX_HASH_TREE,
    LocalGateNode,
    Offer,
    UpgradeGate,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class Spool:
    """The spool directory and its rules (module docstring)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        gid: int | None = None,
        uids: Collection[int] | None = None,
    ) -> None:
        self.directory = Path(os.path.realpath(directory))
        try:
            st = os.stat(self.directory)
        except OSError as exc:
            raise ConfigError(f"{directory}: {exc.strerror}", key="spool_dir") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{directory} is not a directory", key="spool_dir")
        if st.st_mode & stat.S_IWOTH:
            raise ConfigError(f"{directory} is world-writable", key="spool_dir")
        self.gid = st.st_gid if gid is None else gid
        self.uids = None if uids is None else frozenset(uids)

    def _refuse(self, path: str, why: str) -> OperationNotAllowed:
        logger.warning("refused spooled file", extra={"path": path, "why": why})
        return OperationNotAllowed(f"{path}: {why}")

    def open(self, path: str) -> int:
        """A read-only descriptor of the spooled file ``path``, or ``OperationNotAllowed``."""
        name = os.path.basename(path)
        if not os.path.isabs(path) or name in ("", ".", ".."):
            raise self._refuse(path, "not an absolute path to a file")
        if Path(os.path.realpath(os.path.dirname(path))) != self.directory:
            raise self._refuse(path, f"not in the spool directory {self.directory}")
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dfd)
        except OSError as exc:
            why = "a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            raise self._refuse(path, why) from None
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(path, "not a regular file")
            if st.st_nlink != 1:
                raise self._refuse(path, f"has {st.st_nlink} links (a hard link?)")
            if st.st_gid != self.gid:
                raise self._refuse(path, f"group {st.st_gid} is not the spool group {self.gid}")
            if self.uids is not None and st.st_uid not in self.uids:
                raise self._refuse(path, f"owner {st.st_uid} may not spool uploads")
            if st.st_mode & stat.S_IWOTH:
                raise self._refuse(path, "world-writable")
        except BaseException:
            os.close(fd)
            raise
        return fd


def _read_fd(fd: int, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while chunk := os.read(fd, min(1 << 20, limit + 1 - got)):
        chunks.append(chunk)
        got += len(chunk)
        if got > limit:
            raise EvidenceFormatError(f"{what} over {limit} bytes")
    return b"".join(chunks)


class BrokerUpgrades:
    """The gate's operations for ``BrokerServer`` (``upgrade_*``; ``spool`` None: staging is
    not configured, status and confirm still work)."""

    def __init__(
        self,
        node: LocalNode,
        slots: SlotStore,
        trust_dir: str | os.PathLike[str],
        *,
        spool: Spool | None,
        nv_index: int = DEFAULT_NV_INDEX,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.gate = UpgradeGate(slots, LocalGateNode(node), trust_dir, nv_index=nv_index)
        self.spool = spool
        self.clock = clock
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="broker-upgrade")
        self._staging = threading.Lock()

    def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the gate's worker thread (one gate operation at a time) and wait."""
        try:
            return self._worker.submit(fn).result()
        except RuntimeError as exc:  # slot-store steps out of order
            raise OperationNotAllowed(str(exc)) from None

    def stage(self, req: p.UpgradeStage) -> StagedUpgrade:
        if self.spool is None:
            raise OperationNotAllowed("attestd-tpm has no spool directory (--spool-dir)")
        if not self._staging.acquire(blocking=False):
            raise OperationNotAllowed("another upgrade is being staged; try again later")
        fds: list[int] = []
        try:
            fds.append(self.spool.open(req.upload_path))
            tree = None
            if req.hash_tree_path is not None:
                fds.append(self.spool.open(req.hash_tree_path))
                tree = _read_fd(fds[1], MAX_HASH_TREE, "hash tree")
            offer = Offer(
                Path(f"/proc/self/fd/{fds[0]}"),
                req.snapshot,
                roots=req.roots,
                hash_tree=tree,
                version=req.version,
                actor=req.actor,
            )

            def run() -> StagedUpgrade:
                doc = self.gate.stage(offer, now=self.clock()).to_json()
                return StagedUpgrade.from_json({**doc, "slot": self.gate.slots.load().pending})

            return self._run(run)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._staging.release()

    def refuse_upload(self, req: p.UpgradeRefuseUpload) -> NoReturn:
        """Record the ``upload-too-large`` refusal and raise it."""
        raise self._run(
            lambda: self.gate.refuse_upload(
                UPLOAD_TOO_LARGE, f"upload over the limit of {req.limit} bytes", actor=req.actor
            )
        )

    def refresh_registry(self, req: p.RegistryPush) -> RegistryRefresh:
        """A pushed registry snapshot: the gate's trust refresh (the broker's clock), recorded
        and persisted; or the recording of a push the API refused (``req.refused``)."""
        if req.refused is not None:
            refused: str = req.refused

            def record() -> RegistryRefused:
                return self.gate.refuse_registry(refused, req.detail, actor=req.actor)

            raise self._run(record)

        def run() -> RegistryRefresh:
            return self.gate.refresh_registry(
                req.snapshot, roots=req.roots, actor=req.actor, now=self.clock()
            )

        return self._run(run)

    def status(self) -> GateStatus:
        # reads only: the pointer is replaced atomically
        return GateStatus.from_json(self.gate.status())

    def confirm(self, req: p.UpgradeConfirm) -> Confirmed:
        ptr = self._run(lambda: self.gate.confirm(actor=req.actor))
        image = ptr.installed
        return Confirmed(ptr.active, None if image is None else image.version)

    def boot(self) -> BootChoice:
        r = self._run(self.gate.boot)
        return BootChoice(r.slot, r.image.version, r.fell_back, r.reason)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
