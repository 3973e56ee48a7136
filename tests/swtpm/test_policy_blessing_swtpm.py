"""A release blesses the runtime policy of real daemons on swtpm (attestd-tpm + attestd).

attestd runs with a TOML configuration (``ATTEST_CONFIG``) and the broker measures a MAC policy
file (``--mac-policy``). ``attest manifest config-digest`` of that file, with attestd's own
``ATTEST_*`` environment, is exactly the digest attestd measured; blessed with ``attest manifest
bless --config-digest --policy-mac`` in a registry signed with the TEST keys, ``attest verify``
appraises the node affirming for configuration, and a release blessing another configuration
makes it contraindicated, naming the release and both digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.appraisal import TEST_MANIFESTS
from tests.swtpm.conftest import Node, NodeFactory, verify

from attest.cli import main as attest_main
from attest.node.broker.client import BrokerClient

pytestmark = pytest.mark.slow


def manifest(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    rc = attest_main(["manifest", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def attestd_environment(node: Node) -> list[str]:
    """The ``ATTEST_*`` variables the running attestd was started with (what a node provider
    reads from its unit), as ``--env`` arguments."""
    raw = Path(f"/proc/{node.api.pid}/environ").read_bytes().split(b"\0")
    env = [v.decode() for v in raw if v.startswith(b"ATTEST_")]
    return [a for v in sorted(env) for a in ("--env", v)]


# The swtpm's platform: no firmware measured anything, so PCRs 0-7 are zero.
SWTPM_PLATFORM = {
    "platform_id": "swtpm-no-firmware",
    "description": "swtpm started by the test tier, no firmware: PCRs 0-7 zero",
    "example": False,
    "pcrs": {"sha256": {str(i): "00" * 32 for i in range(8)}},
    "event_digests": {},
    "secure_boot": {"enabled": False, "variables": {}},
}


def registry_blessing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    version: str,
    *,
    config: str | None,
    mac: str | None,
    platform: dict[str, object] | None = None,
) -> tuple[Path, str]:
    """The TEST registry plus release ``version`` (always the same image and salt, so the same
    dm-verity root hash) blessing ``config`` and ``mac`` when given, and holding ``platform``'s
    reference (signed by a TEST platform key), signed by two TEST release keys; and the
    release's dm-verity root hash."""
    reg = tmp_path / f"registry-{version}.json"
    shutil.copy(TEST_MANIFESTS / "registry.json", reg)
    img = tmp_path / f"image-{version}"
    img.write_bytes(hashlib.sha256(b"the node image").digest() * 128 * 3)  # 3 blocks
    manifest(
        capsys,
        "bless",
        str(img),
        "--version",
        version,
        "--commit",
        "ab" * 20,
        "--salt",
        "5a" * 32,
        *(["--config-digest", config] if config else []),
        *(["--policy-mac", f"selinux={mac}"] if mac else []),
        "--registry",
        str(reg),
    )
    if platform is not None:
        ref = tmp_path / "platform.json"
        ref.write_text(json.dumps(platform))
        manifest(capsys, "platform-set", "--ref", str(ref), "--registry", str(reg))
        key = str(TEST_MANIFESTS / "keys" / "TEST-ONLY-platform-1.pem")
        manifest(capsys, "sign", str(reg), "--key", key, "--platform", str(platform["platform_id"]))
    for k in ("releases-1", "releases-2"):
        manifest(
            capsys, "sign", str(reg), "--key", str(TEST_MANIFESTS / "keys" / f"TEST-ONLY-{k}.pem")
        )
    root_hash = json.loads(reg.read_bytes())["signed"]["releases"][version]["verity"]["root_hash"]
    return reg, root_hash


def test_measured_config_digest_is_blessed_and_appraises_affirming(
    node_factory: NodeFactory,
    tmp_path: Path,
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = tmp_path / "attestd.toml"
    conf.write_text('[api]\nmax_batch = 1024\n\n[image]\nversion_file = "/nonexistent"\n')
    policy = tmp_path / "selinux-policy"
    policy.write_bytes(os.urandom(4096))
    mac = hashlib.sha256(policy.read_bytes()).hexdigest()
    node = node_factory(
        "policy-node", broker_args=["--mac-policy", str(policy)], env={"ATTEST_CONFIG": str(conf)}
    )

    # The digest governance computes from the file = the one attestd measured.
    out = manifest(capsys, "config-digest", str(conf), *attestd_environment(node), "--json")
    digest = json.loads(out)["sha256"]
    with BrokerClient(node.work / "run" / "tpm.sock") as api:
        records = api.runtime_log()
    measured = [r.content for r in records if r.content_type == "attest/config"]
    assert measured and measured[-1]["sha256"] == digest
    policies = [r.content for r in records if r.content_type == "attest/policy"]
    assert policies == [{"mac": "selinux", "sha256": mac}]

    # Blessed: the node runs release 9.0.0 (its root file system's dm-verity root hash,
    # measured in the runtime log) and the verifier finds its config and MAC policy blessed.
    reg, root_hash = registry_blessing(tmp_path, capsys, "9.0.0", config=digest, mac=mac)
    with BrokerClient(node.broker_operator_sock) as op:  # as the broker's verity watcher would
        op.measure("verity-device", {"name": "root", "root_hash": root_hash})
    code, doc = verify(
        capsys,
        node,
        tmp_path / "verifier",
        ear_key[0],
        "--root",
        str(TEST_MANIFESTS / "root.json"),
        "--snapshot",
        str(reg),
    )
    assert code == 0, (doc["explanation"], doc["notes"])
    assert doc["claims"]["configuration"] == 2
    found = {f["check"]: f for f in doc["result"]["findings"]}
    assert found["release-config"]["tier"] == "affirming"
    assert found["release-policy"]["tier"] == "affirming"
    assert doc["result"]["release"]["version"] == "9.0.0"

    # A release that blesses another configuration: contraindicated, naming both digests.
    other = hashlib.sha256(b"another deployment").hexdigest()
    reg2, root2 = registry_blessing(tmp_path, capsys, "9.0.1", config=other, mac=mac)
    assert root2 == root_hash
    code, doc = verify(
        capsys,
        node,
        tmp_path / "verifier",
        ear_key[0],
        "--root",
        str(TEST_MANIFESTS / "root.json"),
        "--snapshot",
        str(reg2),
    )
    assert code == 11, doc
    assert doc["claims"]["configuration"] == 96
    assert doc["explanation"].startswith(
        f"config digest differs from release 9.0.1: {other} → {digest}"
    )


def test_the_platform_is_appraised_when_named_and_a_warning_when_not(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node_factory: NodeFactory,
    ear_key: tuple[Path, ec.EllipticCurvePublicKey],  # noqa: F811 -- fixture
) -> None:
    """With a registry, affirming needs the quoted PCRs 0-7 to equal the signed reference of the
    platform the verifier names (``--platform``); naming none is a warning (exit 10) that says
    so, unless the verifier's rules waive the platform -- said in the result, and in the EAR's
    policy id. Through ``attest verify`` against real daemons on a swtpm."""
    node = node_factory("platform-node")
    reg, root_hash = registry_blessing(
        tmp_path, capsys, "9.1.0", config=None, mac=None, platform=SWTPM_PLATFORM
    )
    with BrokerClient(node.work / "run" / "tpm.sock") as api:
        api.measure("verity-device", {"name": "root", "root_hash": root_hash})
    registry = ("--root", str(TEST_MANIFESTS / "root.json"), "--snapshot", str(reg))
    rules = ("--policy", str(tmp_path / "default.json"))  # the default rules, from a file
    (tmp_path / "default.json").write_text("{}")

    def platform_finding(*extra: str) -> tuple[int, dict[str, object], dict[str, object]]:
        code, doc = verify(capsys, node, tmp_path / "verifier", ear_key[0], *registry, *extra)
        found = {f["check"]: f for f in doc["result"]["findings"]}
        return code, doc, found["platform"]

    code, doc, found = platform_finding(*rules, "--platform", "swtpm-no-firmware")
    assert code == 0 and doc["verdict"] == "affirming", doc  # the default rules, nothing waived
    assert doc["result"]["release"]["version"] == "9.1.0", doc
    assert found["tier"] == "affirming", found
    assert "8 firmware PCRs equal platform reference swtpm-no-firmware" in found["explanation"]

    code, doc, found = platform_finding(*rules)
    assert code == 10 and doc["verdict"] == "warning", doc
    assert found["value"] == 32
    assert str(doc["explanation"]).startswith("platform not appraised: no platform named"), doc

    waiver = tmp_path / "waiver.json"
    waiver.write_text('{"waive_platform": true}')
    code, doc, found = platform_finding("--policy", str(waiver))
    assert found["value"] == 0 and "waived by the verifier's policy" in found["explanation"]
    assert str(doc["policy_id"]) in found["explanation"], (doc["policy_id"], found)
