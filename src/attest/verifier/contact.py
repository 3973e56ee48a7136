"""One contact of the verifier with a node over its API (an adapter: it moves documents between
the ``NodeClient`` and the pure checks in ``attest.enroll`` and ``attest.appraisal``).

- ``open_channels``: the clients of one contact (the API; the operator socket or the mutual-TLS
  listener for credential activation and the audit log).
- ``enroll``: trust in the AK -- EK certificate chain (when CA roots are configured), AK
  attributes, and TPM2 credential activation proving the AK lives in the TPM that owns the EK.
- ``gather``: one fresh challenge's raw material (``Evidence``) for ``attest.appraisal.appraise``
  / ``appraise_incremental``, which decide trust -- the one path of ``attest verify``, the fleet,
  ``attest demo`` and the harnesses; ``appraise_evidence`` hands a gathered ``Evidence`` to
  ``appraise_incremental`` as all of them but the fleet (which keeps a memory per node) do.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from attest.appraisal import Appraised, appraise_incremental
from attest.appraisal.memory import Continuity, NodeMemory
from attest.appraisal.rules import APPRAISAL_PCRS, DEFAULT_RULES, VerifierRules
from attest.ekcert.parse import ParsedCertificate
from attest.enroll import (
    Enrollment,
    ek_matches_certificate,
    finish_enrollment,
    start_enrollment,
    verify_ak_attributes,
    verify_ek_certificate,
)
from attest.errors import CertificateError, CredentialError, RuntimePcrError, TransportError
from attest.evidence import ek_public_of, required_ak_public, unb64
from attest.manifest import VerifiedRegistry
from attest.model import HashAlg, PcrSelection
from attest.tpmstruct import ClockInfo, Public, parse_public
from attest.verifier.client import NodeClient
from attest.verifier.ek_roots import load_ek_cas_store

__all__ = [
    "Enrollment",
    "Evidence",
    "appraise_evidence",
    "enroll",
    "gather",
    "load_ek_cas",
    "open_channels",
    "selection_for",
]


def _identity_parts(doc: dict[str, Any]) -> tuple[Public, Public | None, dict[int, bytes]]:
    ak = parse_public(required_ak_public(doc))
    ek_public = ek_public_of(doc, strict=True)
    ek = None if ek_public is None else parse_public(ek_public)
    certs = {
        int(k, 16): unb64(v, "ek certificate", limit=8192)
        for k, v in (doc.get("ek_certificates") or {}).items()
    }
    return ak, ek, certs


def load_ek_cas(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[ParsedCertificate], list[ParsedCertificate]]:
    """EK certificate CAs from PEM or DER files or directories of them (``*.pem``, ``*.crt``,
    ``*.cer``, ``*.der``): (roots, intermediates) -- the self-issued ones are roots. A file that
    does not load is logged and skipped (``attest.verifier.ek_roots``). Used by ``attest
    verify --ek-ca`` and ``attest fleet --ek-roots``."""
    store = load_ek_cas_store(paths)
    return list(store.roots), list(store.intermediates)


@contextlib.contextmanager
def open_channels(
    url: str,
    *,
    tls_ca: str | None = None,
    operator_socket: str | None = None,
    client_cert: tuple[str, str] | None = None,
    activation_url: str | None = None,
    timeout: float = 10.0,
) -> Iterator[tuple[NodeClient, NodeClient | None]]:
    """The clients of one contact: the node's API at ``url`` (evidence, identity) and its
    authenticated channel for credential activation and the audit log, if any -- the operator
    socket, else the mutual-TLS listener (``activation_url``, attestd's ``api.mtls_port``, or
    ``url`` itself) with ``client_cert``. ``tls_ca`` verifies https URLs (default: the system's
    CAs); each client gets its own TLS context (a client certificate is loaded into it).
    ``timeout``: seconds per request."""

    def verify() -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=tls_ca) if tls_ca else True

    with contextlib.ExitStack() as stack:
        client = stack.enter_context(NodeClient(url, verify=verify(), timeout=timeout))
        channel: NodeClient | None = None
        if operator_socket:
            channel = stack.enter_context(
                NodeClient("http://operator", uds=operator_socket, timeout=timeout)
            )
        elif client_cert is not None:
            channel = stack.enter_context(
                NodeClient(
                    activation_url or url, verify=verify(), cert=client_cert, timeout=timeout
                )
            )
        yield client, channel


def enroll(
    client: NodeClient,
    *,
    now: datetime,
    ek_roots: Sequence[ParsedCertificate | x509.Certificate] = (),
    ek_intermediates: Sequence[ParsedCertificate | x509.Certificate] = (),
    activator: NodeClient | None = None,
    runtime_pcr: int = DEFAULT_RULES.runtime_pcr,
) -> Enrollment:
    """Enroll a node: returns the record to remember, or raises naming what failed.

    ``runtime_pcr`` is the verifier's (``VerifierRules.runtime_pcr``): the node's identity
    must claim exactly it, or enrollment is refused (``RuntimePcrError``) -- a relay must not
    move the runtime log to a PCR the verifier does not watch.

    ``activator`` is a client on an authenticated channel (mutual TLS or the operator
    socket) for credential activation; without it the AK is trusted on the EK certificate
    and attributes alone -- say so in the result (``activated`` is False).
    """
    ident = client.identity()
    ak, ek, certs = _identity_parts(ident)
    claim = ident.get("runtime_pcr")
    if type(claim) is not int or claim != runtime_pcr:
        raise RuntimePcrError(
            f"the node claims runtime PCR {str(claim)[:16]!r}; this verifier's rules use PCR "
            f"{runtime_pcr}"
        )
    verify_ak_attributes(ak)
    subject = None
    if ek_roots:
        if ek is None:
            raise CertificateError("EK roots are configured but the node presents no EK")
        if not certs:
            raise CertificateError("the node presents no EK certificate")
        verified = None
        problems = []
        for der in certs.values():
            try:
                v = verify_ek_certificate(
                    der, roots=ek_roots, intermediates=ek_intermediates, now=now
                )
                ek_matches_certificate(ek, v.certificate)
                verified = v
                break
            except CertificateError as exc:  # another of the node's EK certificates may fit
                problems.append(str(exc))
        if verified is None:
            raise CertificateError(
                "no EK certificate verifies and matches the EK: " + "; ".join(problems)
            )
        subject = (
            f"{verified.certificate.subject.rfc4514_string()} issued by "
            f"{verified.certificate.issuer.rfc4514_string()}"
        )
    activated = False
    if activator is not None:
        if ek is None:
            raise CredentialError("the node has no EK to activate a credential with")
        challenge, expected = start_enrollment(ek, ak)
        try:
            returned = activator.activate(challenge.id_object, challenge.encrypted_secret)
        except TransportError as exc:  # the activation channel refused: not an absent node
            raise CredentialError(f"credential activation failed: {exc}") from None
        finish_enrollment(expected, returned)
        activated = True
    return Enrollment(
        node_id=str(ident.get("node_id", "")),
        ak_public=ak.tpm2b(),
        ak_name=ak.name,
        ek_sha256=None if ek is None else hashlib.sha256(ek.raw).digest(),
        ek_certificate=subject,
        activated=activated,
        runtime_pcr=runtime_pcr,
        enrolled_at=now.isoformat(),
    )


# --- evidence gathering for ``attest.appraisal.appraise`` --------------------------------------


def selection_for(runtime_pcr: int, extra: PcrSelection | None = None) -> PcrSelection:
    """The selection of an appraisal: ``extra`` (default: sha256 0-9, 11, 12, 15) plus the
    verifier's runtime PCR (``VerifierRules.runtime_pcr``) in sha256."""
    sel = (extra or PcrSelection.of({HashAlg.SHA256: APPRAISAL_PCRS})).as_dict()
    sha256 = set(sel.get(HashAlg.SHA256, ()))
    sha256.add(runtime_pcr)
    return PcrSelection.of({**sel, HashAlg.SHA256: sorted(sha256)})


@dataclass(frozen=True, slots=True)
class Evidence:
    """One contact's raw material for ``appraise``: nothing here is verified yet."""

    doc: dict[str, Any]
    nonce: bytes
    selection: PcrSelection
    tls_binding: bytes | None
    identity: dict[str, Any] | None
    audit_entries: list[dict[str, Any]] | None


def gather(
    client: NodeClient,
    selection: PcrSelection,
    *,
    operator: NodeClient | None = None,
    identity: dict[str, Any] | None = None,
    nonce: bytes | None = None,
) -> Evidence:
    """Challenge the node with a fresh nonce (firmware and runtime logs from the start) and,
    with an operator channel, fetch its audit log. Raises ``TransportError``."""
    nonce = os.urandom(32) if nonce is None else nonce
    doc = client.evidence(nonce, selection, firmware_from=0, runtime_from=0)
    audit = None
    if operator is not None:
        entries = operator.audit(0).get("entries")
        audit = entries if isinstance(entries, list) else None
    return Evidence(doc, nonce, selection, client.peer_binding, identity, audit)


def appraise_evidence(
    ev: Evidence,
    *,
    enrollment: Enrollment,
    registry: VerifiedRegistry | None,
    platform_id: str | None,
    previous: ClockInfo | None,
    now: datetime,
    rules: VerifierRules = DEFAULT_RULES,
    continuity: Continuity | None = None,
) -> Appraised:
    """Appraise one contact's ``Evidence`` whole (no memory of earlier contacts): its
    document with the nonce, selection, TLS binding, identity and audit entries it was
    gathered with. ``appraise_incremental``'s rules: never raises for evidence problems."""
    return appraise_incremental(
        ev.doc,
        memory=NodeMemory(),
        enrollment=enrollment,
        nonce=ev.nonce,
        selection=ev.selection,
        registry=registry,
        platform_id=platform_id,
        previous=previous,
        tls_binding=ev.tls_binding,
        now=now,
        audit_entries=ev.audit_entries,
        identity=ev.identity,
        rules=rules,
        continuity=continuity,
    )
