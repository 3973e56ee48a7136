"""The bodies of the gate's two uploads (``POST /v1/upgrades``, ``POST /v1/registry``): media
types and framing, for the API (``attest.node.api``) and its clients (``attest upgrade push``,
``attest registry push``). Pure: bytes in, bytes out. All lengths are 8-byte big-endian.

Upgrade (``application/vnd.attest.upgrade``)::

    snapshot_length || snapshot || tree_length || tree (0: none) || image (to the end)

Registry push (``application/vnd.attest.registry``)::

    snapshot_length || snapshot || [root_length || root] ...  (newer roots, oldest first)
"""

from __future__ import annotations

from attest.errors import EvidenceFormatError
from attest.manifest.parse import MAX_ROOT_BYTES

UPGRADE_MEDIA_TYPE = "application/vnd.attest.upgrade"
REGISTRY_MEDIA_TYPE = "application/vnd.attest.registry"
REGISTRY_PATH = "/v1/registry"
MAX_SNAPSHOT = 4 << 20
MAX_PUSH_ROOTS = 8
LEN = 8
MAX_REGISTRY_PUSH = LEN + MAX_SNAPSHOT + MAX_PUSH_ROOTS * (LEN + MAX_ROOT_BYTES)


def upgrade_head(snapshot: bytes, tree: bytes = b"") -> bytes:
    """What precedes the image in an upgrade body."""
    return len(snapshot).to_bytes(LEN, "big") + snapshot + len(tree).to_bytes(LEN, "big") + tree


def registry_push_body(snapshot: bytes, roots: tuple[bytes, ...] = ()) -> bytes:
    return b"".join(len(d).to_bytes(LEN, "big") + d for d in (snapshot, *roots))


def parse_registry_push(body: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """The snapshot and the roots of a registry push; ``EvidenceFormatError`` when malformed."""
    docs: list[bytes] = []
    pos = 0
    while pos < len(body):
        what = "snapshot" if not docs else f"root {len(docs)}"
        if len(docs) > MAX_PUSH_ROOTS:
            raise EvidenceFormatError(f"more than {MAX_PUSH_ROOTS} roots in a registry push")
        if len(body) - pos < LEN:
            raise EvidenceFormatError(f"registry push ends inside the {what} length")
        n = int.from_bytes(body[pos : pos + LEN], "big")
        limit = MAX_SNAPSHOT if not docs else MAX_ROOT_BYTES
        if n == 0 or n > limit:
            raise EvidenceFormatError(f"{what} of {n} bytes: must be 1..{limit}")
        pos += LEN
        if len(body) - pos < n:
            raise EvidenceFormatError(f"registry push ends inside the {what}")
        docs.append(body[pos : pos + n])
        pos += n
    if not docs:
        raise EvidenceFormatError("empty registry push: no snapshot")
    return docs[0], tuple(docs[1:])
