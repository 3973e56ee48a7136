"""The attest error tree.

One tree, carrying fields, knowing nothing of HTTP or exit codes. The shells map these to
status codes (``attest.node.api.errors``) and to exit codes (``attest.cli``).

Calling steps out of order is a programming error (``RuntimeError``), not an ``AttestError``.
"""

from __future__ import annotations

from collections.abc import Iterable


class AttestError(Exception):
    """Root of every error attest raises on purpose."""


# --- evidence that cannot even be read -------------------------------------------------------


class EvidenceFormatError(AttestError):
    """Bytes or documents that do not parse. Raised for hostile or truncated input."""


class QuoteFormatError(EvidenceFormatError):
    """A TPMS_ATTEST, TPMT_SIGNATURE, TPM2B_PUBLIC or PCR file that does not parse."""


class EventLogFormatError(EvidenceFormatError):
    """A firmware event log, CEL or IMA log that does not parse."""


class ManifestFormatError(EvidenceFormatError):
    """A trust root, registry snapshot or other signed document that does not parse."""


class CorimFormatError(ManifestFormatError):
    """A CoRIM or CoMID (draft-ietf-rats-corim) that does not parse, exceeds a bound, or holds
    no reference value attest can use (attest.manifest.corim_parse)."""


class CertificateFormatError(EvidenceFormatError):
    """Bytes that are not an X.509 certificate, even read as tolerantly as vendors require
    (attest.ekcert)."""


class CmwFormatError(EvidenceFormatError):
    """Bytes that are not a RATS Conceptual Messages Wrapper (CMW, RFC 9999) attest reads, or a
    CMW that does not carry attest's evidence (attest.cmw)."""


# --- evidence that parses but does not verify ------------------------------------------------


class VerificationError(AttestError):
    """Evidence that parsed but failed a check. ``check`` names the failed check."""

    check: str = "verification"


class SignatureError(VerificationError):
    check = "signature"


class AttestationTypeError(VerificationError):
    """Not TPM-generated, or not the expected structure type (e.g. not a quote)."""

    check = "attest-type"


class NonceError(VerificationError):
    check = "nonce"


class EarTimeError(VerificationError):
    """An attestation result (EAR) past its ``exp``, or issued in the future."""

    check = "ear-time"


class PcrSelectionError(VerificationError):
    check = "pcr-selection"


class PcrDigestError(VerificationError):
    check = "pcr-digest"


class ClockError(VerificationError):
    """clockInfo not safe, or counters / clock went backwards against the previous quote."""

    check = "clock"


class KeyPolicyError(VerificationError):
    """A key is of a type, size, scheme or with attributes that policy does not allow."""

    check = "key-policy"


class CertificateError(VerificationError):
    """An EK (or other) certificate chain does not validate. ``reason`` names the failed
    check (``signature``, ``validity``, ``ca-constraints``, ``no-path``, ...; attest.ekcert)."""

    check = "certificate"

    def __init__(self, message: str, *, reason: str = "certificate") -> None:
        super().__init__(message)
        self.reason = reason


class RuntimePcrError(VerificationError):
    """The node claims a runtime PCR other than the verifier's rules name (enrollment)."""

    check = "runtime-pcr"


class CredentialError(VerificationError):
    """Credential activation did not prove the AK and EK live in the same TPM."""

    check = "credential-activation"


class ReplayError(VerificationError):
    """An event log does not replay into the quoted PCR values."""

    check = "replay"

    def __init__(self, message: str, *, invalid_pcrs: Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(message)
        self.invalid_pcrs: tuple[tuple[str, int], ...] = tuple(invalid_pcrs)


class AuditChainError(VerificationError):
    """The audit log's hash chain is broken, or it does not match its anchors in the runtime
    log (an entry was edited, deleted, inserted or the tail truncated)."""

    check = "audit-chain"


class ThresholdError(VerificationError):
    check = "threshold"

    def __init__(self, message: str, *, signed: int, threshold: int) -> None:
        super().__init__(message)
        self.signed = signed
        self.threshold = threshold


class RollbackError(VerificationError):
    check = "rollback"

    def __init__(self, message: str, *, trusted: int, got: int) -> None:
        super().__init__(message)
        self.trusted = trusted
        self.got = got


class FreezeError(VerificationError):
    """Same sequence but different bytes, or other signs of a frozen / forked feed."""

    check = "freeze"


class ExpiredError(FreezeError):
    check = "expired"


class NotBlessedError(VerificationError):
    check = "not-blessed"


# --- decisions -------------------------------------------------------------------------------


class UpgradeRefused(AttestError):
    """The upgrade gate refused an image. ``reason`` is a stable reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryRefused(UpgradeRefused):
    """A registry snapshot pushed to a node without an image was refused by the trust refresh
    (``reason``: the gate's code, e.g. ``snapshot-rollback``) or before it ran
    (``upload-too-large``, ``upload-timeout``, ``snapshot-malformed``)."""


# --- adapters --------------------------------------------------------------------------------


class TpmError(AttestError):
    """A TPM operation failed. ``rc`` is the TSS2 response code (0 when there is none)."""

    def __init__(self, message: str, *, rc: int = 0) -> None:
        super().__init__(message)
        self.rc = rc


class TransportError(AttestError):
    """A network or IPC peer could not be reached or answered nonsense."""


class BrokerUnavailable(TransportError):
    """The node's TPM broker (``attestd-tpm``) cannot be reached: not running, not yet started,
    or not answering. The node is not ready; the request may succeed later."""


class DatabaseUnavailable(TransportError):  # noqa: N818 - a state, as ConnectionRefused
    """The fleet's database cannot be reached (stopped, restarting, network lost); the fleet
    is not ready and the request may succeed later (verifier.fleet.pgconn)."""

    check = "database"


class ReadBudgetSpent(TransportError):
    """An answer the fleet's poller refused while reading it: the budget shared by all answers
    being read was held by others (verifier.fleet.http). Not the node's failure: it is polled
    again shortly, its failure count unchanged."""


class OperationNotAllowed(TransportError):
    """A well-formed request that this channel may not make (e.g. ``audit_record`` on the
    API socket of the broker, or a runtime event kind outside the allow-list)."""


class SocketInUse(TransportError):
    """Another running process holds the lock of a socket this daemon would bind (a second
    ``attestd`` or ``attestd-tpm`` with the same configuration): it is not replaced."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ConfigError(AttestError):
    """A configuration value is missing or invalid. ``key`` names it."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


# --- specialisations, each raised by one module (named in its docstring) -------------------


class PayloadError(EventLogFormatError):
    """An event's data does not decode as the structure its type announces (eventlog.uefi)."""


class UkiFormatError(EvidenceFormatError):
    """Bytes that are not a PE image, or not a unified kernel image (attest.uki)."""


class VerityFormatError(EvidenceFormatError):
    """A device-mapper verity table or status line that does not parse (verity.devices)."""


class UnbootableError(AttestError):
    """No slot verifies: the node cannot boot (node.upgrade.slots; must never happen)."""


class Overloaded(TpmError):
    """More challenges wait than attestd will hold; try again shortly (node.api.batcher)."""


class WebhookSignatureError(VerificationError):
    """A webhook whose signature or timestamp does not verify (verifier.fleet.webhooks)."""

    check = "webhook-signature"


class EnrollmentPolicyError(VerificationError):
    """Enrollment refused by the fleet's policy before the node was asked anything."""

    check = "ek-roots"


class LayerRefused(VerificationError):
    """A pair's layer refused: ``check`` is the layer's failed check, the message names it."""

    def __init__(self, layer: str, url: str, exc: VerificationError) -> None:
        super().__init__(f"{layer} layer ({url}): {exc}")
        self.check = exc.check
        self.layer = layer


class LayerUnreachable(TransportError):
    """A pair's layer did not answer: the message names the layer and its URL."""

    def __init__(self, layer: str, url: str, exc: TransportError) -> None:
        super().__init__(f"{layer} layer ({url}): {exc}")
        self.layer = layer


class RegistrationRefused(AttestError):
    """A node id or URL the fleet does not accept (verifier.fleet.admission); ``check`` names it."""

    check = "registration"


class NodeIdRefused(RegistrationRefused):
    """A node id outside the fleet's id rule."""

    check = "node-id"


class NodeUrlRefused(RegistrationRefused):
    """A node URL that is not an http(s) origin, or outside --allow-nodes."""

    check = "node-url"


class SnpFormatError(EvidenceFormatError):
    """An SEV-SNP attestation report, AMD certificate, CRL or certificate table that does not
    parse (attest.snp)."""


class SnpCheckError(VerificationError):
    """An SEV-SNP report that parsed but failed a check (attest.snp); ``check`` names it
    (one of ``attest.snp.findings.SnpCheck``)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


class SnpGuestError(AttestError):
    """The guest's kernel interface did not give an SEV-SNP report (attest.node.snp_guest):
    no ``/dev/sev-guest`` or configfs-TSM provider, a firmware or VMM error, a configfs-TSM
    request that raced another writer, an answer out of bounds."""


class NodeIdTaken(RegistrationRefused):
    """A registration under a node id that is already enrolled, without an explicit
    re-enrollment (verifier.fleet.store): the fleet never replaces an AK silently."""

    check = "node-id-taken"

    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(message)
        self.node_id = node_id


class StorageError(AttestError):
    """A write to the node's state file system failed (no space left, an I/O error); nothing
    was recorded, both logs are as before (node.logs.runtime, node.logs.audit)."""


class SnpHostError(AttestError):
    """The host's AMD-SP did not name its chip (attest.node.snp_host): no ``/dev/sev``, a
    firmware error, an id of an unexpected length or all zero; or this boot's runtime log
    already records another chip (attestd-tpm ``--snp-host`` then refuses to start)."""


class NoTpmError(AttestError):
    """This node has no TPM (an SEV-SNP guest attested by its report alone: attestd-tpm
    ``--no-tpm``, attestd ``[snp] only``); the operation needs one."""
