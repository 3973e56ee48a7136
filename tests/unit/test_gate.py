"""The upgrade gate's decisions: one test per reason code, the rollback rules, and the NV
counter winning over a rolled-back state file. Real images (dm-verity over real bytes), real
registry snapshots signed with the TEST keys, a LocalNode over a fake TPM."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.gate import World, corrupt
from tests.support.upgrade import (
    NOW,
    Image,
    make_image,
    offer,
    releases_signers,
    signed,
    snapshot,
    veritysetup_tree,
)

from attest.errors import UpgradeRefused
from attest.gate import InstalledState, VerifiedImage, evaluate_upgrade
from attest.manifest.model import VerifiedRegistry
from attest.manifest.parse import load_registry
from attest.runtime import check_records


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


# --- accepted --------------------------------------------------------------------------------


def test_accepts_blessed_newer_release_and_records_it(w: World) -> None:
    d = w.gate.stage(offer(w.v1, w.snap()), now=NOW)
    assert d.accepted and d.reason == "upgrade" and d.version == "1.0.0"
    st = w.gate.status()
    assert st["pending"] == "b" and st["slots"]["b"]["version"] == "1.0.0"
    events = check_records(w.local.runtime_log(), pcr=w.local.runtime.pcr)
    last = [e for e in events if e.kind == "upgrade-decision"][-1]
    assert last.content["accepted"] is True and last.content["slot"] == "b"
    assert (w.node.slots_dir / "slot-b.img").read_bytes() == w.v1.path.read_bytes()


def test_release_found_by_digest_when_version_not_named(w: World) -> None:
    w.install(w.v1, w.snap())
    d = w.gate.stage(offer(w.v2, w.snap()), now=NOW)
    assert d.version == "2.0.0" and d.reason == "upgrade"


# --- refusals: the image -----------------------------------------------------------------------


def test_refuses_unknown_artifact(w: World) -> None:
    stranger = make_image(w.tmp, "9.9.9", 9, blocks=64)  # same size as 1.0.0, not blessed
    e = w.refused(offer(stranger, w.snap()), "unknown-artifact")
    assert "is not a release" in str(e)


def test_refuses_unknown_named_version(w: World) -> None:
    w.refused(offer(w.v1, w.snap(), version="7.0.0"), "unknown-artifact")


def test_refuses_image_of_a_size_no_release_has_without_reading_it(w: World) -> None:
    odd = make_image(w.tmp, "odd", 9, blocks=7)
    assert "7 " not in w.refused(offer(odd, w.snap()), "unknown-artifact").reason


def test_refuses_size_mismatch(w: World) -> None:
    w.refused(offer(w.v2, w.snap(), version="1.0.0"), "size-mismatch")


def test_refuses_verity_root_mismatch_without_hash_tree(w: World) -> None:
    bad = corrupt(w.v1, w.tmp / "bad.img", 37)
    e = w.refused(offer(w.v1, w.snap(), image=bad, version="1.0.0"), "verity-root-mismatch")
    assert "no hash tree" in str(e)


def test_names_the_corrupted_block_with_the_blessed_hash_tree(w: World) -> None:
    tree = veritysetup_tree(w.v1.path, w.v1.release.verity.salt, w.tmp / "tree")
    if tree is None:
        pytest.skip("veritysetup is not installed")
    bad = corrupt(w.v1, w.tmp / "bad.img", 37)
    e = w.refused(
        offer(w.v1, w.snap(), image=bad, version="1.0.0", hash_tree=tree), "corrupted-block"
    )
    assert "data block 37 (offset 151552) does not match the blessed hash tree" in str(e)


def test_foreign_hash_tree_does_not_name_a_block(w: World) -> None:
    tree = veritysetup_tree(w.v1.path, b"\x07" * 32, w.tmp / "tree")  # other salt
    if tree is None:
        pytest.skip("veritysetup is not installed")
    bad = corrupt(w.v1, w.tmp / "bad.img", 3)
    e = w.refused(
        offer(w.v1, w.snap(), image=bad, version="1.0.0", hash_tree=tree), "verity-root-mismatch"
    )
    assert "does not verify against the blessed root" in str(e)


def test_refuses_sha256_mismatch_even_when_verity_matches(w: World) -> None:
    lying = replace(w.v1.release, artifact_sha256=hashlib.sha256(b"other").digest())
    snap = signed(snapshot(10, [lying, w.v2.release]))
    w.refused(offer(w.v1, snap, version="1.0.0"), "sha256-mismatch")


def test_refuses_image_larger_than_the_slot(w: World) -> None:
    w.gate, w.local = w.node.open(capacity=90 * 4096)  # 3.0.0 has 96 blocks
    e = w.refused(offer(w.v3, w.snap()), "image-too-large")
    assert "393216 bytes does not fit the inactive slot (368640 bytes)" in str(e)


# --- refusals: the snapshot ------------------------------------------------------------------


def test_refuses_malformed_snapshot(w: World) -> None:
    w.refused(offer(w.v1, b'{"signed": 1'), "snapshot-malformed")


def test_refuses_unsigned_snapshot(w: World) -> None:
    unsigned = signed(snapshot(10, [w.v1.release]), signers=[])
    w.refused(offer(w.v1, unsigned), "snapshot-unsigned")


def test_refuses_snapshot_under_threshold(w: World) -> None:
    one = signed(snapshot(10, [w.v1.release]), signers=releases_signers()[:1])
    e = w.refused(offer(w.v1, one), "snapshot-under-threshold")
    assert "threshold 2" in str(e)


def test_refuses_expired_snapshot(w: World) -> None:
    old = w.snap(expires=NOW - timedelta(seconds=1))
    w.refused(offer(w.v1, old), "snapshot-expired")


def test_refuses_rolled_back_snapshot(w: World) -> None:
    w.install(w.v1, w.snap(10))
    w.refused(offer(w.v2, w.snap(9)), "snapshot-rollback")


def test_refuses_forked_snapshot_with_the_trusted_sequence(w: World) -> None:
    w.install(w.v1, w.snap(10))
    fork = signed(snapshot(10, [w.v1.release, w.v2.release]))
    w.refused(offer(w.v2, fork), "snapshot-freeze")


# --- refusals: the release -------------------------------------------------------------------


def test_refuses_revoked_release(w: World) -> None:
    w.refused(offer(w.v2, w.snap(revoked=["2.0.0"])), "revoked")


def test_refuses_older_release_without_authorisation(w: World) -> None:
    w.install(w.v2, w.snap())
    e = w.refused(offer(w.v1, w.snap()), "rollback-unauthorised")
    assert "older than the installed 2.0.0 (#2)" in str(e)


def test_refuses_rollback_authorised_for_another_pair(w: World) -> None:
    w.install(w.v3, w.snap(10))
    e = w.refused(
        offer(w.v1, w.snap(11, rollbacks=[("2.0.0", "1.0.0")])), "rollback-authorisation-mismatch"
    )
    assert "2.0.0 -> 1.0.0" in str(e)


def test_accepts_rollback_authorised_for_exactly_this_pair(w: World) -> None:
    w.install(w.v2, w.snap(10))
    d = w.gate.stage(offer(w.v1, w.snap(11, rollbacks=[("2.0.0", "1.0.0")])), now=NOW)
    assert d.accepted and d.reason == "authorised-rollback"


def test_refuses_staging_while_an_unconfirmed_upgrade_runs(w: World) -> None:
    w.install(w.v1, w.snap())
    w.gate.stage(offer(w.v2, w.snap()), now=NOW)
    w.gate.slots.boot()  # running 2.0.0, not confirmed
    w.refused(offer(w.v3, w.snap()), "pending-confirmation")


def test_refuses_when_the_slot_does_not_read_back_as_verified(w: World, tmp_path: Path) -> None:
    src = tmp_path / "moving.img"
    shutil.copy(w.v1.path, src)

    def swap(boundary: str) -> None:  # the source changes after verification (TOCTOU)
        if boundary == "slot.open":
            corrupt(w.v1, src, 5)

    w.gate, w.local = w.node.open(hook=swap)
    with pytest.raises(UpgradeRefused) as info:
        w.gate.stage(offer(w.v1, w.snap(), image=src), now=NOW)
    assert info.value.reason == "write-verify-failed"
    st = w.gate.status()
    assert st["pending"] is None and st["slots"]["b"] is None  # never bootable


# --- anti-rollback: the NV counter wins --------------------------------------------------------


def test_nv_counter_wins_over_a_rolled_back_state_file(w: World, tmp_path: Path) -> None:
    w.install(w.v1, w.snap(10))
    saved = tmp_path / "saved"
    shutil.copytree(w.node.slots_dir, saved / "slots")
    shutil.copytree(w.node.trust_dir, saved / "trust")
    w.install(w.v3, w.snap(10))
    assert w.gate.status()["nv_counter"]["committed_sequence"] == 3
    # the attacker restores the state from when 1.0.0 was installed (pointer and trust dir)
    shutil.rmtree(w.node.slots_dir)
    shutil.rmtree(w.node.trust_dir)
    shutil.copytree(saved / "slots", w.node.slots_dir)
    shutil.copytree(saved / "trust", w.node.trust_dir)
    w.gate, w.local = w.node.open()
    assert w.gate.status()["slots"][w.gate.status()["active"]]["version"] == "1.0.0"
    e = w.refused(offer(w.v2, w.snap(10)), "rollback-unauthorised")
    assert "the TPM NV counter says #3" in str(e)


def test_lost_nv_offset_reads_counter_fail_closed(w: World) -> None:
    w.install(w.v2, w.snap(10))
    ptr = w.gate.slots.load()
    w.gate.slots.save(replace(ptr, nv_offset=None))
    w.gate, w.local = w.node.open()
    w.refused(offer(w.v2, w.snap(10)), "rollback-unauthorised")  # counter read as is: >= 2


def _pure(w: World) -> VerifiedRegistry:
    data = w.snap(10, rollbacks=[("3.0.0", "1.0.0")])
    _, snap = load_registry(data)
    return VerifiedRegistry(snap, data, frozenset())


def _image(img: Image) -> VerifiedImage:
    r = img.release
    return VerifiedImage(r.artifact_sha256, r.artifact_size, r.verity.root_hash, r.verity)


@pytest.mark.parametrize(
    ("installed", "nv", "target", "reason"),
    [
        (0, 0, "1.0.0", "upgrade"),  # fresh node
        (1, 1, "2.0.0", "upgrade"),
        (2, 2, "2.0.0", "reinstall"),
        (2, 2, "1.0.0", "rollback-authorisation-mismatch"),  # only 3.0.0 -> 1.0.0 is authorised
        (3, 3, "2.0.0", "rollback-unauthorised"),
        (3, 3, "1.0.0", "authorised-rollback"),  # exactly 3.0.0 -> 1.0.0
        (1, 3, "1.0.0", "authorised-rollback"),  # after that rollback, still authorised
        (1, 3, "2.0.0", "rollback-unauthorised"),  # state says 1, the TPM says 3 was committed
        (3, 1, "2.0.0", "rollback-unauthorised"),  # NV behind (crash): the state file counts too
    ],
)
def test_rollback_rules(w: World, installed: int, nv: int, target: str, reason: str) -> None:
    img = {"1.0.0": w.v1, "2.0.0": w.v2, "3.0.0": w.v3}[target]
    current = InstalledState(None, installed, 1 << 30)
    d = evaluate_upgrade(current, _image(img), _pure(w), nv_counter=nv, now=NOW)
    assert d.reason == reason and d.accepted == (
        reason in ("upgrade", "reinstall", "authorised-rollback")
    )


def test_mix_and_match_of_two_releases_is_not_blessed(w: World) -> None:
    r1, r2 = w.v1.release, w.v2.release
    mixed = VerifiedImage(r1.artifact_sha256, r1.artifact_size, r2.verity.root_hash, r1.verity)
    d = evaluate_upgrade(InstalledState(None, 0, 1 << 30), mixed, _pure(w), nv_counter=0, now=NOW)
    assert not d.accepted and d.reason == "verity-root-mismatch"


def test_a_sequence_jump_beyond_the_nv_counter_step_limit_is_refused(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import attest.gate

    monkeypatch.setattr(attest.gate, "MAX_SEQUENCE_STEP", 1)
    d = evaluate_upgrade(
        InstalledState(None, 1, 1 << 30), _image(w.v3), _pure(w), nv_counter=1, now=NOW
    )
    assert not d.accepted and d.reason == "sequence-jump"
    assert "2 sequence numbers above the installed #1" in d.message
    d = evaluate_upgrade(
        InstalledState(None, 1, 1 << 30), _image(w.v2), _pure(w), nv_counter=1, now=NOW
    )
    assert d.accepted and d.reason == "upgrade"


def test_each_refusal_code_is_distinct_and_documented() -> None:
    from attest.gate import REASONS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "upgrade.md").read_text()
    for code in REASONS:
        assert f"`{code}`" in doc, code
