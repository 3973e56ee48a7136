"""A/B slots and the boot-slot pointer (an adapter: files, block devices, fsync).

Layout of a slots directory::

    boot.json       the boot-slot pointer (written atomically: temp file, fsync, rename, fsync dir)
    slot-a.img      slot A (unless ``devices`` maps "a" to a block device)
    slot-b.img      slot B

The pointer (``BootPointer``) says which slot is ``active`` (committed), which is ``pending``
(staged, to be confirmed) with how many boot ``tries`` it has left, which slot the last boot
selected (``booted``), what each slot holds (version, sequence, sha256, size, dm-verity
parameters -- or ``null`` while a slot is being written), and the NV-counter offset of the gate.

Boot (``SlotStore.boot``) is what an A/B boot loader does (on a real node: the boot loader, e.g.
systemd-boot's boot counting or GRUB's ``next_entry``; here a function for tests and the
``attest upgrade boot`` command): a pending slot with tries left is tried once (tries - 1); a
pending slot with no tries left was tried and not confirmed, so the pointer falls back to the
active slot. A slot is booted only if its bytes verify against what the pointer records
(as dm-verity would refuse a corrupted root), else the other committed slot is used.

Every write, fsync and rename calls ``hook(boundary)`` first (``FaultHook``): the fault-injection
tests raise there to "kill" the process at each boundary and re-open everything from disk.

Slots on block devices are what a boot loader opens: ``seal_slot`` writes the image's dm-verity
hash tree right after it (offset = image size, no superblock, levels top first -- what
``veritysetup format --no-superblock --hash-offset=SIZE`` writes), so the loader needs only the
pointer's parameters (``veritysetup open --no-superblock --hash-offset=SIZE --salt=… ROOT``).

``boot.json``'s shape is a contract with a shell boot loader (``vm_harness``'s initramfs reads
and updates it with ``sed``): sorted keys, one space of indentation per level, so every
top-level member is one line `` "name": value,`` and every slot member sits inside its own
``  "a": {`` … ``  },`` block. ``tests/vm/test_loader.py`` runs the loader against this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attest.errors import EvidenceFormatError, UnbootableError
from attest.manifest.model import VerityParams
from attest.storage.files import read_optional
from attest.verity.hashtree import hash_image

logger = logging.getLogger(__name__)

SLOTS = ("a", "b")
POINTER_FILE = "boot.json"
POINTER_FORMAT = 1
MAX_POINTER_BYTES = 64 * 1024
DEFAULT_TRIES = 1
DEFAULT_CAPACITY = 4 << 30  # file slots: the configured size of the slot partition
WRITE_CHUNK = 4 << 20

FaultHook = Callable[[str], None]


def no_faults(boundary: str) -> None:
    """The default hook: no fault injection."""


@dataclass(frozen=True, slots=True)
class SlotImage:
    """What a slot holds, as verified when it was written."""

    version: str
    sequence: int
    sha256: bytes
    size: int
    verity: VerityParams

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sequence": self.sequence,
            "sha256": self.sha256.hex(),
            "size": self.size,
            "verity": self.verity.to_json(),
        }

    @classmethod
    def from_json(cls, doc: Any) -> SlotImage:
        try:
            v = doc["verity"]
            params = VerityParams(
                root_hash=bytes.fromhex(v["root_hash"]),
                salt=bytes.fromhex(v["salt"]),
                hash_algorithm=str(v["hash_algorithm"]),
                data_block_size=int(v["data_block_size"]),
                hash_block_size=int(v["hash_block_size"]),
                data_blocks=int(v["data_blocks"]),
                format=int(v["format"]),
            )
            return cls(
                str(doc["version"]),
                int(doc["sequence"]),
                bytes.fromhex(doc["sha256"]),
                int(doc["size"]),
                params,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"boot pointer: bad slot entry: {exc}") from None


@dataclass(frozen=True, slots=True)
class BootPointer:
    active: str = "a"
    pending: str | None = None
    tries: int = 0
    booted: str | None = None
    slots: Mapping[str, SlotImage | None] = field(default_factory=lambda: dict.fromkeys(SLOTS))
    nv_offset: int | None = None  # NV counter value minus the committed release sequence
    generation: int = 0

    @property
    def inactive(self) -> str:
        return SLOTS[1 - SLOTS.index(self.active)]

    @property
    def installed(self) -> SlotImage | None:
        return self.slots.get(self.active)

    @property
    def booted_unconfirmed(self) -> bool:
        return self.pending is not None and self.booted == self.pending

    def to_json(self) -> dict[str, Any]:
        return {
            "format": POINTER_FORMAT,
            "active": self.active,
            "pending": self.pending,
            "tries": self.tries,
            "booted": self.booted,
            "slots": {s: (None if im is None else im.to_json()) for s, im in self.slots.items()},
            "nv_offset": self.nv_offset,
            "generation": self.generation,
        }

    @classmethod
    def from_json(cls, doc: Any) -> BootPointer:
        try:
            if doc["format"] != POINTER_FORMAT:
                raise ValueError(f"format {doc['format']!r}")
            active, pending, booted = doc["active"], doc["pending"], doc["booted"]
            if active not in SLOTS or pending not in (None, *SLOTS) or booted not in (None, *SLOTS):
                raise ValueError("slot names must be 'a' or 'b'")
            if pending == active:
                raise ValueError("the pending slot cannot be the active one")
            slots = {
                s: None if doc["slots"][s] is None else SlotImage.from_json(doc["slots"][s])
                for s in SLOTS
            }
            nv = doc["nv_offset"]
            return cls(
                active,
                pending,
                int(doc["tries"]),
                booted,
                slots,
                None if nv is None else int(nv),
                int(doc["generation"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"boot pointer does not parse: {exc}") from None


@dataclass(frozen=True, slots=True)
class BootResult:
    slot: str
    image: SlotImage
    fell_back: bool
    reason: str


def hash_tree(level0: bytes, params: VerityParams) -> bytes:
    """The dm-verity hash tree (format 1, no superblock, levels top first) whose level 0 is
    ``level0`` (``VerityHasher(keep_level0=True).level0``). Raises ``EvidenceFormatError`` when
    its top block does not hash to ``params.root_hash``."""
    hbs = params.hash_block_size
    proto = hashlib.new(params.hash_algorithm, params.salt)
    size = proto.digest_size
    pad = bytes((1 << (size - 1).bit_length()) - size)
    levels = [level0]
    while len(levels[-1]) > hbs:
        below = levels[-1]
        out = bytearray()
        for off in range(0, len(below), hbs):
            h = proto.copy()
            h.update(below[off : off + hbs])
            out += h.digest() + pad
        out += bytes(-len(out) % hbs)
        levels.append(bytes(out))
    top = proto.copy()
    top.update(levels[-1])
    if params.data_blocks > 1 and top.digest() != params.root_hash:
        raise EvidenceFormatError("hash tree: its top block does not hash to the root hash")
    return b"".join(reversed(levels)) if params.data_blocks > 1 else b""


def _fsync_dir(directory: Path, hook: FaultHook, name: str) -> None:
    hook(f"{name}.fsync-dir")
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: Path, data: bytes, *, hook: FaultHook, name: str) -> None:
    """``attest.storage.files.atomic_write_bytes`` with a fault-injection hook before each step."""
    hook(f"{name}.create-temp")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            hook(f"{name}.write-temp")
            f.write(data)
            f.flush()
            hook(f"{name}.fsync-temp")
            os.fsync(f.fileno())
        hook(f"{name}.rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent, hook, name)


class SlotStore:
    """The two slots and the pointer in ``directory``. ``devices`` maps a slot name to a block
    device (or any file) to use instead of ``slot-<name>.img``; ``capacity`` is the size of a
    file slot (a block device's is its size)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        devices: Mapping[str, str | os.PathLike[str]] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        hook: FaultHook = no_faults,
        tries: int = DEFAULT_TRIES,
        write_chunk: int = WRITE_CHUNK,
    ) -> None:
        self.directory = Path(directory)
        self.devices = {k: Path(v) for k, v in (devices or {}).items()}
        unknown = set(self.devices) - set(SLOTS)
        if unknown:
            raise ValueError(f"unknown slot name(s) {sorted(unknown)}")
        self._capacity = capacity
        self.hook = hook
        self.tries = tries
        self.write_chunk = write_chunk

    @property
    def pointer_path(self) -> Path:
        return self.directory / POINTER_FILE

    def path(self, slot: str) -> Path:
        return self.devices.get(slot, self.directory / f"slot-{slot}.img")

    def is_device(self, slot: str) -> bool:
        try:
            return stat.S_ISBLK(self.path(slot).stat().st_mode)
        except FileNotFoundError:
            return False

    def capacity(self, slot: str) -> int:
        if self.is_device(slot):
            with self.path(slot).open("rb") as f:
                return f.seek(0, os.SEEK_END)
        return self._capacity

    # --- the pointer ----------------------------------------------------------------------

    def load(self) -> BootPointer:
        data = read_optional(self.pointer_path, max_size=MAX_POINTER_BYTES)
        if data is None:
            return BootPointer()
        try:
            doc = json.loads(data)
        except ValueError:
            raise EvidenceFormatError(f"{self.pointer_path} is not JSON") from None
        return BootPointer.from_json(doc)

    def save(self, pointer: BootPointer) -> BootPointer:
        new = replace(pointer, generation=pointer.generation + 1)
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(new.to_json(), sort_keys=True, indent=1).encode() + b"\n"
        atomic_write(self.pointer_path, data, hook=self.hook, name="pointer")
        return new

    # --- slot contents --------------------------------------------------------------------

    def write_image(self, slot: str, source: str | os.PathLike[str], size: int) -> None:
        """Copy ``size`` bytes of ``source`` to ``slot`` and make them durable. The caller has
        already marked the slot as being written (its pointer entry ``null``)."""
        dst = self.path(slot)
        device = self.is_device(slot)
        flags = os.O_WRONLY | os.O_CLOEXEC | (0 if device else os.O_CREAT)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hook("slot.open")
        fd = os.open(dst, flags, 0o600)
        try:
            if not device:
                self.hook("slot.truncate")
                os.ftruncate(fd, size)
            done = 0
            buf = bytearray(self.write_chunk)
            view = memoryview(buf)
            with Path(source).open("rb", buffering=0) as src:
                while done < size:
                    n = src.readinto(view[: min(self.write_chunk, size - done)])
                    if not n:
                        raise EvidenceFormatError(f"{source} is shorter than {size} bytes")
                    self.hook("slot.write")
                    os.pwrite(fd, view[:n], done)
                    done += n
            self.hook("slot.fsync")
            os.fsync(fd)
            # Drop the written pages so the read-back verification reads the medium.
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if not device:
            _fsync_dir(self.directory, self.hook, "slot")

    def verify_slot(self, slot: str, image: SlotImage) -> bool:
        """Do the slot's bytes verify against ``image`` (sha256, size, dm-verity root)?"""
        p = self.path(slot)
        try:
            if not self.is_device(slot) and p.stat().st_size < image.size:
                return False
            d = hash_image(
                p,
                salt=image.verity.salt,
                hash_algorithm=image.verity.hash_algorithm,
                data_block_size=image.verity.data_block_size,
                hash_block_size=image.verity.hash_block_size,
                length=image.size,
            )
        except (OSError, EvidenceFormatError):
            return False
        return (
            d.size == image.size
            and d.sha256 == image.sha256
            and d.verity.root_hash == image.verity.root_hash
        )

    def seal_slot(self, slot: str, image: SlotImage) -> str | None:
        """Read the written slot back and check it against ``image`` (as ``verify_slot``); on a
        block-device slot, also write the dm-verity hash tree after the image (module
        docstring) and make it durable. ``None`` when sealed, else why not."""
        if not self.is_device(slot):
            return None if self.verify_slot(slot, image) else "it does not read back as written"
        p = self.path(slot)
        v = image.verity
        try:
            d = hash_image(
                p,
                salt=v.salt,
                hash_algorithm=v.hash_algorithm,
                data_block_size=v.data_block_size,
                hash_block_size=v.hash_block_size,
                length=image.size,
                keep_level0=True,
            )
        except (OSError, EvidenceFormatError) as exc:
            return f"it could not be read back: {exc}"
        if (d.size, d.sha256, d.verity.root_hash) != (image.size, image.sha256, v.root_hash):
            return "it does not read back as written"
        assert d.level0 is not None
        tree = hash_tree(d.level0, v)
        if image.size + len(tree) > self.capacity(slot):
            return (
                f"no room for its {len(tree)}-byte hash tree after the image "
                f"({self.capacity(slot)} bytes)"
            )
        self.hook("slot.tree-open")
        fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.hook("slot.tree-write")
            os.pwrite(fd, tree, image.size)
            self.hook("slot.tree-fsync")
            os.fsync(fd)
        finally:
            os.close(fd)
        return None

    # --- boot and confirm -----------------------------------------------------------------

    def boot(self, *, verify: bool = True) -> BootResult:
        """Select the slot to boot, as an A/B boot loader does (module docstring), and record
        the choice in the pointer. Raises ``UnbootableError`` when no committed slot verifies."""
        ptr = self.load()
        fell_back = False
        reason = ""
        if ptr.pending is not None:
            image = ptr.slots.get(ptr.pending)
            if (
                ptr.tries > 0
                and image is not None
                and (not verify or self.verify_slot(ptr.pending, image))
            ):
                self.save(replace(ptr, tries=ptr.tries - 1, booted=ptr.pending))
                return BootResult(
                    ptr.pending,
                    image,
                    False,
                    f"trying staged slot {ptr.pending} ({image.version}), "
                    f"{ptr.tries - 1} tries left",
                )
            fell_back = True
            reason = (
                f"staged slot {ptr.pending} was not confirmed"
                if ptr.tries <= 0
                else f"staged slot {ptr.pending} does not verify"
            )
            ptr = replace(ptr, pending=None, tries=0)
        active = ptr.slots.get(ptr.active)
        if active is not None and (not verify or self.verify_slot(ptr.active, active)):
            if fell_back or ptr.booted != ptr.active:
                self.save(replace(ptr, booted=ptr.active))
            return BootResult(
                ptr.active,
                active,
                fell_back,
                reason or f"active slot {ptr.active} ({active.version})",
            )
        # The active slot is gone (it must not happen): the other committed slot, if any.
        other = ptr.inactive
        image = ptr.slots.get(other)
        if image is not None and (not verify or self.verify_slot(other, image)):
            logger.error("active slot %s does not verify; booting slot %s", ptr.active, other)
            self.save(replace(ptr, active=other, pending=None, tries=0, booted=other))
            return BootResult(other, image, True, f"active slot {ptr.active} does not verify")
        raise UnbootableError(f"no slot verifies in {self.directory}")

    def confirm(self) -> BootPointer:
        """Commit the staged slot the node booted: it becomes the active slot. Raises
        ``RuntimeError`` when the node did not boot a staged slot."""
        ptr = self.load()
        if ptr.pending is None or ptr.booted != ptr.pending:
            raise RuntimeError("nothing to confirm: the node did not boot a staged slot")
        return self.save(replace(ptr, active=ptr.pending, pending=None, tries=0))

    def status(self) -> dict[str, Any]:
        ptr = self.load()
        doc = ptr.to_json()
        doc["inactive"] = ptr.inactive
        doc["pending_confirmation"] = ptr.booted_unconfirmed
        doc["paths"] = {s: str(self.path(s)) for s in SLOTS}
        return doc
