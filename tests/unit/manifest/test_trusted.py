"""Trusted-state update rules: rollback, freeze, expiry, rotation, persistence."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.manifest import FAR, NOW, World, build_world, make_signers, sign_doc

from attest.errors import (
    ExpiredError,
    FreezeError,
    ManifestFormatError,
    RollbackError,
    ThresholdError,
)
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.model import RegistrySnapshot
from attest.manifest.parse import load_registry
from attest.manifest.trusted import TrustedState
from attest.storage.files import atomic_write_bytes
from attest.storage.trusted_state import load_state, save_state


def _state(world: World, seq: int = 5) -> TrustedState:
    s = TrustedState.bootstrap(world.root_bytes(), now=NOW)
    return s.update_registry(world.registry_bytes(world.snapshot(seq)), now=NOW)


def test_accepts_newer_sequence(world: World) -> None:
    s = _state(world).update_registry(world.registry_bytes(world.snapshot(6)), now=NOW)
    assert s.registry is not None and s.registry.snapshot.sequence == 6


def test_rejects_rollback_to_lower_sequence(world: World) -> None:
    older = world.registry_bytes(world.snapshot(4))
    with pytest.raises(RollbackError) as e:
        _state(world).update_registry(older, now=NOW)
    assert (e.value.trusted, e.value.got) == (5, 4)


def test_equal_sequence_same_bytes_is_accepted(world: World) -> None:
    data = world.registry_bytes(world.snapshot(5))
    s = TrustedState.bootstrap(world.root_bytes(), now=NOW).update_registry(data, now=NOW)
    assert s.update_registry(data, now=NOW).floor_raw == data


def test_equal_sequence_different_bytes_is_freeze(world: World) -> None:
    s = _state(world)
    forked = world.snapshot(5, releases=[edit.checked(world.snapshot()).releases["1.0.0"]])
    with pytest.raises(FreezeError, match="bytes differ"):
        s.update_registry(world.registry_bytes(forked), now=NOW)


def test_equal_sequence_other_valid_signature_set_is_freeze(world: World) -> None:
    # Same signed content, a different (still valid) set of signers: different bytes.
    snap = world.snapshot(5)
    s = TrustedState.bootstrap(world.root_bytes(), now=NOW).update_registry(
        world.registry_bytes(snap, world.release_signers[:2]), now=NOW
    )
    with pytest.raises(FreezeError):
        s.update_registry(world.registry_bytes(snap, world.release_signers[1:]), now=NOW)


def test_rejects_expired_registry_at_supplied_now(world: World) -> None:
    data = world.registry_bytes(world.snapshot(6, expires=NOW + timedelta(days=1)))
    assert _state(world).update_registry(data, now=NOW).registry is not None
    with pytest.raises(ExpiredError):
        _state(world).update_registry(data, now=NOW + timedelta(days=2))


def test_freeze_check_fresh_refuses_stale_trusted_registry(world: World) -> None:
    s = TrustedState.bootstrap(world.root_bytes(), now=NOW).update_registry(
        world.registry_bytes(world.snapshot(1, expires=NOW + timedelta(days=1))), now=NOW
    )
    assert s.check_fresh(now=NOW).snapshot.sequence == 1
    with pytest.raises(ExpiredError):
        s.check_fresh(now=NOW + timedelta(days=1))


def test_registry_refused_when_trusted_root_expired(world: World) -> None:
    s = _state(world)
    with pytest.raises(ExpiredError, match="root"):
        s.update_registry(world.registry_bytes(world.snapshot(6)), now=FAR)


def test_rotation_of_release_keys_keeps_rollback_floor(world: World) -> None:
    s = _state(world, seq=5)
    new_rel = make_signers(2)
    root2 = edit.new_root(
        version=2,
        expires=FAR,
        role_keys={
            "root": [k.key for k in world.root_signers],
            "releases": [k.key for k in new_rel],
            "platform": [k.key for k in world.platform_signers],
        },
        thresholds={"root": 2, "releases": 2, "platform": 1},
    )
    s2 = s.update_root(sign_doc(root2.to_json(), world.root_signers))
    assert s2.root.root.version == 2
    assert s2.registry is None  # old registry no longer verifies under the new keys
    assert s2.floor_sequence == 5
    new_world = World(world.root_signers, new_rel, world.platform_signers, root2)
    with pytest.raises(RollbackError):
        s2.update_registry(new_world.registry_bytes(new_world.snapshot(3)), now=NOW)
    # Old release keys cannot sign for the new root.
    with pytest.raises(ThresholdError):
        s2.update_registry(world.registry_bytes(world.snapshot(9)), now=NOW)
    s3 = s2.update_registry(new_world.registry_bytes(new_world.snapshot(6)), now=NOW)
    assert s3.check_fresh(now=NOW).snapshot.sequence == 6


def test_state_persists_and_reloads(world: World, tmp_path: Path) -> None:
    s = _state(world)
    save_state(tmp_path, s)
    loaded = load_state(tmp_path)
    assert loaded is not None and loaded.floor_sequence == 5
    assert loaded.registry is not None and loaded.registry.raw == s.floor_raw
    with pytest.raises(RollbackError):
        loaded.update_registry(world.registry_bytes(world.snapshot(4)), now=NOW)
    assert load_state(tmp_path / "empty") is None


def test_tampered_state_file_is_refused(world: World, tmp_path: Path) -> None:
    save_state(tmp_path, _state(world))
    doc = json.loads((tmp_path / "registry.json").read_bytes())
    doc["signed"]["sequence"] = 10**9
    (tmp_path / "registry.json").write_bytes(canonicalize(doc))
    loaded = load_state(tmp_path)
    # Signatures no longer match: the file is not trusted as a registry...
    assert loaded is not None and loaded.registry is None
    with pytest.raises(FreezeError):
        loaded.check_fresh(now=NOW)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def _mutations(doc: object) -> st.SearchStrategy[object]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**60), 2**60)
        | st.text(max_size=70)
        | st.just("ab" * 32)
        | st.just("2036-01-01T00:00:00Z")
        | st.just([])
        | st.just({})
    )
    return leaves


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_registry_parser_parses_or_raises_format_error(data: st.DataObject) -> None:
    world = _shared_world()
    doc = json.loads(world.registry_bytes(_policy_snapshot(world)))
    # Walk to a random node and replace it (or delete a member, or add one).
    node = doc
    path: list[object] = []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(
            st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node))))
        )
        path.append(key)
        node = node[key]  # type: ignore[index]
    if not path:
        doc = data.draw(_mutations(doc))
    else:
        parent = doc
        for k in path[:-1]:
            parent = parent[k]  # type: ignore[index]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=5))] = data.draw(_mutations(None))
        else:
            parent[path[-1]] = data.draw(_mutations(None))  # type: ignore[index]
    try:
        raw = canonicalize(doc)
    except ManifestFormatError:
        return
    with contextlib.suppress(ManifestFormatError):
        load_registry(raw)


_WORLDS: list[World] = []


def _policy_snapshot(world: World) -> RegistrySnapshot:
    """The world's snapshot with one release that blesses a runtime policy (release.policies),
    so the mutations reach that member too."""
    snap = world.snapshot()
    rel = snap.releases["1.1.0"]
    blessed = edit.policies(mac={"selinux": b"\x01" * 32}, config=[b"\x02" * 32, b"\x03" * 32])
    return edit.set_policies(snap, rel.version, blessed)


def _shared_world() -> World:
    # Key generation is the slow part; one world serves every hypothesis example.
    if not _WORLDS:
        _WORLDS.append(build_world())
    return _WORLDS[0]
