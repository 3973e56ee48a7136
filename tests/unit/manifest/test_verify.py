"""Threshold verification: one test per attack a software-update framework must stop."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from tests.support.manifest import FAR, NOW, World, build_world, make_signers, release, sign_doc

from attest.errors import (
    ExpiredError,
    ManifestFormatError,
    RollbackError,
    ThresholdError,
)
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.envelope import UnverifiedEnvelope, sign
from attest.manifest.model import PlatformReference
from attest.manifest.parse import MAX_REGISTRY_BYTES, load_registry
from attest.manifest.verify import (
    verify_root_self_signed,
    verify_root_update,
    verify_snapshot,
)
from attest.model import HashAlg, PcrValues


def test_accepts_threshold_signed_registry(world: World) -> None:
    v = verify_snapshot(world.root, world.registry_bytes(), now=NOW)
    assert v.signers == {s.keyid for s in world.release_signers[:2]}
    assert set(v.snapshot.releases) == {"1.0.0", "1.1.0"}


def test_arbitrary_software_unsigned_registry_refused(world: World) -> None:
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, world.registry_bytes(signers=[]), now=NOW)
    assert (e.value.signed, e.value.threshold) == (0, 2)


def test_arbitrary_software_tampered_release_refused(world: World) -> None:
    doc = json.loads(world.registry_bytes())
    doc["signed"]["releases"]["1.0.0"]["artifact"]["sha256"] = "ab" * 32
    with pytest.raises(ThresholdError):
        verify_snapshot(world.root, canonicalize(doc), now=NOW)


def test_compromise_of_fewer_keys_than_threshold(world: World) -> None:
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(
            world.root, world.registry_bytes(signers=world.release_signers[:1]), now=NOW
        )
    assert (e.value.signed, e.value.threshold) == (1, 2)


def test_threshold_ignores_duplicate_key_id(world: World) -> None:
    one = world.release_signers[0]
    env = UnverifiedEnvelope(world.snapshot().to_json(), ())
    sig = sign(one.private, env.signed_bytes)
    doc = env.to_json()
    doc["signatures"] = [{"keyid": one.keyid, "sig": sig.hex()}] * 2
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, canonicalize(doc), now=NOW)
    assert e.value.signed == 1


def test_threshold_ignores_second_signature_of_same_ecdsa_key(world: World) -> None:
    # ECDSA signs with a random nonce: two *different* valid signatures by one key count once.
    ec_signer = world.release_signers[1]
    env = UnverifiedEnvelope(world.snapshot().to_json(), ())
    sigs = [sign(ec_signer.private, env.signed_bytes) for _ in range(2)]
    assert sigs[0] != sigs[1]
    doc = env.to_json()
    doc["signatures"] = [{"keyid": ec_signer.keyid, "sig": s.hex()} for s in sigs]
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, canonicalize(doc), now=NOW)
    assert e.value.signed == 1


def test_refuses_signature_by_key_of_other_role(world: World) -> None:
    # A root key and a platform key are trusted keys, but not for the releases role.
    signers = [world.release_signers[0], world.root_signers[0], world.platform_signers[0]]
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, world.registry_bytes(signers=signers), now=NOW)
    assert e.value.signed == 1


def test_unknown_keys_do_not_count(world: World) -> None:
    strangers = make_signers(3)
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, world.registry_bytes(signers=strangers), now=NOW)
    assert e.value.signed == 0


def test_signature_under_wrong_keyid_does_not_count(world: World) -> None:
    a, b = world.release_signers[:2]
    env = UnverifiedEnvelope(world.snapshot().to_json(), ())
    doc = env.to_json()
    # b's signature presented under a's key id, plus b's own: only b's counts.
    sig_b = sign(b.private, env.signed_bytes)
    doc["signatures"] = [
        {"keyid": a.keyid, "sig": sig_b.hex()},
        {"keyid": b.keyid, "sig": sig_b.hex()},
    ]
    with pytest.raises(ThresholdError) as e:
        verify_snapshot(world.root, canonicalize(doc), now=NOW)
    assert e.value.signed == 1


def test_same_key_under_two_keyids_refused(world: World) -> None:
    doc = world.root.to_json()
    kid, key = next(iter(doc["keys"].items()))
    doc["keys"]["00" * 32] = key
    doc["roles"]["root"]["keyids"] = sorted([*doc["roles"]["root"]["keyids"], "00" * 32])
    with pytest.raises(ManifestFormatError, match="key id"):
        verify_root_self_signed(sign_doc(doc, world.root_signers))


def test_freeze_expired_registry_refused(world: World) -> None:
    data = world.registry_bytes(world.snapshot(expires=NOW))
    with pytest.raises(ExpiredError):
        verify_snapshot(world.root, data, now=NOW)
    assert verify_snapshot(world.root, data, now=NOW - timedelta(seconds=1))


def test_freeze_expired_root_refused(world: World) -> None:
    with pytest.raises(ExpiredError):
        verify_root_self_signed(world.root_bytes(), now=FAR)
    assert verify_root_self_signed(world.root_bytes(), now=NOW).root.version == 1


def test_endless_data_oversized_document(world: World) -> None:
    data = world.registry_bytes()
    padded = data[:-1] + b" " * (MAX_REGISTRY_BYTES - len(data) + 1) + b"}"
    with pytest.raises(ManifestFormatError, match="limit"):
        verify_snapshot(world.root, padded, now=NOW)
    root_data = world.root_bytes()
    with pytest.raises(ManifestFormatError, match="limit"):
        verify_root_self_signed(root_data + b" " * 70000)


def test_rejects_non_canonical_document(world: World) -> None:
    pretty = json.dumps(json.loads(world.registry_bytes()), indent=2).encode()
    with pytest.raises(ManifestFormatError, match="canonical"):
        verify_snapshot(world.root, pretty, now=NOW)


def test_mix_and_match_signatures_from_another_snapshot(world: World) -> None:
    a = json.loads(world.registry_bytes(world.snapshot(1)))
    b = json.loads(
        world.registry_bytes(world.snapshot(2, releases=[release("1.0.0", 1), release("6.6.6", 2)]))
    )
    a["signed"] = b["signed"] | {"sequence": 1}
    with pytest.raises(ThresholdError):
        verify_snapshot(world.root, canonicalize(a), now=NOW)
    # b's own signatures on b verify: the failure above is the splice, not the keys.
    assert verify_snapshot(world.root, canonicalize(b), now=NOW).snapshot.sequence == 2


def test_mix_and_match_registry_of_another_trust_root(world: World) -> None:
    other = build_world()
    with pytest.raises(ThresholdError):
        verify_snapshot(world.root, other.registry_bytes(), now=NOW)


def _platform(pid: str = "ovmf") -> PlatformReference:
    return PlatformReference(
        pid, "test platform", PcrValues({HashAlg.SHA256: {i: bytes([i]) * 32 for i in range(8)}})
    )


def test_platform_reference_needs_platform_role(world: World) -> None:
    snap = edit.set_platform(world.snapshot(), _platform())
    msg = canonicalize(snap.platforms["ovmf"].reference.to_json())
    # Signed by a releases key only: the registry threshold is met, the platform one is not.
    rel = world.release_signers[0]
    bad = edit.with_platform_signature(snap, "ovmf", rel.keyid, sign(rel.private, msg))
    with pytest.raises(ThresholdError, match="platform"):
        verify_snapshot(world.root, world.registry_bytes(bad), now=NOW)
    p = world.platform_signers[0]
    good = edit.with_platform_signature(snap, "ovmf", p.keyid, sign(p.private, msg))
    v = verify_snapshot(world.root, world.registry_bytes(good), now=NOW)
    assert v.snapshot.platforms["ovmf"].reference.pcrs.get(HashAlg.SHA256, 7) == b"\x07" * 32


def test_mix_and_match_platform_reference_moved_to_other_platform(world: World) -> None:
    snap = edit.set_platform(world.snapshot(), _platform("ovmf"))
    p = world.platform_signers[0]
    msg = canonicalize(snap.platforms["ovmf"].reference.to_json())
    snap = edit.with_platform_signature(snap, "ovmf", p.keyid, sign(p.private, msg))
    doc = json.loads(world.registry_bytes(snap))
    doc["signed"]["platforms"]["other"] = doc["signed"]["platforms"].pop("ovmf")
    with pytest.raises(ManifestFormatError, match="platform_id"):
        load_registry(canonicalize(doc))


def test_root_rotation_needs_old_and_new_threshold(world: World) -> None:
    new_signers = make_signers(2)
    new_root = edit.new_root(
        version=2,
        expires=FAR,
        role_keys={
            "root": [s.key for s in new_signers],
            "releases": [s.key for s in world.release_signers],
            "platform": [s.key for s in world.platform_signers],
        },
        thresholds={"root": 2, "releases": 2, "platform": 1},
    )
    signed = new_root.to_json()
    old2, new2 = world.root_signers[:2], new_signers
    assert verify_root_update(world.root, sign_doc(signed, [*old2, *new2])).root.version == 2
    with pytest.raises(ThresholdError, match="trusted root"):
        verify_root_update(world.root, sign_doc(signed, new2))  # new keys alone: no
    with pytest.raises(ThresholdError, match="own root role"):
        verify_root_update(world.root, sign_doc(signed, old2))  # old keys alone: no
    with pytest.raises(ThresholdError, match="trusted root"):
        verify_root_update(world.root, sign_doc(signed, [old2[0], *new2]))  # 1 of 2 old


def test_root_rotation_must_increment_version_by_one(world: World) -> None:
    for version in (1, 3):
        r = replace(world.root, version=version)
        with pytest.raises(RollbackError) as e:
            verify_root_update(world.root, sign_doc(r.to_json(), world.root_signers))
        assert (e.value.trusted, e.value.got) == (1, version)


def test_root_role_threshold_cannot_exceed_keys(world: World) -> None:
    doc = world.root.to_json()
    doc["roles"]["root"]["threshold"] = 4
    with pytest.raises(ManifestFormatError, match="threshold"):
        verify_root_self_signed(sign_doc(doc, world.root_signers))
