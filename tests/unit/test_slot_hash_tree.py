"""The hash tree ``attest.node.upgrade.slots.seal_slot`` writes after an image in a block-device
slot is
byte for byte what ``veritysetup format --no-superblock`` writes (the layout a boot loader
opens with ``--hash-offset=SIZE``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from attest.errors import EvidenceFormatError
from attest.node.upgrade.slots import hash_tree
from attest.verity.hashtree import hash_image


@pytest.mark.parametrize("blocks", [2, 127, 128, 129, 128 * 128 + 3])
def test_hash_tree_equals_veritysetup_no_superblock(tmp_path: Path, blocks: int) -> None:
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) is not installed")
    img = tmp_path / "img"
    img.write_bytes(
        b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() * 128 for i in range(blocks))
    )
    salt = hashlib.sha256(b"salt").digest()
    tree = tmp_path / "tree"
    out = subprocess.run(
        ["veritysetup", "format", "--no-superblock", f"--salt={salt.hex()}", str(img), str(tree)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    d = hash_image(img, salt=salt, keep_level0=True)
    assert d.verity.root_hash.hex() in out
    assert d.level0 is not None
    assert hash_tree(d.level0, d.verity) == tree.read_bytes()


def test_hash_tree_refuses_a_level0_of_another_root(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.write_bytes(bytes(4096 * 300))
    d = hash_image(img, salt=b"s", keep_level0=True)
    assert d.level0 is not None
    other = bytearray(d.level0)
    other[5] ^= 1
    with pytest.raises(EvidenceFormatError, match="root hash"):
        hash_tree(bytes(other), d.verity)
