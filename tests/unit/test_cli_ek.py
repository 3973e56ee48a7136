"""`attest ek verify`: exit 0 with the chain, the TPM identity and the deviations; exit 1 naming
the failed check; exit 3 for input that is not a certificate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from tests.support.ekpki import Ca, der_of, ek_builder, make_ca

from attest.cli import main


@pytest.fixture(scope="module")
def pki() -> tuple[Ca, Ca, bytes]:
    root = make_ca("CLI Test Root")
    inter = make_ca("CLI Test Issuing CA", root)
    leaf = ek_builder(inter, rsa.generate_private_key(65537, 2048).public_key())
    return root, inter, der_of(leaf.sign(inter.key, hashes.SHA384()))


@pytest.fixture()
def dirs(tmp_path: Path, pki: tuple[Ca, Ca, bytes]) -> tuple[Path, Path, Path]:
    root, inter, leaf = pki
    roots, inters = tmp_path / "roots", tmp_path / "inters"
    roots.mkdir()
    inters.mkdir()
    (roots / "root.cer").write_bytes(der_of(root.cert))
    (inters / "ica.pem").write_bytes(inter.cert.public_bytes(Encoding.PEM))
    nv = tmp_path / "ek-nv.bin"
    nv.write_bytes(leaf + b"\xff" * 200)  # as read from the NV index
    return nv, roots, inters


def _args(nv: Path, roots: Path, inters: Path, *extra: str) -> list[str]:
    return ["ek", "verify", str(nv), "--roots", str(roots), "--intermediates", str(inters), *extra]


def test_exit_0_with_chain_identity_and_deviations(
    dirs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(*dirs, "--now", "2030-06-01T00:00:00Z", "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True
    assert [c["subject"] for c in doc["chain"]] == [
        "",
        "CN=CLI Test Issuing CA",
        "CN=CLI Test Root",
    ]
    assert doc["tpm"] == {
        "manufacturer": "id:4E544300",
        "model": "NPCT75x",
        "version": "id:00070002",
    }
    assert [d["deviation"] for d in doc["deviations"]] == ["trailing-data"]
    assert main(_args(*dirs, "--now", "2030-06-01T00:00:00Z")) == 0
    assert "trailing-data: 200 bytes of 0xFF fill" in capsys.readouterr().out


def test_exit_1_names_the_failed_check(
    dirs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nv, roots, inters = dirs
    assert main(_args(nv, roots, inters, "--now", "2040-01-01T00:00:00Z")) == 1
    assert "certificate check failed (validity)" in capsys.readouterr().err
    other = tmp_path / "other-vendor"
    other.mkdir()
    (other / "root.pem").write_bytes(make_ca("Other Vendor Root").cert.public_bytes(Encoding.PEM))
    assert main(_args(nv, other, inters, "--now", "2030-06-01T00:00:00Z", "--json")) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["verified"], doc["check"]) == (False, "no-path")
    # --json keeps stdout JSON; the one error line still goes to stderr
    assert err.startswith("attest: certificate check failed (no-path): ") and err.count("\n") == 1


def test_exit_3_for_input_that_is_not_a_certificate(
    dirs: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, roots, inters = dirs
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x30\x82\x01\x00" + b"\x00" * 16)
    assert main(_args(junk, roots, inters)) == 3
    assert "malformed input" in capsys.readouterr().err


def test_naive_now_is_a_usage_error(dirs: tuple[Path, Path, Path]) -> None:
    assert main(_args(*dirs, "--now", "2030-06-01T00:00:00")) == 2


GOOGLE_LEAF = (
    Path(__file__).resolve().parents[1] / "data/ekcerts/leaves/google-shielded-vm-ecc-ek.pem"
)


def test_a_long_issuer_cn_is_no_warning_on_stderr(
    recwarn: pytest.WarningsRecorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its issuing CA's CN is longer than X.520's 64 characters: cryptography's UserWarning
    (two lines of Python source on stderr) must not print beside the command's output."""
    assert main(["ek", "verify", str(GOOGLE_LEAF), "--now", "2026-06-01T00:00:00Z"]) == 0
    assert [str(w.message) for w in recwarn] == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("kind", "says"),
    [("device", "not a file or a directory"), ("loop", "Too many levels of symbolic links")],
)
def test_a_roots_path_that_is_no_file_names_why(
    kind: str,
    says: str,
    dirs: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not 'No such file or directory' for /dev/zero or a symlink loop: the line says why."""
    nv, _, inters = dirs
    roots = Path("/dev/zero")
    if kind == "loop":
        roots = tmp_path / "a"
        roots.symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(roots)
    assert main(_args(nv, roots, inters)) == 6
    assert capsys.readouterr().err == f"attest: cannot access {roots}: {says}\n"
