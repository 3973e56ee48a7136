"""A/B slots: the atomic boot-slot pointer, boot-time fallback of an unconfirmed slot, confirm."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.upgrade import KillAt, Killed, image_bytes

from attest.errors import EvidenceFormatError, UnbootableError
from attest.node.upgrade.slots import BootPointer, SlotImage, SlotStore
from attest.verity.hashtree import hash_image


def put(store: SlotStore, slot: str, version: str, seq: int, tmp: Path) -> SlotImage:
    src = tmp / f"{version}.img"
    src.write_bytes(image_bytes(version, 16))
    d = hash_image(src, salt=b"s" * 32)
    store.write_image(slot, src, d.size)
    return SlotImage(version, seq, d.sha256, d.size, d.verity)


@pytest.fixture
def store(tmp_path: Path) -> SlotStore:
    s = SlotStore(tmp_path / "slots", capacity=1 << 20)
    a = put(s, "a", "1.0", 1, tmp_path)
    s.save(BootPointer(active="a", slots={"a": a, "b": None}))
    return s


def stage(store: SlotStore, tmp: Path, version: str = "2.0") -> SlotImage:
    ptr = store.load()
    b = put(store, ptr.inactive, version, 2, tmp)
    store.save(replace(ptr, pending=ptr.inactive, tries=1, slots={**ptr.slots, ptr.inactive: b}))
    return b


def test_fresh_store_has_nothing_to_boot(tmp_path: Path) -> None:
    with pytest.raises(UnbootableError):
        SlotStore(tmp_path / "none").boot()


def test_boots_the_active_slot(store: SlotStore) -> None:
    r = store.boot()
    assert (r.slot, r.image.version, r.fell_back) == ("a", "1.0", False)


def test_staged_slot_is_tried_once_then_falls_back_unless_confirmed(
    store: SlotStore, tmp_path: Path
) -> None:
    stage(store, tmp_path)
    first = store.boot()
    assert first.slot == "b" and store.load().booted_unconfirmed
    second = store.boot()  # no confirm: the new slot did not prove itself
    assert (second.slot, second.fell_back) == ("a", True)
    assert "not confirmed" in second.reason
    ptr = store.load()
    assert (ptr.active, ptr.pending, ptr.booted) == ("a", None, "a")
    with pytest.raises(RuntimeError):
        store.confirm()


def test_confirm_commits_the_booted_slot(store: SlotStore, tmp_path: Path) -> None:
    stage(store, tmp_path)
    with pytest.raises(RuntimeError):  # staged but not booted yet: nothing to confirm
        store.confirm()
    store.boot()
    ptr = store.confirm()
    assert (ptr.active, ptr.pending) == ("b", None)
    assert store.boot().slot == "b" and store.boot().slot == "b"


def test_corrupted_staged_slot_is_not_booted(store: SlotStore, tmp_path: Path) -> None:
    stage(store, tmp_path)
    with store.path("b").open("r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xff")
    r = store.boot()
    assert (r.slot, r.fell_back) == ("a", True) and "does not verify" in r.reason


def test_corrupted_active_slot_boots_the_other_committed_slot(
    store: SlotStore, tmp_path: Path
) -> None:
    stage(store, tmp_path)
    store.boot()
    store.confirm()  # b active, a still holds 1.0
    store.path("b").write_bytes(b"\0" * 4096)
    r = store.boot()
    assert (r.slot, r.image.version) == ("a", "1.0") and store.load().active == "a"


@pytest.mark.parametrize("at", range(5))  # create, write, fsync, rename, fsync-dir
def test_pointer_write_is_atomic_at_every_boundary(
    store: SlotStore, tmp_path: Path, at: int
) -> None:
    old = store.pointer_path.read_bytes()
    b = put(store, "b", "2.0", 2, tmp_path)
    store.hook = KillAt(at)
    with pytest.raises(Killed):
        store.save(
            replace(store.load(), pending="b", tries=1, slots={**store.load().slots, "b": b})
        )
    store.hook = KillAt()
    now = store.pointer_path.read_bytes()
    assert now == old or json.loads(now)["pending"] == "b"  # old or new, never a mix
    assert now == old if at < 4 else True  # the rename (boundary 3) has not happened before 4
    assert not list(store.directory.glob(".boot.json.*.tmp"))  # no litter
    assert store.boot().slot in ("a", "b")


def test_malformed_pointer_is_refused(store: SlotStore) -> None:
    store.pointer_path.write_text('{"format": 1, "active": "c"}')
    with pytest.raises(EvidenceFormatError):
        store.load()


def test_block_device_or_file_slot_capacity(tmp_path: Path) -> None:
    dev = tmp_path / "dev-b"
    dev.write_bytes(b"")
    s = SlotStore(tmp_path / "s", devices={"b": dev}, capacity=12345)
    assert s.path("b") == dev and s.capacity("b") == 12345  # a regular file: configured size
    with pytest.raises(ValueError):
        SlotStore(tmp_path / "s", devices={"c": dev})
