"""dm-verity hash-tree root hash, computed in Python (no device-mapper needed).

Format 1 (the default of ``veritysetup format``; kernel doc ``device-mapper/verity.rst``,
cryptsetup ``lib/verity/verity_hash.c``):

- every data block's digest is ``H(salt || block)``;
- digests are packed into hash blocks, each digest padded with zeros to the next power of two
  (32 bytes for SHA-256), the block's tail padded with zeros;
- each hash block is hashed the same way into the level above, until one hash block remains;
  the root hash is ``H(salt || that block)``. With a single data block there are no hash blocks
  and the root hash is that block's digest.

This equals the root hash ``veritysetup format [--no-superblock] --salt=S`` prints for the same
parameters (checked by ``tests/unit/manifest/test_verity.py``).

Image sizes: ``veritysetup`` silently ignores a trailing partial data block — those bytes would
be readable from the device yet covered by no hash. We refuse such images
(``EvidenceFormatError``); pad the image to a multiple of the data block size first.

``VerityHasher`` is the pure, streaming core: feed bytes in any chunking, ``finish()`` gives the
root hash. ``hash_image`` is the file adapter that computes the artifact SHA-256 and the verity
root hash in one read.

Speed (``bench/upgrade_verify.py``, ``docs/upgrade.md``): the file is read once, in 4 MiB chunks,
into a small ring of buffers; a worker thread feeds each chunk to the artifact SHA-256 (one
``update`` per chunk: hashlib releases the GIL for buffers over 2 KiB) while the calling thread
computes the per-block verity digests of the same buffer. Both hashes run at once on two cores
and the wall time approaches one SHA-256 pass over the data.

Hash-tree files: ``veritysetup format DATA HASHFILE`` writes the tree to a separate file: a
512-byte superblock padded to one hash block (unless ``--no-superblock``), then the levels from
the top (one block) down to level 0 (kernel ``dm-verity-target.c``: ``hash_level_block``).
``trusted_level0`` checks such a file against a root hash and returns its level 0, so a gate can
name the first data block whose digest differs (``first_bad_block``).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attest.errors import EvidenceFormatError
from attest.manifest.model import VerityParams

SUPPORTED_HASHES = ("sha256", "sha512", "sha1")
_BLOCK_SIZES = tuple(512 << i for i in range(8))
MAX_SALT = 256
READ_CHUNK = 4 << 20
_RING = 3  # buffers in flight: one being read, one or two being hashed
SUPERBLOCK_MAGIC = b"verity\x00\x00"


class VerityHasher:
    """Streaming dm-verity (format 1) root-hash computation."""

    def __init__(
        self,
        *,
        salt: bytes,
        hash_algorithm: str = "sha256",
        data_block_size: int = 4096,
        hash_block_size: int = 4096,
        keep_level0: bool = False,
    ) -> None:
        if hash_algorithm not in SUPPORTED_HASHES:
            raise ValueError(f"unsupported verity hash {hash_algorithm!r}")
        if data_block_size not in _BLOCK_SIZES or hash_block_size not in _BLOCK_SIZES:
            raise ValueError("block sizes must be powers of two in 512..65536")
        if len(salt) > MAX_SALT:
            raise ValueError(f"salt longer than {MAX_SALT} bytes")
        self._alg = hash_algorithm
        self._salt = salt
        self._dbs = data_block_size
        self._hbs = hash_block_size
        self._proto = hashlib.new(hash_algorithm, salt)
        size = self._proto.digest_size
        self._digest_size = size
        self._pad = bytes((1 << (size - 1).bit_length()) - size)  # v1: pad digests to 2**k
        self._per_block = hash_block_size // (size + len(self._pad))
        self._pending = bytearray()  # partial data block
        self._levels: list[bytearray] = [bytearray()]
        self._blocks = 0
        self._done = False
        self._keep = bytearray() if keep_level0 else None  # level-0 hash blocks, as on disk

    @property
    def level0(self) -> bytes:
        """The level-0 hash blocks (``keep_level0=True``, after ``finish()``): one padded digest
        per data block, hash blocks zero-padded -- the bytes of level 0 in a hash-tree file."""
        if self._keep is None or not self._done:
            raise RuntimeError("level0 needs keep_level0=True and finish()")
        return bytes(self._keep)

    @property
    def data_blocks(self) -> int:
        return self._blocks

    def _push(self, level: int, digest: bytes) -> None:
        levels = self._levels
        while True:
            if level == len(levels):
                levels.append(bytearray())
            buf = levels[level]
            buf += digest
            buf += self._pad
            if len(buf) < self._hbs:
                return
            if level == 0 and self._keep is not None:
                self._keep += buf
            h = self._proto.copy()
            h.update(buf)
            digest = h.digest()
            levels[level] = bytearray()
            level += 1

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise RuntimeError("update() after finish()")
        mv = memoryview(data).cast("B")
        bs = self._dbs
        start = 0
        if self._pending:
            need = bs - len(self._pending)
            self._pending += mv[:need]
            start = min(need, len(mv))
            if len(self._pending) < bs:
                return
            self._block(bytes(self._pending))
            self._pending = bytearray()
        end = start + (len(mv) - start) // bs * bs
        proto = self._proto
        level0 = self._levels[0]
        full = self._hbs
        for off in range(start, end, bs):
            h = proto.copy()
            h.update(mv[off : off + bs])
            level0 += h.digest()
            if self._pad:
                level0 += self._pad
            self._blocks += 1
            if len(level0) >= full:
                if self._keep is not None:
                    self._keep += level0
                self._levels[0] = bytearray()
                hh = proto.copy()
                hh.update(level0)
                self._push(1, hh.digest())
                level0 = self._levels[0]
        if end < len(mv):
            self._pending += mv[end:]

    def _block(self, block: bytes) -> None:
        h = self._proto.copy()
        h.update(block)
        self._blocks += 1
        self._push(0, h.digest())

    def finish(self) -> bytes:
        """The root hash. Raises ``EvidenceFormatError`` for an empty input or a partial block."""
        if self._done:
            raise RuntimeError("finish() called twice")
        self._done = True
        if self._pending:
            raise EvidenceFormatError(
                f"image size is not a multiple of the {self._dbs}-byte data block size "
                f"({len(self._pending)} trailing bytes would not be covered by dm-verity)"
            )
        n = self._blocks
        if n == 0:
            raise EvidenceFormatError("empty image: dm-verity needs at least one data block")
        levels = 0
        while self._per_block**levels < n:
            levels += 1
        if levels == 0:
            if self._keep is not None:
                self._keep += self._levels[0]
            return bytes(self._levels[0][: self._digest_size])
        for i in range(levels):
            buf = self._levels[i] if i < len(self._levels) else bytearray()
            if buf:
                buf += bytes(self._hbs - len(buf))
                if i == 0 and self._keep is not None:
                    self._keep += buf
                h = self._proto.copy()
                h.update(buf)
                self._levels[i] = bytearray()
                self._push(i + 1, h.digest())
        top = self._levels[levels]
        if len(top) != self._digest_size + len(self._pad):  # pragma: no cover - invariant
            raise RuntimeError("verity tree construction went wrong")
        return bytes(top[: self._digest_size])

    def params(self, root_hash: bytes) -> VerityParams:
        return VerityParams(
            root_hash=root_hash,
            salt=self._salt,
            hash_algorithm=self._alg,
            data_block_size=self._dbs,
            hash_block_size=self._hbs,
            data_blocks=self._blocks,
            format=1,
        )


def verity_root_hash(
    data: bytes,
    *,
    salt: bytes,
    hash_algorithm: str = "sha256",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
) -> bytes:
    """Root hash of an in-memory image (pure)."""
    h = VerityHasher(
        salt=salt,
        hash_algorithm=hash_algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
    )
    h.update(data)
    return h.finish()


@dataclass(frozen=True, slots=True)
class ImageDigests:
    sha256: bytes
    size: int
    verity: VerityParams
    level0: bytes | None = None  # the level-0 hash blocks, when asked for


def hash_image(
    path: str | os.PathLike[str],
    *,
    salt: bytes,
    hash_algorithm: str = "sha256",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
    length: int | None = None,
    keep_level0: bool = False,
    sink: Callable[[memoryview], object] | None = None,
) -> ImageDigests:
    """Artifact SHA-256 and dm-verity root hash of the file (or block device) at ``path``, in
    one read, both hashes computed concurrently (module docstring). ``length`` reads only that
    many bytes (a slot larger than its image); ``sink`` sees every chunk once, in order (from
    the calling thread). With ``keep_level0`` the result carries the level-0 hash blocks."""
    verity = VerityHasher(
        salt=salt,
        hash_algorithm=hash_algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        keep_level0=keep_level0,
    )
    with Path(path).open("rb", buffering=0) as f:
        sha, size = _hash_concurrently(f.readinto, verity, length=length, sink=sink)
    root = verity.finish()
    return ImageDigests(
        sha256=sha,
        size=size,
        verity=verity.params(root),
        level0=verity.level0 if keep_level0 else None,
    )


def _hash_concurrently(
    readinto: Callable[[memoryview], int | None],
    verity: VerityHasher,
    *,
    length: int | None,
    sink: Callable[[memoryview], object] | None,
) -> tuple[bytes, int]:
    """Read chunks into a ring of buffers; a worker thread hashes each chunk into SHA-256 while
    this thread feeds it to ``verity``. Chunk k reuses buffer k % _RING only after the worker
    finished chunk k - _RING (it finishes in order)."""
    bufs = [bytearray(READ_CHUNK) for _ in range(_RING)]
    views = [memoryview(b) for b in bufs]
    work: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
    sha = hashlib.sha256()

    def worker() -> None:
        while True:
            item = work.get()
            if item is None:
                return
            try:
                sha.update(views[item[0]][: item[1]])
            except BaseException as exc:  # pragma: no cover - hashlib does not fail
                done.put(exc)
                return
            done.put(None)

    thread = threading.Thread(target=worker, name="sha256", daemon=True)
    thread.start()
    sent = finished = size = 0
    try:
        while length is None or size < length:
            while sent - finished >= _RING - 1:
                err = done.get()
                if err is not None:  # pragma: no cover
                    raise err
                finished += 1
            i = sent % _RING
            want = READ_CHUNK if length is None else min(READ_CHUNK, length - size)
            n = readinto(views[i][:want]) or 0
            if n == 0:
                break
            work.put((i, n))
            sent += 1
            size += n
            chunk = views[i][:n]
            verity.update(chunk)
            if sink is not None:
                sink(chunk)
    finally:
        work.put(None)
        thread.join()
    while finished < sent:
        err = done.get()
        if err is not None:  # pragma: no cover
            raise err
        finished += 1
    return sha.digest(), size


# --- hash-tree files -------------------------------------------------------------------------


def tree_layout(params: VerityParams) -> list[int]:
    """Hash blocks per level, level 0 first, for ``params`` (format 1)."""
    size = hashlib.new(params.hash_algorithm).digest_size
    per = params.hash_block_size // (1 << (size - 1).bit_length())
    n = params.data_blocks
    out: list[int] = []
    while n > 1 or not out:
        n = -(-n // per)
        out.append(n)
        if n == 1:
            break
    return out if params.data_blocks > 1 else []


def trusted_level0(tree: bytes, params: VerityParams) -> bytes:
    """Check a hash-tree file (``veritysetup format`` with a separate hash device, with or
    without superblock) against ``params.root_hash`` and return its level 0.

    Every hash block of every level is hashed and compared with its entry one level up, and the
    top block with the root hash, so the returned level-0 digests are as trustworthy as the root
    hash. Raises ``EvidenceFormatError`` when the file is not a tree for these parameters or does
    not verify."""
    hbs = params.hash_block_size
    layout = tree_layout(params)
    if not layout:
        raise EvidenceFormatError("a one-block image has no hash tree")
    offset = 0
    if tree[:8] == SUPERBLOCK_MAGIC:
        offset = hbs
    need = offset + sum(layout) * hbs
    if len(tree) < need:
        raise EvidenceFormatError(f"hash tree is {len(tree)} bytes, these parameters need {need}")
    proto = hashlib.new(params.hash_algorithm, params.salt)
    size = proto.digest_size
    slot = 1 << (size - 1).bit_length()
    # Levels on disk: top first (kernel dm-verity-target.c, verity_hash_at_level).
    starts: dict[int, int] = {}
    pos = offset
    for level in range(len(layout) - 1, -1, -1):
        starts[level] = pos
        pos += layout[level] * hbs

    def block(level: int, j: int) -> bytes:
        return tree[starts[level] + j * hbs : starts[level] + (j + 1) * hbs]

    def digest(data: bytes) -> bytes:
        h = proto.copy()
        h.update(data)
        return h.digest()

    top = len(layout) - 1
    if digest(block(top, 0)) != params.root_hash:
        raise EvidenceFormatError("hash tree: its top block does not hash to the root hash")
    for level in range(top, 0, -1):
        parent = tree[starts[level] : starts[level] + layout[level] * hbs]
        for j in range(layout[level - 1]):
            if digest(block(level - 1, j)) != parent[j * slot : j * slot + size]:
                raise EvidenceFormatError(
                    f"hash tree: level {level - 1} block {j} does not match level {level}"
                )
    return tree[starts[0] : starts[0] + layout[0] * hbs]


def first_bad_block(computed: bytes, trusted: bytes, params: VerityParams) -> int | None:
    """The first data block whose digest in ``computed`` (level 0 from ``VerityHasher``)
    differs from ``trusted`` (level 0 from ``trusted_level0``); ``None`` when none does."""
    size = hashlib.new(params.hash_algorithm).digest_size
    slot = 1 << (size - 1).bit_length()
    hbs = params.hash_block_size
    per = hbs // slot
    for hb in range(0, min(len(computed), len(trusted)), hbs):
        if computed[hb : hb + hbs] == trusted[hb : hb + hbs]:
            continue
        for k in range(per):
            a = hb + k * slot
            if computed[a : a + size] != trusted[a : a + size]:
                n = hb // hbs * per + k
                return n if n < params.data_blocks else None
    return None
