"""Real TPM output captured from tpm2-tools (tests/unit/fixtures/tpm2tools-quote/README.md)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.cli import main
from attest.cli.quote import load_ak, load_pcrs
from attest.errors import PcrSelectionError, QuoteFormatError
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.node.tpm.fake import FakeTpm
from attest.quote import verify_quote
from attest.testing.tpm2_tools import tools_serialized_pcrs
from attest.tpmstruct import parse_public, read_tools_serialized_pcrs

FIX = Path(__file__).parent / "fixtures" / "tpm2tools-quote"
NONCE = bytes.fromhex("c0ffee" * 8)
SEL = PcrSelection.parse("sha256:0,1,2,16+sha1:7")


def test_serialized_pcr_file_is_labelled_by_its_own_selection() -> None:
    sel, values = read_tools_serialized_pcrs((FIX / "quote.pcrs").read_bytes())
    assert sel == SEL
    assert values[HashAlg.SHA256][0] == bytes(32)
    assert values[HashAlg.SHA256][16] != bytes(32)  # PCR 16 had been extended
    assert len(values[HashAlg.SHA1][7]) == 20


@pytest.mark.parametrize("stem,pcrs", [("quote", "quote.pcrs"), ("quote2", "quote2.values")])
def test_tpm2_tools_quote_verifies(stem: str, pcrs: str) -> None:
    attest = (FIX / f"{stem}.msg").read_bytes()
    values = load_pcrs(FIX / pcrs, attest=attest, pcr_list=None)
    vq = verify_quote(
        attest,
        (FIX / f"{stem}.sig").read_bytes(),
        ak=load_ak(FIX / "ak.pem"),
        nonce=NONCE,
        pcrs=values,
    )
    assert vq.selection == SEL


def test_values_file_labelled_with_other_pcr_list_is_refused() -> None:
    attest = (FIX / "quote2.msg").read_bytes()
    other = PcrSelection.parse("sha256:3,4,5,6+sha1:7")
    values = load_pcrs(FIX / "quote2.values", attest=attest, pcr_list=other)
    with pytest.raises(PcrSelectionError):
        verify_quote(
            attest,
            (FIX / "quote2.sig").read_bytes(),
            ak=load_ak(FIX / "ak.pem"),
            nonce=NONCE,
            pcrs=values,
        )


def test_cli_verify_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "quote",
        "verify",
        "--ak",
        str(FIX / "ak.pem"),
        "-m",
        str(FIX / "quote.msg"),
        "-s",
        str(FIX / "quote.sig"),
        "-f",
        str(FIX / "quote.pcrs"),
    ]
    assert main([*base, "--nonce", NONCE.hex()]) == 0
    assert '"valid": true' in capsys.readouterr().out
    assert main([*base, "--nonce", "00"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attest: nonce check failed") and err.count("\n") == 1
    assert main([*base, "--nonce", "zz"]) == 2  # a usage error, as for `ear` and `verify`
    assert "--nonce: 'zz' is not hex" in capsys.readouterr().err
    assert main([*base, "--nonce", "00" * 65]) == 2
    assert "65 bytes; TPM2B_DATA holds at most 64" in capsys.readouterr().err
    assert (
        main(
            [
                "quote",
                "verify",
                "--ak",
                str(FIX / "missing.pem"),
                "--nonce",
                "00",
                "-m",
                "x",
                "-s",
                "y",
                "-f",
                "z",
            ]
        )
        == 6
    )


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 667), st.integers(0, 255))
def test_serialized_reader_raises_only_format_error(pos: int, byte: int) -> None:
    data = bytearray((FIX / "quote.pcrs").read_bytes())
    data[pos] = byte
    with contextlib.suppress(QuoteFormatError):
        read_tools_serialized_pcrs(bytes(data))


def test_serialized_pcr_file_spanning_two_digest_lists_verifies() -> None:
    """Eleven PCRs fill one TPML_DIGEST of 8 and a second of 3: the reader walks both."""
    tpm = FakeTpm(ak="ecc256")
    for i in range(10):
        tpm.extend(i, {HashAlg.SHA256: os.urandom(32), HashAlg.SHA1: os.urandom(20)})
    sel = PcrSelection.parse("sha256:0-9+sha1:3")
    q = tpm.quote(sel, NONCE)
    data = tools_serialized_pcrs(sel, {alg: dict(v) for alg, v in q.pcrs.values.items()})
    assert len(data) == 136 + 2 * 532
    got_sel, values = read_tools_serialized_pcrs(data)
    assert got_sel == sel and values[HashAlg.SHA256][9] == q.pcrs.get(HashAlg.SHA256, 9)
    verify_quote(q.attest, q.signature, ak=tpm.ak_public(), nonce=NONCE, pcrs=PcrValues(values))
    # The second list's second digest claims 65 bytes: refused, the offset after that entry.
    bad = bytearray(data)
    bad[136 + 532 + 4 + 66] = 65
    with pytest.raises(QuoteFormatError, match=r"digest of 65 bytes \(at byte 804\)"):
        read_tools_serialized_pcrs(bytes(bad))


def test_public_area_is_parsed_and_keyed_once_per_bytes() -> None:
    """parse_public is memoised by the exact bytes: the same AK read again (a new bytes object,
    as a script re-reading the file gets) is the same Public with the same key object."""
    ak = load_ak(FIX / "ak.pem")
    raw = ak.tpm2b()
    first = parse_public(bytes(bytearray(raw)))
    again = parse_public(bytes(bytearray(raw)))
    assert first is again and first.key is again.key
    assert first.name == ak.name and load_ak(FIX / "ak.pem") is ak
    with pytest.raises(QuoteFormatError):
        parse_public(raw[:-1])


def test_serialized_writer_reproduces_the_tpm2_tools_file() -> None:
    """The writer the benchmarks feed tpm2_checkquote and keylime with writes byte for byte
    what tpm2_quote wrote for the captured quote."""
    data = (FIX / "quote.pcrs").read_bytes()
    sel, values = read_tools_serialized_pcrs(data)
    assert tools_serialized_pcrs(sel, values) == data


@pytest.mark.parametrize("text", ["sha256:0-23+sha1:1,7", "sha1:7", "sha384:0-9+sha256:16"])
@pytest.mark.parametrize("per_list", [8, 3])
def test_serialized_pcr_file_of_any_layout_reads_back(text: str, per_list: int) -> None:
    """Files laid out as tpm2-tools writes them (8 values per TPML_DIGEST: read with one struct
    format) and laid out otherwise (3 per list: read field by field) give the same values."""
    sel = PcrSelection.parse(text)
    values = {alg: {i: os.urandom(alg.digest_size) for i in idx} for alg, idx in sel.banks}
    got_sel, got = read_tools_serialized_pcrs(tools_serialized_pcrs(sel, values, per_list=per_list))
    assert got_sel == sel and got == values
    assert [list(v) for v in got.values()] == [list(idx) for _, idx in sel.banks]


def _verify_argv(**files: Path) -> list[str]:
    paths = {"ak": "ak.pem", "quote": "quote.msg", "signature": "quote.sig", "pcrs": "quote.pcrs"}
    argv = ["quote", "verify", "--nonce", NONCE.hex()]
    for flag, name in paths.items():
        argv += [f"--{flag}", str(files.get(flag, FIX / name))]
    if "previous" in files:
        argv += ["--previous", str(files["previous"])]
    return argv


@pytest.mark.parametrize("flag", ["ak", "quote", "signature", "pcrs", "previous"])
def test_cli_refuses_an_endless_file_without_reading_it(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/zero (or a 200 MB file) as any input: exit 6 once the bound is passed, not a
    MemoryError (exit 70) after reading until memory runs out."""
    assert main(_verify_argv(**{flag: Path("/dev/zero")})) == 6
    err = capsys.readouterr().err
    assert err == "attest: cannot access /dev/zero: file larger than 16777216 bytes\n"


@pytest.mark.parametrize("flag", ["pcrs", "previous"])
def test_cli_deeply_nested_json_is_malformed_input(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A RecursionError from json.loads is a format error (exit 3), not a bug (exit 70)."""
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    assert main(_verify_argv(**{flag: deep})) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"attest: malformed input: {deep}: not a") and err.count("\n") == 1
    assert "maximum recursion depth" in err
