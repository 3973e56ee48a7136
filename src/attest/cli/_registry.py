"""The verified registry a command names: ``--trust-dir`` (the verifier's trusted manifest
state) or ``--root`` with ``--snapshot`` (``attest verify``, ``attest snp verify``)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from attest.errors import ConfigError, EvidenceFormatError, ManifestFormatError

if TYPE_CHECKING:
    from attest.manifest.model import VerifiedRegistry


def add_registry_arguments(p: argparse.ArgumentParser, *, trust_dir_help: str) -> None:
    """``--trust-dir`` or ``--root`` with ``--snapshot``: what ``load_registry`` reads."""
    p.add_argument("--trust-dir", type=Path, help=trust_dir_help)
    p.add_argument("--root", type=Path, help="trust root (with --snapshot, instead of --trust-dir)")
    p.add_argument("--snapshot", type=Path, help="registry snapshot signed under --root")


def load_registry(args: argparse.Namespace, now: datetime) -> VerifiedRegistry | None:
    """The registry the arguments name, verified at ``now``; None when they name none."""
    # loaded here, not with the module: the parsers that add these options need none of it
    from attest.manifest.parse import MAX_REGISTRY_BYTES, MAX_ROOT_BYTES
    from attest.manifest.verify import verify_root_self_signed, verify_snapshot
    from attest.storage.files import read_bytes
    from attest.storage.trusted_state import load_state

    if args.trust_dir is not None:
        state = load_state(args.trust_dir)
        if state is None:
            raise ConfigError(f"no trusted manifest state in {args.trust_dir}", key="--trust-dir")
        return state.check_fresh(now=now)
    if args.root is not None or args.snapshot is not None:
        if args.root is None or args.snapshot is None:
            raise ConfigError("give --root and --snapshot together", key="--snapshot")
        root_bytes = read_bytes(args.root, max_size=MAX_ROOT_BYTES)
        snapshot = read_bytes(args.snapshot, max_size=MAX_REGISTRY_BYTES)
        with _naming(args.root):
            root = verify_root_self_signed(root_bytes, now=now)
        with _naming(args.snapshot):
            return verify_snapshot(root.root, snapshot, now=now)
    return None


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A document that does not parse is refused with the file's name (``--root garbage``)."""
    try:
        yield
    except EvidenceFormatError as exc:
        raise ManifestFormatError(f"{path}: {exc}") from None
