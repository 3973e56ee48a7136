"""Good and hostile scenarios against a booted node, each returning a ``Outcome`` that says
what was expected, what happened and why.

Scenario 1 verifies the node as an orchestrator would: the real ``attest verify`` CLI as a
subprocess against a registry made with ``attest manifest`` (``orchestrator.py``). The
harness's own ``appraise`` -- ``attest.verifier.contact.enroll`` (EK certificate chain to the
harness's
private CA, AK attributes) and ``challenge`` (quote, Merkle proof, runtime-log replay,
firmware-log replay) plus the release's predicted PCRs 4/9/11/12/15 (``attest.uki``,
``image.pcr15``) and the harness platform's PCRs 0-2 (``firmware_manifests/platforms``) --
shows prediction == quote with the values at hand, explains a divergent PCR event by event,
and appraises the other scenarios' nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest import uki
from attest.model import HashAlg, PcrSelection

from . import REPO, WORK
from .build import NodeImage
from .run import Vm, VmError

PLATFORM_REF = REPO / "firmware_manifests" / "platforms" / "attest-vm-harness-q35.json"
RELEASE_PCRS = (4, 9, 11, 12, 15)
PLATFORM_PCRS = (0, 1, 2)
SELECTION = PcrSelection.parse("sha256:0-9,11,12,15")

PCR_MEANING = {
    0: "firmware code (platform)",
    1: "firmware configuration (platform)",
    2: "option ROMs (platform)",
    4: "boot applications: the UKI and its kernel",
    9: "the kernel's LoadOptions (command line) and initrd",
    11: "UKI sections",
    12: "command line override / credentials",
    15: "the booted slot's dm-verity root hash (measured by the initramfs)",
}


@dataclass
class Verdict:
    """The harness's appraisal: affirming, or contraindicated with the first divergences."""

    status: str  # "affirming" | "contraindicated" | "unreachable"
    reasons: list[str] = field(default_factory=list)
    pcrs: dict[int, str] = field(default_factory=dict)
    enrollment: Any = None
    clock: Any = None
    seconds: float = 0.0

    @property
    def affirming(self) -> bool:
        return self.status == "affirming"


def load_platform_ref(path: Path = PLATFORM_REF) -> dict[int, bytes] | None:
    try:
        doc = json.loads(path.read_text())
    except OSError:
        return None
    return {int(k): bytes.fromhex(v) for k, v in doc["pcrs"]["sha256"].items()}


def enroll_node(vm: Vm) -> Any:
    from cryptography import x509

    from attest.verifier.client import NodeClient
    from attest.verifier.contact import enroll

    st = vm.tpm_state()
    roots = [x509.load_pem_x509_certificate(st.root_ca.read_bytes())]
    inter = [x509.load_pem_x509_certificate(st.intermediate_ca.read_bytes())]
    with NodeClient(vm.url, timeout=60) as client:
        return enroll(client, now=datetime.now(UTC), ek_roots=roots, ek_intermediates=inter)


def explain_pcr(i: int, got: bytes, want: bytes, image: NodeImage, log: Any) -> str:
    """Name the PCR, what it holds, and the first event that differs from the prediction."""
    msg = (
        f"PCR {i} ({PCR_MEANING.get(i, '?')}): quoted {got.hex()[:16]}…, "
        f"expected {want.hex()[:16]}…"
    )
    predicted: list[bytes] | None = None
    uki_bytes = Path(image.uki).read_bytes()
    if i == 9:
        predicted = uki.pcr9_events(uki_bytes)
        names = ["LoadOptions (kernel command line)", "initrd"]
    elif i == 11:
        predicted = uki.pcr11_events(uki_bytes)
        names = [
            f"{s} {what}"
            for s in uki.parse_uki(uki_bytes).sections
            for what in ("name", "contents")
        ]
    elif i == 4:
        predicted = uki.pcr4_events(uki_bytes)
        names = ["EFI action", "separator", "UKI image", "kernel image"]
    elif i == 15:
        return (
            f"{msg}; the node booted a root other than release {image.version}'s "
            f"(root hash {image.verity_root_hash[:16]}…)"
        )
    if predicted is not None and log is not None:
        events = [e for e in log.events if e.pcr == i]
        for n, (ev, want_d) in enumerate(zip(events, predicted, strict=False)):
            got_d = ev.digests.get(HashAlg.SHA256)
            if got_d != want_d:
                what = names[n] if n < len(names) else f"event {n}"
                return f"{msg}; first changed measurement: {what}"
        if len(events) != len(predicted):
            return f"{msg}; {len(events)} events where {len(predicted)} were expected"
    return msg


def appraise(vm: Vm, image: NodeImage, enrollment: Any = None, previous: Any = None) -> Verdict:
    """Enroll (unless given) and challenge the node; compare with the release and platform."""
    from attest.errors import AttestError
    from attest.verifier.client import NodeClient
    from attest.verifier.contact import challenge

    t0 = time.monotonic()
    try:
        if enrollment is None:
            enrollment = enroll_node(vm)
        with NodeClient(vm.url, timeout=60) as client:
            a = challenge(client, enrollment, selection=SELECTION, previous=previous, firmware=True)
    except AttestError as exc:
        return Verdict(
            "contraindicated",
            [f"{type(exc).__name__}: {exc}"],
            enrollment=enrollment,
            seconds=time.monotonic() - t0,
        )
    quoted = a.evidence.quote.pcrs
    pcrs = {
        i: quoted.get(HashAlg.SHA256, i).hex()
        for i in range(24)
        if i in dict(SELECTION.as_dict()).get(HashAlg.SHA256, ())
    }
    reasons = []
    want = {int(k): bytes.fromhex(v) for k, v in image.expected_pcrs["sha256"].items()}
    for i in RELEASE_PCRS:
        got = quoted.get(HashAlg.SHA256, i)
        if got != want[i]:
            reasons.append(explain_pcr(i, got, want[i], image, a.firmware))
    platform = load_platform_ref()
    if platform is None:
        reasons.append(f"no platform reference at {PLATFORM_REF}")
    else:
        for i in PLATFORM_PCRS:
            got = quoted.get(HashAlg.SHA256, i)
            if got != platform[i]:
                reasons.append(explain_pcr(i, got, platform[i], image, None))
    reasons += check_verity(a, image)
    status = "affirming" if not reasons else "contraindicated"
    return Verdict(status, reasons, pcrs, enrollment, a.clock, time.monotonic() - t0)


def record_platform(
    image: NodeImage, path: Path = PLATFORM_REF, vm: Vm | None = None
) -> tuple[Path, dict[int, str]]:
    """Boot the VM template once and record its PCRs 0-7 as the harness platform's reference
    (the shape ``attest manifest platform-set --ref`` reads). Only 0-2 are appraised: they
    depend on the template (memory size, devices, how the ESP is attached), not the image."""
    from attest.verifier.client import NodeClient
    from attest.verifier.contact import challenge

    with Harness(image) as h:
        vm = vm or h.booted()
        enrollment = enroll_node(vm)
        with NodeClient(vm.url, timeout=60) as client:
            a = challenge(
                client, enrollment, selection=PcrSelection.parse("sha256:0-7"), firmware=True
            )
    pcrs = {i: a.evidence.quote.pcrs.get(HashAlg.SHA256, i).hex() for i in range(8)}
    doc = {
        "platform_id": "attest-vm-harness-q35",
        "description": (
            "vm_harness template: QEMU q35, 1 vCPU, 512 MiB, OVMF_CODE_4M + fresh "
            "OVMF_VARS_4M (Debian ovmf), tpm-crb + swtpm, ESP and A/B slots on "
            "virtio-blk, virtio-net without option ROM, Secure Boot off. Recorded "
            "by `python -m vm_harness record-platform`; PCRs 0-2 are appraised."
        ),
        "example": False,
        "pcrs": {"sha256": {str(i): pcrs[i] for i in PLATFORM_PCRS}},
        "event_digests": {},
        "secure_boot": {"enabled": False, "variables": {}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path, pcrs


def check_verity(a: Any, image: NodeImage) -> list[str]:
    """The release's dm-verity root must be what the node runs on: recorded in the quoted
    runtime log (PCR 13, authenticated by the replay), and in the node's verity report open
    with that root hash, verified, panic on corruption. (The initramfs measured the root hash
    it opened into PCR 15, which ``appraise`` compares with the release's prediction: the
    shared UKI's command line names no root hash.)"""
    want = image.verity_root_hash
    recorded = [
        e.content.get("root_hash")
        for e in (a.runtime.of_kind("verity-device") if a.runtime else ())
    ]
    out = []
    if want not in recorded:
        out.append(
            f"the runtime log records no verity device with the release's root hash "
            f"{want[:16]}… (recorded: {[str(r)[:16] for r in recorded]})"
        )
    report = a.evidence.evidence.doc.get("verity") or {}
    devices = [
        d for d in report.get("devices", []) if isinstance(d, dict) and d.get("root_hash") == want
    ]
    if not devices:
        out.append("the node reports no open verity device with the release's root hash")
    elif devices[0].get("status") != "verified" or devices[0].get("corruption_mode") != "panic":
        d = devices[0]
        out.append(
            f"verity device {d.get('name')}: status {d.get('status')}, corruption mode "
            f"{d.get('corruption_mode')} (want verified, panic)"
        )
    return out


# --- scenarios -------------------------------------------------------------------------------


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
        self._verifier: VerifierFiles | None = None

    def verifier_files(self) -> VerifierFiles:
        """The orchestrator's files for ``attest verify`` (made once per harness, with the
        ``attest manifest`` commands): a registry blessing this image with the harness
        platform's reference, the verifier's trusted state made from it, the next snapshot
        with the release revoked, and an EAR signing key."""
        if self._verifier is None:
            import shutil

            from . import orchestrator as orch

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
            from .build import build

            self.images[version] = build(version=version, work=self.work)
        return self.images[version]

    def snapshot(
        self, versions: list[str], *, rollbacks: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        """A signed registry snapshot blessing ``versions``, at the next sequence number (the
        node's trust state refuses a lower one and an equal one with other bytes)."""
        from .trust import signed_registry

        self.snapshot_sequence += 1
        return signed_registry(
            [self.release(v) for v in versions],
            sequence=self.snapshot_sequence,
            rollbacks=rollbacks,
        )

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            self.vm = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def s1_blessed_boot_affirming(h: Harness) -> Outcome:
    """The blessed image boots and attests affirming end to end through ``attest verify``:
    first contact enrolls (EK chain to the harness CA, credential activation over the node's
    mutual-TLS listener) and is affirming as the release; a second run re-uses the enrollment
    and stays affirming; the same node against the next snapshot, which revokes the release,
    is contraindicated (exit 11) naming the revocation. The harness's own appraisal shows the
    prediction == the quoted PCRs."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from . import orchestrator as orch
    from .trust import TEST_TRUST

    name = "blessed-boot"
    with ThreadPoolExecutor(1) as pool:  # the registry is made while the node boots
        files_f = pool.submit(h.verifier_files)
        vm = h.booted()
        files = files_f.result()
    shutil.rmtree(files.enrollments, ignore_errors=True)  # a verifier that never saw the node
    runs: dict[str, orch.VerifyRun] = {}
    runs["first"] = first = orch.attest_verify(
        vm, state=files.enrollments, key=files.key, trust=files.trust
    )
    if h.first_affirming is None and first.code == 0:
        h.first_affirming = time.monotonic() - vm.t_start
    runs["second"] = second = orch.attest_verify(
        vm, state=files.enrollments, key=files.key, trust=files.trust
    )
    runs["revoked"] = revoked = orch.attest_verify(
        vm,
        state=files.enrollments,
        key=files.key,
        root=TEST_TRUST / "root.json",
        snapshot=files.revoked,
    )
    v = appraise(vm, h.image)  # prediction == quote, verity report, with the values at hand
    version = h.image.version
    problems = s1_problems(runs, version)
    if not v.affirming:
        problems.append("harness appraisal: " + "; ".join(v.reasons))
    data = {
        "pcrs": v.pcrs,
        "boot": vm.boot_report(),
        "cli": {
            k: {"code": r.code, "doc": r.doc, "ear": r.ear, "seconds": r.seconds, "argv": r.argv}
            for k, r in runs.items()
        },
    }
    if problems:
        return Outcome(name, False, "; ".join(problems), data=data)
    detail = (
        f"`attest verify` exit 0 affirming as release {version} (enrolled on first "
        f"contact: EK chain to the harness CA, credential activation over mutual TLS; "
        f"EAR ear.status affirming; {first.seconds:.1f} s), again exit 0 with the stored "
        f"enrollment ({second.seconds:.1f} s), exit {revoked.code} against the snapshot "
        f"revoking it: {revoked.explanation[:100]}; harness: PCRs 4/9/11/12/15 equal the "
        f"prediction, 0-2 the platform reference; boot→ready {h.boot_seconds or 0:.1f} s, "
        f"first affirming {h.first_affirming or 0:.1f} s after QEMU start"
    )
    return Outcome(name, True, detail, data=data)


EXPECTED_CHECKS = (
    "quote",
    "firmware-replay",
    "platform",
    "release-pcrs",
    "verity",
    "runtime-log",
    "audit-chain",
    "release",
)


def s1_problems(runs: dict[str, Any], version: str) -> list[str]:
    """What scenario 1's three ``attest verify`` runs got wrong (empty when all held)."""
    out: list[str] = []
    first, second, revoked = runs["first"], runs["second"], runs["revoked"]
    for label, r in (("first run", first), ("second run", second)):
        doc = r.doc
        if r.code != 0 or doc.get("verdict") != "affirming":
            out.append(f"{label}: {r.summary()}")
            continue
        if r.release.get("status") != "blessed" or r.release.get("version") != version:
            out.append(f"{label}: release {r.release}, want {version} blessed")
        checks = {
            f.get("check")
            for f in doc["result"].get("findings", [])
            if f.get("tier") == "affirming"
        }
        missing = [c for c in EXPECTED_CHECKS if c not in checks]
        if missing:
            out.append(f"{label}: no affirming finding of {missing}")
        node = doc["result"].get("node_id")
        sub = ((r.ear or {}).get("submods") or {}).get(node) or {}
        if sub.get("ear.status") != "affirming":
            out.append(f"{label}: the EAR's submodule {node!r} says {sub.get('ear.status')}")
        if any("audit log not fetched" in str(n) for n in doc.get("notes", [])):
            out.append(f"{label}: {doc['notes']}")
    enrolled = first.doc.get("enrollment") or {}
    if (
        not first.first_contact
        or not enrolled.get("activated")
        or not enrolled.get("ek_certificate")
    ):
        out.append(
            f"first run: not enrolled with EK chain + activation: {enrolled} "
            f"{first.doc.get('notes')}"
        )
    if (
        second.first_contact
        or (second.doc.get("enrollment") or {}).get("ak_name") != enrolled.get("ak_name")
        or second.doc.get("re_enrollment") is not None
    ):
        out.append(f"second run did not re-use the enrollment: {second.doc.get('notes')}")
    if (
        revoked.code != 11
        or revoked.doc.get("verdict") != "contraindicated"
        or "revoked" not in revoked.explanation
        or version not in revoked.explanation
    ):
        out.append(f"against the revoking snapshot: {revoked.summary()}")
    return out


def s2_corrupt_root_fails_closed(h: Harness) -> Outcome:
    """Flip one byte of the root's first data block (the squashfs superblock, read at mount)
    in a VM of its own: dm-verity must stop the node."""
    h.close()  # one VM at a time on this 2-core machine
    vm = Vm(h.image, name="corrupt", work=h.work)
    vm.prepare()
    flip_byte(vm.dir / "slot-a.qcow2", offset=0)
    with vm:
        try:
            vm.wait_ready(timeout=150)
            return Outcome("corrupt-root", False, "the node served its API from a corrupt root")
        except VmError:
            pass
        reason = vm.failure_reason()
    ok = "verity" in reason.lower() or "FAIL-CLOSED" in reason or "corrupt" in reason.lower()
    return Outcome(
        "corrupt-root", ok, f"node failed closed, unreachable for attestation; cause: {reason}"
    )


def flip_byte(qcow2: Path, *, offset: int) -> None:
    """Flip one byte of a qcow2 overlay's guest data (writes go to the overlay only)."""
    import subprocess

    raw = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"read -v {offset} 1", str(qcow2)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    byte = int(raw.split(":", 1)[1].split()[0], 16)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {byte ^ 0xFF} {offset} 1", str(qcow2)],
        check=True,
        capture_output=True,
    )


def variant_vm(h: Harness, name: str, *, extra_cmdline: str) -> Vm:
    """A prepared VM whose ESP holds the release's UKI rebuilt with more on its command line
    (the same kernel, initrd and root)."""
    from . import image as im
    from .build import STUB

    h.close()  # one VM at a time on this 2-core machine
    vm = Vm(h.image, name=name, work=h.work)
    vm.prepare()
    parts = uki.parse_uki(Path(h.image.uki).read_bytes())
    tmp = vm.dir / "uki-parts"
    tmp.mkdir(exist_ok=True)
    (tmp / "linux").write_bytes(parts.linux)
    (tmp / "initrd").write_bytes(parts.initrd or b"")
    changed = im.build_uki(
        tmp / "changed.efi",
        stub=STUB,
        linux=tmp / "linux",
        initrd=tmp / "initrd",
        cmdline=f"{h.image.cmdline} {extra_cmdline}",
        osrel=parts.sections[".osrel"].decode(),
    )
    esp = im.build_esp(tmp / "esp.img", efi=changed)
    (vm.dir / "esp.qcow2").unlink()
    vm._overlay(esp, vm.dir / "esp.qcow2")
    return vm


def s3_changed_cmdline_contraindicated(h: Harness) -> Outcome:
    """The same kernel, initrd and root, but a UKI whose command line says more (here
    ``attest.debug=1``): the node boots, and attestation must fail naming PCR and change."""
    vm = variant_vm(h, "cmdline", extra_cmdline="attest.debug=1")
    with vm:
        vm.wait_ready()
        v = appraise(vm, h.image)
    named = [r for r in v.reasons if r.startswith(("PCR 9", "PCR 11"))]
    ok = (
        v.status == "contraindicated"
        and bool(named)
        and any("command line" in r or ".cmdline" in r for r in named)
    )
    return Outcome(
        "changed-cmdline", ok, f"{v.status}: " + "; ".join(v.reasons), data={"reasons": v.reasons}
    )


def s8_tpm_reset_and_replacement(h: Harness) -> Outcome:
    """On the shared node: (i) a power cycle with the same TPM -> the quote's resetCount went
    up: the verifier reports the TPM reset; (ii) a new TPM (fresh swtpm state, new EK) under the
    same disks -> the enrolled AK is unknown to it and the verifier says so."""
    vm = h.booted()
    image = h.release(h.running)  # after the upgrade scenarios, the release the node runs
    first = appraise(vm, image)
    if not first.affirming:
        return Outcome("tpm-reset-replaced", False, "baseline: " + "; ".join(first.reasons))
    enrollment, before = first.enrollment, first.clock
    vm.stop()  # power off the node: QMP quit, swtpm with it
    vm.start()
    vm.wait_ready()
    again = appraise(vm, image, enrollment=enrollment, previous=before)
    details = []
    if again.clock is not None and again.clock.reset_count > before.reset_count:
        reset_ok = True
        details.append(
            f"same TPM after a power cut: {again.status}, TPM reset detected "
            f"(resetCount {before.reset_count} -> {again.clock.reset_count})"
        )
    else:
        # A power cut gives the TPM no TPM2_Shutdown: its clock is no longer "safe" and the
        # verifier refuses the quote naming the clock check (Part 1 §36.6).
        text = "; ".join(again.reasons)
        reset_ok = again.status == "contraindicated" and (
            "clock" in text.lower() or "reset" in text.lower()
        )
        details.append(f"same TPM after a power cut: {again.status}: {text[:200]}")
    vm.stop()
    vm.prepare(fresh_disks=False, fresh_tpm=True)  # a new TPM: new EK, new AK
    vm.start()
    vm.wait_ready()
    replaced = appraise(vm, image, enrollment=enrollment, previous=again.clock)
    new = enroll_node(vm)
    replaced_ok = (
        replaced.status == "contraindicated"
        and new.ak_name != enrollment.ak_name
        and new.ek_sha256 != enrollment.ek_sha256
    )
    details.append(
        f"new TPM: {replaced.status} ({'; '.join(replaced.reasons)[:160]}); its EK "
        f"{(new.ek_sha256 or b'').hex()[:16]}… and AK are not the enrolled "
        f"{(enrollment.ek_sha256 or b'').hex()[:16]}…"
    )
    h.close()  # the shared node now has another TPM: the next scenario boots a fresh one
    return Outcome("tpm-reset-replaced", reset_ok and replaced_ok, " | ".join(details))


# --- upgrades (issue 8, scenarios 4-7) --------------------------------------------------------

OLD, NEW = "1.0.0", "1.1.0"


def _other(version: str) -> str:
    return NEW if version == OLD else OLD


def _pointer_view(st: dict[str, Any]) -> dict[str, Any]:
    """What of the gate's status says "nothing was written": the pointer and the slots."""
    return {k: st.get(k) for k in ("active", "pending", "tries", "booted", "generation", "slots")}


def _boot_line(vm: Vm) -> str:
    import re

    m = re.findall(r"attest-init: t=\S+ (slot [ab]: .*)", vm.serial_text())
    return m[-1].strip() if m else "no slot line on the serial console"


def _stage_boot_confirm(
    h: Harness, version: str, snapshot: bytes, name: str, notes: list[str]
) -> Outcome | None:
    """Offer ``version`` (accepted), power-cycle into it, appraise it as that release (and not
    as the one it replaced), confirm. None when all of it held, else the failing Outcome."""
    from . import upgrades as up

    vm = h.booted()
    before = h.running
    target = h.release(version)
    t0 = time.monotonic()
    code, doc = up.upload(vm, target, snapshot, version=version)
    if code != 200 or not doc.get("accepted"):
        return Outcome(name, False, f"offer of {version} refused: HTTP {code} {doc}")
    slot = doc.get("slot")
    st = up.status(vm)
    if st["pending"] != slot or st["tries"] != 1 or st["slots"][slot]["version"] != version:
        return Outcome(name, False, f"after staging, the pointer is {_pointer_view(st)}")
    notes.append(
        f"{version} accepted ({doc.get('reason')}) and written to slot {slot} in "
        f"{time.monotonic() - t0:.0f} s (upload, gate, write, read-back)"
    )
    ready = up.power_cycle(vm)
    line = _boot_line(vm)
    if f"slot {slot}: trying staged slot {slot} ({version})" not in line:
        return Outcome(name, False, f"after the reboot the initramfs said: {line}")
    v = appraise(vm, target)
    if not v.affirming:
        return Outcome(
            name, False, f"slot {slot} does not attest as {version}: " + "; ".join(v.reasons)
        )
    w = appraise(vm, h.release(before), enrollment=v.enrollment)
    if w.affirming or not any(r.startswith("PCR 15") for r in w.reasons):
        return Outcome(name, False, f"the node also attests as {before}: {w.reasons}")
    st = up.status(vm)
    if not st.get("pending_confirmation"):
        return Outcome(name, False, f"no confirmation pending after the reboot: {st}")
    code, st = up.confirm(vm)
    if code != 200 or st["active"] != slot or st["pending"] is not None:
        return Outcome(name, False, f"confirm: HTTP {code} {st}")
    nv = st["nv_counter"]["committed_sequence"]
    h.running = version
    notes.append(
        f"rebooted ({ready:.0f} s to ready): {line}; attests affirming as {version} "
        f"(PCR 15 = its root hash; as {before}: {w.reasons[0][:60]}…); confirmed: "
        f"slot {slot} active, NV counter at sequence {nv}"
    )
    return None


def _on_release(h: Harness, version: str, name: str, notes: list[str]) -> Outcome | None:
    """Bring the shared node to ``version`` (for a scenario run on its own)."""
    h.booted()
    if h.running == version:
        return None
    rollbacks = ((NEW, OLD),) if version == OLD else ()
    notes.append(f"(set-up: {h.running} -> {version})")
    return _stage_boot_confirm(h, version, h.snapshot([OLD, NEW], rollbacks=rollbacks), name, notes)


def s4_unblessed_upgrade_refused(h: Harness) -> Outcome:
    """Offer the other release with a registry that blesses only the running one: refused
    with its reason, recorded, and nothing written (pointer unchanged; the guest wrote no byte
    to either slot's disk, as QEMU counts them)."""
    from . import upgrades as up

    name = "unblessed-upgrade"
    vm = h.booted()
    offered = _other(h.running)
    snap = h.snapshot([h.running])
    before = up.status(vm)
    wrote = {s: up.written(vm, s) for s in ("a", "b")}
    code, doc = up.upload(vm, h.release(offered), snap, version=offered)
    after = up.status(vm)
    wrote_after = {s: up.written(vm, s) for s in ("a", "b")}
    ok = (
        code == 409
        and doc.get("check") == "unknown-artifact"
        and _pointer_view(before) == _pointer_view(after)
        and wrote == wrote_after
    )
    detail = (
        f"HTTP {code} {doc.get('check')}: {doc.get('detail')}; pointer generation "
        f"{before['generation']} -> {after['generation']}, bytes written to slots a/b: "
        f"{wrote_after['a'] - wrote['a']}/{wrote_after['b'] - wrote['b']}"
    )
    return Outcome(name, ok, detail)


def s5_blessed_upgrade(h: Harness) -> Outcome:
    """1.0.0 -> 1.1.0 through the node's real path: upload over mutual TLS, gate, slot B
    write + read-back, pointer pending; reboot: the initramfs gives slot B its one try and
    measures its root hash into PCR 15; the node attests as 1.1.0; confirm commits it."""
    name = "blessed-upgrade"
    notes: list[str] = []
    bad = _on_release(h, OLD, name, notes) or _stage_boot_confirm(
        h, NEW, h.snapshot([OLD, NEW]), name, notes
    )
    return bad or Outcome(name, True, "; ".join(notes))


def s6_rollback(h: Harness) -> Outcome:
    """On 1.1.0 (committed): 1.0.0 is refused as a rollback (nothing written); with the
    registry's authorisation 1.1.0 -> 1.0.0 it is accepted, booted, attests, is confirmed."""
    from . import upgrades as up

    name = "rollback"
    notes: list[str] = []
    bad = _on_release(h, NEW, name, notes)
    if bad:
        return bad
    vm = h.booted()
    before = up.status(vm)
    code, doc = up.upload(vm, h.release(OLD), h.snapshot([OLD, NEW]), version=OLD)
    after = up.status(vm)
    if (
        code != 409
        or doc.get("check") != "rollback-unauthorised"
        or _pointer_view(before) != _pointer_view(after)
    ):
        return Outcome(
            name,
            False,
            f"unauthorised rollback: HTTP {code} {doc}; pointer "
            f"{_pointer_view(before)} -> {_pointer_view(after)}",
        )
    notes.append(
        f"without authorisation: HTTP 409 {doc['check']}: {doc.get('detail')}; pointer unchanged"
    )
    snap = h.snapshot([OLD, NEW], rollbacks=((NEW, OLD),))
    bad = _stage_boot_confirm(h, OLD, snap, name, notes)
    return bad or Outcome(name, True, "; ".join(notes))


def s7_power_cut_mid_write(h: Harness) -> Outcome:
    """Offer the other release; when QEMU has seen the guest write the first MiB of it to the
    inactive slot (and not all of it), cut the power (QMP ``quit``). Power on with the same
    disks, VARS and TPM: the node boots its active slot and attests as the release it ran; the
    pointer is consistent (the half-written slot is "being written": never bootable)."""
    import threading

    from . import upgrades as up

    name = "power-cut-upgrade"
    vm = h.booted()
    running = h.running
    offered = _other(running)
    snap = h.snapshot([OLD, NEW], rollbacks=((NEW, OLD),))
    before = up.status(vm)
    slot = before["inactive"]
    base = up.written(vm, slot)
    size = h.release(offered).root_size
    result: dict[str, Any] = {}

    def offer() -> None:
        try:
            result["answer"] = up.upload(vm, h.release(offered), snap, version=offered)
        except Exception as exc:  # the power cut ends the connection
            result["error"] = f"{type(exc).__name__}"

    t = threading.Thread(target=offer, daemon=True)
    t0 = time.monotonic()
    t.start()
    done = 0
    while t.is_alive() and time.monotonic() - t0 < 900:
        done = up.written(vm, slot) - base
        if done >= 1 << 20:
            vm.quit()  # the power cut
            break
        time.sleep(0.02)
    cut_after = time.monotonic() - t0
    t.join(timeout=30)
    if "answer" in result or not 0 < done < size:
        return Outcome(
            name,
            False,
            f"no power cut mid-write: {done} of {size} bytes written when cut; offer: {result}",
        )
    vm.stop()
    vm.start()
    ready = vm.wait_ready()
    line = _boot_line(vm)
    v = appraise(vm, h.release(running))
    st = up.status(vm)
    ptr = _pointer_view(st)
    consistent = (
        st["active"] == before["active"]
        and st["pending"] is None
        and st["slots"][slot] is None
        and st["slots"][st["active"]]["version"] == running
    )
    ok = v.affirming and consistent and f"slot {before['active']}:" in line
    detail = (
        f"power cut {cut_after:.0f} s into the offer of {offered}, {done >> 20} MiB of "
        f"{size >> 20} MiB written to slot {slot}; rebooted ({ready:.0f} s): {line}; "
        f"{v.status} as {running}"
        + ("" if v.affirming else f" ({v.reasons})")
        + f"; pointer: active {ptr['active']}, pending {ptr['pending']}, slot {slot} "
        f"{'being written (null)' if ptr['slots'][slot] is None else ptr['slots'][slot]}"
    )
    return Outcome(name, ok, detail)


def import_profile(h: Harness) -> tuple[float, list[str]]:
    """A diagnostic boot (``attest.importtime=1``): seconds to ready, and the guest's slowest
    imports (cumulative microseconds) as the node printed them."""
    vm = variant_vm(h, "importtime", extra_cmdline="attest.importtime=1")
    with vm:
        ready = vm.wait_ready()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and "import profile" not in vm.serial_text():
            time.sleep(1)
        time.sleep(3)
        text = vm.serial_text()
    lines = text.split("attest-node: import profile", 1)[-1].splitlines()[1:]
    return ready, [ln.strip() for ln in lines if "import time:" in ln]


SCENARIOS: dict[str, Callable[[Harness], Outcome]] = {
    # 4-7 and then 8 follow 1 on the same booted node (8 swaps its TPM and closes it); 2 and 3
    # need VMs of their own.
    "blessed-boot": s1_blessed_boot_affirming,
    "unblessed-upgrade": s4_unblessed_upgrade_refused,
    "blessed-upgrade": s5_blessed_upgrade,
    "rollback": s6_rollback,
    "power-cut-upgrade": s7_power_cut_mid_write,
    "tpm-reset-replaced": s8_tpm_reset_and_replacement,
    "corrupt-root": s2_corrupt_root_fails_closed,
    "changed-cmdline": s3_changed_cmdline_contraindicated,
}


def run_scenarios(h: Harness, names: list[str]) -> Iterator[Outcome]:
    for name in names:
        t0 = time.monotonic()
        try:
            out = SCENARIOS[name](h)
        except Exception as exc:  # a scenario's crash is its failure, the others still run
            out = Outcome(name, False, f"{type(exc).__name__}: {exc}")
        out.seconds = round(time.monotonic() - t0, 1)
        yield out
