"""dm-verity root hash against `veritysetup format` (cryptsetup)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import EvidenceFormatError
from attest.verity.hashtree import VerityHasher, hash_image, verity_root_hash

VERITYSETUP = shutil.which("veritysetup") or (
    "/usr/sbin/veritysetup" if os.path.exists("/usr/sbin/veritysetup") else None
)
needs_veritysetup = pytest.mark.skipif(
    VERITYSETUP is None, reason="veritysetup (cryptsetup-bin) is not installed"
)


def _veritysetup_root(image: Path, salt: bytes, *extra: str) -> bytes:
    assert VERITYSETUP is not None
    out = subprocess.run(
        [
            VERITYSETUP,
            "format",
            "--no-superblock",
            f"--salt={salt.hex() or '-'}",
            *extra,
            str(image),
            str(image) + ".hash",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"Root hash:\s+([0-9a-f]+)", out)
    assert m, out
    return bytes.fromhex(m.group(1))


@needs_veritysetup
@pytest.mark.parametrize("blocks", [1, 2, 127, 128, 129, 300, 16385])
def test_root_hash_matches_veritysetup(tmp_path: Path, blocks: int) -> None:
    image = tmp_path / "img"
    image.write_bytes(os.urandom(blocks * 4096))
    salt = os.urandom(32)
    got = hash_image(image, salt=salt)
    assert got.verity.root_hash == _veritysetup_root(image, salt)
    assert got.verity.data_blocks == blocks and got.size == blocks * 4096


@needs_veritysetup
@pytest.mark.parametrize(
    ("alg", "dbs", "hbs", "salt"),
    [
        ("sha512", 4096, 4096, b"\x01\x02"),
        ("sha1", 1024, 512, b"s" * 7),
        ("sha256", 512, 4096, b""),
    ],
)
def test_root_hash_matches_veritysetup_other_params(
    tmp_path: Path, alg: str, dbs: int, hbs: int, salt: bytes
) -> None:
    image = tmp_path / "img"
    image.write_bytes(os.urandom(dbs * 700))
    want = _veritysetup_root(
        image, salt, f"--hash={alg}", f"--data-block-size={dbs}", f"--hash-block-size={hbs}"
    )
    got = hash_image(image, salt=salt, hash_algorithm=alg, data_block_size=dbs, hash_block_size=hbs)
    assert got.verity.root_hash == want


@needs_veritysetup
def test_partial_tail_block_refused_where_veritysetup_ignores_it(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(os.urandom(3 * 4096 + 100))
    # veritysetup covers only the 3 whole blocks: the tail would be unprotected.
    head = tmp_path / "head"
    head.write_bytes(image.read_bytes()[: 3 * 4096])
    assert _veritysetup_root(image, b"\x00") == _veritysetup_root(head, b"\x00")
    with pytest.raises(EvidenceFormatError, match="multiple"):
        hash_image(image, salt=b"\x00")


def test_empty_image_refused() -> None:
    with pytest.raises(EvidenceFormatError, match="empty"):
        verity_root_hash(b"", salt=b"")


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(1, 300), cuts=st.lists(st.integers(0, 300 * 4096), max_size=6))
def test_streaming_is_chunking_independent(blocks: int, cuts: list[int]) -> None:
    data = bytes(range(256)) * (blocks * 16)
    whole = verity_root_hash(data, salt=b"salt")
    h = VerityHasher(salt=b"salt")
    prev = 0
    for c in sorted(min(c, len(data)) for c in cuts):
        h.update(data[prev:c])
        prev = c
    h.update(data[prev:])
    assert h.finish() == whole
    assert h.data_blocks == blocks


def test_flipped_byte_changes_root_hash() -> None:
    data = bytearray(4096 * 200)
    a = verity_root_hash(bytes(data), salt=b"x")
    data[4096 * 150 + 7] ^= 1
    assert verity_root_hash(bytes(data), salt=b"x") != a
    assert verity_root_hash(bytes(data), salt=b"y") != verity_root_hash(bytes(data), salt=b"x")
