"""The upgrade scenarios of issue 8 (4-7) on the shared node: the harness as the node's
upgrade operator on its real path (``upgrades``: the mutual-TLS listener, QMP write counters),
and as its verifier (``Harness.attest``: ``attest verify``'s path, the decision from the
appraisal result and its EAR: affirming *as which release*).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from attest.appraisal.claims import Tier

from . import upgrades as up
from .harness import Harness, Outcome
from .run import Vm

OLD, NEW = "1.0.0", "1.1.0"


def _other(version: str) -> str:
    return NEW if version == OLD else OLD


def _pointer_view(st: dict[str, Any]) -> dict[str, Any]:
    """What of the gate's status says "nothing was written": the pointer and the slots."""
    return {k: st.get(k) for k in ("active", "pending", "tries", "booted", "generation", "slots")}


def _boot_line(vm: Vm) -> str:
    m = re.findall(r"attest-init: t=\S+ (slot [ab]: .*)", vm.serial_text())
    return m[-1].strip() if m else "no slot line on the serial console"


def _daemon_lines(vm: Vm, n: int = 6) -> str:
    """The daemons' last error lines on the serial console (journald forwards them), and
    systemd's about them (a watchdog timeout, a failed unit)."""
    marks = ("ERROR", "Traceback", "Watchdog", "Failed with result", "Main process exited")
    lines = [ln for ln in vm.serial_text().splitlines() if any(m in ln for m in marks)]
    return " | ".join(ln.strip()[:300] for ln in lines[-n:]) or "none"


def _stage_boot_confirm(
    h: Harness, version: str, snapshot: bytes, name: str, notes: list[str]
) -> Outcome | None:
    """Offer ``version`` (accepted), power-cycle into it, appraise it as that release (and not
    as the one it replaced), confirm. None when all of it held, else the failing Outcome."""
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
    v = h.attest(vm)  # a registry blessing both releases: which one does the node run?
    if not v.affirming_as(version):
        return Outcome(name, False, f"slot {slot} does not attest as {version}: {v.summary()}")
    # Against a registry blessing only the release it replaced, the node is not that release.
    w = h.attest(vm, enrollment=v.enrollment, versions=[before])
    if w.tier is not Tier.CONTRAINDICATED or "verity" not in w.failed_checks or w.release:
        return Outcome(name, False, f"against a registry of {before} only: {w.summary()}")
    st = up.status(vm)
    if not st.get("pending_confirmation"):
        return Outcome(name, False, f"no confirmation pending after the reboot: {st}")
    code, st = up.confirm(vm)
    if code != 200 or st["active"] != slot or st["pending"] is not None:
        return Outcome(name, False, f"confirm: HTTP {code} {st}")
    nv = st["nv_counter"]["committed_sequence"]
    h.running = version
    notes.append(
        f"rebooted ({ready:.0f} s to ready): {line}; attests {v.summary()} (EAR "
        f"ear.status {v.status}); against a registry of {before} only: {w.summary()[:90]}…; "
        f"confirmed: slot {slot} active, NV counter at sequence {nv}"
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
            f"no power cut mid-write: {done} of {size} bytes written when cut; offer: {result}; "
            f"the node's log: {_daemon_lines(vm)}",
        )
    vm.stop()
    vm.start()
    ready = vm.wait_ready()
    line = _boot_line(vm)
    v = h.attest(vm)
    st = up.status(vm)
    ptr = _pointer_view(st)
    consistent = (
        st["active"] == before["active"]
        and st["pending"] is None
        and st["slots"][slot] is None
        and st["slots"][st["active"]]["version"] == running
    )
    ok = v.affirming_as(running) and consistent and f"slot {before['active']}:" in line
    detail = (
        f"power cut {cut_after:.0f} s into the offer of {offered}, {done >> 20} MiB of "
        f"{size >> 20} MiB written to slot {slot}; rebooted ({ready:.0f} s): {line}; "
        f"attests {v.summary()}"
        + f"; pointer: active {ptr['active']}, pending {ptr['pending']}, slot {slot} "
        f"{'being written (null)' if ptr['slots'][slot] is None else ptr['slots'][slot]}"
    )
    return Outcome(name, ok, detail)
