"""Guest vTPMs created by the host, and the host's vouching for them (an adapter; broker side).

A node is a host on a hardware TPM running a guest VM on a virtual TPM (swtpm). A guest's quote
proves nothing about where it ran unless the host says "I created this vTPM for that guest":
``VtpmManager`` is how the host says it (docs/host-guest.md).

- ``create(guest_id)`` manufactures the guest's vTPM state (``attest.node.tpm.swtpm.manufacture``)
  in
  ``ROOT/guests/GUEST/state``, its EK certificate issued by the host's own vTPM CA in
  ``ROOT/ca``; reads the new vTPM's EK; remembers it in the *created set*
  (``ROOT/registry.json``, written atomically, mode 0600); and records the vouching.
- ``record(guest_id, ek_public)`` records a ``vtpm`` runtime event ``{guest_id, ek_sha256,
  ek_cert_sha256?}`` (``attest.runtime``) in the host's runtime log, so that the host's TPM
  quote vouches for it. Run it whenever the guest's vTPM is started: the runtime log starts
  afresh at every host boot. It is refused (``OperationNotAllowed``, a warning in the log, and
  a ``denied`` entry in the operator audit log when an audit log is given) when the EK is not
  the one this manager created for that guest, or when this boot's runtime log already vouches
  a *different* vTPM for the guest id. Recording the same vTPM again is a no-op.

The manager lives in ``attestd-tpm`` (``--vtpm-dir``), and its operations answer only on the
broker's operator socket: the created set is in the broker's own state directory, which the
API process cannot write, and ``vtpm`` events cannot be measured through ``measure`` on any
socket (``attest.node.broker.protocol.OPERATOR_MEASURE_KINDS``), so a compromised API process can
neither add an EK to the created set nor vouch for one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from attest.errors import AttestError, EvidenceFormatError, OperationNotAllowed
from attest.eventlog.cel import CelRecord
from attest.manifest.model import format_time
from attest.runtime import CONTENT_TYPE_PREFIX, KIND_VTPM, VtpmVouch, parse_content
from attest.storage.files import atomic_write_bytes, read_bytes
from attest.tpmstruct import Alg, Public, parse_public

logger = logging.getLogger(__name__)

REGISTRY_NAME = "registry.json"
REGISTRY_VERSION = 1
MAX_REGISTRY_BYTES = 4 * 1024 * 1024
MAX_GUESTS = 4096
# A guest id names a directory: no slash, no leading dot.
GUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
# TCG EK Credential Profile 2.0 §2.2.1.4: the low-range EK certificate NV indices.
EK_CERT_INDEX = {Alg.RSA: 0x01C00002, Alg.ECC: 0x01C0000A}

EkReader = Callable[[Path], tuple[Public, dict[int, bytes]]]
Manufacturer = Callable[[Path, Path], Path]  # (guest dir, CA dir) -> the TPM state directory


class VouchLog(Protocol):
    """What the manager needs of the host's runtime log
    (``attest.node.logs.runtime.RuntimeLog``)."""

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord: ...

    def records(self, start: int = 0) -> tuple[CelRecord, ...]: ...


class AuditSink(Protocol):
    def record(self, event: Mapping[str, Any]) -> object: ...


def ek_sha256(ek: Public) -> bytes:
    """The EK digest vouched for and compared: sha256 of the EK's TPMT_PUBLIC (as
    ``Enrollment.ek_sha256``)."""
    return hashlib.sha256(ek.raw).digest()


def ek_cert_sha256(ek: Public, certificates: Mapping[int, bytes]) -> bytes | None:
    """sha256 of the DER EK certificate of the EK's key type, when the TPM holds one."""
    der = certificates.get(EK_CERT_INDEX.get(ek.type, -1))
    return hashlib.sha256(der).digest() if der else None


def check_guest_id(guest_id: str) -> str:
    if not isinstance(guest_id, str) or not GUEST_ID.match(guest_id):
        raise OperationNotAllowed(
            "guest id must be 1-64 characters [A-Za-z0-9._@+-], not starting with . - + @"
        )
    return guest_id


@dataclass(frozen=True, slots=True)
class CreatedVtpm:
    """One vTPM this host created: a member of the created set."""

    guest_id: str
    ek_public: bytes  # TPMT_PUBLIC
    ek_sha256: bytes
    ek_cert_sha256: bytes | None
    state_dir: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "guest_id": self.guest_id,
            "ek_public": self.ek_public.hex(),
            "ek_sha256": self.ek_sha256.hex(),
            "ek_cert_sha256": None if self.ek_cert_sha256 is None else self.ek_cert_sha256.hex(),
            "state_dir": self.state_dir,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, doc: Any) -> CreatedVtpm:
        try:
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            ek = parse_public(bytes.fromhex(doc["ek_public"]), sized=False)
            out = cls(
                guest_id=check_guest_id(doc["guest_id"]),
                ek_public=ek.raw,
                ek_sha256=bytes.fromhex(doc["ek_sha256"]),
                ek_cert_sha256=None
                if doc["ek_cert_sha256"] is None
                else bytes.fromhex(doc["ek_cert_sha256"]),
                state_dir=str(doc["state_dir"]),
                created_at=str(doc["created_at"]),
            )
        except (KeyError, TypeError, ValueError, AttestError) as exc:
            raise EvidenceFormatError(f"vTPM registry entry: {exc}") from None
        if out.ek_sha256 != ek_sha256(ek):
            raise EvidenceFormatError(f"vTPM registry entry {out.guest_id}: EK digest mismatch")
        return out


def read_swtpm_ek(state_dir: Path) -> tuple[Public, dict[int, bytes]]:
    """The EK public area and EK certificates of the swtpm state in ``state_dir``: serves it on
    a loopback port for the moment it takes to read them."""
    from attest.node.tpm.esapi import EsapiTpm  # the only importer of tpm2_pytss; needed only here
    from attest.node.tpm.swtpm import SwtpmProcess

    with SwtpmProcess(state_dir) as sw:
        tpm = EsapiTpm(sw.tcti)
        try:
            return tpm.ek_public(), tpm.ek_certificates()
        finally:
            tpm.close()


def manufacture_swtpm(guest_dir: Path, ca_dir: Path) -> Path:
    from attest.node.tpm.swtpm import manufacture

    return manufacture(guest_dir, ca_dir=ca_dir).state_dir


class VtpmManager:
    """The host's guest vTPMs (see the module docstring). Thread-safe."""

    def __init__(
        self,
        root: str | Path,
        runtime: VouchLog,
        *,
        audit: AuditSink | None = None,
        manufacture: Manufacturer = manufacture_swtpm,
        read_ek: EkReader = read_swtpm_ek,
    ) -> None:
        self.root = Path(root)
        self.runtime = runtime
        self.audit = audit
        self._manufacture = manufacture
        self._read_ek = read_ek
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.load()  # a corrupt registry fails at start, not at the first request

    @property
    def registry_path(self) -> Path:
        return self.root / REGISTRY_NAME

    @property
    def ca_dir(self) -> Path:
        """The host's vTPM CA: guests' EK certificates chain to its root certificate."""
        return self.root / "ca"

    # --- the created set --------------------------------------------------------------------

    def load(self) -> dict[str, CreatedVtpm]:
        try:
            data = read_bytes(self.registry_path, max_size=MAX_REGISTRY_BYTES)
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(data)
        except ValueError:
            raise EvidenceFormatError(f"{self.registry_path} is not JSON") from None
        if (
            not isinstance(doc, dict)
            or doc.get("version") != REGISTRY_VERSION
            or not isinstance(doc.get("guests"), dict)
            or len(doc["guests"]) > MAX_GUESTS
        ):
            raise EvidenceFormatError(
                f"{self.registry_path}: not a version {REGISTRY_VERSION} vTPM registry"
            )
        out = {}
        for gid, entry in doc["guests"].items():
            vt = CreatedVtpm.from_json(entry)
            if vt.guest_id != gid:
                raise EvidenceFormatError(
                    f"{self.registry_path}: entry {gid[:64]!r} names another guest"
                )
            out[gid] = vt
        return out

    def _save(self, guests: Mapping[str, CreatedVtpm]) -> None:
        doc = {
            "version": REGISTRY_VERSION,
            "guests": {g: v.to_json() for g, v in sorted(guests.items())},
        }
        atomic_write_bytes(
            self.registry_path, json.dumps(doc, indent=1).encode() + b"\n", mode=0o600
        )

    def created(self) -> tuple[CreatedVtpm, ...]:
        with self._lock:
            return tuple(self.load().values())

    # --- operations -------------------------------------------------------------------------

    def _refuse(self, what: str, guest_id: str, reason: str, operator: str | None) -> None:
        logger.warning("vtpm %s for guest %s refused: %s", what, guest_id, reason)
        if self.audit is not None and operator is not None:
            try:
                self.audit.record(
                    {
                        "event": "command",
                        "user": operator,
                        "service": f"attest-vtpm-{what}",
                        "result": "denied",
                    }
                )
            except (AttestError, OSError) as exc:  # the refusal stands; say why it is unaudited
                logger.error("vtpm %s refusal not audited: %s", what, exc)
        raise OperationNotAllowed(f"vtpm {what} for guest {guest_id} refused: {reason}")

    def create(
        self, guest_id: str, *, operator: str | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        """Manufacture a vTPM for ``guest_id``, add it to the created set and vouch for it.
        A guest that already has a vTPM is refused (one vTPM per guest id)."""
        check_guest_id(guest_id)
        with self._lock:
            guests = self.load()
            if guest_id in guests:
                self._refuse(
                    "create",
                    guest_id,
                    f"it already has a vTPM (EK sha256 "
                    f"{guests[guest_id].ek_sha256.hex()}, created "
                    f"{guests[guest_id].created_at})",
                    operator,
                )
            guest_dir = self.root / "guests" / guest_id
            if guest_dir.exists():
                self._refuse(
                    "create",
                    guest_id,
                    f"{guest_dir} exists but is not in the created set; remove it by hand",
                    operator,
                )
            guest_dir.mkdir(parents=True, mode=0o700)
            self.ca_dir.mkdir(exist_ok=True, mode=0o700)
            try:
                state = self._manufacture(guest_dir, self.ca_dir)
                ek, certs = self._read_ek(state)
            except BaseException:
                shutil.rmtree(guest_dir, ignore_errors=True)  # nothing of it was remembered
                raise
            vt = CreatedVtpm(
                guest_id,
                ek.raw,
                ek_sha256(ek),
                ek_cert_sha256(ek, certs),
                str(state),
                format_time(now or datetime.now(UTC)),
            )
            self._save({**guests, guest_id: vt})
            logger.info(
                "vtpm created for guest %s: EK sha256 %s in %s", guest_id, vt.ek_sha256.hex(), state
            )
            return {**vt.to_json(), **self._vouch(vt)}

    def record(
        self, guest_id: str, ek_public: bytes, *, operator: str | None = None
    ) -> dict[str, Any]:
        """Vouch, in this boot's runtime log, for the vTPM whose EK public area (TPMT_PUBLIC
        or TPM2B_PUBLIC) is ``ek_public`` as guest ``guest_id``'s."""
        check_guest_id(guest_id)
        try:
            ek = parse_public(ek_public)
        except AttestError as exc:
            raise OperationNotAllowed(f"the EK public area does not parse: {exc}") from None
        digest = ek_sha256(ek)
        with self._lock:
            vt = self.load().get(guest_id)
            if vt is None:
                self._refuse(
                    "record",
                    guest_id,
                    f"this host created no vTPM for it (EK sha256 "
                    f"{digest.hex()} is not in the created set)",
                    operator,
                )
            elif vt.ek_sha256 != digest:
                self._refuse(
                    "record",
                    guest_id,
                    f"EK sha256 {digest.hex()} is not the vTPM this "
                    f"host created for it ({vt.ek_sha256.hex()})",
                    operator,
                )
            assert vt is not None
            return {**vt.to_json(), **self._vouch(vt, operator=operator)}

    def _vouch(self, vt: CreatedVtpm, *, operator: str | None = None) -> dict[str, Any]:
        """Measure the ``vtpm`` event unless this boot's log already holds it (lock held)."""
        for rec, ev in self._vouched():
            if ev.guest_id != vt.guest_id:
                continue
            if ev.ek_sha256 != vt.ek_sha256:
                self._refuse(
                    "record",
                    vt.guest_id,
                    f"this boot's runtime log already vouches "
                    f"another vTPM for it (EK sha256 {ev.ek_sha256.hex()}, runtime "
                    f"event {rec.recnum})",
                    operator,
                )
            return {"recnum": rec.recnum, "recorded": False}
        content: dict[str, Any] = {"guest_id": vt.guest_id, "ek_sha256": vt.ek_sha256.hex()}
        if vt.ek_cert_sha256 is not None:
            content["ek_cert_sha256"] = vt.ek_cert_sha256.hex()
        rec = self.runtime.measure(KIND_VTPM, content)
        logger.info(
            "vtpm of guest %s vouched in runtime event %d (EK sha256 %s)",
            vt.guest_id,
            rec.recnum,
            vt.ek_sha256.hex(),
        )
        return {"recnum": rec.recnum, "recorded": True}

    def _vouched(self) -> list[tuple[CelRecord, VtpmVouch]]:
        out = []
        for rec in self.runtime.records(0):
            if rec.content_type != CONTENT_TYPE_PREFIX + KIND_VTPM:
                continue
            detail = parse_content(KIND_VTPM, rec.content)
            assert isinstance(detail, VtpmVouch)
            out.append((rec, detail))
        return out
