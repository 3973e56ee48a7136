"""Enrolling fleet nodes (an adapter): the same code path as ``attest verify``'s first contact
(``attest.verifier.contact.enroll``: the EK certificate chain to the configured roots, the AK's
attributes, TPM2 credential activation over an authenticated channel), under the fleet's
``EnrollPolicy``, which fails closed:

- with EK roots (``--ek-roots``; none given: the vendor EK CA store bundled with attest,
  ``attest.verifier.ek_roots.verifier_ek_roots``; ``describe()`` names which): the EK
  certificate must chain to them and match the EK, and the AK is proven to live beside that EK
  by credential activation -- over the node's mutual-TLS listener (the service's
  ``--client-cert``/``--client-key``) or, for ``attest fleet add`` run on the node, its
  operator socket. Roots without such a channel are a configuration error unless trust on
  first use of the AK is explicitly allowed (``tofu``);
- without EK roots (``tofu`` and no ``--ek-roots``: the EK certificate is not checked, as
  before the store shipped): refused, unless ``tofu`` (trust on first use, said in the enrollment:
  ``ek_certificate`` is null and ``activated`` false when there was no channel).

A pair (``attest.verifier.fleet.pairs``) enrolls each layer under its own policy (the host's TPM
vendor roots, the guest's vTPM CA). A pair whose guest has **no vTPM** (``guest_vtpm=False``: an
SEV-SNP guest appraised by its report alone; docs/fleet.md, "Host + guest pairs") enrolls the
host only: the guest has no TPM, nothing of it is enrolled, and its SEV-SNP report, tied to the
host by the chip the host records, is its identity at every poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from attest.appraisal.layers import GUEST, HOST
from attest.appraisal.rules import DEFAULT_RULES
from attest.ekcert.parse import ParsedCertificate
from attest.enroll import Enrollment
from attest.errors import (
    CertificateError,
    ConfigError,
    CredentialError,
    EnrollmentPolicyError,
    LayerRefused,
    LayerUnreachable,
    TransportError,
    VerificationError,
)
from attest.verifier.contact import enroll, open_channels
from attest.verifier.ek_roots import verifier_ek_roots
from attest.verifier.fleet.enrolled import PairEnrollment

logger = logging.getLogger(__name__)

MAX_GUEST_ID = 128  # characters of a guest id (a vtpm event's guest_id, the API's guest_id)


@dataclass(frozen=True, slots=True)
class EnrollPolicy:
    ek_roots: tuple[ParsedCertificate | x509.Certificate, ...] = ()
    ek_intermediates: tuple[ParsedCertificate | x509.Certificate, ...] = ()
    tofu: bool = False  # trust an AK on first use (no EK chain, or no credential activation)
    tls_ca: str | None = None  # CA of the nodes' TLS certificates (https URLs)
    client_cert: tuple[str, str] | None = None  # (certificate, key) for the mTLS listener
    operator_socket: str | None = None  # the node's operator socket (fleet add on the node)
    ek_source: str = ""  # which EK CAs: the bundled store and its count, or the paths given

    @classmethod
    def from_paths(
        cls,
        ek_roots: list[str] | None,
        *,
        tofu: bool = False,
        tls_ca: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        operator_socket: str | None = None,
        key: str = "--ek-roots",
    ) -> EnrollPolicy:
        if bool(client_cert) != bool(client_key):
            raise ConfigError("give --client-cert and --client-key together", key="--client-key")
        # No --ek-roots: the bundled vendor store, unless --tofu (then, as before, the EK
        # certificate is not checked); --ek-roots replaces the store ("bundled" among them: adds).
        ek = verifier_ek_roots(ek_roots or []) if ek_roots or not tofu else None
        if ek_roots and ek is not None and not ek.roots:
            raise ConfigError("no self-signed root certificate among the EK CAs given", key=key)
        return cls(
            tuple(ek.roots) if ek else (),
            tuple(ek.intermediates) if ek else (),
            tofu,
            tls_ca,
            (client_cert, client_key) if client_cert and client_key else None,
            operator_socket,
            ek.source if ek else "",
        ).validate(key=key)

    @property
    def can_activate(self) -> bool:
        return self.client_cert is not None or self.operator_socket is not None

    def validate(self, *, key: str = "--ek-roots") -> EnrollPolicy:
        """Fail at start-up, not at the first registration."""
        if not self.ek_roots and not self.tofu:
            raise ConfigError(
                "enrollment fails closed: give the TPM vendors' EK roots "
                "(--ek-roots PEM|DIR), or allow trust on first use (--tofu)",
                key=key,
            )
        if self.ek_roots and not self.can_activate and not self.tofu:
            raise ConfigError(
                "EK roots need credential activation over an authenticated "
                "channel to bind the AK to the EK: --client-cert/--client-key "
                "(the nodes' mutual-TLS listener; `attest fleet add` run on the node may use "
                "--operator-socket instead); or --tofu to trust the AK without it",
                key=key,
            )
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "ek_roots": [c.subject.rfc4514_string() for c in self.ek_roots],
            "ek_store": self.ek_source or None,
            "ek_intermediates": len(self.ek_intermediates),
            "tofu": self.tofu,
            "activation": "operator-socket"
            if self.operator_socket
            else "mutual-tls"
            if self.client_cert
            else None,
        }


def enroll_node(
    url: str,
    policy: EnrollPolicy,
    *,
    now: datetime,
    activation_url: str | None = None,
    runtime_pcr: int = DEFAULT_RULES.runtime_pcr,
) -> Enrollment:
    """Enroll the node at ``url`` under ``policy``: the enrollment, or raise
    (``VerificationError`` naming the check: ``ek-roots``, ``certificate``, ``key-policy``,
    ``credential-activation``, ``runtime-pcr`` when the node claims another runtime PCR than
    the verifier's rules; ``TransportError`` when the node does not answer)."""
    if not policy.ek_roots and not policy.tofu:
        raise EnrollmentPolicyError(
            "this service has no EK roots (--ek-roots) and trust on "
            "first use is off (--tofu): enrollment fails closed"
        )
    if policy.ek_roots and not policy.can_activate and not policy.tofu:
        raise CredentialError(
            "no authenticated channel for credential activation "
            "(--client-cert/--client-key): enrollment fails closed"
        )
    with open_channels(
        url,
        tls_ca=policy.tls_ca,
        operator_socket=policy.operator_socket,
        client_cert=policy.client_cert,
        activation_url=activation_url,
    ) as (client, activator):
        try:
            e = enroll(
                client,
                now=now,
                ek_roots=policy.ek_roots,
                ek_intermediates=policy.ek_intermediates,
                activator=activator,
                runtime_pcr=runtime_pcr,
            )
        except CertificateError as exc:
            if not policy.ek_source:
                raise
            # Name the store the chain was checked against (the bundled one, or --ek-roots).
            raise CertificateError(
                f"{exc} (EK roots: {policy.ek_source})", reason=exc.reason
            ) from None
    logger.info(
        "node enrolled",
        extra={
            "url": url,
            "node_id": e.node_id,
            "ek_certificate": e.ek_certificate,
            "activated": e.activated,
            "strength": e.strength.value,
        },
    )
    return e


def with_roots(policy: EnrollPolicy, roots: list[str] | None, *, key: str) -> EnrollPolicy:
    """``policy`` with other EK CAs (a pair's host layer), or the same without them."""
    if not roots:
        return policy
    ek = verifier_ek_roots(roots)
    if not ek.roots:
        raise ConfigError("no self-signed root certificate among the EK CAs given", key=key)
    return replace(
        policy,
        ek_roots=tuple(ek.roots),
        ek_intermediates=tuple(ek.intermediates),
        ek_source=ek.source,
    ).validate(key=key)


def _enroll_layer(
    layer: str,
    url: str,
    policy: EnrollPolicy,
    *,
    now: datetime,
    activation_url: str | None,
    runtime_pcr: int,
) -> Enrollment:
    """One layer of a pair enrolled as one node; a refusal or silence names the layer."""
    try:
        return enroll_node(
            url, policy, now=now, activation_url=activation_url, runtime_pcr=runtime_pcr
        )
    except VerificationError as exc:
        raise LayerRefused(layer, url, exc) from None
    except TransportError as exc:
        raise LayerUnreachable(layer, url, exc) from None


def enroll_pair(
    guest_url: str,
    host_url: str,
    *,
    policy: EnrollPolicy,
    host_policy: EnrollPolicy,
    now: datetime,
    guest_id: str | None = None,
    activation_url: str | None = None,
    host_activation_url: str | None = None,
    runtime_pcr: int = DEFAULT_RULES.runtime_pcr,
    guest_vtpm: bool = True,
) -> PairEnrollment:
    """Enroll the host, then the guest, each as one node under its own policy; a refusal names
    the layer (``LayerRefused``, its ``check`` the layer's). ``guest_vtpm=False``: the guest
    has no vTPM -- only the host is enrolled (``snp_only_pair``)."""
    if not guest_vtpm:
        return snp_only_pair(
            guest_url,
            host_url,
            host_policy=host_policy,
            now=now,
            guest_id=guest_id,
            host_activation_url=host_activation_url,
            runtime_pcr=runtime_pcr,
        )
    layers: dict[str, Enrollment] = {}
    for layer, url, pol, act in (
        (HOST, host_url, host_policy, host_activation_url),
        (GUEST, guest_url, policy, activation_url),
    ):
        layers[layer] = _enroll_layer(
            layer, url, pol, now=now, activation_url=act, runtime_pcr=runtime_pcr
        )
    guest = layers[GUEST]
    if guest.ek_sha256 is None:
        raise LayerRefused(
            GUEST,
            guest_url,
            CertificateError("the guest presents no EK: no host can vouch for its vTPM"),
        )
    return PairEnrollment(layers[HOST], guest, guest_id or guest.node_id)


def snp_only_pair(
    guest_url: str,
    host_url: str,
    *,
    host_policy: EnrollPolicy,
    now: datetime,
    guest_id: str | None = None,
    host_activation_url: str | None = None,
    runtime_pcr: int = DEFAULT_RULES.runtime_pcr,
) -> PairEnrollment:
    """A pair whose guest has no vTPM: the host enrolled under ``host_policy``; the guest's id
    is ``guest_id``, else the ``node_id`` its ``GET /v1/identity`` claims (a guest that does
    not answer with one: ``LayerUnreachable`` naming the guest layer). Nothing of the guest is
    trusted here: its SEV-SNP report is appraised at every poll."""
    host = _enroll_layer(
        HOST,
        host_url,
        host_policy,
        now=now,
        activation_url=host_activation_url,
        runtime_pcr=runtime_pcr,
    )
    if guest_id is None:
        try:
            guest_id = _claimed_node_id(guest_url, tls_ca=host_policy.tls_ca)
        except TransportError as exc:
            raise LayerUnreachable(GUEST, guest_url, exc) from None
    logger.info(
        "pair enrolled (guest without a vTPM)",
        extra={"url": guest_url, "host_url": host_url, "guest_id": guest_id},
    )
    return PairEnrollment(host, None, guest_id)


def _claimed_node_id(url: str, *, tls_ca: str | None) -> str:
    """The ``node_id`` of the node's ``GET /v1/identity`` (a small answer, bounded by the
    client); ``TransportError`` when it names none."""
    with open_channels(url, tls_ca=tls_ca) as (client, _):
        ident = client.identity()
    node_id = ident.get("node_id") if isinstance(ident, dict) else None
    if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_GUEST_ID:
        raise TransportError("its identity names no node id (node_id: a string, 1..128)")
    return node_id


@dataclass(frozen=True, slots=True)
class Registration:
    """A request to register a node (``POST /v1/nodes``, ``attest fleet add``)."""

    url: str  # the node's API; a pair's guest
    host_url: str | None = None  # a pair: the host's API
    guest_id: str | None = None  # a pair: the guest's id on the host (default: its node id)
    activation_url: str | None = None  # the mutual-TLS listener, when not ``url``
    host_activation_url: str | None = None
    guest_vtpm: bool = True  # a pair: False -- the guest has no vTPM (SEV-SNP report alone)


class Enroller:
    """Enrolls what a ``Registration`` names under the service's policies."""

    def __init__(
        self,
        policy: EnrollPolicy,
        *,
        host_policy: EnrollPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        runtime_pcr: int = DEFAULT_RULES.runtime_pcr,
    ) -> None:
        """``runtime_pcr``: the verifier's rules' (``VerifierRules.runtime_pcr``); a node
        claiming another is refused."""
        self.policy = policy
        self.host_policy = host_policy or policy
        self.clock = clock
        self.runtime_pcr = runtime_pcr

    def __call__(self, reg: Registration) -> Enrollment | PairEnrollment:
        now = self.clock()
        if reg.host_url is None:
            return enroll_node(
                reg.url,
                self.policy,
                now=now,
                activation_url=reg.activation_url,
                runtime_pcr=self.runtime_pcr,
            )
        return enroll_pair(
            reg.url,
            reg.host_url,
            policy=self.policy,
            host_policy=self.host_policy,
            now=now,
            guest_id=reg.guest_id,
            activation_url=reg.activation_url,
            host_activation_url=reg.host_activation_url,
            runtime_pcr=self.runtime_pcr,
            guest_vtpm=reg.guest_vtpm,
        )
