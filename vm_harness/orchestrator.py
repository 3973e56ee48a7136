"""The harness as an orchestrator would verify a node: the registry made with the real
``attest manifest`` commands, the verifier's trusted state with ``attest manifest verify
--state``, and ``attest verify`` run as a subprocess against the booted VM (issue 8,
scenario 1).

The registry (TEST keys of ``firmware_manifests/test``, never production keys):
``attest manifest bless`` of the release (``bless_image``: the squashfs, the build's salt
and root hash, ``expected-pcrs.json``: PCRs 4/9/11/12 and 15 for the harness platform),
``platform-set`` of ``firmware_manifests/platforms/attest-vm-harness-q35.json`` (PCRs 0-2),
signed by one platform key and two releases keys (the TEST root's thresholds).

``attest verify`` talks to the node's public API (plain HTTP through the port forward) for
the identity and the evidence, and to its **mutual-TLS listener** (``--activation-url``, the
harness's client certificate, ``--tls-ca`` the harness TLS CA) for credential activation at
enrollment and for the audit log; the EK chain goes to the harness's private swtpm CA.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest.appraisal.ear import verify_ear
from attest.manifest.edit import empty_registry
from attest.manifest.envelope import UnverifiedEnvelope

from . import REPO
from .build import PLATFORM_ID, NodeImage
from .run import Vm
from .trust import PLATFORM_KEY, PLATFORM_REF, RELEASE_KEYS, TEST_TRUST, tls_files

ATTEST = [sys.executable, "-m", "attest"]


class OrchestratorError(RuntimeError):
    """An ``attest manifest`` step failed (the harness's set-up, not the node's fault)."""


def _attest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ATTEST, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _step(*args: str) -> str:
    r = _attest(*args)
    if r.returncode != 0:
        raise OrchestratorError(
            f"attest {' '.join(args[:2])}: exit {r.returncode}: "
            f"{(r.stderr or r.stdout).strip()[-400:]}"
        )
    return r.stdout


def _sign_releases(registry: Path) -> None:
    for name in RELEASE_KEYS:
        _step("manifest", "sign", str(registry), "--key", str(TEST_TRUST / "keys" / name))


def bless_image(
    node: NodeImage, *, registry: str, commit: str = "0" * 40, quiet: bool = False
) -> int:
    """``attest manifest bless`` of the release into the registry draft ``registry``: the
    release artifact is the squashfs (the slot image's first ``root_size`` bytes; the hash tree
    follows it); the command recomputes its sha256 and verity root hash with the build's salt
    and refuses a mismatch; the predicted PCRs 4/9/11/12/15 go in as the release's expected
    PCRs for the harness platform. The command's exit code."""
    artifact = Path(node.directory) / "root.squashfs"
    with open(node.root, "rb") as src, artifact.open("wb") as dst:
        left = node.root_size
        while left:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            dst.write(chunk)
            left -= len(chunk)
    cmd = [
        *ATTEST,
        "manifest",
        "bless",
        str(artifact),
        "--version",
        node.version,
        "--commit",
        commit,
        "--salt",
        node.verity_salt,
        "--expect-root-hash",
        node.verity_root_hash,
        "--expected-pcrs",
        str(Path(node.directory) / "expected-pcrs.json"),
        "--registry",
        registry,
    ]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if quiet and done.returncode != 0:
        print(done.stderr or done.stdout, file=sys.stderr)
    artifact.unlink()
    return done.returncode


def blessed_registry(image: NodeImage, path: Path) -> Path:
    """A signed registry snapshot at ``path`` blessing ``image`` (its artifact, dm-verity
    root hash and expected PCRs) and holding the harness platform's reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    draft = empty_registry(expires=now + dt.timedelta(days=30))
    path.write_bytes(UnverifiedEnvelope(draft.to_json(), ()).to_bytes())
    if bless_image(image, registry=str(path), quiet=True) != 0:
        raise OrchestratorError(f"attest manifest bless of {image.version} failed")
    _step("manifest", "platform-set", "--ref", str(PLATFORM_REF), "--registry", str(path))
    _step(
        "manifest",
        "sign",
        str(path),
        "--key",
        str(TEST_TRUST / "keys" / PLATFORM_KEY),
        "--platform",
        PLATFORM_ID,
    )
    _sign_releases(path)
    return path


def revoked_registry(blessed: Path, path: Path, version: str, reason: str) -> Path:
    """The next snapshot of ``blessed`` with ``version`` revoked (``attest manifest revoke``:
    sequence + 1, re-signed by the releases keys)."""
    shutil.copyfile(blessed, path)
    _step("manifest", "revoke", version, "--reason", reason, "--registry", str(path))
    _sign_releases(path)
    return path


def trust_dir(registry: Path, state: Path) -> Path:
    """The verifier's trusted manifests: ``attest manifest verify --state`` (the TEST root and
    the registry, threshold-checked, fresh, persisted)."""
    _step(
        "manifest",
        "verify",
        "--root",
        str(TEST_TRUST / "root.json"),
        "--registry",
        str(registry),
        "--state",
        str(state),
    )
    return state


def ear_key(path: Path) -> Path:
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


@dataclass
class VerifyRun:
    """One ``attest verify`` run: its exit code, JSON, the EAR's claims (signature checked)
    and its wall time."""

    code: int
    doc: dict[str, Any]
    ear: dict[str, Any] | None
    seconds: float
    argv: list[str]
    stderr: str = ""

    @property
    def explanation(self) -> str:
        return str(self.doc.get("explanation") or "")

    @property
    def release(self) -> dict[str, Any]:
        rel = (self.doc.get("result") or {}).get("release")
        return rel if isinstance(rel, dict) else {}

    @property
    def first_contact(self) -> bool:
        return any(
            str(n).startswith("enrolled on first contact") for n in self.doc.get("notes", [])
        )

    def summary(self) -> str:
        return f"exit {self.code} {self.doc.get('verdict')} ({self.seconds:.1f} s)" + (
            f": {self.explanation}" if self.explanation else ""
        )


def attest_verify(
    vm: Vm,
    *,
    state: Path,
    key: Path,
    trust: Path | None = None,
    root: Path | None = None,
    snapshot: Path | None = None,
    timeout: float = 300,
) -> VerifyRun:
    """``attest verify`` as an orchestrator runs it against the VM (a subprocess)."""
    st = vm.tpm_state()
    tls = tls_files(vm.work)
    argv = [
        vm.url,
        "--state",
        str(state),
        "--platform",
        PLATFORM_ID,
        "--ek-ca",
        str(st.root_ca),
        "--ek-ca",
        str(st.intermediate_ca),
        "--activation-url",
        vm.mtls_url,
        "--tls-ca",
        str(tls.ca),
        "--client-cert",
        str(tls.client_cert),
        "--client-key",
        str(tls.client_key),
        "--ear-key",
        str(key),
        "--json",
    ]
    if trust is not None:
        argv += ["--trust-dir", str(trust)]
    if root is not None and snapshot is not None:
        argv += ["--root", str(root), "--snapshot", str(snapshot)]
    t0 = time.monotonic()
    r = _attest("verify", *argv, timeout=timeout)
    seconds = time.monotonic() - t0
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        doc = {
            "verdict": None,
            "explanation": f"no JSON (exit {r.returncode}): "
            f"{(r.stderr or r.stdout).strip()[-400:]}",
        }
    claims = None
    if doc.get("ear"):
        private = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        claims = verify_ear(doc["ear"], private.public_key())
    return VerifyRun(r.returncode, doc, claims, seconds, ["attest", "verify", *argv], r.stderr)
