"""Rebuild tests/data/snp/ byte for byte from the upstream repositories (see PROVENANCE.md).

Usage: python tests/data/snp/rebuild.py GIT_DIR_OF_go-sev-guest GIT_DIR_OF_virtee-sev \
    GIT_DIR_OF_trustee GIT_DIR_OF_TEE-Attestation-Verification [OUT_DIR]

Each GIT_DIR is a clone (bare or not) holding the pinned commit below. Every file is read with
``git show COMMIT:PATH``; three are transformed (hex decoded, or cut out of a JSON file), the
rest copied as is. The SHA-256 of each written file is checked against ``EXPECTED`` of
tests/unit/snp/corpus.py (read as text, so this script needs no attest import).
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS_PY = HERE.parents[1] / "unit" / "snp" / "corpus.py"

GOSEV = ("google/go-sev-guest", "af1c107a648f47253da23a9de7a7c82ec073cfdb")
VIRTEE = ("virtee/sev", "9cf2adbffa209cc5becf7ff89ffdf624e7278ced")
TRUSTEE = ("confidential-containers/trustee", "78962cd416dcc8a32f9377e0066a28fe21420f69")
MSFT = ("microsoft/TEE-Attestation-Verification", "220ffb3b65bb2ef3a0c303c4efb779733c5ef682")


def _same(data: bytes) -> bytes:
    return data


def _hex(data: bytes) -> bytes:
    return bytes.fromhex(data.decode().strip())


def _azure_report(data: bytes) -> bytes:
    # an Azure HCL report: the SNP ATTESTATION_REPORT is bytes 0x20..0x4C0 of the `report` array
    return bytes(json.loads(data)["report"][0x20:0x4C0])


def _azure_vcek(data: bytes) -> bytes:
    return str(json.loads(data)["vcek"]).encode()


_SNP = "deps/verifier/test_data/snp/"
_AZ = "deps/verifier/test_data/az-snp-vtpm/evidence-genoa.json"
_MS = "tests/test_data/"
# out name: (repository, upstream path, transform)
FILES: dict[str, tuple[tuple[str, str], str, Callable[[bytes], bytes]]] = {
    "milan-v2-vcek-gosevguest.report.bin": (GOSEV, "verify/testdata/attestation.bin", _same),
    "milan-v2-vcek-gosevguest.vcek.der": (GOSEV, "verify/testdata/vcek.testcer", _same),
    "milan-v2-vcek-virtee.report.bin": (VIRTEE, "tests/certs_data/report_milan.hex", _hex),
    "milan-v2-vcek-virtee.vcek.der": (VIRTEE, "tests/certs_data/vcek_milan.der", _same),
    "milan-v2-vcek-virtee.chain.pem": (VIRTEE, "tests/certs_data/cert_chain_milan", _same),
    "ovmf-amdsev-suffix-virtee.bin": (
        VIRTEE,
        "tests/measurement/ovmf_AmdSev_suffix.bin",
        _same,
    ),
    "milan-v2-vcek-trustee.report.bin": (TRUSTEE, _SNP + "test-report.bin", _same),
    "milan-v2-vcek-trustee.vcek.der": (TRUSTEE, _SNP + "test-vcek.der", _same),
    "milan-v3-vlek-trustee.report.bin": (TRUSTEE, _SNP + "test-vlek-report.bin", _same),
    "milan-v3-vlek-trustee.vlek.der": (TRUSTEE, _SNP + "test-vlek.der", _same),
    "milan-v3-vlek-trustee.chain.pem": (
        TRUSTEE,
        "deps/verifier/src/snp/milan_ask_ark_asvk.pem",
        _same,
    ),
    "milan-vcek-invalid-trustee.der": (TRUSTEE, _SNP + "test-vcek-invalid-new.der", _same),
    "genoa-v3-vcek-azure.report.bin": (TRUSTEE, _AZ, _azure_report),
    "genoa-v3-vcek-azure.vcek.pem": (TRUSTEE, _AZ, _azure_vcek),
    "amd/milan-ask-ark-asvk-trustee.pem": (
        TRUSTEE,
        "deps/verifier/src/snp/milan_ask_ark_asvk.pem",
        _same,
    ),
    "amd/genoa-ask-ark-asvk-trustee.pem": (
        TRUSTEE,
        "deps/verifier/src/snp/genoa_ask_ark_asvk.pem",
        _same,
    ),
    "amd/turin-ask-ark-asvk-trustee.pem": (
        TRUSTEE,
        "deps/verifier/src/snp/turin_ask_ark_asvk.pem",
        _same,
    ),
    "milan-v3-vcek-msft.report.bin": (MSFT, _MS + "milan_attestation_report.bin", _same),
    "milan-v3-vcek-msft.vcek.pem": (MSFT, _MS + "milan_vcek.pem", _same),
    "milan-v3-vcek-msft.ask.pem": (MSFT, _MS + "milan_ask.pem", _same),
    "genoa-v3-vcek-msft.report.bin": (MSFT, _MS + "genoa_attestation_report.bin", _same),
    "genoa-v3-vcek-msft.vcek.pem": (MSFT, _MS + "genoa_vcek.pem", _same),
    "genoa-v3-vcek-msft.ask.pem": (MSFT, _MS + "genoa_ask.pem", _same),
    "turin-v5-vcek-msft.report.bin": (MSFT, _MS + "turin_attestation_report.bin", _same),
    "turin-v5-vcek-msft.vcek.pem": (MSFT, _MS + "turin_vcek.pem", _same),
    "turin-v5-vcek-msft.ask.pem": (MSFT, _MS + "turin_ask.pem", _same),
}


def expected() -> dict[str, str]:
    tree = ast.parse(CORPUS_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "EXPECTED":
            value = ast.literal_eval(node.value)  # type: ignore[arg-type]
            assert isinstance(value, dict)
            return value
    raise SystemExit(f"no EXPECTED in {CORPUS_PY}")


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    git_dirs = dict(zip((GOSEV, VIRTEE, TRUSTEE, MSFT), argv[:4], strict=False))
    out = Path(argv[4]) if len(argv) == 5 else HERE
    want = expected()
    bad = 0
    for name, (repo, path, transform) in FILES.items():
        raw = subprocess.run(
            ["git", "--git-dir", git_dirs[repo], "show", f"{repo[1]}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        data = transform(raw)
        digest = hashlib.sha256(data).hexdigest()
        ok = digest == want.get(name)
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name} {digest}")
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    missing = sorted(set(want) - set(FILES))
    for name in missing:
        print(f"MISSING {name}")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
