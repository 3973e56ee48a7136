"""evaluate_release / evaluate_rollback decisions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.support.manifest import NOW, World, release

from attest.errors import ManifestFormatError, NotBlessedError
from attest.manifest import edit
from attest.manifest.evaluate import (
    EmbargoState,
    ReleaseStatus,
    RollbackKind,
    evaluate_release,
    evaluate_rollback,
)
from attest.manifest.model import Embargo, VerifiedRegistry
from attest.manifest.verify import verify_snapshot


def _reg(
    world: World, *rels: object, revoke: str | None = None, rollback: tuple[str, str] | None = None
) -> VerifiedRegistry:
    snap = world.snapshot(releases=rels)  # type: ignore[arg-type]
    if revoke:
        snap = edit.revoke(snap, revoke, reason="CVE-2025-0001", at=NOW)
    if rollback:
        snap = edit.allow_rollback(snap, *rollback, reason="incident 42")
    return verify_snapshot(world.root, world.registry_bytes(snap), now=NOW)


def test_blessed_by_artifact_and_verity(world: World) -> None:
    reg = _reg(world)
    rel = reg.snapshot.releases["1.1.0"]
    d = evaluate_release(
        reg, artifact_sha256=rel.artifact_sha256, verity_root_hash=rel.verity.root_hash, now=NOW
    )
    assert d.status is ReleaseStatus.BLESSED and d.ok
    assert d.require_blessed().version == "1.1.0"
    assert evaluate_release(reg, verity_root_hash=rel.verity.root_hash, now=NOW).ok


def test_arbitrary_software_not_blessed(world: World) -> None:
    d = evaluate_release(_reg(world), artifact_sha256=b"\x00" * 32, now=NOW)
    assert d.status is ReleaseStatus.NOT_BLESSED and not d.ok
    assert "not in registry" in d.reasons[0]
    with pytest.raises(NotBlessedError):
        d.require_blessed()


def test_mix_and_match_artifact_of_one_release_verity_of_another(world: World) -> None:
    reg = _reg(world)
    a, b = reg.snapshot.releases["1.0.0"], reg.snapshot.releases["1.1.0"]
    d = evaluate_release(
        reg, artifact_sha256=a.artifact_sha256, verity_root_hash=b.verity.root_hash, now=NOW
    )
    assert d.status is ReleaseStatus.NOT_BLESSED
    assert "1.0.0" in d.reasons[0] and "1.1.0" in d.reasons[0]


def test_revoked_release_stops_attesting(world: World) -> None:
    reg = _reg(world, revoke="1.0.0")
    rel = reg.snapshot.releases["1.0.0"]
    for kwargs in (
        {"artifact_sha256": rel.artifact_sha256},
        {"verity_root_hash": rel.verity.root_hash},
    ):
        d = evaluate_release(reg, now=NOW, **kwargs)  # type: ignore[arg-type]
        assert d.status is ReleaseStatus.REVOKED and "CVE-2025-0001" in d.reasons[0]


def test_embargo_clock(world: World) -> None:
    emb = release("2.0.0", 3, commit=False, embargo=Embargo())
    reg = _reg(world, release("1.0.0", 1), emb)
    d = evaluate_release(reg, artifact_sha256=emb.artifact_sha256, now=NOW)
    assert d.ok and d.embargo is EmbargoState.AWAITING_FLEET
    snap = edit.fleet_complete(reg.snapshot, "2.0.0", at=NOW - timedelta(days=9))
    reg2 = verify_snapshot(world.root, world.registry_bytes(snap), now=NOW)
    d = evaluate_release(reg2, artifact_sha256=emb.artifact_sha256, now=NOW)
    assert d.ok and d.embargo is EmbargoState.QUIET_PERIOD
    assert d.disclosure_due == NOW + timedelta(days=1)


def test_embargo_overdue(world: World) -> None:
    emb = release(
        "2.0.0", 3, commit=False, embargo=Embargo(fleet_complete_at=NOW - timedelta(days=11))
    )
    reg = _reg(world, release("1.0.0", 1), emb)
    d = evaluate_release(reg, artifact_sha256=emb.artifact_sha256, now=NOW)
    assert d.status is ReleaseStatus.EMBARGOED_OVERDUE and not d.ok
    assert d.embargo is EmbargoState.OVERDUE
    snap = edit.disclose(reg.snapshot, "2.0.0", commit=b"\x12" * 20, at=NOW)
    reg2 = verify_snapshot(world.root, world.registry_bytes(snap), now=NOW)
    d2 = evaluate_release(reg2, artifact_sha256=emb.artifact_sha256, now=NOW)
    assert d2.ok and d2.embargo is EmbargoState.DISCLOSED


def test_embargoed_release_may_not_name_its_commit(world: World) -> None:
    bad = release("2.0.0", 3, commit=True, embargo=Embargo())
    with pytest.raises(ManifestFormatError, match="embargo"):
        world.snapshot(releases=[bad])
    with pytest.raises(ManifestFormatError, match="source"):
        world.snapshot(releases=[release("2.0.0", 3, commit=False)])


def test_rollback_needs_explicit_authorisation(world: World) -> None:
    reg = _reg(world)
    d = evaluate_rollback(reg, from_version="1.1.0", to_version="1.0.0")
    assert not d.allowed and d.kind is RollbackKind.ROLLBACK
    assert (
        evaluate_rollback(reg, from_version="1.0.0", to_version="1.1.0").kind
        is RollbackKind.UPGRADE
    )
    reg2 = _reg(world, rollback=("1.1.0", "1.0.0"))
    d = evaluate_rollback(reg2, from_version="1.1.0", to_version="1.0.0")
    assert d.allowed and d.kind is RollbackKind.AUTHORISED_ROLLBACK and "incident 42" in d.reason


def test_rollback_ordering_uses_sequence_not_version_string(world: World) -> None:
    reg = _reg(world, release("1.10.0", 2), release("1.9.0", 1))
    assert evaluate_rollback(reg, from_version="1.9.0", to_version="1.10.0").allowed
    assert not evaluate_rollback(reg, from_version="1.10.0", to_version="1.9.0").allowed


def test_rollback_to_revoked_refused_and_unknown_installed(world: World) -> None:
    reg = _reg(world, revoke="1.0.0")
    assert not evaluate_rollback(reg, from_version="1.1.0", to_version="1.0.0").allowed
    d = evaluate_rollback(reg, from_version="0.0.1", to_version="1.1.0")
    assert not d.allowed and d.kind is RollbackKind.UNKNOWN
    assert evaluate_rollback(reg, from_version="0.0.1", to_version="1.1.0", from_sequence=1).allowed
    assert not evaluate_rollback(
        reg, from_version="0.0.1", to_version="1.1.0", from_sequence=9
    ).allowed


def test_rollback_rule_must_point_backwards(world: World) -> None:
    with pytest.raises(ManifestFormatError, match="not older"):
        edit.allow_rollback(world.snapshot(), "1.0.0", "1.1.0", reason="x")
