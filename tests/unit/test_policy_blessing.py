"""A release blesses the node's runtime policy: the MAC policy and attestd's configuration.

One named test per rule: the registry member ``policies`` (parsed strictly, canonical, bounded),
``attest manifest bless --policy-mac/--config-digest``, ``set-policies`` and ``config-digest``
(attestd's own ``settings_digest``), and the appraisal (``BlessedPolicyCheck``): match,
mismatched MAC digest, mismatched config, missing events, a release without policies, and a
host + guest pair in which only the guest's policy differs.

The nodes are ``tests/unit/test_appraisal.py``'s (a FakeTpm extended with the real OVMF log and
a runtime log whose latest ``config`` event is ``33…``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.appraisal import (
    PLATFORM,
    SELECTION,
    Node,
    blessed,
    make_node,
    make_registry,
    measure,
    run,
)
from tests.support.manifest import FAR, NOW, build_world, release, sign_doc

from attest.appraisal import appraise, appraise_incremental
from attest.appraisal.claims import Claim, Tier, Verdict
from attest.appraisal.layers import GUEST
from attest.appraisal.memory import NodeMemory
from attest.appraisal.pair import (
    GuestIdentity,
    appraise_pair,
    guest_nonce,
    host_nonce,
    vouchings_of,
)
from attest.cli import main
from attest.errors import ManifestFormatError
from attest.eventlog import parse_event_log
from attest.eventlog.cel import loads_cel
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.model import BlessedPolicies, RegistrySnapshot, Release, VerifiedRegistry
from attest.manifest.parse import load_registry
from attest.model import HashAlg
from attest.node.config import load_settings, settings_digest
from attest.runtime import verify_runtime_log

SELINUX = hashlib.sha256(b"selinux policy 33").digest()
CONFIG = bytes.fromhex("33" * 32)  # make_node's latest config event
OTHER = bytes.fromhex("44" * 32)


def with_policies(
    rel: Release, *, mac: dict[str, bytes] | None = None, config: list[bytes] | None = None
) -> Release:
    return dataclasses.replace(rel, policies=edit.policies(mac=mac, config=config))


def node_with_policy(mac: str = "selinux", digest: bytes = SELINUX, **kw: Any) -> Node:
    node = make_node(**kw)
    measure(node, "policy", {"mac": mac, "sha256": digest.hex()})
    return node


def registry_for(node: Node, rel: Release) -> VerifiedRegistry:
    return make_registry(node, releases=[rel])


def config_findings(r: Any) -> list[tuple[int, str, str]]:
    return [
        (f.value, f.check, f.explanation)
        for f in r.claim(Claim.CONFIGURATION).findings
        if f.check in ("release-policy", "release-config")
    ]


# --- the registry member -------------------------------------------------------------------


def _registry_doc(policies: object) -> dict[str, Any]:
    world = _world()
    snap = world.snapshot()
    doc = snap.to_json()
    doc["releases"]["1.1.0"]["policies"] = policies
    return {"signatures": [], "signed": doc}


_WORLDS: list[Any] = []


def _world() -> Any:
    if not _WORLDS:
        _WORLDS.append(build_world())
    return _WORLDS[0]


def test_policies_parse_and_round_trip() -> None:
    pol = {"config": ["11" * 32, "22" * 32], "mac": {"selinux": "aa" * 32}}
    _, snap = load_registry(canonicalize(_registry_doc(pol)))
    p = snap.releases["1.1.0"].policies
    assert p == BlessedPolicies(mac={"selinux": b"\xaa" * 32}, config=(b"\x11" * 32, b"\x22" * 32))
    assert snap.releases["1.0.0"].policies is None
    assert snap.releases["1.0.0"].to_json().keys() == release("1.0.0", 1).to_json().keys()
    assert "policies" not in release("1.0.0", 1).to_json()  # old registries: same bytes


def test_policies_mac_none_and_config_only() -> None:
    _, snap = load_registry(canonicalize(_registry_doc({"mac": "none"})))
    assert snap.releases["1.1.0"].policies == BlessedPolicies(mac={}, config=None)
    _, snap = load_registry(canonicalize(_registry_doc({"config": ["11" * 32]})))
    assert snap.releases["1.1.0"].policies == BlessedPolicies(mac=None, config=(b"\x11" * 32,))


@pytest.mark.parametrize(
    "bad",
    [
        {},  # neither member
        {"mac": {}},  # spelled "none"
        {"mac": "None"},
        {"mac": {"none": "aa" * 32}},  # reserved
        {"mac": {"SELinux": "aa" * 32}},  # MAC type names are lower case
        {"mac": {"selinux": "AA" * 32}},  # hex is lower case
        {"mac": {"selinux": "aa" * 31}},  # 32 bytes
        {"mac": {f"m{i}": "aa" * 32 for i in range(9)}},  # at most 8 types
        {"config": []},
        {"config": ["22" * 32, "11" * 32]},  # sorted
        {"config": ["11" * 32, "11" * 32]},  # distinct
        {"config": "11" * 32},
        {"config": ["11" * 32] * 65},
        {"mac": "none", "extra": 1},
        None,
        [],
    ],
)
def test_policies_refuses_malformed(bad: object) -> None:
    with pytest.raises(ManifestFormatError):
        load_registry(canonicalize(_registry_doc(bad)))


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.text(max_size=40)
    | st.sampled_from(["none", "aa" * 32, "AA" * 32, "aa" * 31, "selinux", "11" * 32])
)
_KEY = st.sampled_from(["mac", "config", "selinux", "none", "apparmor", "X"]) | st.text(max_size=6)
_JSON = st.recursive(
    _LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(_KEY, c, max_size=4), max_leaves=12
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=_JSON)
def test_policies_parser_parses_or_raises_format_error(policies: object) -> None:
    """Any value of ``policies`` parses -- and then re-serialises to the same document -- or
    raises the registry's one format error."""
    doc = _registry_doc(policies)
    try:
        raw = canonicalize(doc)
    except ManifestFormatError:
        return
    with contextlib.suppress(ManifestFormatError):
        _, snap = load_registry(raw)
        assert snap.releases["1.1.0"].to_json()["policies"] == policies


# --- the CLI -------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["manifest", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def draft(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reg.json").write_bytes(
        canonicalize({"signatures": [], "signed": edit.empty_registry(expires=FAR).to_json()})
    )
    (tmp_path / "img").write_bytes(b"\x07" * 4096 * 3)
    return tmp_path


def test_bless_with_policies(draft: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = cli(
        capsys,
        "bless",
        "img",
        "--version",
        "1.4.2",
        "--commit",
        "ab" * 20,
        "--policy-mac",
        f"selinux={SELINUX.hex()}",
        "--config-digest",
        OTHER.hex(),
        "--config-digest",
        CONFIG.hex(),
        "--registry",
        "reg.json",
        "--now",
        "2025-06-01T00:00:00Z",
    )
    assert rc == 0, err
    _, snap = load_registry((draft / "reg.json").read_bytes())
    assert snap.releases["1.4.2"].policies == BlessedPolicies(
        mac={"selinux": SELINUX}, config=(CONFIG, OTHER)
    )  # sorted
    rc, out, _ = cli(capsys, "show", "reg.json", "--now", "2025-06-01T00:00:00Z")
    assert rc == 0 and f"policies: MAC policy selinux {SELINUX.hex()}" in out
    # set-policies replaces them; --clear removes them.
    rc, out, err = cli(
        capsys, "set-policies", "1.4.2", "--policy-mac", "none", "--registry", "reg.json"
    )
    assert rc == 0, err
    _, snap = load_registry((draft / "reg.json").read_bytes())
    assert snap.releases["1.4.2"].policies == BlessedPolicies(mac={}, config=None)
    assert cli(capsys, "set-policies", "1.4.2", "--clear", "--registry", "reg.json")[0] == 0
    _, snap = load_registry((draft / "reg.json").read_bytes())
    assert snap.releases["1.4.2"].policies is None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--policy-mac", "selinux"], 2),
        (["--policy-mac", "none", "--policy-mac", f"selinux={SELINUX.hex()}"], 2),
        (["--policy-mac", f"selinux={SELINUX.hex()}", "--policy-mac", f"selinux={OTHER.hex()}"], 2),
        (["--config-digest", "abcd"], 2),
        (["--policy-mac", f"SELinux={SELINUX.hex()}"], 3),
        ([], 2),
    ],
)
def test_set_policies_refuses_bad_arguments(
    draft: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int
) -> None:
    assert (
        cli(
            capsys,
            "bless",
            "img",
            "--version",
            "1.4.2",
            "--commit",
            "ab" * 20,
            "--registry",
            "reg.json",
        )[0]
        == 0
    )
    rc, _, err = cli(capsys, "set-policies", "1.4.2", *args, "--registry", "reg.json")
    assert rc == code and err.count("\n") == 1, err


def test_config_digest_is_attestds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``attest manifest config-digest`` is attestd's ``settings_digest(load_settings(...))``
    of the same file and ``ATTEST_*`` environment -- and ignores the shell's own environment."""
    conf = tmp_path / "attestd.toml"
    conf.write_text('node_id = "n1"\n[api]\nport = 9443\n')
    env = {"ATTEST_API_PORT": "9444", "ATTEST_TPM_STATE_DIR": "/srv/attest"}
    want = settings_digest(load_settings(conf, environ=env))
    rc, out, _ = cli(
        capsys,
        "config-digest",
        str(conf),
        "--json",
        *[a for k, v in env.items() for a in ("--env", f"{k}={v}")],
    )
    assert rc == 0 and json.loads(out) == {
        "config": str(conf),
        "sha256": want,
        "environment": sorted(env),
    }
    rc, out, _ = cli(capsys, "config-digest", str(conf))
    assert rc == 0 and out.strip() == settings_digest(load_settings(conf, environ={}))
    assert out.strip() != want
    rc, _, err = cli(capsys, "config-digest", str(conf), "--env", "PATH=/bin")
    assert rc == 2 and "--env" in err
    conf.write_text("[api]\nport = 99999\n")
    rc, _, err = cli(capsys, "config-digest", str(conf))
    assert rc == 2 and "api.port" in err


# --- appraisal: one test per rule ----------------------------------------------------------


def test_release_without_policies_makes_no_policy_finding() -> None:
    node = node_with_policy()
    r = run(node, registry_for(node, blessed()))
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert config_findings(r) == []


def test_blessed_policies_match_is_affirming() -> None:
    node = node_with_policy()
    rel = with_policies(blessed(), mac={"selinux": SELINUX}, config=[OTHER, CONFIG])
    r = run(node, registry_for(node, rel))
    assert r.verdict is Verdict.AFFIRMING, r.explanations
    assert r.claim(Claim.CONFIGURATION).value == 2
    assert [(v, c) for v, c, _ in config_findings(r)] == [
        (2, "release-policy"),
        (2, "release-config"),
    ]


def test_mismatched_mac_digest_is_contraindicated() -> None:
    node = node_with_policy(digest=OTHER)
    rel = with_policies(blessed(), mac={"selinux": SELINUX}, config=[CONFIG])
    r = run(node, registry_for(node, rel))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert r.first_divergence == (
        f"selinux policy digest differs from release 1.4.2: "
        f"{SELINUX.hex()} → {OTHER.hex()} (runtime log event 10)"
    )


def test_other_mac_type_than_blessed_is_contraindicated() -> None:
    node = node_with_policy(mac="apparmor")
    r = run(node, registry_for(node, with_policies(blessed(), mac={"selinux": SELINUX})))
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert (r.first_divergence or "").startswith(
        f"MAC policy differs from release 1.4.2: selinux {SELINUX.hex()} → apparmor "
    )


def test_mac_policy_where_none_is_blessed_is_contraindicated() -> None:
    node = node_with_policy()
    r = run(node, registry_for(node, with_policies(blessed(), mac={})))
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert (r.first_divergence or "").startswith(
        f"MAC policy differs from release 1.4.2: none → selinux {SELINUX.hex()}"
    )
    plain = make_node()  # no policy event: as "none" expects
    r = run(plain, registry_for(plain, with_policies(blessed(), mac={})))
    assert r.verdict is Verdict.AFFIRMING and config_findings(r)[0][0] == 2


def test_mismatched_config_digest_is_contraindicated() -> None:
    node = node_with_policy()
    rel = with_policies(blessed(), mac={"selinux": SELINUX}, config=[OTHER])
    r = run(node, registry_for(node, rel))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert r.first_divergence == (
        f"config digest differs from release 1.4.2: {OTHER.hex()} → "
        f"{CONFIG.hex()} (runtime log event 8)"
    )


def test_latest_config_event_counts() -> None:
    """The release blesses the configuration the node runs now: an earlier ``config`` event of
    the same boot (``11…`` in make_node's log) is history."""
    node = make_node()
    r = run(node, registry_for(node, with_policies(blessed(), config=[bytes.fromhex("11" * 32)])))
    assert r.claim(Claim.CONFIGURATION).value == 96
    node = make_node()
    measure(node, "config", {"sha256": "11" * 32})
    r = run(node, registry_for(node, with_policies(blessed(), config=[bytes.fromhex("11" * 32)])))
    assert r.verdict is Verdict.AFFIRMING, r.explanations


def test_missing_policy_event_is_contraindicated() -> None:
    node = make_node()  # the broker measured no MAC policy
    r = run(node, registry_for(node, with_policies(blessed(), mac={"selinux": SELINUX})))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.first_divergence == (
        f"MAC policy missing: release 1.4.2 blesses selinux "
        f"{SELINUX.hex()}, the runtime log has no `policy` event"
    )


def test_missing_config_event_is_contraindicated() -> None:
    node = _node_without(kind="config")
    r = run(node, registry_for(node, with_policies(blessed(), config=[CONFIG])))
    assert r.verdict is Verdict.CONTRAINDICATED
    assert r.first_divergence == (
        f"config digest missing: release 1.4.2 blesses {CONFIG.hex()}, "
        "the runtime log has no `config` event"
    )


def test_no_runtime_log_is_contraindicated_when_policies_are_blessed() -> None:
    node = node_with_policy()
    doc = node.evidence(b"n" * 32)
    del doc["runtime_log"]
    r = run(node, registry_for(node, with_policies(blessed(), config=[CONFIG])), doc=doc)
    assert r.claim(Claim.CONFIGURATION).value == 96
    assert "no verified runtime log shows them" in " ".join(r.explanations)


def test_incremental_appraisal_compares_the_latest_events() -> None:
    """Held records and new ones: the latest events are the whole log's, as in ``appraise``."""
    node = node_with_policy()
    reg = registry_for(node, with_policies(blessed(), mac={"selinux": SELINUX}, config=[CONFIG]))
    kw: dict[str, Any] = {
        "enrollment": node.enrollment,
        "selection": SELECTION,
        "registry": reg,
        "platform_id": PLATFORM,
        "previous": None,
        "tls_binding": None,
        "now": NOW,
    }
    first = appraise_incremental(
        node.evidence(b"a" * 32),
        memory=NodeMemory(),
        nonce=b"a" * 32,
        audit_entries=node.audit,
        **kw,
    )
    assert first.result.verdict is Verdict.AFFIRMING
    measure(node, "policy", {"mac": "selinux", "sha256": OTHER.hex()})
    full = node.evidence(b"b" * 32)
    held = first.memory.runtime_next
    doc = {
        **full,
        "runtime_log": {
            **full["runtime_log"],
            "start": held,
            "records": full["runtime_log"]["records"][held:],
        },
    }
    doc["firmware_log"] = {**full["firmware_log"], "start": first.memory.firmware_size, "data": ""}
    second = appraise_incremental(doc, memory=first.memory, nonce=b"b" * 32, audit_entries=[], **kw)
    assert second.complete
    whole = appraise(full, nonce=b"b" * 32, audit_entries=node.audit, **kw)
    assert second.result.to_json() == whole.to_json()
    assert whole.claim(Claim.CONFIGURATION).value == 96


def _node_without(*, kind: str) -> Node:
    """make_node's node, its runtime log measured again without the events of ``kind``."""
    node = make_node(seed=b"without-" + kind.encode())
    records = [r for r in node.records if r["content_type"] != f"attest/{kind}"]
    node.tpm.reset()
    for e in parse_event_log(node.fw).events:
        if e.type != 0x3 and HashAlg.SHA256 in e.digests:
            node.tpm.extend(e.pcr, {HashAlg.SHA256: e.digests[HashAlg.SHA256]})
    node.records.clear()
    for r in records:
        measure(node, r["content_type"].removeprefix("attest/"), r["content"])
    return node


# --- a host and its guest: each layer against its own release -------------------------------

EK = hashlib.sha256(b"guest g1's EK").digest()


def _pair(guest_blesses: bytes) -> Any:
    host = node_with_policy(seed=b"host-1")
    measure(host, "vtpm", {"guest_id": "g1", "ek_sha256": EK.hex()})
    guest_rel = blessed("2.0.0", 7)
    guest = node_with_policy(root_hash=guest_rel.verity.root_hash, seed=b"g1", version="2.0.0")
    host_reg = registry_for(
        host, with_policies(blessed(), mac={"selinux": SELINUX}, config=[CONFIG])
    )
    guest_reg = registry_for(
        guest, with_policies(guest_rel, mac={"selinux": SELINUX}, config=[guest_blesses])
    )
    challenge = b"c" * 32
    digest = hashlib.sha256(b"the guest evidence as received").digest()
    g = run(guest, guest_reg, nonce=guest_nonce(challenge))
    h = run(host, host_reg, nonce=host_nonce(challenge, digest))
    events = verify_runtime_log(
        loads_cel(json.dumps(host.records)), host.pcrs(), pcr=host.enrollment.runtime_pcr
    ).events
    return appraise_pair(
        h,
        g,
        vouchings_of(events),
        GuestIdentity("g1", EK),
        challenge=challenge,
        guest_evidence=digest,
    )


def test_pair_each_layer_against_its_own_release() -> None:
    pair = _pair(CONFIG)
    assert pair.verdict is Verdict.AFFIRMING, pair.first_divergence
    assert [f.tier for f in pair.guest.findings if f.check == "release-config"] == [Tier.AFFIRMING]


def test_pair_where_only_the_guests_policy_differs() -> None:
    pair = _pair(OTHER)
    assert pair.host.verdict is Verdict.AFFIRMING
    assert pair.verdict is Verdict.CONTRAINDICATED
    assert pair.failed_layer == GUEST
    assert pair.guest.claim(Claim.CONFIGURATION).value == 96
    assert pair.first_divergence == (
        f"guest layer (node-7): config digest differs from release "
        f"2.0.0: {OTHER.hex()} → {CONFIG.hex()} "
        "(runtime log event 8)"
    )


def test_registry_snapshot_with_policies_round_trips() -> None:
    snap = edit.checked(
        RegistrySnapshot(
            sequence=1,
            expires=FAR,
            releases={
                "1.4.2": with_policies(blessed(), mac={"selinux": SELINUX}, config=[OTHER, CONFIG])
            },
        )
    )
    world = _world()
    raw = sign_doc(snap.to_json(), world.release_signers[:2])
    assert load_registry(raw)[1] == snap
