"""HTTP client of the attestd API (adapter). Verification is done by the pure core
(``attest.evidence``); this module only moves bytes and reports transport problems.

Every answer is read as a stream under two hard bounds, whatever the peer does: at most
``max_response`` bytes (a declared ``Content-Length`` over it is refused before reading; an
endless chunked body is cut at the cap) and one total ``deadline`` per request -- connect,
TLS handshake, headers and body together, enforced on every socket read and write (a peer that
trickles a byte per second is cut off when the deadline passes, not after one idle timeout per
byte). Both end in ``TransportError`` naming the bound. The small documents (identity,
credential activation, status) are capped at ``MAX_SMALL_RESPONSE``: a verifier that enrols
or probes many nodes at once holds at most that much per request, whatever a peer streams.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx
import orjson

from attest.errors import TransportError
from attest.evidence import b64, unb64
from attest.model import PcrSelection

MAX_RESPONSE = 16 << 20  # evidence (firmware and runtime logs) and the audit log
MAX_SMALL_RESPONSE = 1 << 20  # identity (EK certificates), activation, status: a few KiB
DETAIL_CHARS = 200  # of a peer's error answer, in our message (printable characters only)

# The monotonic time by which the request in progress on this thread must be done.
_DEADLINE: ContextVar[float | None] = ContextVar("attest_client_deadline", default=None)


def _until_deadline(timeout: float | None) -> float | None:
    """The time one socket operation may take: its own timeout, cut to what is left."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _until_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _until_deadline(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, _until_deadline(timeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _until_deadline(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _until_deadline(timeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport over the deadline backend. httpx has no public hook for a network
    backend: the connection pool it builds is replaced by one that has ours."""

    def __init__(self, *, verify: Any, uds: str | None) -> None:
        context = _system_ca_context() if verify is True else httpx.create_ssl_context(verify)
        super().__init__(verify=context, uds=uds)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context, uds=uds, network_backend=_DeadlineBackend()
        )


@functools.cache
def _system_ca_context() -> ssl.SSLContext:
    """The TLS context of the clients that trust the system's CAs (``verify=True``), made once
    per process and shared (an ``SSLContext`` serves many connections). Each one loads the CA
    store (~32 ms, ~850 KiB), and outlives its client in httpx's reference cycle of a response
    and its stream until the collector frees it."""
    return httpx.create_ssl_context(True)


def _over_the_cap(where: str, cap: int) -> TransportError:
    return TransportError(f"{where}: response over the limit of {cap} bytes: refused")


def _printable(text: str) -> str:
    """A peer's text, safe to print on a terminal or log line: no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:DETAIL_CHARS])


class NodeClient:
    """One node's API. ``uds`` talks over the operator Unix socket instead of TCP;
    ``cert`` (certificate, key) presents a client certificate for the mutual-TLS listener; it
    is loaded into ``verify`` when that is an SSLContext (pass a context of its own).
    ``timeout`` bounds each socket operation, ``deadline`` (default 3 × ``timeout``) a whole
    request, ``max_response`` the bytes of an answer."""

    def __init__(
        self,
        base_url: str,
        *,
        uds: str | None = None,
        verify: Any = True,
        cert: tuple[str, str] | None = None,
        timeout: float = 10.0,
        deadline: float | None = None,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        if cert is not None:
            # A client certificate for the mutual-TLS listener goes into the SSL context.
            if isinstance(verify, ssl.SSLContext):
                context = verify
            elif isinstance(verify, str):
                context = ssl.create_default_context(cafile=verify)
            else:
                context = ssl.create_default_context()
            context.load_cert_chain(cert[0], cert[1])
            verify = context
        self.base_url = base_url.rstrip("/")
        self.deadline = 3 * timeout if deadline is None else deadline
        self.max_response = max_response
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=_DeadlineTransport(verify=verify, uds=uds),
            headers={"Accept-Encoding": "identity"},  # no decompression bombs: bytes as sent
        )
        self.peer_binding: bytes | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, small: bool = False, **kw: Any) -> Any:
        """One request; the answer's JSON. ``small``: a small document (``MAX_SMALL_RESPONSE``)."""
        where = f"{self.base_url}{path}"
        cap = min(self.max_response, MAX_SMALL_RESPONSE) if small else self.max_response
        status, body = self._exchange(method, path, cap, self.deadline, **kw)
        if status != 200:
            try:
                doc = orjson.loads(body)
                detail = doc.get("detail") if isinstance(doc, dict) else doc
            except ValueError:
                detail = body.decode("utf-8", "replace")
            raise TransportError(f"{where}: HTTP {status}: {_printable(str(detail))}")
        try:  # as the fleet's poller reads it (attest.verifier.fleet.http): strict UTF-8 JSON,
            # no NaN or Infinity, no lone surrogate, nesting bounded (1,024)
            return orjson.loads(body)
        except ValueError:
            raise TransportError(f"{path}: the answer is not JSON") from None

    def _exchange(
        self, method: str, path: str, cap: int, deadline: float, **kw: Any
    ) -> tuple[int, bytes]:
        """One request under ``deadline`` seconds in all; the answer's status and body (at
        most ``cap`` bytes)."""
        where = f"{self.base_url}{path}"
        token = _DEADLINE.set(time.monotonic() + deadline)
        try:
            with self._http.stream(method, path, **kw) as r:
                self._note_peer(r)
                return r.status_code, self._read(r, where, cap)
        except httpx.TimeoutException:
            raise TransportError(
                f"{where}: no complete answer within the deadline of {deadline:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{where}: {_printable(str(exc))}") from None
        finally:
            _DEADLINE.reset(token)

    def _read(self, r: httpx.Response, where: str, cap: int) -> bytes:
        """The body, at most ``cap`` bytes, as sent (no content decoding)."""
        if r.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise TransportError(f"{where}: the answer is content-encoded: refused")
        declared = r.headers.get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > cap):
            raise _over_the_cap(where, cap)
        out = bytearray()
        for chunk in r.iter_raw():
            if len(out) + len(chunk) > cap:
                # Made here, held by no local: an exception in a local of the frame it is
                # raised from is a reference cycle (its traceback holds the frame), which kept
                # this frame's body -- up to the cap -- alive until a garbage collection.
                raise _over_the_cap(where, cap)
            out += chunk
        return bytes(out)

    def _note_peer(self, r: httpx.Response) -> None:
        """Remember the binding (sha256 of SPKI) of the TLS key we actually talked to."""
        stream = r.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(True)  # positional: the low-level _SSLSocket takes no kw
        if der:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            spki = (
                x509.load_der_x509_certificate(der)
                .public_key()
                .public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            self.peer_binding = hashlib.sha256(spki).digest()

    def identity(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/identity", small=True)
        return doc

    def evidence(
        self,
        nonce: bytes,
        selection: PcrSelection,
        *,
        firmware_from: int | None = None,
        runtime_from: int | None = None,
    ) -> dict[str, Any]:
        logs: dict[str, dict[str, int]] = {}
        if firmware_from is not None:
            logs["firmware"] = {"start": firmware_from}
        if runtime_from is not None:
            logs["runtime"] = {"start": runtime_from}
        body = {
            "nonce": nonce.hex(),
            "pcrs": {alg.bank_name: list(idx) for alg, idx in selection.banks},
            "logs": logs,
        }
        doc: dict[str, Any] = self._request("POST", "/v1/evidence", json=body)
        return doc

    def activate(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        doc = self._request(
            "POST",
            "/v1/enroll/activate",
            json={"id_object": b64(id_object), "encrypted_secret": b64(encrypted_secret)},
            small=True,
        )
        return unb64(doc.get("secret"), "secret", limit=64)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/status", small=True)
        return doc

    def audit(self, start: int = 0) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/audit", params={"start": start})
        return doc

    def upload(
        self,
        path: str,
        chunks: Iterable[bytes],
        *,
        length: int,
        media_type: str,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """POST ``length`` bytes streamed from ``chunks`` (an upgrade or registry push); the
        answer's status and JSON, whatever the status (the node's decision or its refusal in
        the error shape). ``timeout`` bounds the whole request (default: the deadline)."""
        where = f"{self.base_url}{path}"
        headers = {"content-type": media_type, "content-length": str(length)}
        status, body = self._exchange(
            "POST",
            path,
            MAX_SMALL_RESPONSE,
            timeout or self.deadline,
            content=chunks,
            headers=headers,
            params=params,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        try:
            return status, httpx.Response(status, content=body).json()
        except (ValueError, RecursionError):
            raise TransportError(
                f"{where}: HTTP {status}, the answer is not JSON: "
                f"{_printable(body.decode('utf-8', 'replace'))}"
            ) from None

    def ready(self) -> bool:
        token = _DEADLINE.set(time.monotonic() + self.deadline)
        try:
            with self._http.stream("GET", "/readyz") as r:  # the status is enough: no body
                return r.status_code == 200
        except httpx.HTTPError:
            return False
        finally:
            _DEADLINE.reset(token)
