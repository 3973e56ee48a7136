"""dm-verity table / status parsing and the verity report (pure)."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.errors import EvidenceFormatError
from attest.verity.devices import (
    CorruptionMode,
    ErrorMode,
    VerityDevice,
    VerityFec,
    VerityFormatError,
    VerityStatus,
    VerityTable,
    evaluate_verity,
    parse_verity_status,
    parse_verity_table,
)
from attest.verity.hashtree import verity_root_hash

# `veritysetup format data.img hash.img --salt=5eed…cafe --uuid=6f1c2b7e-…` on a 1 MiB image of
# b"a" (cryptsetup 2.6.1) printed this root hash; opened as 7:0 (data) + 7:1 (hash, superblock
# in block 0, so the tree starts at block 1), the kernel's table is TABLE.
SALT = "5eed00000000000000000000000000000000000000000000000000000000cafe"
ROOT = "81e204e0910e063a25034a14e47abaf029f172a39686392e98951d9b15f04fb1"
TABLE = f"0 2048 verity 1 7:0 7:1 4096 4096 256 1 sha256 {ROOT} {SALT}\n"
UUID = "CRYPT-VERITY-6f1c2b7e0a4d4c559f0e2d7f0b8a1c33-root"
OTHER = "aa" * 32


def device(
    name: str, table: str | None, status: VerityStatus = VerityStatus.VERIFIED
) -> VerityDevice:
    return VerityDevice(
        name=name,
        uuid=f"CRYPT-VERITY-{name}",
        devno="253:0",
        table=parse_verity_table(table) if table is not None else None,
        status=status,
        error=None if table is not None else "table: dmsetup table failed",
    )


# --- table ------------------------------------------------------------------------------------


def test_parses_veritysetup_table() -> None:
    t = parse_verity_table(TABLE)
    assert (t.start, t.length, t.version) == (0, 2048, 1)
    assert (t.data_device, t.hash_device) == ("7:0", "7:1")
    assert (t.data_devno, t.hash_devno) == ((7, 0), (7, 1))
    assert (t.data_block_size, t.hash_block_size, t.data_blocks, t.hash_start_block) == (
        4096,
        4096,
        256,
        1,
    )
    assert t.algorithm == "sha256"
    assert t.root_digest.hex() == ROOT
    assert t.salt.hex() == SALT
    assert t.corruption_mode is CorruptionMode.EIO
    assert t.to_line() == TABLE.strip()


def test_recorded_root_hash_is_the_images_hash_tree() -> None:
    # The fixture is real: the pure hash-tree code reproduces veritysetup's root hash.
    assert verity_root_hash(b"a" * (1 << 20), salt=bytes.fromhex(SALT)).hex() == ROOT


@pytest.mark.skipif(shutil.which("veritysetup") is None, reason="veritysetup not installed")
def test_parses_table_built_from_live_veritysetup_format(tmp_path: Path) -> None:
    data, hashes = tmp_path / "data.img", tmp_path / "hash.img"
    data.write_bytes(bytes(range(256)) * 64 * 16)  # 256 KiB
    out = subprocess.run(
        ["veritysetup", "format", str(data), str(hashes), "--hash=sha512"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(\S+)$", out, re.M))
    line = (
        f"0 512 verity {fields['Hash type']} 254:0 254:1 {fields['Data block size']} "
        f"{fields['Hash block size']} {fields['Data blocks']} 1 {fields['Hash algorithm']} "
        f"{fields['Root hash']} {fields['Salt']} 1 panic_on_corruption"
    )
    t = parse_verity_table(line)
    assert t.algorithm == "sha512" and len(t.root_digest) == 64
    assert t.root_digest == verity_root_hash(
        data.read_bytes(), salt=t.salt, hash_algorithm="sha512"
    )
    assert t.corruption_mode is CorruptionMode.PANIC


def test_parses_every_kernel_option() -> None:
    line = (
        f"0 2048 verity 1 254:16 254:32 4096 4096 256 1 sha256 {ROOT} - 15 "
        "restart_on_corruption panic_on_error ignore_zero_blocks check_at_most_once "
        "try_verify_in_tasklet use_fec_from_device 254:48 fec_roots 2 fec_blocks 264 "
        "fec_start 0 root_hash_sig_key_desc verity:root"
    )
    t = parse_verity_table(line)
    assert t.salt == b""
    assert t.corruption_mode is CorruptionMode.RESTART
    assert t.error_mode is ErrorMode.PANIC
    assert t.ignore_zero_blocks and t.check_at_most_once and t.try_verify_in_tasklet
    assert t.fec == VerityFec(device="254:48", roots=2, blocks=264, start=0)
    assert t.root_hash_sig_key_desc == "verity:root"
    assert t.to_line() == line


@pytest.mark.parametrize(
    ("option", "mode"),
    [
        ("ignore_corruption", CorruptionMode.IGNORE),
        ("restart_on_corruption", CorruptionMode.RESTART),
        ("PANIC_ON_CORRUPTION", CorruptionMode.PANIC),  # the kernel compares case-insensitively
    ],
)
def test_reads_corruption_mode(option: str, mode: CorruptionMode) -> None:
    assert parse_verity_table(f"{TABLE.strip()} 1 {option}").corruption_mode is mode


def test_signature_key_named_like_an_option_is_not_read_as_one() -> None:
    t = parse_verity_table(f"{TABLE.strip()} 2 root_hash_sig_key_desc panic_on_corruption")
    assert t.corruption_mode is CorruptionMode.EIO
    assert t.root_hash_sig_key_desc == "panic_on_corruption"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "0 2048 linear 7:0 0",
        TABLE + TABLE,  # two targets
        TABLE.replace("verity 1", "verity 2"),  # unknown format version
        TABLE.replace("4096 4096", "4000 4096"),  # block size not a power of two
        TABLE.replace("4096 4096", "256 4096"),  # below a sector
        TABLE.replace(ROOT, ROOT[:-2]),  # sha256 digest of 31 bytes
        TABLE.replace(ROOT, ROOT + "0"),  # odd hex
        TABLE.replace(SALT, "xyz"),
        TABLE.replace("sha256", "sha256;rm"),
        TABLE.replace(" 256 1 ", " -1 1 "),
        TABLE.replace(" 256 1 ", " 256 18446744073709551616 "),  # u64 overflow
        TABLE.replace(" 256 1 ", " ٢٥٦ 1 "),  # non-ASCII digits int() would accept
        TABLE.replace(" 256 1 ", " 2_56 1 "),
        TABLE.strip() + " 2 panic_on_corruption",  # count says 2, one present
        TABLE.strip() + " 2 panic_on_corruption restart_on_corruption",  # conflicting modes
        TABLE.strip() + " 2 restart_on_error panic_on_error",
        TABLE.strip() + " 1 frobnicate",  # unknown option: its arity is unknown
        TABLE.strip() + " 1 use_fec_from_device",  # missing value
        TABLE.strip() + " 2 fec_roots 2",  # FEC parameters without the device
        TABLE.strip() + " 2 fec_roots x",
        TABLE.strip() + " 99999 x",
        " ".join(TABLE.split()[:12]),  # salt missing
        "x" * 5000,
    ],
)
def test_rejects_malformed_table(line: str) -> None:
    with pytest.raises(VerityFormatError):
        parse_verity_table(line)


def test_format_error_is_an_evidence_format_error() -> None:
    assert issubclass(VerityFormatError, EvidenceFormatError)


_printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
_words = st.lists(
    st.sampled_from(
        TABLE.split()
        + [
            "-",
            "1",
            "2",
            "0",
            "panic_on_corruption",
            "fec_roots",
            "use_fec_from_device",
            "root_hash_sig_key_desc",
            "C",
            "V",
        ]
    ),
    max_size=30,
).map(" ".join)


_FULL = TABLE.strip() + " 5 panic_on_corruption use_fec_from_device 254:3 fec_roots 2"


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """A valid table or status line with a few characters replaced, inserted or deleted."""
    text = draw(st.sampled_from([TABLE, _FULL, "0 2048 verity C 3"]))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        c = draw(st.sampled_from(" 0129afx-:_\n") | st.characters())
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "insert":
            text = text[:i] + c + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + c + text[i + 1 :]
    return text


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), _printable, _words, _mutated()))
def test_any_text_parses_or_raises_format_error(text: str) -> None:
    for parse in (parse_verity_table, parse_verity_status):
        with contextlib.suppress(VerityFormatError):
            parse(text)


_hexbytes = st.binary(min_size=1, max_size=64)
_tables = st.builds(
    VerityTable,
    start=st.integers(0, 2**64 - 1),
    length=st.integers(0, 2**64 - 1),
    version=st.integers(0, 1),
    data_device=st.from_regex(r"[0-9]{1,3}:[0-9]{1,3}", fullmatch=True),
    hash_device=st.from_regex(r"[0-9]{1,3}:[0-9]{1,3}", fullmatch=True),
    data_block_size=st.sampled_from([512, 1024, 4096]),
    hash_block_size=st.sampled_from([4096, 8192]),
    data_blocks=st.integers(0, 2**64 - 1),
    hash_start_block=st.integers(0, 2**64 - 1),
    algorithm=st.sampled_from(["crc32c", "xxhash64", "wp512"]),
    root_digest=_hexbytes,
    salt=st.binary(max_size=256),
    corruption_mode=st.sampled_from(CorruptionMode),
    error_mode=st.sampled_from(ErrorMode),
    ignore_zero_blocks=st.booleans(),
    check_at_most_once=st.booleans(),
    try_verify_in_tasklet=st.booleans(),
    fec=st.none()
    | st.builds(
        VerityFec,
        device=st.just("254:3"),
        roots=st.none() | st.integers(2, 24),
        blocks=st.none() | st.integers(0, 2**40),
        start=st.none() | st.integers(0, 2**40),
    ),
    root_hash_sig_key_desc=st.none() | st.from_regex(r"[a-z:]{1,20}", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(_tables)
def test_table_round_trips(table: VerityTable) -> None:
    assert parse_verity_table(table.to_line()) == table


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("0 2048 verity V\n", VerityStatus.VERIFIED),
        ("0 2048 verity C", VerityStatus.CORRUPTED),
        ("0 2048 verity V -", VerityStatus.VERIFIED),  # newer kernels: FEC corrected count
        ("0 2048 verity C 3", VerityStatus.CORRUPTED),
    ],
)
def test_parses_status(line: str, status: VerityStatus) -> None:
    assert parse_verity_status(line) is status


@pytest.mark.parametrize(
    "line",
    [
        "",
        "0 2048 verity",
        "0 2048 verity X",
        "0 2048 verity v",
        "0 2048 crypt V",
        "0 2048 verity V x",
        "0 2048 verity V - -",
        "0 2048 verity V\n0 2048 verity V",
    ],
)
def test_rejects_malformed_status(line: str) -> None:
    with pytest.raises(VerityFormatError):
        parse_verity_status(line)


# --- the report -------------------------------------------------------------------------------


def test_cmdline_root_hash_backed_by_active_device() -> None:
    report = evaluate_verity([device("root", TABLE)], cmdline=f"quiet roothash={ROOT} ro")
    assert report.cmdline_backed
    assert not report.corrupted
    assert [(h.parameter, h.root_hash.hex(), h.backed_by) for h in report.cmdline_root_hashes] == [
        ("roothash", ROOT, ("root",))
    ]
    doc = report.to_json()
    assert doc["cmdline_backed"] is True
    assert doc["devices"] == [
        {
            "name": "root",
            "uuid": "CRYPT-VERITY-root",
            "devno": "253:0",
            "status": "verified",
            "root_hash": ROOT,
            "salt": SALT,
            "algorithm": "sha256",
            "data_device": "7:0",
            "hash_device": "7:1",
            "corruption_mode": "eio",
            "table": parse_verity_table(TABLE).to_json(),
            "error": None,
        }
    ]


def test_cmdline_root_hash_with_different_device_hash_is_unbacked() -> None:
    report = evaluate_verity([device("root", TABLE)], cmdline=f"roothash={OTHER}")
    assert not report.cmdline_backed
    assert [h.root_hash.hex() for h in report.unbacked] == [OTHER]


def test_cmdline_root_hash_without_any_device_is_unbacked() -> None:
    report = evaluate_verity([], cmdline=f"usrhash={ROOT}")
    assert not report.cmdline_backed
    assert report.to_json()["cmdline_root_hashes"] == [
        {"parameter": "usrhash", "root_hash": ROOT, "backed_by": []}
    ]


def test_device_whose_table_was_unreadable_backs_nothing() -> None:
    report = evaluate_verity(
        [device("root", None, VerityStatus.UNKNOWN)], cmdline=f"roothash={ROOT}"
    )
    assert not report.cmdline_backed
    assert report.to_json()["devices"][0]["error"] == "table: dmsetup table failed"  # type: ignore[index]


def test_every_cmdline_hash_must_be_backed() -> None:
    cmdline = (
        f'roothash={ROOT} dm-mod.create="usr,,,ro,0 2048 verity 1 /dev/vda2 /dev/vda3 '
        f'4096 4096 256 1 sha256 {OTHER} -"'
    )
    only_root = evaluate_verity([device("root", TABLE)], cmdline=cmdline)
    assert [h.parameter for h in only_root.cmdline_root_hashes] == ["roothash", "dm-mod.create"]
    assert not only_root.cmdline_backed
    usr = TABLE.replace(ROOT, OTHER)
    both = evaluate_verity([device("root", TABLE), device("usr", usr)], cmdline=cmdline)
    assert both.cmdline_backed


def test_cmdline_without_root_hash_is_not_backed() -> None:
    report = evaluate_verity([device("root", TABLE)], cmdline="quiet ro")
    assert report.cmdline_root_hashes == ()
    assert not report.cmdline_backed  # nothing named, nothing attested: fail closed


def test_corruption_is_reported_even_when_backed() -> None:
    report = evaluate_verity(
        [device("root", TABLE, VerityStatus.CORRUPTED)], cmdline=f"roothash={ROOT}"
    )
    assert report.cmdline_backed
    assert report.corrupted
    assert report.to_json()["corrupted"] is True
