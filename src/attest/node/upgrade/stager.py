"""The upgrade gate's orchestration: verify, decide, record, write the inactive slot, switch.

``UpgradeGate(slots, node, trust_dir).stage(offer, now=...)`` runs the flow of
``docs/upgrade.md``:

1. pre-conditions from the slot pointer (an unconfirmed upgrade running; slot capacity);
2. trust refresh from the offered snapshot (and root rotations): ``TrustedState`` rules --
   threshold, sequence (rollback / freeze), expiry;
3. one read of the image: artifact SHA-256 and dm-verity tree concurrently
   (``attest.verity.hashtree.hash_image``); with an offered hash tree, the first bad data block;
4. the pure decision ``attest.gate.evaluate_upgrade`` with the TPM NV counter;
5. the decision is recorded -- audit entry, then an ``upgrade-decision`` runtime event that
   names the audit entry -- accepted or refused, before anything is written;
6. accepted: persist the trust state; mark the inactive slot "being written" in the pointer;
   write, fsync, read back and verify the slot; switch the pointer: the slot is *pending* with
   one boot try. ``confirm`` (after a good boot) makes it active and raises the NV counter to
   its sequence; an unconfirmed slot falls back at the next boot (``SlotStore.boot``).

The gate is privileged: it writes slots and increments a TPM NV counter. It talks to a
``GateNode`` (measure, audit, NV counter) -- ``LocalGateNode`` wraps an in-process
``LocalNode``; the broker would serve the same operations on its operator socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from attest.errors import (
    AttestError,
    ConfigError,
    EvidenceFormatError,
    RegistryRefused,
    TpmError,
    UpgradeRefused,
)
from attest.eventlog.cel import CelRecord
from attest.gate import (
    NO_TRUST_ROOT,
    REGISTRY_CURRENT,
    UNKNOWN_ARTIFACT,
    WRITE_VERIFY_FAILED,
    GateDecision,
    InstalledState,
    RegistryRefresh,
    VerifiedImage,
    evaluate_precondition,
    evaluate_registry_refresh,
    evaluate_trust_error,
    evaluate_upgrade,
    refuse,
)
from attest.manifest.model import Release, VerifiedRegistry, VerityParams
from attest.manifest.trusted import TrustedState
from attest.node.upgrade.slots import BootPointer, BootResult, FaultHook, SlotImage, SlotStore
from attest.runtime import KIND_NV_COUNTER, KIND_REGISTRY_DECISION, KIND_UPGRADE_DECISION
from attest.storage.files import read_bytes
from attest.storage.trusted_state import load_state, save_state
from attest.verity.hashtree import ImageDigests, first_bad_block, hash_image, trusted_level0

logger = logging.getLogger(__name__)

# An owner-range NV index (TCG "Registry of Reserved TPM 2.0 Handles": 0x01000000-0x013FFFFF
# is the owner's). The counter holds the highest committed release sequence + an offset.
DEFAULT_NV_INDEX = 0x01000A77
_RC_HANDLE = 0x8B  # TPM_RC_HANDLE (format one, any handle number): the index is not defined
MAX_HASH_TREE = 256 << 20  # a 32 GiB image has a 257 MiB tree


class GateNode(Protocol):
    """What the gate needs from the node's privileged side."""

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord: ...

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def nv_counter_define(self, index: int) -> int: ...

    def nv_counter_read(self, index: int) -> int: ...

    def nv_counter_increment(self, index: int) -> int: ...


class _LocalNodeLike(Protocol):
    tpm: Any

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord: ...

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]: ...


class LocalGateNode:
    """``GateNode`` over an in-process ``attest.node.broker.local.LocalNode`` (its TPM port does the
    NV counter; its logs record)."""

    def __init__(self, node: _LocalNodeLike) -> None:
        self.node = node

    def measure(self, kind: str, content: Mapping[str, Any]) -> CelRecord:
        return self.node.measure(kind, content)

    def audit_record(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.node.audit_record(event)

    def nv_counter_define(self, index: int) -> int:
        return int(self.node.tpm.nv_counter_define(index))

    def nv_counter_read(self, index: int) -> int:
        return int(self.node.tpm.nv_counter_read(index))

    def nv_counter_increment(self, index: int) -> int:
        return int(self.node.tpm.nv_counter_increment(index))


@dataclass(frozen=True, slots=True)
class Offer:
    """An image offered for installation. ``image`` is a file the gate may read (an upload is
    streamed to a temporary file first); ``snapshot`` the signed registry; ``roots`` newer trust
    roots (rotation), oldest first; ``hash_tree`` an optional ``veritysetup format`` hash file;
    ``version`` the release the offerer says it is (optional; gives precise refusals)."""

    image: Path
    snapshot: bytes
    roots: tuple[bytes, ...] = ()
    hash_tree: bytes | None = None
    version: str | None = None
    actor: str = "operator"


def read_hash_tree(path: str | os.PathLike[str]) -> bytes:
    return read_bytes(path, max_size=MAX_HASH_TREE)


class UpgradeGate:
    def __init__(
        self,
        slots: SlotStore,
        node: GateNode,
        trust_dir: str | os.PathLike[str],
        *,
        nv_index: int = DEFAULT_NV_INDEX,
        hook: FaultHook | None = None,
    ) -> None:
        self.slots = slots
        self.node = node
        self.trust_dir = Path(trust_dir)
        self.nv_index = nv_index
        self.hook = hook if hook is not None else slots.hook

    # --- the NV counter -------------------------------------------------------------------

    def _nv_state(self, ptr: BootPointer) -> tuple[int, int | None]:
        """The committed release sequence the NV counter proves, and its raw value (``None``
        while the gate has not defined the counter yet: then the pointer is all there is).

        Raw value minus the pointer's offset is the sequence. A pointer without an offset (lost,
        or rolled back to before the counter existed) reads the counter with offset 0: never
        lower than the truth, so fail-closed. A counter behind the committed slot (a crash
        between ``confirm``'s pointer switch and its increments) is caught up here."""
        installed = ptr.installed.sequence if ptr.installed is not None else 0
        try:
            raw = self.node.nv_counter_read(self.nv_index)
        except TpmError as exc:
            if exc.rc & 0xFF != _RC_HANDLE:
                raise
            if ptr.nv_offset is not None:
                raise TpmError(
                    f"NV counter 0x{self.nv_index:08x} is gone but the slot pointer "
                    "says it was defined",
                    rc=exc.rc,
                ) from None
            return installed, None
        committed = raw - (ptr.nv_offset or 0)
        if ptr.nv_offset is not None and committed < installed:
            while committed < installed:
                self.hook("nv.increment")
                raw = self.node.nv_counter_increment(self.nv_index)
                committed += 1
            self._measure_nv(raw)
        return committed, raw

    def _nv_ensure(self, ptr: BootPointer) -> BootPointer:
        """Define the counter and choose its offset, once (the caller persists the pointer).

        The offset is as small as possible and never negative: a new TPM counter starts at the
        highest value any counter ever had (TPM 2.0 Part 1 §37.2.4), so it may be above the
        installed sequence (offset > 0) or below it (incremented up to it, offset 0)."""
        if ptr.nv_offset is not None:
            return ptr
        installed = ptr.installed.sequence if ptr.installed is not None else 0
        try:
            raw = self.node.nv_counter_read(self.nv_index)
            offset = 0
            logger.warning(
                "NV counter 0x%08x exists but the slot pointer has no offset: "
                "reading it with offset 0 (fail-closed)",
                self.nv_index,
            )
        except TpmError as exc:
            if exc.rc & 0xFF != _RC_HANDLE:
                raise
            raw = self.node.nv_counter_define(self.nv_index)
            while raw < installed:
                self.hook("nv.increment")
                raw = self.node.nv_counter_increment(self.nv_index)
            offset = raw - installed
        self._measure_nv(raw)
        return replace(ptr, nv_offset=offset)

    def _measure_nv(self, raw: int) -> None:
        self.node.measure(KIND_NV_COUNTER, {"index": self.nv_index, "value": raw})

    # --- recording ------------------------------------------------------------------------

    def _record(self, d: GateDecision, *, actor: str, extra: Mapping[str, Any]) -> None:
        """Audit entry first, then the runtime event naming it (so the quote covers both)."""
        entry = self.node.audit_record(
            {
                "event": "command",
                "user": actor,
                "service": f"upgrade.{d.reason}"[:64],
                "result": "success" if d.accepted else "denied",
            }
        )
        content: dict[str, Any] = {
            "accepted": d.accepted,
            "reason": d.reason,
            "version": (d.version or "unknown")[:128],
            "detail": d.message[:1024],
            "audit_seq": entry.get("seq"),
            **{k: v for k, v in extra.items() if v is not None},
        }
        if d.release is not None:
            content["sequence"] = d.release.sequence
        self.node.measure(KIND_UPGRADE_DECISION, content)
        log = logger.info if d.accepted else logger.warning
        log(
            "upgrade decision",
            extra={"accepted": d.accepted, "reason": d.reason, "version": d.version},
        )

    def _refused(self, d: GateDecision, *, actor: str, extra: Mapping[str, Any]) -> UpgradeRefused:
        self._record(d, actor=actor, extra=extra)
        return UpgradeRefused(d.reason, d.message)

    def refuse_upload(self, reason: str, message: str, *, actor: str) -> UpgradeRefused:
        """Record a refusal decided before the gate ran (an upload over the size limit)."""
        return self._refused(refuse(reason, message), actor=actor, extra={})

    # --- stage ----------------------------------------------------------------------------

    def _load_trust(self) -> TrustedState:
        state = load_state(self.trust_dir)
        if state is None:
            raise ConfigError(
                f"no trusted root in {self.trust_dir} (install root.json first)",
                key="upgrade.trust_dir",
            )
        return state

    @staticmethod
    def _refresh(
        state: TrustedState, snapshot: bytes, roots: tuple[bytes, ...], *, now: datetime
    ) -> TrustedState:
        """The trust refresh (root rotation, then the registry snapshot): the one path that
        both ``stage`` and ``refresh_registry`` run."""
        return state.update_roots(list(roots)).update_registry(snapshot, now=now)

    def _trust(self, offer: Offer, *, now: datetime) -> TrustedState:
        return self._refresh(self._load_trust(), offer.snapshot, offer.roots, now=now)

    # --- registry push (a snapshot without an image) ----------------------------------------

    def refresh_registry(
        self,
        snapshot: bytes,
        *,
        roots: tuple[bytes, ...] = (),
        actor: str = "operator",
        now: datetime,
    ) -> RegistryRefresh:
        """Run the trust refresh on a pushed snapshot (and newer roots), record the decision
        (audit entry, then a ``registry-decision`` runtime event naming it) and persist the new
        trusted state. Raises ``RegistryRefused`` with the trust refresh's reason code."""
        try:
            old = self._load_trust()
        except ConfigError as exc:  # an operator's push to a node not set up: refused, recorded
            raise self._registry_refused(NO_TRUST_ROOT, str(exc), actor=actor, previous=0) from None
        before = old.floor_sequence
        try:
            new = self._refresh(old, snapshot, roots, now=now)
        except ConfigError:
            raise
        except AttestError as exc:
            d = evaluate_trust_error(exc)
            raise self._registry_refused(
                d.reason, d.message, actor=actor, previous=before
            ) from None
        assert new.registry is not None
        decision = evaluate_registry_refresh(
            before, old.root.root.version, new.registry, root_version=new.root.root.version
        )
        # recorded before it is persisted, as ``stage`` does
        self._record_registry(
            True,
            decision.reason,
            decision.message,
            actor=actor,
            previous=before,
            sequence=decision.sequence,
        )
        if decision.reason != REGISTRY_CURRENT or new.root.raw != old.root.raw:
            self.hook("trust.save")
            save_state(self.trust_dir, new)  # atomic writes: root.json, then registry.json
        return decision

    def refuse_registry(self, reason: str, message: str, *, actor: str) -> RegistryRefused:
        """Record a registry push refused before the trust refresh ran (an upload over the
        size limit or past the time limit) and return the refusal."""
        refuse(reason, message)  # a refusal code, or ValueError
        state = load_state(self.trust_dir)
        before = 0 if state is None else state.floor_sequence
        return self._registry_refused(reason, message, actor=actor, previous=before)

    def _registry_refused(
        self, reason: str, message: str, *, actor: str, previous: int
    ) -> RegistryRefused:
        self._record_registry(False, reason, message, actor=actor, previous=previous)
        return RegistryRefused(reason, message)

    def _record_registry(
        self,
        accepted: bool,
        reason: str,
        message: str,
        *,
        actor: str,
        previous: int,
        sequence: int | None = None,
    ) -> None:
        entry = self.node.audit_record(
            {
                "event": "command",
                "user": actor,
                "service": f"registry.{reason}"[:64],
                "result": "success" if accepted else "denied",
            }
        )
        self.node.measure(
            KIND_REGISTRY_DECISION,
            {
                "accepted": accepted,
                "reason": reason,
                "previous_sequence": previous,
                "sequence": sequence,
                "detail": message[:1024],
                "audit_seq": entry.get("seq"),
            },
        )
        log = logger.info if accepted else logger.warning
        log(
            "registry decision",
            extra={
                "accepted": accepted,
                "reason": reason,
                "previous_sequence": previous,
                "sequence": sequence,
            },
        )

    def stage(self, offer: Offer, *, now: datetime) -> GateDecision:
        """Verify, decide, record; on acceptance write the inactive slot and make it pending.
        Returns the accepted decision; raises ``UpgradeRefused`` for every refusal."""
        actor = offer.actor
        ptr = self.slots.load()
        committed, raw = self._nv_state(ptr)
        extra: dict[str, Any] = {"nv_counter": raw}
        installed = ptr.installed
        target_slot = ptr.inactive
        current = InstalledState(
            version=None if installed is None else installed.version,
            sequence=0 if installed is None else installed.sequence,
            slot_capacity=self.slots.capacity(target_slot),
            booted_unconfirmed=ptr.booted_unconfirmed,
        )
        size = offer.image.stat().st_size
        extra["size"] = size
        try:
            new_state = self._trust(offer, now=now)
        except ConfigError:
            raise
        except AttestError as exc:
            raise self._refused(
                evaluate_trust_error(exc, version=offer.version), actor=actor, extra=extra
            ) from None
        trusted = new_state.registry
        assert trusted is not None
        extra["snapshot_sequence"] = trusted.snapshot.sequence
        pre = evaluate_precondition(current, size=size, version=offer.version)
        if pre is not None:
            raise self._refused(pre, actor=actor, extra=extra)

        params = _params_for(trusted, offer.version, size)
        if isinstance(params, GateDecision):
            raise self._refused(params, actor=actor, extra=extra)
        digests, candidate = self._measure_image(offer, trusted, params)
        extra["sha256"] = digests.sha256.hex()
        extra["verity_root_hash"] = digests.verity.root_hash.hex()
        decision = evaluate_upgrade(current, candidate, trusted, nv_counter=committed, now=now)
        if not decision.accepted:
            raise self._refused(decision, actor=actor, extra=extra)
        rel = decision.release
        assert rel is not None
        extra["slot"] = target_slot
        self._record(decision, actor=actor, extra=extra)

        # --- accepted: write. Until the final pointer switch, boot() ignores the slot. ---
        ptr = self._nv_ensure(ptr)  # persisted by the pointer write below
        self.hook("trust.save")
        save_state(self.trust_dir, new_state)
        slots = dict(ptr.slots)
        slots[target_slot] = None
        ptr = self.slots.save(replace(ptr, pending=None, tries=0, slots=slots))
        self.slots.write_image(target_slot, offer.image, size)
        image = SlotImage(rel.version, rel.sequence, digests.sha256, size, rel.verity)
        problem = self.slots.seal_slot(target_slot, image)  # read back (+ hash tree)
        if problem is not None:
            bad = refuse(
                WRITE_VERIFY_FAILED,
                f"slot {target_slot} was not sealed as release {rel.version}: {problem} "
                "(the source changed while it was copied, or the medium is failing)",
                version=rel.version,
            )
            raise self._refused(bad, actor=actor, extra=extra)
        slots[target_slot] = image
        self.slots.save(replace(ptr, pending=target_slot, tries=self.slots.tries, slots=slots))
        logger.info("staged", extra={"version": rel.version, "slot": target_slot})
        return decision

    def _measure_image(
        self, offer: Offer, trusted: VerifiedRegistry, params: VerityParams
    ) -> tuple[ImageDigests, VerifiedImage]:
        keep = offer.hash_tree is not None
        d = _hash(offer.image, params, keep=keep)
        snap = trusted.snapshot
        rel: Release | None
        if offer.version is not None:
            rel = snap.releases.get(offer.version)
        else:
            rel = next((r for r in snap.releases.values() if r.artifact_sha256 == d.sha256), None)
            if rel is not None and not _same_params(rel.verity, params):
                d = _hash(offer.image, rel.verity, keep=keep)  # rare: same size, other salt
        used = rel.verity if rel is not None else params
        bad_block = None
        tree_state = "absent"
        if offer.hash_tree is not None and rel is not None:
            try:
                level0 = trusted_level0(offer.hash_tree, rel.verity)
                tree_state = "trusted"
            except EvidenceFormatError:
                tree_state = "untrusted"
            else:
                if d.verity.root_hash != rel.verity.root_hash and d.level0 is not None:
                    bad_block = first_bad_block(d.level0, level0, rel.verity)
        return d, VerifiedImage(
            sha256=d.sha256,
            size=d.size,
            verity_root_hash=d.verity.root_hash,
            params=used,
            requested_version=offer.version,
            bad_block=bad_block,
            hash_tree=tree_state,
        )

    # --- confirm / status -----------------------------------------------------------------

    def confirm(self, *, actor: str = "operator") -> BootPointer:
        """Commit the booted staged slot and raise the NV counter to its sequence;
        ``UpgradeRefused("nothing-to-confirm")`` when the node did not boot a staged slot."""
        try:
            ptr = self.slots.confirm()
        except RuntimeError as exc:  # an operator's request on the wrong state: refused
            raise UpgradeRefused("nothing-to-confirm", str(exc)) from None
        ensured = self._nv_ensure(ptr)
        if ensured is not ptr:
            ptr = self.slots.save(ensured)
        committed, raw = self._nv_state(ptr)
        self.node.audit_record(
            {"event": "command", "user": actor, "service": "upgrade.confirm", "result": "success"}
        )
        installed = ptr.installed
        logger.info(
            "confirmed",
            extra={"version": None if installed is None else installed.version, "nv_counter": raw},
        )
        return ptr

    def boot(self) -> BootResult:
        """Boot-time duties: select the slot (``SlotStore.boot``: on a real node the boot
        loader does this part), then bring the NV counter up to the committed slot (a crash
        between ``confirm``'s pointer switch and its increments left it behind)."""
        result = self.slots.boot()
        self.reconcile()
        return result

    def reconcile(self) -> int | None:
        """Catch the NV counter up with the committed slot; its raw value (None: none yet)."""
        return self._nv_state(self.slots.load())[1]

    def status(self) -> dict[str, Any]:
        doc = self.slots.status()
        raw: int | None = None
        with contextlib.suppress(AttestError):
            raw = self.node.nv_counter_read(self.nv_index)
        offset = doc.get("nv_offset")
        doc["nv_counter"] = {
            "index": f"0x{self.nv_index:08x}",
            "value": raw,
            "committed_sequence": None if raw is None else raw - (offset or 0),
        }
        return doc


def _same_params(a: VerityParams, b: VerityParams) -> bool:
    return (a.salt, a.hash_algorithm, a.data_block_size, a.hash_block_size) == (
        b.salt,
        b.hash_algorithm,
        b.data_block_size,
        b.hash_block_size,
    )


def _hash(path: Path, p: VerityParams, *, keep: bool) -> ImageDigests:
    return hash_image(
        path,
        salt=p.salt,
        hash_algorithm=p.hash_algorithm,
        data_block_size=p.data_block_size,
        hash_block_size=p.hash_block_size,
        keep_level0=keep,
    )


def _params_for(
    trusted: VerifiedRegistry, version: str | None, size: int
) -> VerityParams | GateDecision:
    """The verity parameters to hash the image with: the named release's, else those of a
    release of the image's size (the artifact digest then picks the release; a release of the
    same size with another salt costs a second read). No release of this size: refused
    unread."""
    snap = trusted.snapshot
    if version is not None:
        rel = snap.releases.get(version)
        if rel is None:
            return refuse(
                UNKNOWN_ARTIFACT,
                f"version {version} is not a release in registry #{snap.sequence}",
                version=version,
            )
        return rel.verity
    for rel in snap.releases.values():
        if rel.artifact_size == size:
            return rel.verity
    return refuse(
        UNKNOWN_ARTIFACT, f"no release in registry #{snap.sequence} has an artifact of {size} bytes"
    )
