"""The initramfs's A/B slot chooser (busybox sh, ``vm_harness.image.LOADER_CHOOSER``) against
``attest.node.upgrade.slots.SlotStore.boot``: on the same pointer written by slots.py, both pick
the same
slot and leave the same pointer (which slots.py still reads); anything unreadable fails closed.
Runs the chooser under busybox's own sh, sed and grep, as the initramfs does (no QEMU)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from tests.conftest import need_binaries
from vm_harness.image import INITRD_APPLETS, LOADER_CHOOSER

from attest.errors import UnbootableError
from attest.manifest.model import VerityParams
from attest.node.upgrade.slots import BootPointer, SlotImage, SlotStore


def _image(version: str, seed: int) -> SlotImage:
    blocks = 18251 + seed
    return SlotImage(
        version,
        seed,
        bytes([seed]) * 32,
        blocks * 4096,
        VerityParams(
            root_hash=bytes([0xA0 + seed]) * 32, salt=bytes([seed]) * 32, data_blocks=blocks
        ),
    )


A, B = _image("1.0.0", 1), _image("1.1.0", 2)


@pytest.fixture()
def busybox_bin(tmp_path: Path) -> Path:
    need_binaries("busybox")
    d = tmp_path / "bin"
    d.mkdir()
    busybox = shutil.which("busybox")
    assert busybox
    for applet in INITRD_APPLETS:
        (d / applet).symlink_to(busybox)
    return d


def run_chooser(bin_dir: Path, pointer: Path) -> tuple[int, dict[str, str]]:
    script = (
        LOADER_CHOOSER + '\nchoose "$1"; rc=$?\n'
        'echo "rc=$rc"; echo "slot=$slot"; echo "why=$why"; echo "reason=$reason"\n'
        'echo "roothash=$roothash"; echo "salt=$salt"; echo "size=$size"\n'
        'echo "blocks=$blocks"; echo "version=$version"\n'
    )
    proc = subprocess.run(
        [str(bin_dir / "sh"), "-c", script, "chooser", str(pointer)],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return int(out.pop("rc")), out


def both(tmp_path: Path, bin_dir: Path, ptr: BootPointer) -> tuple[str, dict[str, str], Path]:
    """Write ``ptr`` with slots.py twice; boot one copy with slots.py, the other with the
    shell; the same slot and the same resulting pointer bytes' meaning."""
    py, sh = SlotStore(tmp_path / "py"), SlotStore(tmp_path / "sh")
    py.save(ptr)
    sh.save(ptr)
    chosen = py.boot(verify=False)
    rc, out = run_chooser(bin_dir, sh.pointer_path)
    assert rc == 0, out
    assert out["slot"] == chosen.slot
    assert sh.load() == py.load()  # the shell's rewrite is what slots.py would have written
    assert json.loads(sh.pointer_path.read_text()) == json.loads(py.pointer_path.read_text())
    img = chosen.image
    assert out["roothash"] == img.verity.root_hash.hex() and out["salt"] == img.verity.salt.hex()
    assert (int(out["size"]), int(out["blocks"]), out["version"]) == (
        img.size,
        img.verity.data_blocks,
        img.version,
    )
    return chosen.slot, out, sh.pointer_path


def test_active_slot_boots_and_the_boot_is_recorded(tmp_path: Path, busybox_bin: Path) -> None:
    slot, _, path = both(tmp_path, busybox_bin, BootPointer(slots={"a": A, "b": None}))
    assert slot == "a" and json.loads(path.read_text())["booted"] == "a"


def test_booted_active_slot_leaves_the_pointer_alone(tmp_path: Path, busybox_bin: Path) -> None:
    ptr = BootPointer(booted="a", slots={"a": A, "b": B}, nv_offset=3, generation=41)
    slot, _, path = both(tmp_path, busybox_bin, ptr)
    assert slot == "a" and json.loads(path.read_text())["generation"] == 42  # one save: ours


def test_pending_slot_gets_its_one_try_recorded_before_boot(
    tmp_path: Path, busybox_bin: Path
) -> None:
    ptr = BootPointer(active="a", pending="b", tries=1, booted="a", slots={"a": A, "b": B})
    slot, out, path = both(tmp_path, busybox_bin, ptr)
    doc = json.loads(path.read_text())
    assert slot == "b" and doc["tries"] == 0 and doc["booted"] == "b"
    assert out["reason"] == "trying staged slot b (1.1.0), 0 tries left"


def test_two_tries_count_down(tmp_path: Path, busybox_bin: Path) -> None:
    ptr = BootPointer(active="b", pending="a", tries=2, booted="b", slots={"a": A, "b": B})
    slot, _, path = both(tmp_path, busybox_bin, ptr)
    assert slot == "a" and json.loads(path.read_text())["tries"] == 1


def test_tried_unconfirmed_slot_falls_back_to_the_active_one(
    tmp_path: Path, busybox_bin: Path
) -> None:
    ptr = BootPointer(active="a", pending="b", tries=0, booted="b", slots={"a": A, "b": B})
    slot, out, path = both(tmp_path, busybox_bin, ptr)
    doc = json.loads(path.read_text())
    assert slot == "a" and doc["pending"] is None and doc["booted"] == "a"
    assert out["reason"] == "staged slot b was not confirmed"


def test_slot_being_written_is_never_booted(tmp_path: Path, busybox_bin: Path) -> None:
    ptr = BootPointer(active="a", pending="b", tries=1, booted="a", slots={"a": A, "b": None})
    slot, _, _ = both(tmp_path, busybox_bin, ptr)
    assert slot == "a"
    # the gate's own "being written" state: no pending slot, the slot's entry null
    slot, _, _ = both(
        tmp_path / "2", busybox_bin, BootPointer(active="a", booted="a", slots={"a": A, "b": None})
    )
    assert slot == "a"


def test_empty_active_slot_falls_back_to_the_other_committed_one(
    tmp_path: Path, busybox_bin: Path
) -> None:
    slot, _, path = both(tmp_path, busybox_bin, BootPointer(active="a", slots={"a": None, "b": B}))
    assert slot == "b" and json.loads(path.read_text())["active"] == "b"


def test_no_bootable_slot_fails_closed(tmp_path: Path, busybox_bin: Path) -> None:
    store = SlotStore(tmp_path)
    store.save(BootPointer(slots={"a": None, "b": None}))
    with pytest.raises(UnbootableError):
        store.boot(verify=False)
    rc, out = run_chooser(busybox_bin, store.pointer_path)
    assert rc == 1 and out["slot"] == "" and "no slot to boot" in out["why"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: "",
        lambda t: t[: len(t) // 2],
        lambda t: t.replace('"format": 1', '"format": 2'),
        lambda t: t.replace('"active": "a"', '"active": "c"'),
        lambda t: t.replace('"tries": 1', '"tries": -1'),
        lambda t: t.replace('"root_hash": "a2', '"root_hash": "zz'),
        lambda t: t.replace('"size": ', '"size": 1'),
        lambda t: t.replace('"hash_algorithm": "sha256"', '"hash_algorithm": "md5"'),
        lambda t: t.replace("\n", ""),  # valid JSON, but not the loader's shape
    ],
)
def test_unreadable_pointer_fails_closed(tmp_path: Path, busybox_bin: Path, damage) -> None:  # type: ignore[no-untyped-def]
    store = SlotStore(tmp_path)
    store.save(BootPointer(active="a", pending="b", tries=1, slots={"a": A, "b": replace(B)}))
    store.pointer_path.write_text(damage(store.pointer_path.read_text()))
    rc, out = run_chooser(busybox_bin, store.pointer_path)
    assert rc == 1 and out["slot"] == "" and out["why"], out
    assert '"booted": "b"' not in store.pointer_path.read_text()  # nothing recorded


def test_missing_pointer_fails_closed(tmp_path: Path, busybox_bin: Path) -> None:
    rc, out = run_chooser(busybox_bin, tmp_path / "boot.json")
    assert rc == 1 and "no boot pointer" in out["why"]
