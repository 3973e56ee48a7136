"""``BrokerServer``: serve a ``LocalNode`` (or a ``TpmlessNode``) on Unix sockets (an adapter).

What each socket answers, and what the broker runs for each operation, is the table
``protocol.OPS``; this module only reads it:

- The API socket (mode 0660, group configurable) answers ``protocol.UNPRIVILEGED_OPS`` (the
  operations of privilege ``API``) and measures only the kinds of its allow-list (default
  ``protocol.DEFAULT_MEASURE_KINDS``).
- The operator socket (mode 0600: root, for PAM/sshd hooks and the ``attest audit``,
  ``attest upgrade`` and ``attest vtpm`` CLIs) answers every operation (``protocol.OPERATOR_OPS``)
  and measures any kind but ``audit`` and ``vtpm``.
- An operation the socket does not answer is refused before its arguments are read.
- On the API socket the ``actor`` of a request, when it has one, must be ``api-<channel>``:
  the API cannot record a decision in an operator's name.
- One thread per connection, a bounded number of connections per socket (the API cannot
  starve the operator socket), an idle timeout between requests and a short timeout to finish
  a request once started, and bounded frame sizes: a slow or malicious client cannot block
  others. TPM calls are serialised by the TPM adapter.
- Errors go back as typed error responses (``wire.encode_error``); unexpected exceptions
  are logged here and reported as an internal error without details.
- The peer's uid and pid (SO_PEERCRED) are logged per connection; request arguments never are
  (an audit event holds identities in clear until the audit log pseudonymises them), nor the
  refusals of an operation marked ``redact``. A refusal is logged on one line: control
  characters of what it quotes from the request are escaped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from attest.errors import AttestError, OperationNotAllowed, TransportError
from attest.node.broker import protocol as p
from attest.node.broker.services import BrokerNode, Services
from attest.node.broker.transport import recv_frame, send_frame
from attest.node.broker.upgrades import BrokerUpgrades
from attest.node.broker.wire import MAX_REQUEST, MAX_RESPONSE, encode_error
from attest.node.tpm.vtpm import VtpmManager

logger = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")
REFUSAL_LOG_PERIOD = 60.0  # seconds between two "too many connections" warnings of a socket
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


def _one_line(text: str) -> str:
    """``text`` for a log line: a refusal may quote what the client sent, and a control
    character (a newline) in it must not start a forged line of the broker's log."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


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
        node: BrokerNode,
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
        self._refused: dict[str, tuple[float, int]] = {}  # per socket: last warning, count since

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
                conn.close()
                self._note_refused(lst)
                continue
            with self._conns_lock:
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(lst, conn), daemon=True, name=f"broker-conn-{lst.name}"
            ).start()

    def _note_refused(self, lst: _Listener) -> None:
        """Count a connection refused on a full socket; warn at most once a minute per socket
        (a warning per refusal let a member of the socket's group flood the log)."""
        now = time.monotonic()
        last, count = self._refused.get(lst.name, (-math.inf, 0))
        count += 1
        if now - last < REFUSAL_LOG_PERIOD:
            self._refused[lst.name] = (last, count)
            return
        self._refused[lst.name] = (now, 0)
        logger.warning(
            "too many connections on %s (%d held): refused %d since the last warning",
            lst.path,
            self._max,
            count,
        )

    def _serve(self, lst: _Listener, conn: socket.socket) -> None:
        try:
            pid, uid, _ = peer_credentials(conn)
            logger.info("connection on %s socket from uid %d (pid %d)", lst.name, uid, pid)
            services = Services(self.node, self.upgrades, self.vtpms, lst.name, lst.kinds, uid)
            while not self._stop.is_set():
                conn.settimeout(self._idle)
                try:
                    body = recv_frame(conn, limit=MAX_REQUEST, body_timeout=self._request_timeout)
                except TransportError as exc:  # oversized or torn frame: stream out of step
                    logger.warning("bad frame from uid %d: %s", uid, exc)
                    with contextlib.suppress(OSError):
                        conn.settimeout(self._request_timeout)
                        send_frame(conn, encode_error(exc), limit=MAX_RESPONSE)
                    return
                if body is None:
                    return
                conn.settimeout(self._request_timeout)
                send_frame(conn, self._handle(lst, services, body), limit=MAX_RESPONSE)
        except OSError as exc:  # timeouts, resets: end this connection only
            logger.info("connection on %s socket closed: %s", lst.name, exc)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()
            lst.slots.release()

    def _handle(self, lst: _Listener, services: Services, body: bytes) -> bytes:
        uid, name, redact = services.uid, "?", False
        try:
            op, doc = p.read_request(body)
            name, redact = op.name, op.redact
            if op.name not in lst.ops:
                raise OperationNotAllowed(f"{op.name} is not allowed on the {lst.name} socket")
            args = p.decode_args(op, doc)
            actor = getattr(args, "actor", None)
            if lst.name == "api" and actor is not None and not _API_ACTOR.fullmatch(actor):
                raise OperationNotAllowed("the API socket acts as api-<channel> only")
            logger.debug("request %s from uid %d on %s socket", name, uid, lst.name)
            out = p.encode_result(op, op.serve(services, args))
            if len(out) > MAX_RESPONSE:
                raise TransportError(
                    f"response of {len(out)} bytes exceeds {MAX_RESPONSE}: ask from a later start"
                )
            return out
        except AttestError as exc:
            detail = "(not logged)" if redact else _one_line(str(exc))
            logger.info(
                "request %s from uid %d refused: %s: %s", name, uid, type(exc).__name__, detail
            )
            return encode_error(exc)
        except Exception:
            logger.exception("request %s from uid %d failed", name, uid)
            return encode_error(RuntimeError())
