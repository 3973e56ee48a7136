"""Good and hostile scenarios against a booted node, each returning an ``Outcome`` that says
what was expected, what happened and why.

Every trust decision is attest's, on the customer's path: scenario 1 runs the real ``attest
verify`` CLI as a subprocess against a registry made with ``attest manifest``
(``orchestrator.py``); the others, and scenario 1 again for the values at hand, appraise in
process through the same ``gather`` + ``appraise_incremental`` and the same EAR
(``verifier.py``, ``Harness.attest``): affirming *as which release*, or contraindicated naming
the checks that failed. The harness only observes: QEMU's write counters, the slot the
initramfs booted, the quoted PCRs against the UKI's prediction (and, for a PCR that differs,
the first measurement that does), the serial console of a node that stopped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from attest import uki
from attest.appraisal.claims import Tier, Verdict
from attest.manifest.evaluate import ReleaseStatus
from attest.model import PcrSelection
from attest.verifier.client import NodeClient

from . import image as im
from . import orchestrator as orch
from . import prodnode
from .build import PLATFORM_ID, STUB, NodeImage
from .harness import Harness, Outcome
from .run import Vm, VmError
from .trust import PLATFORM_REF, TEST_TRUST
from .upgrade_scenarios import (
    s4_unblessed_upgrade_refused,
    s5_blessed_upgrade,
    s6_rollback,
    s7_power_cut_mid_write,
)
from .verifier import attest_vm, enroll_vm, explain

PLATFORM_PCRS = (0, 1, 2)


def record_platform(
    image: NodeImage, path: Path = PLATFORM_REF, vm: Vm | None = None
) -> tuple[Path, dict[int, str]]:
    """Boot the VM template once and record its PCRs 0-7 as the harness platform's reference
    (the shape ``attest manifest platform-set --ref`` reads), from a quote the appraisal
    verified (no registry: the reference is what is being made). Only 0-2 are appraised: they
    depend on the template (memory size, devices, how the ESP is attached), not the image."""
    with Harness(image) as h:
        vm = vm or h.booted()
        att = attest_vm(vm, registry=None, key=h.ear_key, pcrs=PcrSelection.parse("sha256:0-7"))
    # Without a registry the release is "not appraised" (a warning of the release check, and
    # only of it); every other check, the quote and the firmware replay among them, affirms.
    unappraised = att.tier is Tier.WARNING and all(
        f.check == "release" and f.tier is Tier.WARNING for f in att.failed
    )
    if (att.tier is not Tier.AFFIRMING and not unappraised) or not set(range(8)) <= set(att.quoted):
        raise VmError(f"the template's quote does not appraise: {att.summary()}")
    pcrs = {i: att.quoted[i].hex() for i in range(8)}
    doc = {
        "platform_id": PLATFORM_ID,
        "description": (
            "vm_harness template: QEMU q35, 2 vCPUs, 512 MiB, OVMF_CODE_4M + fresh "
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


# --- scenario 1 ------------------------------------------------------------------------------

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


def s1_blessed_boot_affirming(h: Harness) -> Outcome:
    """The blessed image boots and attests affirming end to end through ``attest verify``:
    first contact enrolls (EK chain to the harness CA, credential activation over the node's
    mutual-TLS listener) and is affirming as the release; a second run re-uses the enrollment
    and stays affirming; the same node against the next snapshot, which revokes the release,
    is contraindicated (exit 11) naming the revocation. The same path in process: affirming as
    the release, and the quoted PCRs equal the UKI's prediction."""
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
    att = h.attest(vm)
    version = h.image.version
    problems = s1_problems(runs, version)
    if not att.affirming_as(version):
        problems.append(f"in process: {att.summary()}")
    differs = explain(att, h.image)
    if differs:
        problems.append("quoted PCRs differ from the prediction: " + "; ".join(differs))
    data = {
        "pcrs": {i: v.hex() for i, v in sorted(att.quoted.items())},
        "in_process": {"status": att.status, "release": att.release, "ear": dict(att.ear)},
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
        f"revoking it: {revoked.explanation[:100]}; in process: {att.status} as "
        f"{att.release}, PCRs 4/9/11/12/15 quoted = predicted; boot→ready "
        f"{h.boot_seconds or 0:.1f} s, first affirming {h.first_affirming or 0:.1f} s after "
        "QEMU start"
    )
    return Outcome(name, True, detail, data=data)


def s1_problems(runs: dict[str, Any], version: str) -> list[str]:
    """What scenario 1's three ``attest verify`` runs got wrong (empty when all held)."""
    out: list[str] = []
    first, second, revoked = runs["first"], runs["second"], runs["revoked"]
    for label, r in (("first run", first), ("second run", second)):
        doc = r.doc
        if r.code != 0 or doc.get("verdict") != Verdict.AFFIRMING.value:
            out.append(f"{label}: {r.summary()}")
            continue
        if (
            r.release.get("status") != ReleaseStatus.BLESSED.value
            or r.release.get("version") != version
        ):
            out.append(f"{label}: release {r.release}, want {version} blessed")
        checks = {
            f.get("check")
            for f in doc["result"].get("findings", [])
            if f.get("tier") == Tier.AFFIRMING.label
        }
        missing = [c for c in EXPECTED_CHECKS if c not in checks]
        if missing:
            out.append(f"{label}: no affirming finding of {missing}")
        node = doc["result"].get("node_id")
        sub = ((r.ear or {}).get("submods") or {}).get(node) or {}
        if sub.get("ear.status") != Tier.AFFIRMING.label:
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
        or revoked.doc.get("verdict") != Verdict.CONTRAINDICATED.value
        or "revoked" not in revoked.explanation
        or version not in revoked.explanation
    ):
        out.append(f"against the revoking snapshot: {revoked.summary()}")
    return out


# --- scenarios 2 and 3: VMs of their own ---------------------------------------------------


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
    ``attest.debug=1``): the node boots and runs release 1.0.0's root, and the appraisal is
    contraindicated by the release's expected PCRs, naming PCR 9 and the command line."""
    vm = variant_vm(h, "cmdline", extra_cmdline="attest.debug=1")
    with vm:
        vm.wait_ready()
        att = h.attest(vm)
    pcr_findings = [f.explanation for f in att.failed if f.check == "release-pcrs"]
    ok = (
        att.tier is Tier.CONTRAINDICATED
        and att.release == h.image.version  # the root is the release's: the boot is not
        and att.failed_checks == {"release-pcrs"}
        and any(e.startswith("PCR 9") and "command line" in e for e in pcr_findings)
    )
    observed = explain(att, h.image)
    return Outcome(
        "changed-cmdline",
        ok,
        f"{att.summary()} | harness: {'; '.join(observed)}",
        data={"findings": pcr_findings, "explained": observed, "status": att.status},
    )


# --- scenario 8: on the shared node, after the upgrades ------------------------------------


def s8_tpm_reset_and_replacement(h: Harness) -> Outcome:
    """On the shared node: (i) a power cycle with the same TPM -> the quote's resetCount went
    up: affirming with the reset seen, or contraindicated by the quote's clock check (a power
    cut leaves the TPM clock unsafe); (ii) a new TPM (fresh swtpm state, new EK) under the same
    disks -> an identity alarm: the AK is not the enrolled one."""
    vm = h.booted()
    running = h.running  # after the upgrade scenarios, the release the node runs
    first = h.attest(vm)
    if not first.affirming_as(running):
        return Outcome("tpm-reset-replaced", False, f"baseline: {first.summary()}")
    enrollment, before = first.enrollment, first.result.clock
    assert before is not None  # affirming: the quote verified
    vm.stop()  # power off the node: QMP quit, swtpm with it
    vm.start()
    vm.wait_ready()
    again = h.attest(vm, enrollment=enrollment, previous=before)
    clock = again.result.clock
    if again.affirming_as(running) and clock is not None and clock.reset_count > before.reset_count:
        reset_ok = True
        seen = f"TPM reset seen (resetCount {before.reset_count} -> {clock.reset_count})"
    else:
        # A power cut gives the TPM no TPM2_Shutdown: its clock may no longer be "safe" and
        # the verifier refuses the quote naming the clock check (Part 1 §36.6).
        reset_ok = again.tier is Tier.CONTRAINDICATED and again.failed_checks == {"quote:clock"}
        seen = "the quote's clock check"
    details = [f"same TPM after a power cut: {again.summary()[:200]}; {seen}"]
    vm.stop()
    vm.prepare(fresh_disks=False, fresh_tpm=True)  # a new TPM: new EK, new AK
    vm.start()
    vm.wait_ready()
    replaced = h.attest(vm, enrollment=enrollment, previous=clock or before)
    new = enroll_vm(vm)
    replaced_ok = (
        replaced.tier is Tier.CONTRAINDICATED
        and replaced.verdict is Verdict.ALARM
        and replaced.failed_checks == {"identity"}
        and new.ak_name != enrollment.ak_name
        and new.ek_sha256 != enrollment.ek_sha256
    )
    details.append(
        f"new TPM: {replaced.summary()[:160]}; its EK "
        f"{(new.ek_sha256 or b'').hex()[:16]}… and AK are not the enrolled "
        f"{(enrollment.ek_sha256 or b'').hex()[:16]}…"
    )
    h.close()  # the shared node now has another TPM: the next scenario boots a fresh one
    return Outcome("tpm-reset-replaced", reset_ok and replaced_ok, " | ".join(details))


# --- scenario 9: the privilege split, under systemd ----------------------------------------

HARDENING_DOC = Path(__file__).resolve().parents[1] / "docs" / "daemon-hardening.md"


def documented_exposure(doc: Path = HARDENING_DOC) -> dict[str, float]:
    """The `systemd-analyze security` figures docs/daemon-hardening.md promises, per unit."""
    found = re.findall(r"Overall exposure level for (\S+): ([0-9.]+)", doc.read_text())
    return {unit: float(v) for unit, v in found}


def _debug(vm: Vm, path: str, *, post: bool = False, timeout: float = 60.0) -> Any:
    """A question to the test image's debug agent (``prodnode.DEBUG_AGENT``), retried while
    it starts (it starts after attestd)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{vm.debug_port}{path}", method="POST" if post else "GET"
            )
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            if time.monotonic() > deadline or not vm.alive():
                raise
            time.sleep(1)


def _until(cond: Callable[[], bool], timeout: float, step: float = 0.25) -> float | None:
    """Seconds until ``cond()`` held, or None when it did not within ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def privilege_problems(facts: dict[str, Any], security: dict[str, Any]) -> list[str]:
    """What the debug agent's facts say against the privilege split (empty: it holds).
    attestd-tpm is the positive control: the same probes see its TPM device."""
    out: list[str] = []
    if facts.get("pid1") != "systemd":
        out.append(f"PID 1 is {facts.get('pid1')!r}, not systemd")
    api, broker = facts["attestd.service"], facts["attestd-tpm.service"]
    for unit, doc, user in (("attestd", api, "attest"), ("attestd-tpm", broker, "attest-tpm")):
        proc = doc.get("process") or {}
        if doc.get("active") != "active" or not proc.get("Uid"):
            out.append(f"{unit}: not running ({doc.get('active')}, {proc})")
            continue
        if doc.get("user") != user or "0" in proc["Uid"]:
            out.append(f"{unit}: user {doc.get('user')!r}, uids {proc['Uid']} (want {user}, not 0)")
    papi, pbroker = api.get("process") or {}, broker.get("process") or {}
    if papi.get("tpm_visible") or papi.get("tpm_fds"):
        out.append(f"attestd sees the TPM: {papi.get('tpm_fds')} visible={papi.get('tpm_visible')}")
    if int((papi.get("CapEff") or ["1"])[0], 16) or int((papi.get("CapBnd") or ["1"])[0], 16):
        out.append(f"attestd has capabilities: eff {papi.get('CapEff')} bnd {papi.get('CapBnd')}")
    if not pbroker.get("tpm_visible") or not pbroker.get("tpm_fds"):
        out.append(f"the probe does not see attestd-tpm's TPM either: {pbroker}")
    for unit, limit in documented_exposure().items():
        seen = (security.get(unit) or {}).get("exposure")
        if seen is None or seen > limit:
            out.append(f"{unit}: exposure {seen} > documented {limit}: {security.get(unit)}")
    return out


def s9_privilege_split(h: Harness) -> Outcome:
    """The production shape's privilege split, asked of the running node through the test
    image's debug agent (a boot whose measured command line adds ``attest.vmdebug=1``, so it
    never attests as the release: PCR 9 differs, and only that): systemd is PID 1; attestd
    runs as ``attest`` (uid not 0, no capabilities, no TPM device in its namespace, no TPM
    file open) and attestd-tpm as ``attest-tpm`` (it has the TPM open: the probes can see
    one); `systemd-analyze security` in the guest is at most docs/daemon-hardening.md's
    figure for each unit. Then SIGKILL to attestd-tpm: /readyz turns false, systemd restarts
    the broker, /readyz comes back and the node attests again, without any operator action."""
    name = "privilege-split"
    vm = variant_vm(h, "privsep", extra_cmdline=prodnode.DEBUG_CMDLINE)
    with vm:
        vm.wait_ready()
        facts = _debug(vm, "/facts")
        security = _debug(vm, "/security", timeout=120)
        problems = privilege_problems(facts, security)
        before = h.attest(vm)
        if before.failed_checks != {"release-pcrs"} or before.release != h.image.version:
            problems.append(f"before the kill: {before.summary()}")
        old_pid = (facts["attestd-tpm.service"].get("process") or {}).get("pid")
        kill = _debug(vm, "/kill-broker", post=True)
        with NodeClient(vm.url, timeout=2.0) as client:
            down = _until(lambda: not client.ready(), 30)
            back = (
                _until(lambda: client.ready() or not vm.alive(), 150) if down is not None else None
            )
        if not vm.alive():
            problems.append(f"the node stopped after the broker's loss: {vm.failure_reason()}")
            return Outcome(name, False, "; ".join(problems), data={"facts": facts})
        after_facts = _debug(vm, "/facts")
        after = h.attest(vm, enrollment=before.enrollment)
    broker = after_facts["attestd-tpm.service"]
    new_pid = (broker.get("process") or {}).get("pid")
    if kill.get("rc") != 0:
        problems.append(f"systemctl kill: {kill}")
    if down is None:
        problems.append("/readyz stayed true for 30 s after attestd-tpm was killed")
    elif back is None:
        problems.append("/readyz did not come back within 150 s of the broker's loss")
    if broker.get("restarts", 0) < 1 or new_pid == old_pid:
        problems.append(f"systemd did not restart attestd-tpm: {broker}")
    if after.failed_checks != {"release-pcrs"} or after.release != h.image.version:
        problems.append(f"after the restart: {after.summary()}")
    problems += [f"after the restart: {p}" for p in privilege_problems(after_facts, security)]
    exposure = {u: (d or {}).get("exposure") for u, d in security.items()}
    data = {"facts": facts, "after": after_facts, "security": security, "down": down, "back": back}
    if problems:
        return Outcome(name, False, "; ".join(problems), data=data)
    api = facts["attestd.service"]["process"]
    return Outcome(
        name,
        True,
        f"PID 1 systemd; attestd uid {api['Uid'][0]} (attest), CapEff {api['CapEff'][0]}, no "
        f"TPM device; attestd-tpm uid {facts['attestd-tpm.service']['process']['Uid'][0]} "
        f"with the TPM; systemd-analyze security in the guest {exposure} (documented "
        f"{documented_exposure()}); SIGKILL to attestd-tpm: /readyz false after {down:.1f} s, "
        f"back {back:.1f} s later (restarts {broker['restarts']}), attests again as "
        f"{after.release} (only PCR 9, the debug boot's command line, differs)",
        data=data,
    )


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
    "privilege-split": s9_privilege_split,
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
