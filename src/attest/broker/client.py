"""``BrokerClient``: ``attest.node.NodePort`` over the broker's Unix socket (an adapter).

One connection, used by one request at a time (thread-safe). A dropped connection (the broker
restarted, or closed an idle connection) is re-established transparently: a request that could
not be *sent* is always retried once; a request that was sent but not answered is retried only
when it is idempotent (everything but ``measure`` and ``audit_record``), so an event is never
recorded twice by a retry. Errors the broker reports are raised as their own attest class.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attest.broker import protocol as p
from attest.broker.transport import recv_frame, send_frame
from attest.errors import TransportError
from attest.eventlog.cel import CelRecord
from attest.model import PcrSelection, PcrValues
from attest.node import NodeIdentity
from attest.tpm.port import RawQuote

DEFAULT_SOCKET = "/run/attest/tpm.sock"
DEFAULT_OPERATOR_SOCKET = "/run/attest/tpm-operator.sock"
_NOT_IDEMPOTENT = (p.Measure, p.AuditRecord)


class BrokerClient:
    def __init__(self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET, *,
                 timeout: float = 60.0) -> None:  # fmt: skip
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

    def _call(self, req: p.Request) -> Any:
        frame_body = p.encode_request(req)
        with self._lock:
            for attempt in (1, 2):
                sent = False
                try:
                    if self._sock is None:
                        self._sock = self._connect()
                    send_frame(self._sock, frame_body, limit=p.MAX_REQUEST)
                    sent = True
                    body = recv_frame(self._sock, limit=p.MAX_RESPONSE)
                    if body is None:
                        raise ConnectionResetError("attestd-tpm closed the connection")
                except TimeoutError:
                    self._drop()
                    raise TransportError(
                        f"attestd-tpm at {self.socket_path} did not answer {req.op} within "
                        f"{self._timeout:.0f} s"
                    ) from None
                except TransportError:
                    self._drop()  # a garbled frame: the stream is out of step
                    raise
                except OSError as exc:
                    self._drop()
                    if attempt == 1 and (not sent or not isinstance(req, _NOT_IDEMPOTENT)):
                        continue
                    raise TransportError(
                        f"cannot reach attestd-tpm at {self.socket_path}: {exc.strerror or exc}"
                    ) from None
                return p.decode_response(req, body)
            raise AssertionError("unreachable")

    # --- NodePort -------------------------------------------------------------------------

    def identity(self) -> NodeIdentity:
        result: NodeIdentity = self._call(p.Identity())
        return result

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        result: PcrValues = self._call(p.ReadPcrs(selection))
        return result

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        result: RawQuote = self._call(p.Quote(selection, qualifying_data))
        return result

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        result: bytes = self._call(p.ActivateCredential(id_object, encrypted_secret))
        return result

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        result: CelRecord = self._call(p.Measure(kind, content))
        return result

    def runtime_log(self, start: int = 0) -> tuple[CelRecord, ...]:
        result: tuple[CelRecord, ...] = self._call(p.RuntimeLogRead(start))
        return result

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self._call(p.AuditRecord(event))
        return result

    def audit_log(self, start: int = 0) -> tuple[Mapping[str, Any], ...]:
        result: tuple[Mapping[str, Any], ...] = self._call(p.AuditLogRead(start))
        return result

    def nv_counter_read(self, index: int) -> int:
        result: int = self._call(p.NvCounterRead(index))
        return result

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
