from __future__ import annotations

from attest.eventlog import facts, load_options_digest, parse_event_log, replay_self
from attest.eventlog.facts import split_cmdline, verity_root_hashes
from attest.model import HashAlg
from conftest import read_log

ROOT = "4392f4c4f5d2d6bd26a8f0c64f2b8f51b7d5a1de36ecb3a0c2b8f0d1e2a3b4c5"


def _facts(name: str):  # type: ignore[no-untyped-def]
    return facts(replay_self(parse_event_log(read_log(name))))


def test_windows_secure_boot_enabled_with_db_and_dbx_digests() -> None:
    f = _facts("goattest__windows_gcp_shielded_vm")
    assert f.secure_boot is True
    names = [v.name for v in f.secure_boot_variables]
    assert names == ["PK", "KEK", "db", "dbx"]
    assert all(v.entries > 0 for v in f.secure_boot_variables)


def test_empty_secureboot_variable_reads_disabled_via_quirk() -> None:
    f = _facts("tpm2tools__event-sd-boot-fedora37")
    assert f.secure_boot is False
    assert "secureboot-empty-variable" in {q.name for q in f.quirks}
    strict = facts(
        replay_self(parse_event_log(read_log("tpm2tools__event-sd-boot-fedora37"))), quirks=()
    )
    assert strict.secure_boot is None


def test_systemd_stub_command_line_from_pcr12() -> None:
    f = _facts("tpm2tools__event-sd-boot-fedora37")
    assert {(c.pcr, c.source, c.text) for c in f.kernel_cmdlines} == {
        (12, "systemd-stub", " console=ttyS0 console=tty0 efi=debug ")
    }


def test_grub_kernel_command_line_from_pcr8() -> None:
    f = _facts("tpm2tools__event-gce-ubuntu-2104-log")
    grub = [c for c in f.kernel_cmdlines if c.source == "grub"]
    assert grub and all(c.pcr == 8 for c in grub)
    assert any("root=" in c.text for c in grub)


def test_boot_applications_carry_paths_and_authenticode_digests() -> None:
    f = _facts("tpm2tools__event-gce-ubuntu-2104-log")
    paths = [a.path for a in f.boot_applications]
    assert "\\EFI\\ubuntu\\shimx64.efi" in paths
    assert all(len(a.digests[HashAlg.SHA256]) == 32 for a in f.boot_applications)


def test_ovmf_load_options_digest_matches_the_qemu_append_line() -> None:
    f = _facts("ovmf__q35-direct-boot")
    assert len(f.load_options) == 1 and len(f.initrds) == 1
    want = load_options_digest("console=ttyS0 loglevel=4 initrd=initrd")
    assert f.load_options[0].digests[HashAlg.SHA256] == want
    assert f.load_options[0].digests[HashAlg.SHA256] != load_options_digest("console=ttyS0")


def test_facts_json_says_unverified_without_quote() -> None:
    doc = _facts("ovmf__q35-direct-boot").to_json()
    assert doc["verified_against_quote"] is False
    assert "UNVERIFIED" in str(doc["note"])
    assert doc["verity_root_hashes"] == []


def test_verity_roothash_and_usrhash_parameters() -> None:
    line = f"root=/dev/dm-0 roothash={ROOT} usrhash={ROOT[::-1]} quiet"
    assert verity_root_hashes(line) == [
        ("roothash", bytes.fromhex(ROOT)),
        ("usrhash", bytes.fromhex(ROOT[::-1])),
    ]


def test_verity_root_hash_in_dm_mod_create_table() -> None:
    table = (
        f'dm-mod.create="vroot,,,ro,0 2097152 verity 1 /dev/vda1 /dev/vda2 4096 4096 '
        f'262144 1 sha256 {ROOT} 0011223344556677 1 ignore_zero_blocks" root=/dev/dm-0'
    )
    assert verity_root_hashes(table) == [("dm-mod.create", bytes.fromhex(ROOT))]


def test_verity_root_hexdigest_in_chromeos_dm_parameter() -> None:
    line = (
        f'dm="1 vroot none ro 1,0 2506752 verity payload=PARTUUID=%U/PARTNROFF=1 '
        f'hashtree=PARTUUID=%U/PARTNROFF=1 alg=sha256 root_hexdigest={ROOT} salt=00"'
    )
    assert verity_root_hashes(line) == [("dm", bytes.fromhex(ROOT))]


def test_systemd_verity_root_hash_and_bad_hex_is_ignored() -> None:
    assert verity_root_hashes(f"systemd.verity_root_hash={ROOT}") == [
        ("systemd.verity_root_hash", bytes.fromhex(ROOT))
    ]
    assert verity_root_hashes("roothash=nothex roothash=abcd") == []


def test_cmdline_split_honours_double_quotes() -> None:
    assert split_cmdline('a="b c" d') == ["a=b c", "d"]
