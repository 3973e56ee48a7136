"""``attest snp verify`` and ``attest snp measure``: exit codes, one error line, JSON, on a fake
AMD whose ARK the shell is given as pinned (real data: test_snp_corpus_cli.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.unit.snp.fakes import FAKE_NOW, fake
from tests.unit.snp.ovmf_fixture import make_ovmf

import attest.cli.snp
from attest.cli import main
from attest.snp.certtable import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, build_cert_table
from attest.snp.report import Product, Signer
from attest.snp.roots import ArkPins
from attest.testing.snp import FakeAmd, pem


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell pins the fake ARKs in AMD's place (what it hands SnpVerifier as ``pins``)."""
    pins = {p: fake(p).pins.spki_sha256[p] for p in Product}
    monkeypatch.setattr(attest.cli.snp, "AMD_ARK_PINS", ArkPins(pins))


@dataclass(frozen=True)
class Files:
    amd: FakeAmd
    report: Path
    leaf: Path
    chain: Path  # ASK (or ASVK) + ARK: AMD's KDS cert_chain
    ask: Path  # the ASK (or ASVK) alone
    ark_dir: Path  # the ARK alone

    def args(self, *, chain: Path | None = None, now: str = FAKE_NOW.isoformat()) -> list[str]:
        argv = ["snp", "verify", "--report", str(self.report), "--vcek", str(self.leaf)]
        return argv + ["--chain", str(chain or self.chain), "--now", now]


def _files(tmp_path: Path, amd: FakeAmd, signer: Signer = Signer.VCEK, **fields: object) -> Files:
    leaf = amd.leaf(signer)[0]
    (tmp_path / "arks").mkdir()
    (tmp_path / "arks" / "ark.pem").write_bytes(pem(amd.ark))
    f = Files(
        amd,
        tmp_path / "report.bin",
        tmp_path / "leaf.der",
        tmp_path / "cert_chain.pem",
        tmp_path / "ask.pem",
        tmp_path / "arks",
    )
    f.report.write_bytes(amd.report(signer=signer, **fields))
    f.leaf.write_bytes(leaf.der)
    f.chain.write_bytes(amd.cert_chain(signer))
    f.ask.write_bytes(pem(amd.asvk if signer is Signer.VLEK else amd.ask))
    return f


@pytest.mark.usefixtures("pinned")
@pytest.mark.parametrize("signer", [Signer.VCEK, Signer.VLEK], ids=lambda s: s.name)
def test_verify_prints_the_fields_as_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, amd: FakeAmd, signer: Signer
) -> None:
    f = _files(tmp_path, amd, signer, vmpl=2, report_data=b"\x42" * 64, host_data=b"\x07" * 32)
    rc, out, err = _run(capsys, *f.args(), "--json")
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    raw = f.report.read_bytes()
    assert (doc["product"], doc["signer"], doc["version"]) == (
        amd.product.value,
        signer.name.lower(),
        3,
    )
    assert doc["measurement"] == raw[0x90:0xC0].hex() == "11" * 48
    assert doc["report_data"] == "42" * 64 and doc["host_data"] == "07" * 32
    assert doc["chip_id"] == amd.chip_id.hex() and len(doc["chip_id"]) == 128
    assert doc["vmpl"] == 2
    assert doc["reported_tcb"] == amd.tcb.as_dict()
    assert ("fmc" in doc["reported_tcb"]) == (amd.product is Product.TURIN)
    assert doc["policy"]["raw"] == hex(0x30000)
    assert doc["cpuid"] == {"family": raw[0x188], "model": raw[0x189]}


@pytest.mark.usefixtures("pinned")
def test_verify_checks_report_data_byte_for_byte(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rd = bytes(range(64))
    f = _files(tmp_path, fake(Product.TURIN), report_data=rd, version=5)
    assert _run(capsys, *f.args(), "--report-data", rd.hex())[0] == 0
    wrong = bytes([rd[0] ^ 1]) + rd[1:]
    rc, _, err = _run(capsys, *f.args(), "--report-data", wrong.hex())
    assert rc == 1 and err.count("\n") == 1 and "snp-report-data check failed" in err


@pytest.mark.usefixtures("pinned")
def test_verify_names_the_failed_check_on_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _files(tmp_path, fake(Product.TURIN), version=5)
    bad = bytearray(f.report.read_bytes())
    bad[0x90] ^= 1
    f.report.write_bytes(bytes(bad))
    rc, out, err = _run(capsys, *f.args())
    assert (rc, out) == (1, "") and err.startswith("attest: snp-signature check failed: ")
    assert err.count("\n") == 1
    rc, _, err = _run(capsys, *f.args(now="2040-01-01T00:00:00Z"))
    assert rc == 1 and err.startswith("attest: snp-validity check failed: ")


@pytest.mark.usefixtures("pinned")
def test_verify_exits_3_on_a_malformed_report_or_certificate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _files(tmp_path, fake(Product.MILAN))
    good = f.report.read_bytes()
    f.report.write_bytes(good[:-1])
    rc, _, err = _run(capsys, *f.args())
    assert rc == 3 and err.startswith("attest: malformed input:") and err.count("\n") == 1
    f.report.write_bytes(good)
    assert _run(capsys, *f.args())[0] == 0
    f.leaf.write_bytes(b"\x30\x03\x02\x01\x00")
    rc, _, err = _run(capsys, *f.args())
    assert rc == 3 and err.startswith("attest: malformed input:") and err.count("\n") == 1


@pytest.mark.usefixtures("pinned")
def test_verify_without_the_ark_exits_1_naming_the_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _files(tmp_path, fake(Product.GENOA))
    rc, out, err = _run(capsys, *f.args(chain=f.ask))
    assert (rc, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("attest: snp-root check failed: no AMD ARK was presented")


@pytest.mark.usefixtures("pinned")
def test_verify_takes_the_ark_from_ark_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = _files(tmp_path, fake(Product.GENOA))
    rc, out, _ = _run(capsys, *f.args(chain=f.ask), "--ark-dir", str(f.ark_dir))
    assert rc == 0 and out.startswith("verified: Genoa VCEK report v3")
    (f.ark_dir / "ark.pem").unlink()  # AMD's cert_chain file as downloaded: no --chain needed
    (f.ark_dir / "genoa.cert_chain.pem").write_bytes(f.chain.read_bytes())
    args = f.args()
    i = args.index("--chain")
    rc, out, _ = _run(capsys, *args[:i], *args[i + 2 :], "--ark-dir", str(f.ark_dir))
    assert rc == 0 and out.startswith("verified: Genoa VCEK report v3")


def test_verify_refuses_the_look_alike_chain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """AMD's pins (no fixture): the fake ARK has AMD's names and another key."""
    f = _files(tmp_path, fake(Product.MILAN))
    rc, _, err = _run(capsys, *f.args())
    assert rc == 1 and err.startswith("attest: snp-root check failed:")
    assert "not a pinned AMD ARK" in err
    rc, _, err = _run(capsys, *f.args(chain=f.ask), "--ark-dir", str(f.ark_dir))
    assert rc == 1 and "snp-root check failed" in err


@pytest.mark.usefixtures("pinned")
def test_ark_dir_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = _files(tmp_path, fake(Product.MILAN))
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(capsys, *f.args(), "--ark-dir", str(tmp_path / "empty"))
    assert rc == 2 and err.startswith("attest: configuration error") and "--ark-dir" in err
    (f.ark_dir / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n!!\n")
    rc, _, err = _run(capsys, *f.args(), "--ark-dir", str(f.ark_dir))
    assert rc == 3 and "junk.pem" in err
    rc, _, err = _run(capsys, *f.args(), "--ark-dir", str(tmp_path / "missing"))
    assert rc == 6 and "missing" in err


def _table(amd: FakeAmd, guid: object, *, ark: bool = True) -> bytes:
    certs = {guid: amd.vcek.der, ASK_GUID: amd.ask.der}
    if ark:
        certs[ARK_GUID] = amd.ark.der
    return build_cert_table(certs)  # type: ignore[arg-type]


@pytest.mark.usefixtures("pinned")
def test_verify_reads_a_certificate_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    turin = fake(Product.TURIN)
    f = _files(tmp_path, turin, version=5)
    base = ["snp", "verify", "--report", str(f.report), "--now", FAKE_NOW.isoformat()]
    (tmp_path / "aux.bin").write_bytes(_table(turin, VCEK_GUID))
    rc, out, _ = _run(capsys, *base, "--certs-table", str(tmp_path / "aux.bin"), "--json")
    assert rc == 0 and json.loads(out)["product"] == "Turin"
    (tmp_path / "vlek.bin").write_bytes(_table(turin, VLEK_GUID))  # no VCEK entry
    rc, _, err = _run(capsys, *base, "--certs-table", str(tmp_path / "vlek.bin"))
    assert rc == 3 and "no VCEK" in err
    (tmp_path / "noark.bin").write_bytes(_table(turin, VCEK_GUID, ark=False))
    rc, _, err = _run(capsys, *base, "--certs-table", str(tmp_path / "noark.bin"))
    assert rc == 1 and "snp-root check failed: no AMD ARK" in err
    rc, _, _ = _run(
        capsys, *base, "--certs-table", str(tmp_path / "noark.bin"), "--ark-dir", str(f.ark_dir)
    )
    assert rc == 0
    rc, _, err = _run(capsys, *base, "--certs-table", str(tmp_path / "aux.bin"), "--vcek", "x")
    assert rc == 2 and "not both" in err


# --- measure -----------------------------------------------------------------------------------

sevsnpmeasure_cli = pytest.importorskip("sevsnpmeasure.cli")


def _library_digest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str
) -> str:
    monkeypatch.setattr(sys, "argv", ["sev-snp-measure", "--mode", "snp", *argv])
    assert sevsnpmeasure_cli.main() == 0
    return capsys.readouterr().out.strip()


@pytest.mark.parametrize("vcpu_type", ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"])
@pytest.mark.parametrize("with_kernel", [False, True], ids=["firmware-only", "kernel"])
def test_measure_equals_sev_snp_measure_on_a_generated_ovmf(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    vcpu_type: str,
    with_kernel: bool,
) -> None:
    ovmf = make_ovmf(tmp_path / "OVMF.fd")
    args = ["--ovmf", str(ovmf), "--vcpus", "4", "--vcpu-type", vcpu_type]
    if with_kernel:
        (tmp_path / "vmlinuz").write_bytes(b"kernel" * 100)
        (tmp_path / "initrd").write_bytes(b"initrd" * 100)
        cmdline = "root=/dev/dm-0 verity.roothash=" + "ab" * 32
        args += ["--kernel", str(tmp_path / "vmlinuz"), "--initrd", str(tmp_path / "initrd")]
        args += ["--append", cmdline]
    rc, out, _ = _run(capsys, "snp", "measure", *args, "--json")
    assert rc == 0
    ours = json.loads(out)["measurement"]
    assert len(ours) == 96 and ours == _library_digest(capsys, monkeypatch, *args)


def test_measure_changes_with_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ovmf = make_ovmf(tmp_path / "OVMF.fd")
    (tmp_path / "k").write_bytes(b"k")
    base = ["snp", "measure", "--ovmf", str(ovmf), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    digests = {
        _run(capsys, *base, "--kernel", str(tmp_path / "k"), "--append", a)[1] for a in ("a", "b")
    }
    assert len(digests) == 2


def test_measure_refuses_a_kernel_without_snp_kernel_hashes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Like Debian's OvmfX64: SEV metadata, but nowhere to measure a kernel command line."""
    ovmf = make_ovmf(tmp_path / "OVMF.fd", kernel_hashes=False)
    base = ["snp", "measure", "--ovmf", str(ovmf), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    assert _run(capsys, *base)[0] == 0
    rc, _, err = _run(capsys, *base, "--kernel", str(ovmf))
    assert rc == 3 and "SNP_KERNEL_HASHES" in err


def test_measure_refuses_an_ovmf_without_sev_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "plain.fd").write_bytes(bytes(0x10000))
    rc, _, err = _run(
        capsys,
        "snp",
        "measure",
        "--ovmf",
        str(tmp_path / "plain.fd"),
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
    )
    assert rc == 3 and "no SEV metadata" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--vcpu-type", "Pentium"],
        ["--vcpus", "0"],
        ["--vcpus", "99999999999999999999"],  # one VMSA page each: the digest never ended
        ["--append", "x"],
        ["--kernel", "{ovmf}", "--append", "\udcff"],  # a byte that is not UTF-8, from argv
    ],
    ids=["vcpu-type", "vcpus", "vcpus-huge", "append-without-kernel", "append-not-utf8"],
)
def test_measure_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]
) -> None:
    ovmf = make_ovmf(tmp_path / "OVMF.fd")
    args = {"--vcpus": "1", "--vcpu-type": "EPYC-v4"}
    rest: list[str] = []
    it = iter(extra)
    for flag in it:
        if flag in args:
            args[flag] = next(it)
        else:
            rest += [flag, next(it)]
    flat = [x for kv in args.items() for x in kv]
    rest = [str(ovmf) if x == "{ovmf}" else x for x in rest]
    rc, _, err = _run(capsys, "snp", "measure", "--ovmf", str(ovmf), *flat, *rest)
    assert rc == 2 and err.startswith("attest: configuration error")


@pytest.mark.parametrize("flag", ["--kernel", "--initrd"])
def test_measure_refuses_a_kernel_or_initrd_that_is_not_a_regular_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str
) -> None:
    """sev-snp-measure reads them whole: /dev/zero would be read until memory runs out
    (MemoryError, exit 70). A device (but /dev/null) or a FIFO is refused by name, exit 6."""
    ovmf = make_ovmf(tmp_path / "OVMF.fd")
    (tmp_path / "k").write_bytes(b"k")
    base = ["snp", "measure", "--ovmf", str(ovmf), "--vcpus", "1", "--vcpu-type", "EPYC-v4"]
    files = {"--kernel": str(tmp_path / "k"), flag: "/dev/zero"}
    rc, out, err = _run(capsys, *base, *[x for kv in files.items() for x in kv])
    assert (rc, out) == (6, "")
    assert err == "attest: cannot access /dev/zero: not a regular file\n"
    files[flag] = "/dev/null"  # the one device taken: no kernel or initrd (empty)
    rc, out, err = _run(capsys, *base, *[x for kv in files.items() for x in kv])
    assert rc == 0 and err == "" and len(out.strip()) == 96, err
