"""What the scenarios share: the built images, the booted node reused across scenarios, the
orchestrator's files for ``attest verify``, the registry snapshots offered to the node's upgrade
gate, and the verifier's registry and EAR key (``verifier.attest_vm``)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from attest.enroll import Enrollment
from attest.manifest.model import VerifiedRegistry
from attest.model import PcrSelection
from attest.tpmstruct import ClockInfo

from . import WORK
from . import orchestrator as orch
from .build import NodeImage, build
from .run import Vm
from .trust import signed_registry, verifier_registry
from .verifier import Attestation, attest_vm


@dataclass
class Outcome:
    name: str
    passed: bool
    detail: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifierFiles:
    registry: Path
    trust: Path
    revoked: Path
    key: Path
    enrollments: Path


class Harness:
    """Holds the built image and, where a scenario does not need a fresh one, a booted VM
    reused across scenarios."""

    def __init__(self, image: NodeImage, work: Path = WORK) -> None:
        self.image = image
        self.work = work
        self.vm: Vm | None = None
        self.boot_seconds: float | None = None
        self.first_affirming: float | None = None
        self.running = image.version  # the release the shared node runs (upgrades change it)
        self.images = {image.version: image}
        self.snapshot_sequence = 0
        self.ear_key = ec.generate_private_key(ec.SECP256R1())  # the in-process verifier's
        self._verifier: VerifierFiles | None = None
        self._registries: dict[tuple[str, ...], VerifiedRegistry] = {}

    def verifier_files(self) -> VerifierFiles:
        """The orchestrator's files for ``attest verify`` (made once per harness, with the
        ``attest manifest`` commands): a registry blessing this image with the harness
        platform's reference, the verifier's trusted state made from it, the next snapshot
        with the release revoked, and an EAR signing key."""
        if self._verifier is None:
            d = self.work / "verifier"
            shutil.rmtree(d, ignore_errors=True)
            blessed = orch.blessed_registry(self.image, d / "registry.json")
            self._verifier = VerifierFiles(
                registry=blessed,
                trust=orch.trust_dir(blessed, d / "trust"),
                revoked=orch.revoked_registry(
                    blessed,
                    d / "registry-revoked.json",
                    self.image.version,
                    "vm-harness scenario 1: negative check",
                ),
                key=orch.ear_key(d / "ear.pem"),
                enrollments=d / "enrollments",
            )
        return self._verifier

    def booted(self) -> Vm:
        if self.vm is None or not self.vm.alive():
            if self.vm is not None:
                self.vm.stop()
            self.vm = Vm(self.image, name="node", work=self.work)
            self.vm.prepare()
            self.vm.start()
            self.boot_seconds = self.vm.wait_ready()
            self.running = self.image.version
        return self.vm

    def release(self, version: str) -> NodeImage:
        """The image of ``version`` (built, or taken from the build cache)."""
        if version not in self.images:
            self.images[version] = build(version=version, work=self.work)
        return self.images[version]

    def snapshot(
        self, versions: list[str], *, rollbacks: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        """A signed registry snapshot blessing ``versions`` for the node's upgrade gate, at the
        next sequence number (the node's trust state refuses a lower one and an equal one with
        other bytes)."""
        self.snapshot_sequence += 1
        return signed_registry(
            [self.release(v) for v in versions],
            sequence=self.snapshot_sequence,
            rollbacks=rollbacks,
        )

    def verifier_registry(self, versions: Sequence[str] | None = None) -> VerifiedRegistry:
        """The verifier's registry: ``versions`` (default: every release built so far) blessed
        with their predicted PCRs, and the harness platform's reference (PCRs 0-2)."""
        key = tuple(sorted(versions if versions is not None else self.images))
        if key not in self._registries:
            self._registries[key] = verifier_registry([self.release(v) for v in key])
        return self._registries[key]

    def attest(
        self,
        vm: Vm,
        *,
        enrollment: Enrollment | None = None,
        previous: ClockInfo | None = None,
        versions: Sequence[str] | None = None,
        pcrs: PcrSelection | None = None,
    ) -> Attestation:
        """Appraise ``vm`` as ``attest verify`` does (``verifier.attest_vm``) against the
        verifier's registry of ``versions``."""
        return attest_vm(
            vm,
            registry=self.verifier_registry(versions),
            key=self.ear_key,
            enrollment=enrollment,
            previous=previous,
            pcrs=pcrs,
        )

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            self.vm = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
