"""A release's ``snp`` section in the registry: strict parsing, normal form, bounds, the round
trip, the signature over it, and registries without it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.manifest import NOW, World, release, snp_launch

from attest.errors import ManifestFormatError, ThresholdError
from attest.manifest import edit
from attest.manifest.canonical import canonicalize
from attest.manifest.model import ReleaseSnp
from attest.manifest.parse import MAX_SNP_LAUNCHES, load_registry, parse_release_snp
from attest.manifest.verify import verify_snapshot
from attest.snp.policy import CrlMissing, SnpPolicy
from attest.snp.report import Product, TcbVersion

POLICY = SnpPolicy(
    min_tcb={
        Product.MILAN: TcbVersion(bootloader=3, tee=0, snp=8, microcode=115),
        Product.TURIN: TcbVersion(bootloader=1, tee=1, snp=1, microcode=1, fmc=1),
    },
    min_report_version=3,
    allow_smt=False,
    require_single_socket=True,
    allowed_chip_ids=frozenset({b"\x01" * 64, b"\x02" * 64}),
    crl_missing=CrlMissing.WARN,
)
SNP = ReleaseSnp(
    launches=(snp_launch("a"), snp_launch("b", measurement=b"\x22" * 48)),
    policy=POLICY,
    bind_host_data=True,
)


def _snp_doc() -> dict[str, Any]:
    return json.loads(json.dumps(SNP.to_json()))


def _registry_doc(world: World, snp: dict[str, Any]) -> bytes:
    doc = json.loads(world.registry_bytes(world.snapshot(releases=[release("1.0.0", 1)])))
    doc["signed"]["releases"]["1.0.0"]["snp"] = snp
    return canonicalize(doc)


def test_round_trip_through_the_registry(world: World) -> None:
    snap = world.snapshot(releases=[replace(release("1.0.0", 1), snp=SNP)])
    _, parsed = load_registry(world.registry_bytes(snap))
    got = parsed.releases["1.0.0"].snp
    assert got == SNP
    assert got is not None and got.policy.min_tcb[Product.TURIN].fmc == 1
    assert parsed.to_json() == snap.to_json()


def test_old_registry_without_snp_still_parses(world: World) -> None:
    _, parsed = load_registry(world.registry_bytes())
    assert all(r.snp is None for r in parsed.releases.values())
    assert all("snp" not in r.to_json() for r in parsed.releases.values())


def test_signature_covers_the_measurement(world: World) -> None:
    snap = world.snapshot(releases=[replace(release("1.0.0", 1), snp=SNP)])
    doc = json.loads(world.registry_bytes(snap))
    assert verify_snapshot(world.root, canonicalize(doc), now=NOW).snapshot.releases["1.0.0"].snp
    doc["signed"]["releases"]["1.0.0"]["snp"]["launches"][0]["measurement"] = "33" * 48
    with pytest.raises(ThresholdError):
        verify_snapshot(world.root, canonicalize(doc), now=NOW)
    doc = json.loads(world.registry_bytes(snap))
    doc["signed"]["releases"]["1.0.0"]["snp"]["policy"]["allow_smt"] = True
    with pytest.raises(ThresholdError):
        verify_snapshot(world.root, canonicalize(doc), now=NOW)


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, last = path.split(".")
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("launches.0.extra", 1, "unknown member"),
        ("launches.0.inputs.uefi", "00" * 32, "unknown member"),
        ("policy.allow_debug", True, "unknown member"),  # debug is never blessed
        ("policy.vmpl", KeyError, "missing vmpl"),
        ("launches.0.measurement", "11" * 32, "expected 48"),
        ("launches.0.measurement", "AB" * 48, "hex"),
        ("launches.0.vcpus", 0, "1..512"),
        ("launches.0.vcpus", 513, "1..512"),
        ("launches.0.vcpus", True, "1..512"),
        ("launches.0.slot", "", "name"),
        ("launches.0.slot", "a/b", "name"),
        ("launches.0.vcpu_type", "EPYC v4", "name"),
        ("launches.0.inputs.kernel", None, "needs a kernel"),
        ("launches", [], "no launch"),
        ("policy.vmpl", 4, "0..3"),
        ("policy.min_report_version", 1, "2..5"),
        ("policy.crl_missing", "ignore", "refuse"),
        ("policy.bind_host_data", 1, "true or false"),
        ("policy.min_tcb.Rome", {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}, "Rome"),
        ("policy.min_tcb.Milan.fmc", 1, "unknown member"),  # Milan has no FMC SPL
        ("policy.min_tcb.Milan.tee", 256, "0..255"),
        ("policy.allowed_chip_ids", [], "sorted and distinct"),
        ("policy.allowed_chip_ids", ["02" * 64, "01" * 64], "sorted and distinct"),
        ("policy.allowed_chip_ids", ["01" * 64, "01" * 64], "sorted and distinct"),
        ("policy.allowed_chip_ids", ["01" * 32], "expected 64"),
    ],
)
def test_refuses_malformed_snp_section(path: str, value: object, message: str) -> None:
    with pytest.raises(ManifestFormatError, match=message):
        parse_release_snp(_set(_snp_doc(), path, value), field="snp")


def test_launches_must_be_in_normal_form() -> None:
    doc = _snp_doc()
    doc["launches"].reverse()
    with pytest.raises(ManifestFormatError, match="sort by slot"):
        parse_release_snp(doc, field="snp")
    doc = _snp_doc()
    doc["launches"][1] = doc["launches"][0]
    with pytest.raises(ManifestFormatError, match="one launch each"):
        parse_release_snp(doc, field="snp")


def test_launch_count_is_bounded() -> None:
    doc = _snp_doc()
    doc["launches"] = [snp_launch("s", vcpus=i + 1).to_json() for i in range(MAX_SNP_LAUNCHES + 1)]
    with pytest.raises(ManifestFormatError, match="limit"):
        parse_release_snp(doc, field="snp")
    doc["launches"] = doc["launches"][:MAX_SNP_LAUNCHES]
    assert len(parse_release_snp(doc, field="snp").launches) == MAX_SNP_LAUNCHES


def test_registry_refuses_a_malformed_snp_section(world: World) -> None:
    with pytest.raises(ManifestFormatError, match=r"releases\.1\.0\.0\.snp"):
        load_registry(_registry_doc(world, _set(_snp_doc(), "launches.0.vcpus", 0)))


def test_edit_adds_a_slot_in_order_and_refuses_a_duplicate(world: World) -> None:
    snap = world.snapshot(
        releases=[replace(release("1.0.0", 1), snp=ReleaseSnp((snp_launch("b"),)))]
    )
    snap = edit.add_snp_launch(snap, "1.0.0", snp_launch("a"))
    snp = snap.releases["1.0.0"].snp
    assert snp is not None and [x.slot for x in snp.launches] == ["a", "b"]
    assert snp.policy == SnpPolicy()  # kept: no policy given
    with pytest.raises(ManifestFormatError, match="already blessed"):
        edit.add_snp_launch(snap, "1.0.0", snp_launch("a"))
    snap = edit.add_snp_launch(snap, "1.0.0", snp_launch("a", vcpus=8), policy=POLICY)
    snp = snap.releases["1.0.0"].snp
    assert snp is not None and snp.policy == POLICY and len(snp.launches) == 3


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=130),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c, max_size=3),
    max_leaves=8,
)
_paths = st.sampled_from(
    [
        "launches",
        "launches.0",
        "launches.0.slot",
        "launches.0.measurement",
        "launches.0.vcpus",
        "launches.0.inputs",
        "launches.0.inputs.ovmf",
        "launches.1.inputs.cmdline",
        "policy",
        "policy.min_tcb",
        "policy.min_tcb.Milan",
        "policy.min_tcb.Turin.fmc",
        "policy.allowed_chip_ids",
        "policy.vmpl",
        "policy.crl_missing",
        "policy.new",
    ]
)


@settings(max_examples=300, deadline=None)
@given(_paths, _json)
def test_any_mutation_parses_or_raises_the_format_error(path: str, value: object) -> None:
    try:
        parsed = parse_release_snp(_set(_snp_doc(), path, value), field="snp")
    except ManifestFormatError:
        return
    assert parse_release_snp(parsed.to_json(), field="snp") == parsed


def test_schema_describes_exactly_the_members_the_parser_requires() -> None:
    schema = json.loads(
        (Path(__file__).parents[3] / "firmware_manifests/schema/registry.schema.json").read_text()
    )
    defs = schema["$defs"]
    assert defs["release"]["properties"]["snp"] == {"$ref": "#/$defs/release_snp"}
    assert defs["release_snp"]["properties"]["policy"] == {"$ref": "#/$defs/snp_policy"}
    assert defs["platform_signed"]["properties"]["snp"]["$ref"] == "#/$defs/snp_policy"
    assert "snp" not in defs["platform_signed"]["required"]  # optional, as in the parser
    doc = _snp_doc()
    parts = [
        (defs["release_snp"], doc),
        (defs["snp_policy"], doc["policy"]),
        (defs["snp_launch"], doc["launches"][0]),
        (defs["snp_launch"]["properties"]["inputs"], doc["launches"][0]["inputs"]),
        (defs["snp_tcb"], doc["policy"]["min_tcb"]["Milan"]),
        (defs["snp_tcb_fmc"], doc["policy"]["min_tcb"]["Turin"]),
    ]
    for part, member in parts:
        assert part["additionalProperties"] is False
        assert set(part["properties"]) == set(member)
    for part, member in parts[:4]:  # every member of these is required by both
        assert set(part["required"]) == set(member)
        for name in part["required"]:
            broken = _snp_doc()
            target = {id(doc): broken, id(doc["policy"]): broken["policy"]}.get(id(member))
            if target is None:
                launch0 = broken["launches"][0]
                target = launch0 if member is doc["launches"][0] else launch0["inputs"]
            del target[name]
            with pytest.raises(ManifestFormatError, match="missing"):
                parse_release_snp(broken, field="snp")


def test_set_snp_policy_keeps_the_launches_and_needs_an_snp_section(world: World) -> None:
    snap = world.snapshot(releases=[replace(release("1.0.0", 1), snp=SNP), release("1.1.0", 2)])
    new = edit.set_snp_policy(snap, "1.0.0", SnpPolicy(allow_smt=False), bind_host_data=False)
    got = new.releases["1.0.0"].snp
    assert got is not None and got.launches == SNP.launches
    assert got.policy == SnpPolicy(allow_smt=False) and not got.bind_host_data
    with pytest.raises(ManifestFormatError, match="blesses no SEV-SNP launch"):
        edit.set_snp_policy(snap, "1.1.0", SnpPolicy(), bind_host_data=False)
    with pytest.raises(ManifestFormatError, match="9.9.9"):
        edit.set_snp_policy(snap, "9.9.9", SnpPolicy(), bind_host_data=False)
