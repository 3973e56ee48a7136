"""HTTP client of the attestd API (adapter). Verification is done by the pure core
(``attest.evidence``); this module only moves bytes and reports transport problems.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

import httpx

from attest.errors import TransportError
from attest.evidence import b64, unb64
from attest.model import PcrSelection

MAX_RESPONSE = 16 << 20


class NodeClient:
    """One node's API. ``uds`` talks over the operator Unix socket instead of TCP;
    ``cert`` (certificate, key) presents a client certificate for the mutual-TLS listener; it
    is loaded into ``verify`` when that is an SSLContext (pass a context of its own)."""

    def __init__(
        self,
        base_url: str,
        *,
        uds: str | None = None,
        verify: Any = True,
        cert: tuple[str, str] | None = None,
        timeout: float = 10.0,
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
        transport = httpx.HTTPTransport(uds=uds, verify=verify) if uds else None
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, verify=verify, transport=transport
        )
        self.peer_binding: bytes | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise TransportError(f"{self.base_url}{path}: {exc}") from None
        self._note_peer(r)
        if len(r.content) > MAX_RESPONSE:
            raise TransportError(f"{path}: response over {MAX_RESPONSE} bytes")
        if r.status_code != 200:
            try:
                body = r.json()
                detail = body.get("detail") if isinstance(body, dict) else body
            except ValueError:
                detail = r.text[:200]
            raise TransportError(f"{self.base_url}{path}: HTTP {r.status_code}: {detail}")
        try:
            return r.json()
        except ValueError:
            raise TransportError(f"{path}: the answer is not JSON") from None

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
        doc: dict[str, Any] = self._request("GET", "/v1/identity")
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
        )
        return unb64(doc.get("secret"), "secret", limit=64)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/status")
        return doc

    def audit(self, start: int = 0) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/audit", params={"start": start})
        return doc

    def ready(self) -> bool:
        try:
            r = self._http.get("/readyz")
        except httpx.HTTPError:
            return False
        return r.status_code == 200
