"""Rebuild the EK certificate corpus byte for byte from the upstream repositories: the leaves
in tests/data/ekcerts/ (its PROVENANCE.md) and the vendor CA store shipped with attest,
src/attest/data/ek_roots/ (its PROVENANCE.md).

Usage: python tests/data/ekcerts/rebuild.py KEYLIME_GIT GO_TPM_TOOLS_GIT CMC_GIT \
    TPM_CA_CERTIFICATES_GIT [OUT_DIR]

With OUT_DIR the leaves are written under OUT_DIR and the CA store under OUT_DIR/ek_roots;
without it, in place.

Each GIT_DIR is a clone (bare or not) of keylime/keylime, google/go-tpm-tools,
Fraunhofer-AISEC/cmc and loicsikidi/tpm-ca-certificates holding the commit below. The script
reads every candidate certificate those sources carry -- PEM bundles split into DER, PEM and DER
files (as stored, and as DER), base64 string constants of keylime's Python tests (decoded as
they are, trailing bytes kept), and the base64url ``certificate`` of cmc's Intel answer -- and
writes each file PROVENANCE.md lists from the candidate with its SHA-256. Nothing else is
written; a listed file no candidate matches is reported and the exit status is 1. ``leaves.tsv``
is not derived from upstream (it is this repository's own description of the leaves).
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The bundled vendor EK CA store (package data).
EK_ROOTS = HERE.parents[2] / "src" / "attest" / "data" / "ek_roots"

KEYLIME = "9b1f6e6a917f86c792bac680ea7d36312d5914a5"
GO_TPM_TOOLS = "67670e5c021a24f2366eb1808db2659211af5eb2"
CMC = "aeb585989534108ca5d4c55a2e9a7da129459cc8"
TPM_CA_CERTIFICATES = "366e970a144e48057e56a833e2aa846c8d25676b"

KEYLIME_TESTS = (
    "test/test_cert_utils.py",
    "test/test_certificate_wrapper.py",
    "keylime/tpm/tpm2_objects_test.py",
)
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_ROW = re.compile(r"^\| `([^`]+)` \|.*?\| `([0-9a-f]{64})` \|", re.M)


def _git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True
    ).stdout


def _show(git_dir: str, commit: str, path: str) -> bytes:
    return _git(git_dir, "show", f"{commit}:{path}")


def _ls(git_dir: str, commit: str, folder: str) -> list[str]:
    return _git(git_dir, "ls-tree", "--name-only", commit, folder).decode().split()


def _file_candidates(data: bytes) -> Iterator[bytes]:
    yield data  # the file as stored (PEM leaves keep their PEM bytes)
    for block in _PEM.findall(data):
        yield base64.b64decode(b"".join(block.split()))


def _python_constants(source: bytes) -> Iterator[bytes]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = "".join(node.value.split())
            if text.startswith("MII"):
                try:
                    yield base64.b64decode(text, validate=True)
                except binascii.Error:
                    continue


def candidates(keylime: str, go_tpm_tools: str, cmc: str, tpm_ca: str) -> Iterator[bytes]:
    for path in _ls(keylime, KEYLIME, "tpm_cert_store/"):
        yield from _file_candidates(_show(keylime, KEYLIME, path))
    for path in KEYLIME_TESTS:
        yield from _python_constants(_show(keylime, KEYLIME, path))
    for folder in ("server/ca-certs/", "internal/test/certificates/"):
        for path in _ls(go_tpm_tools, GO_TPM_TOOLS, folder):
            yield from _file_candidates(_show(go_tpm_tools, GO_TPM_TOOLS, path))
    go_test = _show(cmc, CMC, "provision/tpm_test.go")
    for value in re.findall(rb'"certificate":"([A-Za-z0-9_-]+)"', go_test):
        yield base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    for bundle in ("MIRROR.tpm-ca-certificates.pem", "MIRROR.tpm-intermediate-ca-certificates.pem"):
        yield from _file_candidates(_show(tpm_ca, TPM_CA_CERTIFICATES, bundle))


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[4]) if len(argv) == 5 else HERE
    ca_out = out / "ek_roots" if len(argv) == 5 else EK_ROOTS
    wanted = {
        (where, name): sha256
        for where, listed in ((out, HERE), (ca_out, EK_ROOTS))
        for name, sha256 in _ROW.findall((listed / "PROVENANCE.md").read_text())
    }
    by_sha = {hashlib.sha256(c).hexdigest(): c for c in candidates(*argv[:4])}
    missing = 0
    for (where, name), sha256 in sorted(wanted.items()):
        data = by_sha.get(sha256)
        if data is None:
            missing += 1
            print(f"MISSING {where / name} {sha256}")
            continue
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    print(f"{len(wanted) - missing} of {len(wanted)} files written to {out} and {ca_out}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
