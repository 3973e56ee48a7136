#!/usr/bin/env python3
"""Regenerate the TEST trust root and example registry in this directory.

    .venv/bin/python firmware_manifests/test/regenerate.py [--new-keys]

Keys in keys/ are reused unless --new-keys is given (they are TEST-ONLY and public). Times and
dm-verity salts are fixed, so the documents change only where ECDSA signatures (random nonces)
do. The example images are derived from a counter (``example_image``) so tests can recompute
their digests. Everything goes through ``attest manifest`` — this is also a worked example.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from attest.cli import main

HERE = Path(__file__).resolve().parent
KEYS = HERE / "keys"
NOW = "2025-01-01T00:00:00Z"
EXPIRES = "2036-01-01T00:00:00Z"
# name -> key type; the prefix of a name is its role
KEY_SPECS = {
    "root-1": "ed25519", "root-2": "ecdsa-p256", "root-3": "ed25519",
    "releases-1": "ed25519", "releases-2": "ecdsa-p256", "releases-3": "ed25519",
    "platform-1": "ed25519", "platform-2": "ecdsa-p256",
}
THRESHOLDS = {"root": 2, "releases": 2, "platform": 1}
# version, blocks of 4 KiB, how it is blessed
EXAMPLES = [("0.1.0", 3), ("0.2.0", 5), ("0.2.1", 6), ("0.3.0", 130)]
COMMIT_010 = "1111111111111111111111111111111111111111"
COMMIT_020 = "2222222222222222222222222222222222222222"
COMMIT_021 = "3333333333333333333333333333333333333333"


def example_image(version: str, blocks: int) -> bytes:
    """Deterministic example image bytes (not a real OS image)."""
    out = bytearray()
    counter = 0
    while len(out) < blocks * 4096:
        out += hashlib.sha256(f"attest example image {version} {counter}".encode()).digest()
        counter += 1
    return bytes(out[: blocks * 4096])


def key_path(name: str) -> Path:
    return KEYS / f"TEST-ONLY-{name}"


def run(*argv: str) -> None:
    rc = main(["manifest", *argv])
    if rc != 0:
        raise SystemExit(f"attest manifest {' '.join(argv)} failed with {rc}")


def regenerate(new_keys: bool = False) -> None:
    KEYS.mkdir(exist_ok=True)
    for name, kind in KEY_SPECS.items():
        if new_keys or not Path(f"{key_path(name)}.pem").exists():
            run("keygen", "--type", kind, "--out", str(key_path(name)), "--test-only", "--force")
    root, registry = HERE / "root.json", HERE / "registry.json"
    init = ["init", "--out", str(root), "--registry-out", str(registry), "--now", NOW,
            "--expires", EXPIRES]
    for role, threshold in THRESHOLDS.items():
        init += [f"--{role}-threshold", str(threshold)]
        for name in KEY_SPECS:
            if name.startswith(role + "-"):
                init += [f"--{role}-key", f"{key_path(name)}.pub.json"]
    run(*init)
    for name in ("root-1", "root-2"):
        run("sign", str(root), "--key", f"{key_path(name)}.pem")
    reg = ["--registry", str(registry), "--now", NOW]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (version, blocks) in enumerate(EXAMPLES):
            image = Path(tmp) / f"{version}.img"
            image.write_bytes(example_image(version, blocks))
            salt = hashlib.sha256(f"salt {version}".encode()).hexdigest()
            source = {"0.1.0": ["--commit", COMMIT_010], "0.2.0": ["--commit", COMMIT_020]}.get(
                version, ["--embargo"])
            run("bless", str(image), "--version", version, "--salt", salt,
                "--sequence", str(i + 1), *source, *reg,
                "--boot-component", f"kernel={hashlib.sha256(version.encode()).hexdigest()}")
    run("revoke", "0.2.0", "--reason", "EXAMPLE: vulnerable (CVE-0000-0000)", *reg)
    run("fleet-complete", "0.2.1", "--at", "2025-01-01T00:00:00Z", *reg)
    run("disclose", "0.2.1", "--commit", COMMIT_021, *reg)
    run("allow-rollback", "0.2.1", "0.1.0", "--reason", "EXAMPLE: emergency rollback", *reg)
    run("platform-set", "--ref", str(HERE / "example-platform.json"), *reg,
        "--expires", EXPIRES)
    run("sign", str(registry), "--key", f"{key_path('platform-1')}.pem",
        "--platform", "example-ovmf")
    for name in ("releases-1", "releases-2"):
        run("sign", str(registry), "--key", f"{key_path(name)}.pem")
    run("verify", "--root", str(root), "--registry", str(registry), "--now", NOW)


if __name__ == "__main__":
    regenerate(new_keys="--new-keys" in sys.argv[1:])
