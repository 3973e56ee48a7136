"""Decide KVM or TCG by a probe: ``/dev/kvm`` can exist and still not run OVMF (a nested,
software KVM dies with "KVM internal error ... emulation failure"). The probe boots OVMF with
no disk under ``-accel kvm`` for a few seconds; KVM is used only if QEMU is still running and
said nothing about a failure. The answer is cached per kernel and QEMU binary.

``ATTEST_VM_ACCEL=kvm|tcg`` overrides the probe.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"


def probe_kvm(*, seconds: float = 4.0) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible"
    with tempfile.TemporaryDirectory(prefix="attest-kvm-probe-") as tmp:
        vars_copy = Path(tmp) / "vars.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        cmd = [
            QEMU,
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-m",
            "128",
            "-display",
            "none",
            "-serial",
            "none",
            "-monitor",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        alive = proc.poll() is None
        if alive:
            proc.kill()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    bad = [
        w
        for w in ("emulation failure", "internal error", "failed to initialize")
        if w in out.lower()
    ]
    if not alive or bad:
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        line = next(
            (ln for ln in lines if any(w in ln.lower() for w in bad)),
            lines[-1] if lines else f"exited {proc.returncode}",
        )
        return False, f"KVM cannot run OVMF here: {line.strip()[:120]}"
    return True, "KVM runs OVMF"


def choose_accel(cache_dir: Path) -> tuple[str, str]:
    """('kvm'|'tcg', why)."""
    forced = os.environ.get("ATTEST_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "ATTEST_VM_ACCEL"
    qemu = shutil.which(QEMU) or QEMU
    key = f"{platform.release()} {qemu} {os.stat(qemu).st_mtime if os.path.exists(qemu) else 0}"
    cache = cache_dir / "kvm-probe.json"
    try:
        doc = json.loads(cache.read_text())
        if doc.get("key") == key:
            return doc["accel"], doc["why"] + " (cached probe)"
    except (OSError, ValueError, KeyError):
        pass
    ok, why = probe_kvm()
    accel = "kvm" if ok else "tcg"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": accel, "why": why}))
    return accel, why
