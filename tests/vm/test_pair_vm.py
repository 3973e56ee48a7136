"""Issue 9's harness scenarios: the machine running QEMU is the host (its own swtpm as the host
TPM, attestd-tpm with ``--vtpm-dir`` + attestd), the VM is the guest, booted on the vTPM the
host's manager created for it (``Vm(swtpm_state=...)``).

1. host and guest both good, the guest's vTPM vouched for by the host -> affirming (and the
   guest on its own, appraised in process on the same path against the harness's registry:
   affirming as its release);
2. the guest moved to a vTPM the host never vouched for -> contraindicated at the guest layer,
   naming the cause;
3. the host running an unblessed image (a dm-verity root no release blesses) with a good guest
   -> contraindicated at the host layer;
4. a host replaying an old quote -> contraindicated at the host layer as stale.

One VM at a time: each test boots its guest and stops it; the tier skips when another QEMU VM
is running on the machine (the harness's own scenarios, another engineer's VM).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.appraisal import TEST_MANIFESTS
from tests.support.cli import verify_main
from tests.support.replay import replaying
from tests.swtpm.conftest import (  # noqa: F401 -- ear_key, node_factory: the fixtures
    Node,
    NodeFactory,
    ear_key,
    no_release_policy,
    node_factory,
)
from vm_harness import WORK
from vm_harness.build import NodeImage
from vm_harness.run import Vm
from vm_harness.trust import verifier_registry
from vm_harness.verifier import attest_vm

from attest.appraisal.ear import verify_ear
from attest.node.broker.client import BrokerClient
from attest.verifier.contact import selection_for
from attest.verifier.enrollments import EnrollmentStore

pytestmark = pytest.mark.slow
GUEST_ID = "vm-node"  # the node id the harness image's attestd runs with


def _no_other_vm() -> None:
    out = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True).stdout
    if out.strip():
        pytest.skip(f"another QEMU VM is running (one at a time): {out.strip()[:120]}")


@dataclass
class PairVm:
    host: Node
    vtpm_dir: Path
    guest: Vm
    ear_key: Path
    ear_pub: ec.EllipticCurvePublicKey
    state: Path

    def verify(
        self, capsys: pytest.CaptureFixture[str], *extra: str, host_url: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        ca = self.vtpm_dir / "ca"
        args = [
            self.guest.url,
            "--host",
            host_url or self.host.url,
            "--state",
            str(self.state),
            "--ear-key",
            str(self.ear_key),
            "--json",
            "--guest-id",
            GUEST_ID,
            "--ek-ca",
            str(ca / "swtpm-localca-rootca-cert.pem"),
            "--ek-ca",
            str(ca / "issuercert.pem"),
            # the harness's own vTPM CA: a TPM it manufactures chains too (scenario 2)
            "--ek-ca",
            str(self.guest.ca_dir / "swtpm-localca-rootca-cert.pem"),
            "--ek-ca",
            str(self.guest.ca_dir / "issuercert.pem"),
            "--host-ek-ca",
            str(self.host.state.root_ca),
            "--host-ek-ca",
            str(self.host.state.intermediate_ca),
            "--host-operator-socket",
            str(self.host.api_sock),
            # The guest's API is reached over user networking without an activation channel:
            # its EK chain is checked (--ek-ca) but its AK is trusted on first use, said so.
            "--tofu",
            # The pair's verdict here is about vouching, not about a blessed registry.
            "--policy",
            no_release_policy(self.state.parent),
            *extra,
        ]
        capsys.readouterr()
        code = verify_main(args)
        return code, json.loads(capsys.readouterr().out)


@pytest.fixture()
def pair_vm(
    node_image: NodeImage,
    node_factory: NodeFactory,  # noqa: F811
    ear_key: tuple[Path, ec.EllipticCurvePrivateKey],  # noqa: F811
    tmp_path: Path,
) -> Iterator[PairVm]:
    _no_other_vm()
    vtpm_dir = tmp_path / "host-vtpm"
    # The host's vTPM CA is the harness's, so that the harness's own appraisal (scenario 1)
    # enrolls the guest as it enrolls its VMs.
    vtpm_dir.mkdir()
    (WORK / "ca").mkdir(parents=True, exist_ok=True)
    (vtpm_dir / "ca").symlink_to(WORK / "ca")
    host = node_factory(
        "host", broker_args=["--vtpm-dir", str(vtpm_dir)], env={"ATTEST_NODE_ID": "host-1"}
    )
    with BrokerClient(host.broker_operator_sock, timeout=300) as c:
        created = c.vtpm_create(GUEST_ID)
    vm = Vm(node_image, name="pair-guest", swtpm_state=Path(created.vtpm.state_dir))
    ear, key = ear_key
    try:
        vm.prepare(fresh_tpm=False)
        vm.start()
        vm.wait_ready()
        yield PairVm(host, vtpm_dir, vm, ear, key.public_key(), tmp_path / "verifier")
    finally:
        vm.stop()


def test_scenario1_host_and_guest_blessed_is_affirming(
    pair_vm: PairVm,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, doc = pair_vm.verify(capsys)
    assert code == 0, (doc["explanation"], doc["layers"]["guest"]["notes"])
    assert doc["failed_layer"] is None
    assert [v["guest_id"] for v in doc["layers"]["host"]["vouchings"]] == [GUEST_ID]
    claims = verify_ear(doc["ear"], pair_vm.ear_pub)
    assert {s["ear.status"] for s in claims["submods"].values()} == {"affirming"}
    # The guest image is the blessed one: the same VM appraised on its own against a registry
    # blessing the release (expected PCRs 4/9/11/12/15) and the platform reference (0-2).
    image = pair_vm.guest.image
    att = attest_vm(
        pair_vm.guest,
        registry=verifier_registry([image]),
        key=ec.generate_private_key(ec.SECP256R1()),
    )
    assert att.affirming_as(image.version), att.summary()


def test_scenario2_guest_moved_to_an_unvouched_vtpm_is_contraindicated(
    pair_vm: PairVm,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pair_vm.verify(capsys)[0] == 0
    vm = pair_vm.guest
    vm.stop()
    vm.swtpm_state = None
    vm.prepare(fresh_disks=False, fresh_tpm=True)  # the harness manufactures another vTPM
    vm.start()
    vm.wait_ready()
    code, doc = pair_vm.verify(capsys, "--re-enroll")
    assert code == 11, doc
    assert doc["failed_layer"] == "guest" and doc["layers"]["host"]["verdict"] == "affirming"
    assert "never vouched for" in doc["explanation"]


def test_scenario3_unblessed_host_is_contraindicated_at_the_host_layer(
    pair_vm: PairVm,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with BrokerClient(pair_vm.host.broker_operator_sock) as op:  # as its verity watcher would
        op.measure("verity-device", {"name": "root", "root_hash": "5a" * 32})
    code, doc = pair_vm.verify(
        capsys,
        "--host-root",
        str(TEST_MANIFESTS / "root.json"),
        "--host-snapshot",
        str(TEST_MANIFESTS / "registry.json"),
    )
    assert code == 11, doc
    assert doc["failed_layer"] == "host"
    assert doc["explanation"].startswith("host layer (host-1): ")


def test_scenario4_replayed_old_host_quote_is_refused_as_stale(
    pair_vm: PairVm,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert pair_vm.verify(capsys)[0] == 0
    record = EnrollmentStore(pair_vm.state).load(pair_vm.host.url)
    assert record is not None
    with pair_vm.host.client() as c:
        old = c.evidence(
            os.urandom(32),
            selection_for(record.enrollment.runtime_pcr),
            firmware_from=0,
            runtime_from=0,
        )
    with replaying(pair_vm.host.url, old) as url:
        code, doc = pair_vm.verify(capsys, host_url=url)
    assert code == 11, doc
    assert doc["failed_layer"] == "host"
    assert "the host's quote does not commit to this guest's evidence" in doc["explanation"]
    assert any(
        "stale or replayed" in f["explanation"] for f in doc["layers"]["host"]["result"]["findings"]
    )
