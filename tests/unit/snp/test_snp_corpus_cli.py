"""``attest snp`` on real data (tests/data/snp): the issue's CLI contract with AMD's chain,
--ark-dir, a certificate table, and virtee/sev's launch digests of a real AmdSev OVMF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.snp.corpus import AMD_DIR, CORPUS, REAL, REAL_BY_NAME, Real, requires_corpus

from attest.cli import main
from attest.snp.certs import load_certificate, load_certificates
from attest.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, build_cert_table
from attest.snp.report import Product
from attest.testing.snp import pem

pytestmark = requires_corpus
TURIN = REAL_BY_NAME["turin-v5-vcek-msft"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _verify_args(real: Real, *, ark_dir: bool = True) -> list[str]:
    args = ["snp", "verify", "--report", str(CORPUS / f"{real.name}.report.bin")]
    args += ["--vcek", str(CORPUS / real.leaf), "--now", real.now.isoformat()]
    args += ["--chain", str(CORPUS / real.chain)] if real.chain else []
    return args + (["--ark-dir", str(AMD_DIR)] if ark_dir else [])


@pytest.mark.parametrize("real", REAL, ids=lambda r: r.name)
def test_verify_prints_the_fields_as_json(capsys: pytest.CaptureFixture[str], real: Real) -> None:
    rc, out, err = _run(capsys, *_verify_args(real), "--json")
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    raw = real.report()
    assert (doc["product"], doc["signer"]) == (real.product.value, real.signer.name.lower())
    assert doc["version"] == real.version
    assert doc["measurement"] == raw[0x90:0xC0].hex()
    assert doc["report_data"] == raw[0x50:0x90].hex()
    assert doc["chip_id"] == raw[0x1A0:0x1E0].hex() and len(doc["chip_id"]) == 128
    assert doc["vmpl"] == int.from_bytes(raw[0x30:0x34], "little")
    assert ("fmc" in doc["reported_tcb"]) == (real.product is Product.TURIN)
    assert doc["policy"]["raw"] == hex(int.from_bytes(raw[8:16], "little"))


def test_verify_with_amds_cert_chain_as_chain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The normal case: CHAIN is what the KDS cert_chain endpoint returns (ASK + ARK)."""
    ask, ark, _ = load_certificates(TURIN.kds_chain())
    (tmp_path / "cert_chain.pem").write_bytes(pem(ask) + pem(ark))
    args = _verify_args(TURIN, ark_dir=False)
    args[args.index("--chain") + 1] = str(tmp_path / "cert_chain.pem")
    rc, out, _ = _run(capsys, *args)
    assert rc == 0 and out.startswith("verified: Turin VCEK report v5")


def test_verify_without_the_ark_exits_1_naming_the_root(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, err = _run(capsys, *_verify_args(TURIN, ark_dir=False))  # the ASK alone
    assert (rc, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("attest: snp-root check failed: no AMD ARK was presented")


def test_verify_with_ark_dir_needs_no_chain(capsys: pytest.CaptureFixture[str]) -> None:
    args = _verify_args(TURIN)
    i = args.index("--chain")
    rc, out, _ = _run(capsys, *args[:i], *args[i + 2 :])
    assert rc == 0 and out.startswith("verified: Turin VCEK report v5")


def test_verify_checks_report_data_byte_for_byte(capsys: pytest.CaptureFixture[str]) -> None:
    rd = TURIN.report()[0x50:0x90]
    assert _run(capsys, *_verify_args(TURIN), "--report-data", rd.hex())[0] == 0
    wrong = bytes([rd[0] ^ 1]) + rd[1:]
    rc, _, err = _run(capsys, *_verify_args(TURIN), "--report-data", wrong.hex())
    assert rc == 1 and err.count("\n") == 1 and "snp-report-data check failed" in err


def _table_for(real: Real, guid: object) -> bytes:
    ask, ark, _ = load_certificates(real.kds_chain())
    leaf = load_certificate(real.leaf_bytes()).der
    return build_cert_table({guid: leaf, ASK_GUID: ask.der, ARK_GUID: ark.der})  # type: ignore[dict-item]


def test_verify_reads_a_certificate_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "aux.bin").write_bytes(_table_for(TURIN, VCEK_GUID))
    base = ["snp", "verify", "--report", str(CORPUS / f"{TURIN.name}.report.bin")]
    now = ["--now", TURIN.now.isoformat()]
    rc, out, _ = _run(capsys, *base, "--certs-table", str(tmp_path / "aux.bin"), *now, "--json")
    assert rc == 0 and json.loads(out)["product"] == "Turin"
    (tmp_path / "vlek.bin").write_bytes(_table_for(TURIN, VLEK_GUID))  # no VCEK entry
    rc, _, err = _run(capsys, *base, "--certs-table", str(tmp_path / "vlek.bin"))
    assert rc == 3 and "no VCEK" in err


@pytest.mark.parametrize(
    ("append", "expected"),
    [
        (
            "console=ttyS0 loglevel=7",
            "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa",
        ),
        (
            None,
            "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5",
        ),
    ],
)
def test_measure_matches_virtee_sevs_digests_of_a_real_amdsev_ovmf(
    capsys: pytest.CaptureFixture[str], append: str | None, expected: str
) -> None:
    """Expected values from virtee/sev tests/measurement.rs (an independent Rust port)."""
    pytest.importorskip("sevsnpmeasure")
    args = ["snp", "measure", "--ovmf", str(CORPUS / "ovmf-amdsev-suffix-virtee.bin")]
    args += ["--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    args += ["--kernel", "/dev/null", "--initrd", "/dev/null"]
    args += ["--append", append] if append is not None else []
    rc, out, _ = _run(capsys, *args)
    assert (rc, out.strip()) == (0, expected)
