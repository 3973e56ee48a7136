"""The TPM adapter over tpm2-pytss (ESAPI). The ONLY module that imports ``tpm2_pytss``.

- TCTI from configuration: ``device:/dev/tpmrm0`` on nodes, ``swtpm:host=…,port=…`` in tests.
- The AK is a deterministic primary key under the endorsement hierarchy: re-creating it from
  the same template yields the same key, so it is created once per connection and kept loaded,
  never per request, and needs no owner authorisation to persist.
- No leaked handles: a swtpm TCTI has no resource manager, so every transient object and
  session this adapter creates is flushed, and stale transient objects are flushed on connect
  when the TCTI is not a resource manager (we own the TPM then).
- Every TSS error becomes ``TpmError`` with its response code. A dropped connection (TCTI
  error) is retried once on a fresh connection.
- A TPM that restarted between two commands (a swtpm restarted, a TPM Reset or Restart on
  hardware) has lost the AK and EK this adapter loaded: the TPM answers "not loaded"
  (TPM_RC_REFERENCE_H0.., TPM_RC_OBJECT_MEMORY). The command is retried once on a
  fresh connection, which re-creates the deterministic keys (the same AK). A TPM that wants
  TPM2_Startup (TPM_RC_INITIALIZE: powered on and nobody started it) is started with
  TPM_SU_CLEAR -- a TPM Reset, PCRs cleared -- and the command retried once. ``recoveries()``
  counts these recoveries, so that the runtime log can start afresh before the next quote.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HC,
    TPM2_NT,
    TPM2_RC,
    TPM2_SE,
    TPM2_SU,
    TPMA_NV,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMT_HA,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from attest.errors import OperationNotAllowed, TpmError
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.tpm.port import EK_CERT_INDICES, RawQuote
from attest.tpmstruct import Public, digest_of_values, parse_attest, parse_public

logger = logging.getLogger(__name__)

T = TypeVar("T")

AK_TEMPLATES = {
    "ecc256": "ecc256:ecdsa-sha256:null",
    "ecc384": "ecc384:ecdsa-sha384:null",
    "rsa2048": "rsa2048:rsassa-sha256:null",
    "rsa2048-pss": "rsa2048:rsapss-sha256:null",
}
AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
)
_TCTI_LAYER = 0x000A0000  # TSS2_TCTI_RC_LAYER: the connection, not the TPM, failed
# TSS2_ESYS_RC_BAD_SEQUENCE: the ESAPI context still waits for the answer to a command whose
# connection broke (a TPM killed mid-command); only a new context recovers.
_ESYS_BAD_SEQUENCE = 0x00070007
_RC_SIZE_PARAMETER = 0x0D5  # TPM_RC_SIZE of a parameter (RC_FMT1 | RC_P), | its number << 8
# TPM2B_ID_OBJECT: a TPMS_ID_OBJECT, two TPM2B_DIGEST (Part 2 §12.4.2); TPM2B_ENCRYPTED_SECRET:
# a TPMU_ENCRYPTED_SECRET, MAX_RSA_KEY_BYTES in tpm2-tss (Part 2 §11.4.33).
_ID_OBJECT_ROOM, _SECRET_ROOM = 2 * (2 + 64), 512
_RC_INITIALIZE = 0x100  # TPM_RC_INITIALIZE: TPM2_Startup not run (Part 2 §6.6.3)
# Warnings "this handle/session is not loaded" (TPM_RC_REFERENCE_H0..H6, _S0..S6) and "no room
# for another object" (TPM_RC_OBJECT_MEMORY), Part 2 §6.6.3.
# Not TPM_RC_HANDLE (0x08B in format 1): that is a handle of a wrong type or an undefined
# NV index or persistent key (an NV counter not defined yet), never a transient key we lost.
_RC_NOT_LOADED = {0x902, *range(0x910, 0x917), *range(0x918, 0x91F)}


def _recovery(rc: int) -> str | None:
    """How a failed command may recover: "connection" (reconnect), "reload" (the TPM lost our
    objects: reconnect, re-create the keys), "startup" (run TPM2_Startup), or None."""
    if (rc & 0xFFFF0000) == _TCTI_LAYER or rc == _ESYS_BAD_SEQUENCE:
        return "connection"
    if rc & 0xFFFF0000:  # another TSS layer (ESAPI, SAPI, MU): not the TPM's answer
        return None
    if rc == _RC_INITIALIZE:
        return "startup"
    if rc in _RC_NOT_LOADED:
        return "reload"
    return None


_NV_COUNTER_ATTRS = (TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA) | (
    TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT
)


@dataclass(frozen=True, slots=True)
class AkSpec:
    """Which AK to use: ``ecc256`` (default), ``ecc384``, ``rsa2048`` or ``rsa2048-pss``."""

    kind: str = "ecc256"

    def __post_init__(self) -> None:
        if self.kind not in AK_TEMPLATES:
            raise ValueError(f"unknown AK type {self.kind!r}; one of {', '.join(AK_TEMPLATES)}")


def _rc(exc: TSS2_Exception) -> int:
    return int(exc.rc)


class EsapiTpm:
    """A TPM reached through a TCTI string. Thread-safe: calls are serialised."""

    def __init__(self, tcti: str, *, ak: AkSpec | None = None) -> None:
        self._tcti = tcti
        self._ak_spec = ak or AkSpec()
        self._lock = threading.RLock()
        self._esapi: Any = None
        self._ak: Any = None
        self._ak_public: Public | None = None
        self._ek: Any = None
        self._ek_public: Public | None = None
        self._recoveries = 0
        self._connect()

    # --- connection management ------------------------------------------------------------

    def _connect(self) -> None:
        try:
            self._esapi = ESAPI(self._tcti)
        except TSS2_Exception as exc:
            raise TpmError(f"cannot open TPM at {self._tcti}: {exc}", rc=_rc(exc)) from None
        except Exception as exc:  # TCTI loader errors are plain exceptions in tpm2-pytss
            raise TpmError(f"cannot open TPM at {self._tcti}: {exc}") from None
        if not self._tcti.startswith("device:/dev/tpmrm") and "tabrmd" not in self._tcti:
            self._flush_stale()

    def _flush_stale(self) -> None:
        """Flush transient objects and sessions left by a previous process (no RM here)."""
        e = self._esapi
        for first in (TPM2_HC.TRANSIENT_FIRST, TPM2_HC.LOADED_SESSION_FIRST):
            _, data = e.get_capability(TPM2_CAP.HANDLES, first, 64)
            for handle in data.data.handles:
                try:
                    tr = e.tr_from_tpmpublic(handle)
                    e.flush_context(tr)
                    logger.info("flushed stale TPM handle 0x%08x", int(handle))
                except TSS2_Exception:
                    # Sessions cannot be turned into ESYS_TR from their handle; skip them.
                    pass

    def _disconnect(self) -> None:
        if self._esapi is None:
            return
        for obj in (self._ak, self._ek):
            if obj is not None:
                with contextlib.suppress(TSS2_Exception):
                    self._esapi.flush_context(obj)
        self._ak = self._ek = None
        with contextlib.suppress(Exception):  # closing a dead connection may fail
            self._esapi.close()
        self._esapi = None

    def recoveries(self) -> int:
        """How often the adapter re-established its TPM state (a new connection, keys
        re-created after the TPM lost them, TPM2_Startup): the TPM may have been reset."""
        return self._recoveries

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` against the TPM; map TSS errors to TpmError. Each way of recovering
        (``_recovery``) is tried at most once per call, then the command is retried. A
        ``TpmError`` that ``fn`` raises itself (a bank the TPM does not have, PCRs that kept
        changing) is its answer, not a broken connection: it is raised as it is -- before, it
        dropped the connection and the keys, so that a client asking for a missing bank made
        the broker re-create its AK at every request."""
        with self._lock:
            tried: set[str] = set()
            while True:
                if self._esapi is None:
                    try:
                        self._connect()
                    except TpmError:
                        if "connection" in tried:
                            raise
                        tried.add("connection")
                        continue
                try:
                    return fn()
                except TSS2_Exception as exc:
                    rc = _rc(exc)
                    how = _recovery(rc)
                    if how is None or how in tried:
                        if how == "connection":  # still broken: the next call starts afresh
                            self._drop()
                        raise TpmError(f"{what} failed: {exc}", rc=rc) from None
                    tried.add(how)
                    self._recover(what, how, rc)

    def _recover(self, what: str, how: str, rc: int) -> None:
        if how == "startup":
            logger.warning("TPM not started (rc 0x%x) during %s: TPM2_Startup(CLEAR)", rc, what)
            try:
                self._esapi.startup(TPM2_SU.CLEAR)
            except TSS2_Exception as exc:
                raise TpmError(f"TPM2_Startup failed: {exc}", rc=_rc(exc)) from None
        elif how == "reload":
            logger.warning(
                "the TPM lost the keys loaded by attestd-tpm (rc 0x%x during %s: restarted or "
                "reset); re-creating them",
                rc,
                what,
            )
        else:
            logger.warning("TPM connection lost during %s; reconnecting", what)
        self._recoveries += 1
        self._drop()

    def _drop(self) -> None:
        try:
            if self._esapi is not None:
                self._esapi.close()
        except Exception:  # the connection is already broken
            pass
        self._esapi = None
        self._ak = self._ek = None

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> EsapiTpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- keys -------------------------------------------------------------------------------

    def _ak_handle(self) -> Any:
        if self._ak is None:
            template = TPM2B_PUBLIC.parse(
                AK_TEMPLATES[self._ak_spec.kind], objectAttributes=AK_ATTRIBUTES
            )
            handle, pub, _, _, _ = self._esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            self._ak = handle
            self._ak_public = parse_public(pub.marshal(), sized=True)
        return self._ak

    def _ek_handle(self) -> Any:
        if self._ek is None:
            _, template = create_ek_template("EK-RSA2048", self._nv_read_cb)
            handle, pub, _, _, _ = self._esapi.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            self._ek = handle
            self._ek_public = parse_public(pub.marshal(), sized=True)
        return self._ek

    def ak_public(self) -> Public:
        def op() -> Public:
            self._ak_handle()
            assert self._ak_public is not None
            return self._ak_public

        return self._call("creating the AK", op)

    def ek_public(self) -> Public:
        def op() -> Public:
            self._ek_handle()
            assert self._ek_public is not None
            return self._ek_public

        return self._call("creating the EK", op)

    # --- PCRs -------------------------------------------------------------------------------

    def banks(self) -> tuple[HashAlg, ...]:
        def op() -> tuple[HashAlg, ...]:
            _, data = self._esapi.get_capability(TPM2_CAP.PCRS, 0, 16)
            out = []
            for sel in data.data.assignedPCR:
                if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
                    try:
                        out.append(HashAlg(int(sel.hash)))
                    except ValueError:
                        logger.info("ignoring PCR bank 0x%04x", int(sel.hash))
            return tuple(out)

        return self._call("reading the PCR banks", op)

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        return self._call("reading PCRs", lambda: self._read_pcrs(selection))

    def _read_pcrs(self, selection: PcrSelection) -> PcrValues:
        out: dict[HashAlg, dict[int, bytes]] = {}
        for alg, indices in selection.banks:
            bank = out.setdefault(alg, {})
            # PCR_Read returns at most 8 digests per call; ask in chunks until all are read.
            pending = list(indices)
            while pending:
                chunk = pending[:8]
                text = f"{alg.bank_name}:{','.join(map(str, chunk))}"
                _, got_sel, digests = self._esapi.pcr_read(TPML_PCR_SELECTION.parse(text))
                got = [
                    i
                    for s in got_sel
                    for i in range(s.sizeofSelect * 8)
                    if bytes(s.pcrSelect)[i // 8] & (1 << (i % 8))
                ]
                if not got:
                    raise TpmError(f"the TPM returned no value for {text}")
                for i, d in zip(got, digests, strict=True):
                    bank[i] = bytes(d)
                pending = [i for i in pending if i not in bank]
        return PcrValues(out)

    def extend(self, pcr: int, digests: Mapping[HashAlg, bytes]) -> None:
        def op() -> None:
            vals = TPML_DIGEST_VALUES(
                [TPMT_HA.unmarshal(alg.to_bytes(2, "big") + d)[0] for alg, d in digests.items()]
            )
            self._esapi.pcr_extend(ESYS_TR.parse(f"PCR{pcr}"), vals)

        if not 0 <= pcr < 24:
            raise ValueError(f"PCR {pcr} out of range")
        self._call(f"extending PCR {pcr}", op)

    # --- quotes -----------------------------------------------------------------------------

    def quote(self, selection: PcrSelection, qualifying_data: bytes) -> RawQuote:
        """Quote and read the PCRs; retry when a PCR changed between the two (the pcrDigest
        must describe the values returned)."""

        def op() -> RawQuote:
            ak = self._ak_handle()
            tpml = TPML_PCR_SELECTION.parse(str(selection))
            for _ in range(5):
                before = self._read_pcrs(selection)
                attest_b, sig = self._esapi.quote(ak, tpml, qualifying_data)
                attest = bytes(attest_b.attestationData)
                parsed = parse_attest(attest)
                assert self._ak_public is not None
                h = self._ak_public.scheme_hash or HashAlg.SHA256
                if hmac.compare_digest(
                    digest_of_values(h, before.values, parsed.pcr_select), parsed.pcr_digest
                ):
                    return RawQuote(attest, bytes(sig.marshal()), before)
                logger.info("PCRs changed during the quote; quoting again")
            raise TpmError("PCRs kept changing while quoting")

        return self._call("quoting", op)

    # --- EK certificates and credential activation ---------------------------------------

    def _nv_read_cb(self, index: int) -> bytes:
        try:
            tr = self._esapi.tr_from_tpmpublic(index)
        except TSS2_Exception as exc:
            if (_rc(exc) & 0xFFF) in (TPM2_RC.HANDLE & 0xFFF, 0x18B):
                raise NoSuchIndex(index) from None
            raise
        pub, _ = self._esapi.nv_read_public(tr)
        size = pub.nvPublic.dataSize
        data = b""
        while len(data) < size:
            chunk = min(size - len(data), 1024)
            data += bytes(self._esapi.nv_read(tr, chunk, len(data), auth_handle=ESYS_TR.OWNER))
        return data

    def ek_certificates(self) -> dict[int, bytes]:
        def op() -> dict[int, bytes]:
            _, data = self._esapi.get_capability(TPM2_CAP.HANDLES, 0x01C00000, 256)
            present = {int(h) for h in data.data.handles}
            return {i: self._nv_read_cb(i) for i in EK_CERT_INDICES if i in present}

        return self._call("reading EK certificates", op)

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        # A blob longer than its TPM2B buffer is the TPM's TPM_RC_SIZE for that parameter,
        # answered here: tpm2-pytss cannot build the structure (it raised IndexError).
        for n, blob, room in ((1, id_object, _ID_OBJECT_ROOM), (2, encrypted_secret, _SECRET_ROOM)):
            if len(blob) > room:
                raise TpmError(
                    f"activating the credential failed: parameter {n} is {len(blob)} bytes, "
                    f"over the {room} its structure holds",
                    rc=_RC_SIZE_PARAMETER | n << 8,
                )

        def op() -> bytes:
            ak, ek = self._ak_handle(), self._ek_handle()
            session = self._esapi.start_auth_session(
                tpm_key=ESYS_TR.NONE,
                bind=ESYS_TR.NONE,
                session_type=TPM2_SE.POLICY,
                symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                auth_hash=TPM2_ALG.SHA256,
            )
            try:
                # The default EK's policy is PolicySecret(TPM_RH_ENDORSEMENT) (EK profile B.3).
                self._esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
                cred = TPM2B_ID_OBJECT(credential=id_object)
                secret = TPM2B_ENCRYPTED_SECRET(secret=encrypted_secret)
                out = self._esapi.activate_credential(
                    ak, ek, cred, secret, session1=ESYS_TR.PASSWORD, session2=session
                )
                return bytes(out)
            finally:
                # The TPM may already have closed the session after use.
                with contextlib.suppress(TSS2_Exception):
                    self._esapi.flush_context(session)

        return self._call("activating the credential", op)

    # --- NV counter -------------------------------------------------------------------------

    def nv_counter_define(self, index: int) -> int:
        def op() -> int:
            try:
                self._esapi.tr_from_tpmpublic(index)
            except TSS2_Exception:
                info = TPM2B_NV_PUBLIC(
                    nvPublic=TPMS_NV_PUBLIC(
                        nvIndex=index,
                        nameAlg=TPM2_ALG.SHA256,
                        attributes=_NV_COUNTER_ATTRS,
                        dataSize=8,
                    )
                )
                tr = self._esapi.nv_define_space(None, info, auth_handle=ESYS_TR.OWNER)
                # A counter has no value until its first increment (Part 1 §37.2.4).
                self._esapi.nv_increment(tr, auth_handle=ESYS_TR.OWNER)
            return self._nv_counter_value(index)

        return self._call(f"defining NV counter 0x{index:08x}", op)

    def _nv_counter_value(self, index: int) -> int:
        """The value of the counter at ``index``. Only a counter: the broker reads with owner
        authorisation, and the first bytes of an ordinary index are not its client's to read."""
        tr = self._esapi.tr_from_tpmpublic(index)
        public, _ = self._esapi.nv_read_public(tr)
        nt = (int(public.nvPublic.attributes) & TPMA_NV.TPM2_NT_MASK) >> TPMA_NV.TPM2_NT_SHIFT
        if nt != TPM2_NT.COUNTER:
            raise OperationNotAllowed(f"NV index 0x{index:08x} is not a counter")
        return int.from_bytes(bytes(self._esapi.nv_read(tr, 8, 0, auth_handle=ESYS_TR.OWNER)))

    def nv_counter_read(self, index: int) -> int:
        what = f"reading NV counter 0x{index:08x}"
        return self._call(what, lambda: self._nv_counter_value(index))

    def nv_counter_increment(self, index: int) -> int:
        def op() -> int:
            tr = self._esapi.tr_from_tpmpublic(index)
            self._esapi.nv_increment(tr, auth_handle=ESYS_TR.OWNER)
            return self._nv_counter_value(index)

        return self._call(f"incrementing NV counter 0x{index:08x}", op)
