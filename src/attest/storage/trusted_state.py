"""Persist the trusted manifest state (an adapter over ``attest.storage.files``).

Layout of a state directory: ``root.json`` (the last verified root) and ``registry.json`` (the
last verified registry snapshot), each exactly the canonical bytes that were verified. The
registry is written after the root; both writes are atomic. Reading re-verifies signatures
(``TrustedState.load``), so a tampered state file is refused, not trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

from attest.manifest.parse import MAX_REGISTRY_BYTES, MAX_ROOT_BYTES
from attest.manifest.trusted import TrustedState
from attest.storage.files import atomic_write_bytes, read_optional

ROOT_FILE = "root.json"
REGISTRY_FILE = "registry.json"


def load_state(directory: str | os.PathLike[str]) -> TrustedState | None:
    """The persisted trusted state, or ``None`` when the directory holds none yet."""
    d = Path(directory)
    root = read_optional(d / ROOT_FILE, max_size=MAX_ROOT_BYTES)
    if root is None:
        return None
    registry = read_optional(d / REGISTRY_FILE, max_size=MAX_REGISTRY_BYTES)
    return TrustedState.load(root, registry)


def save_state(directory: str | os.PathLike[str], state: TrustedState) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / ROOT_FILE, state.root.raw)
    if state.registry is not None:
        atomic_write_bytes(d / REGISTRY_FILE, state.registry.raw)
