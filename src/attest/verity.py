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
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from attest.errors import EvidenceFormatError
from attest.manifest.model import VerityParams

SUPPORTED_HASHES = ("sha256", "sha512", "sha1")
_BLOCK_SIZES = tuple(512 << i for i in range(8))
MAX_SALT = 256
READ_CHUNK = 1 << 20


class VerityHasher:
    """Streaming dm-verity (format 1) root-hash computation."""

    def __init__(
        self,
        *,
        salt: bytes,
        hash_algorithm: str = "sha256",
        data_block_size: int = 4096,
        hash_block_size: int = 4096,
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
            return bytes(self._levels[0][: self._digest_size])
        for i in range(levels):
            buf = self._levels[i] if i < len(self._levels) else bytearray()
            if buf:
                buf += bytes(self._hbs - len(buf))
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
    h = VerityHasher(salt=salt, hash_algorithm=hash_algorithm, data_block_size=data_block_size,
                     hash_block_size=hash_block_size)
    h.update(data)
    return h.finish()


@dataclass(frozen=True, slots=True)
class ImageDigests:
    sha256: bytes
    size: int
    verity: VerityParams


def hash_image(
    path: str | os.PathLike[str],
    *,
    salt: bytes,
    hash_algorithm: str = "sha256",
    data_block_size: int = 4096,
    hash_block_size: int = 4096,
) -> ImageDigests:
    """Artifact SHA-256 and dm-verity root hash of the file at ``path``, in one read."""
    verity = VerityHasher(salt=salt, hash_algorithm=hash_algorithm,
                          data_block_size=data_block_size, hash_block_size=hash_block_size)
    sha = hashlib.sha256()
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    size = 0
    with Path(path).open("rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            sha.update(chunk)
            verity.update(chunk)
            size += n
    root = verity.finish()
    return ImageDigests(sha256=sha.digest(), size=size, verity=verity.params(root))
