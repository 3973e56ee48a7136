"""``BrokerServer``: serve a ``LocalNode`` on Unix sockets (an adapter).

- The API socket (mode 0660, group configurable) answers ``protocol.UNPRIVILEGED_OPS`` and
  measures only the kinds of its allow-list (default ``protocol.DEFAULT_MEASURE_KINDS``).
- The operator socket (mode 0600: root, for PAM/sshd hooks and the ``attest audit`` and
  ``attest upgrade`` CLIs) additionally answers ``protocol.OPERATOR_ONLY_OPS`` (audit records,
  NV counter define/increment, upgrade confirm/boot) and measures any kind but ``audit``.
- The ``upgrade_*`` operations go to ``BrokerUpgrades`` (when configured). On the API socket
  the actor of an upgrade request must be ``api-<channel>``: the API cannot record a decision
  in an operator's name.
- One thread per connection, a bounded number of connections per socket (the API cannot
  starve the operator socket), an idle timeout between requests and a short timeout to finish
  a request once started, and bounded frame sizes: a slow or malicious client cannot block
  others. TPM calls are serialised by the TPM adapter.
- Errors go back as typed error responses (``protocol.encode_error``); unexpected exceptions
  are logged here and reported as an internal error without details.
- The peer's uid and pid (SO_PEERCRED) are logged per connection; request arguments never are
  (an audit event holds identities in clear until the audit log pseudonymises them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from attest.errors import AttestError, OperationNotAllowed, TransportError
from attest.node.broker import protocol as p
from attest.node.broker.local import LocalNode
from attest.node.broker.transport import recv_frame, send_frame
from attest.node.broker.upgrades import BrokerUpgrades
from attest.node.tpm.vtpm import VtpmManager

logger = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
_API_ACTOR = re.compile(r"api-[a-z]{1,16}")


@dataclass(frozen=True, slots=True)
class _Listener:
    name: str
    path: Path
    ops: frozenset[str]
    kinds: frozenset[str]
    mode: int
    sock: socket.socket
    slots: threading.BoundedSemaphore


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a connected Unix socket (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _bind(path: Path, mode: int, gid: int | None) -> socket.socket:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise TransportError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()  # a stale socket of a previous run
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket exists with mode 0600 until chmod below: no window
    try:
        s.bind(str(path))
    except OSError:
        s.close()
        raise
    finally:
        os.umask(old)
    if gid is not None and gid != os.getegid():  # else the socket already has that group
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    s.listen(64)
    s.settimeout(0.2)  # the accept loop polls for shutdown
    return s


class BrokerServer:
    def __init__(
        self,
        node: LocalNode,
        socket_path: str | os.PathLike[str],
        *,
        operator_socket_path: str | os.PathLike[str] | None = None,
        socket_group: int | None = None,
        measure_kinds: Collection[str] = p.DEFAULT_MEASURE_KINDS,
        max_connections: int = 32,
        idle_timeout: float = 300.0,
        request_timeout: float = 10.0,
        upgrades: BrokerUpgrades | None = None,
        vtpms: VtpmManager | None = None,
    ) -> None:
        unknown = set(measure_kinds) - p.OPERATOR_MEASURE_KINDS
        if unknown:
            raise ValueError(f"cannot allow measuring {', '.join(sorted(unknown))}")
        self.node = node
        self.upgrades = upgrades
        self.vtpms = vtpms
        self._paths = [(Path(socket_path), "api", 0o660, socket_group)]
        if operator_socket_path is not None:
            self._paths.append((Path(operator_socket_path), "operator", 0o600, None))
        self._kinds = frozenset(measure_kinds)
        self._max = max_connections
        self._idle = idle_timeout
        self._request_timeout = request_timeout
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._stop = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> BrokerServer:
        if self._listeners:
            raise RuntimeError("broker already started")
        for path, name, mode, gid in self._paths:
            sock = _bind(path, mode, gid)
            if name == "api":
                ops, kinds = p.UNPRIVILEGED_OPS, self._kinds
            else:
                ops, kinds = p.OPERATOR_OPS, p.OPERATOR_MEASURE_KINDS
            lst = _Listener(
                name, path, ops, kinds, mode, sock, threading.BoundedSemaphore(self._max)
            )
            self._listeners.append(lst)
            t = threading.Thread(
                target=self._accept_loop, args=(lst,), name=f"broker-accept-{name}", daemon=True
            )
            t.start()
            self._threads.append(t)
            logger.info("attestd-tpm listening on %s (%s, mode %04o)", path, name, mode)
        return self

    def serve_forever(self) -> None:
        if not self._listeners:
            self.start()
        self._stop.wait()

    def shutdown(self) -> None:
        """Stop accepting, close every connection, remove the sockets. Idempotent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        with self._conns_lock:
            for c in list(self._conns):
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
        for lst in self._listeners:
            with contextlib.suppress(OSError):
                lst.sock.close()
            with contextlib.suppress(FileNotFoundError):
                lst.path.unlink()
        self._listeners.clear()

    def __enter__(self) -> BrokerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- connections ------------------------------------------------------------------------

    def _accept_loop(self, lst: _Listener) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = lst.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                logger.exception("accept failed on %s", lst.path)
                continue
            if not lst.slots.acquire(blocking=False):
                logger.warning("too many connections on %s; refusing one", lst.path)
                conn.close()
                continue
            with self._conns_lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(lst, conn), daemon=True, name=f"broker-conn-{lst.name}"
            ).start()

    def _serve(self, lst: _Listener, conn: socket.socket) -> None:
        try:
            pid, uid, _ = peer_credentials(conn)
            logger.info("connection on %s socket from uid %d (pid %d)", lst.name, uid, pid)
            while not self._stop.is_set():
                conn.settimeout(self._idle)
                try:
                    body = recv_frame(conn, limit=p.MAX_REQUEST, body_timeout=self._request_timeout)
                except TransportError as exc:  # oversized or torn frame: stream out of step
                    logger.warning("bad frame from uid %d: %s", uid, exc)
                    with contextlib.suppress(OSError):
                        conn.settimeout(self._request_timeout)
                        send_frame(conn, p.encode_error(exc), limit=p.MAX_RESPONSE)
                    return
                if body is None:
                    return
                conn.settimeout(self._request_timeout)
                send_frame(conn, self._handle(lst, uid, body), limit=p.MAX_RESPONSE)
        except OSError as exc:  # timeouts, resets: end this connection only
            logger.info("connection on %s socket closed: %s", lst.name, exc)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            lst.slots.release()

    def _handle(self, lst: _Listener, uid: int, body: bytes) -> bytes:
        op = "?"
        try:
            req = p.decode_request(body)
            op = req.op
            if req.op not in lst.ops:
                raise OperationNotAllowed(f"{req.op} is not allowed on the {lst.name} socket")
            if isinstance(req, p.Measure) and req.kind not in lst.kinds:
                raise OperationNotAllowed(
                    f"measuring {req.kind!r} events is not allowed on the {lst.name} socket"
                )
            actor = getattr(req, "actor", None)
            if lst.name == "api" and actor is not None and not _API_ACTOR.fullmatch(actor):
                raise OperationNotAllowed("the API socket acts as api-<channel> only")
            logger.debug("request %s from uid %d on %s socket", op, uid, lst.name)
            if isinstance(req, p.VtpmCreate | p.VtpmRecord | p.VtpmList):
                out = p.encode_result(req, self._vtpm(req, uid))
            else:
                out = p.encode_result(req, self._dispatch(req))
            if len(out) > p.MAX_RESPONSE:
                raise TransportError(
                    f"response of {len(out)} bytes exceeds {p.MAX_RESPONSE}: ask from a later start"
                )
            return out
        except AttestError as exc:
            detail = exc if op != "audit_record" else "(not logged)"
            logger.info(
                "request %s from uid %d refused: %s: %s", op, uid, type(exc).__name__, detail
            )
            return p.encode_error(exc)
        except Exception:
            logger.exception("request %s from uid %d failed", op, uid)
            return p.encode_error(RuntimeError())

    def _vtpm(self, req: p.VtpmCreate | p.VtpmRecord | p.VtpmList, uid: int) -> object:
        v = self.vtpms
        if v is None:
            raise OperationNotAllowed("attestd-tpm does not manage guest vTPMs (--vtpm-dir)")
        if isinstance(req, p.VtpmList):
            return {"vtpms": [vt.to_json() for vt in v.created()]}
        operator = f"uid:{uid}"  # pseudonymised by the audit log of a refusal
        if isinstance(req, p.VtpmCreate):
            return v.create(req.guest_id, operator=operator)
        return v.record(req.guest_id, req.ek_public, operator=operator)

    def _dispatch(self, req: p.Request) -> object:
        n = self.node
        if isinstance(req, p.Identity):
            return n.identity()
        if isinstance(req, p.ReadPcrs):
            return n.read_pcrs(req.selection)
        if isinstance(req, p.Quote):
            return n.quote(req.selection, req.qualifying_data)
        if isinstance(req, p.ActivateCredential):
            return n.activate_credential(req.id_object, req.encrypted_secret)
        if isinstance(req, p.Measure):
            return n.measure(req.kind, req.content)
        if isinstance(req, p.RuntimeLogRead):
            return n.runtime_log(req.start)
        if isinstance(req, p.AuditRecord):
            return n.audit_record(req.event)
        if isinstance(req, p.AuditLogRead):
            return n.audit_log(req.start)
        if isinstance(req, p.NvCounterRead):
            return n.nv_counter_read(req.index)
        if isinstance(req, p.NvCounterDefine):
            return n.nv_counter_define(req.index)
        if isinstance(req, p.NvCounterIncrement):
            return n.nv_counter_increment(req.index)
        u = self.upgrades
        if u is None:
            raise OperationNotAllowed("attestd-tpm does not run the upgrade gate (--slots-dir)")
        if isinstance(req, p.UpgradeStage):
            return u.stage(req)
        if isinstance(req, p.UpgradeRefuseUpload):
            raise u.refuse_upload(req)
        if isinstance(req, p.UpgradeStatus):
            return u.status()
        if isinstance(req, p.UpgradeConfirm):
            return u.confirm(req)
        return u.boot()
