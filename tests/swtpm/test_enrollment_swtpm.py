"""Enrollment against a real swtpm: EK certificate chain from NV, MakeCredential in Python,
ActivateCredential in the TPM, and interop with tpm2-tools in both directions."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.conftest import need_binaries

from attest.enroll import (
    ek_matches_certificate,
    finish_enrollment,
    make_credential,
    start_enrollment,
    verify_ek_certificate,
)
from attest.errors import CertificateError, TpmError
from attest.node.tpm.esapi import EsapiTpm
from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, manufacture
from attest.tpmstruct import Public, Reader, parse_public

RSA_EK_CERT = 0x01C00002
P384_EK_CERT = 0x01C00016
TPM_RC_INTEGRITY_P1 = 0x1DF  # TPM_RC_INTEGRITY | TPM_RC_P | TPM_RC_1: credentialBlob's HMAC
TOOLS_MAGIC = (0xBADCC0DE).to_bytes(4, "big") + (1).to_bytes(4, "big")

Factory = Callable[..., tuple[SwtpmProcess, SwtpmState]]


def _ca(state: SwtpmState) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    root = x509.load_pem_x509_certificate(state.root_ca.read_bytes())
    inter = x509.load_pem_x509_certificate(state.intermediate_ca.read_bytes())
    return [root], [inter]


def _tpm2b(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _to_tools_blob(id_object: bytes, encrypted_secret: bytes) -> bytes:
    """tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET."""
    return TOOLS_MAGIC + _tpm2b(id_object) + _tpm2b(encrypted_secret)


def _from_tools_blob(blob: bytes) -> tuple[bytes, bytes]:
    r = Reader(blob, "tpm2-tools credential")
    assert r.take(8) == TOOLS_MAGIC
    id_object = r.tpm2b(1024, "TPM2B_ID_OBJECT")
    secret = r.tpm2b(1024, "TPM2B_ENCRYPTED_SECRET")
    r.end()
    return id_object, secret


class Tools:
    """tpm2-tools against one swtpm, in a work directory."""

    def __init__(self, proc: SwtpmProcess, work: Path) -> None:
        need_binaries("tpm2_makecredential", "tpm2_activatecredential", "tpm2_createek")
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, TPM2TOOLS_TCTI=proc.tcti)

    def __call__(self, *args: str, offline: bool = False) -> None:
        env = {k: v for k, v in self.env.items() if not (offline and k == "TPM2TOOLS_TCTI")}
        proc = subprocess.run(
            list(args), cwd=self.work, env=env, capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")

    def path(self, name: str) -> Path:
        return self.work / name


# --- the EK certificate -----------------------------------------------------------------------


def test_ek_certificate_from_nv_chains_to_the_swtpm_local_ca(
    tpm: EsapiTpm, swtpm: tuple[SwtpmProcess, SwtpmState]
) -> None:
    roots, inters = _ca(swtpm[1])
    certs = tpm.ek_certificates()
    verified = verify_ek_certificate(
        certs[RSA_EK_CERT], roots=roots, intermediates=inters, now=datetime.now(UTC)
    )
    assert [c.subject for c in verified.chain] == [
        verified.certificate.subject,
        inters[0].subject,
        roots[0].subject,
    ]
    assert verified.tpm_model == "swtpm"
    ek_matches_certificate(tpm.ek_public(), verified.certificate)


def test_p384_ek_certificate_verifies_but_is_not_the_rsa_ek(
    tpm: EsapiTpm, swtpm: tuple[SwtpmProcess, SwtpmState]
) -> None:
    roots, inters = _ca(swtpm[1])
    verified = verify_ek_certificate(
        tpm.ek_certificates()[P384_EK_CERT],
        roots=roots,
        intermediates=inters,
        now=datetime.now(UTC),
    )
    with pytest.raises(CertificateError, match="not the key certified"):
        ek_matches_certificate(tpm.ek_public(), verified.certificate)


@pytest.fixture()
def other_tpm(tmp_path: Path) -> Iterator[tuple[EsapiTpm, SwtpmState]]:
    """A second TPM, manufactured separately: its own EK and its own local CA."""
    need_binaries("swtpm", "swtpm_setup", "swtpm_localca")
    state = manufacture(tmp_path / "other")
    proc = SwtpmProcess(state.state_dir).start()
    other = EsapiTpm(proc.tcti)
    yield other, state
    other.close()
    proc.stop()


def test_ek_certificate_of_another_tpm_is_refused(
    tpm: EsapiTpm,
    swtpm: tuple[SwtpmProcess, SwtpmState],
    other_tpm: tuple[EsapiTpm, SwtpmState],
) -> None:
    other, other_state = other_tpm
    foreign = other.ek_certificates()[RSA_EK_CERT]
    roots, inters = _ca(swtpm[1])
    now = datetime.now(UTC)
    with pytest.raises(CertificateError, match="does not verify"):
        verify_ek_certificate(foreign, roots=roots, intermediates=inters, now=now)
    # Under its own CA it verifies, but it does not certify this TPM's EK.
    o_roots, o_inters = _ca(other_state)
    verified = verify_ek_certificate(foreign, roots=o_roots, intermediates=o_inters, now=now)
    with pytest.raises(CertificateError, match="not the key certified"):
        ek_matches_certificate(tpm.ek_public(), verified.certificate)


# --- credential activation ----------------------------------------------------------------------


def test_enrollment_activates_in_the_tpm(tpm: EsapiTpm) -> None:
    challenge, expected = start_enrollment(tpm.ek_public(), tpm.ak_public())
    returned = tpm.activate_credential(challenge.id_object, challenge.encrypted_secret)
    assert returned == expected
    finish_enrollment(expected, returned)


def test_credential_for_another_ak_name_fails_activation(tpm: EsapiTpm) -> None:
    ak = tpm.ak_public()
    other_name = ak.name[:-1] + bytes([ak.name[-1] ^ 1])
    id_object, enc = make_credential(tpm.ek_public(), other_name, b"not for this AK")
    with pytest.raises(TpmError) as info:
        tpm.activate_credential(id_object, enc)
    assert info.value.rc == TPM_RC_INTEGRITY_P1


def test_credential_for_the_ek_of_another_tpm_fails_activation(
    tpm: EsapiTpm, other_tpm: tuple[EsapiTpm, SwtpmState]
) -> None:
    other_ek = other_tpm[0].ek_public()
    assert other_ek.modulus != tpm.ek_public().modulus
    id_object, enc = make_credential(other_ek, tpm.ak_public().name, b"for the other TPM")
    with pytest.raises(TpmError) as info:
        tpm.activate_credential(id_object, enc)
    assert info.value.rc != 0
    # ...while the other TPM, holding that EK, would release it only to its own AK's name.
    challenge, expected = start_enrollment(other_ek, other_tpm[0].ak_public())
    assert (
        other_tpm[0].activate_credential(challenge.id_object, challenge.encrypted_secret)
        == expected
    )


# --- interop with tpm2-tools --------------------------------------------------------------------


def test_tpm2_makecredential_output_activates_through_our_adapter(
    tpm: EsapiTpm, swtpm: tuple[SwtpmProcess, SwtpmState], tmp_path: Path
) -> None:
    tools = Tools(swtpm[0], tmp_path / "tools")
    ek_key = tpm.ek_public().key
    tools.path("ek.pem").write_bytes(
        ek_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    secret = os.urandom(32)
    tools.path("secret.bin").write_bytes(secret)
    tools(
        "tpm2_makecredential",
        "-T",
        "none",
        "-G",
        "rsa",
        "-u",
        "ek.pem",
        "-s",
        "secret.bin",
        "-n",
        tpm.ak_public().name.hex(),
        "-o",
        "cred.out",
        offline=True,
    )
    id_object, enc = _from_tools_blob(tools.path("cred.out").read_bytes())
    assert tpm.activate_credential(id_object, enc) == secret


def _tools_ek_and_ak(tools: Tools, alg: str) -> tuple[Public, Public, str]:
    """Create an EK (TCG template) persistently and an AK under it; return their publics."""
    handle = "0x81018001"  # swtpm_setup already persisted its EK at 0x81010001
    tools("tpm2_createek", "-G", alg, "-c", handle, "-u", "ek.pub")
    tools(
        "tpm2_createak",
        "-C",
        handle,
        "-c",
        "ak.ctx",
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-u",
        "ak.pub",
        "-n",
        "ak.name",
    )
    ek = parse_public(tools.path("ek.pub").read_bytes())
    ak = parse_public(tools.path("ak.pub").read_bytes())
    assert ak.name == tools.path("ak.name").read_bytes()
    return ek, ak, handle


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_our_credential_activates_with_tpm2_activatecredential(
    swtpm_factory: Factory, tmp_path: Path, alg: str
) -> None:
    # A separate swtpm process: tpm2-tools' objects never share the TPM with our adapter.
    proc, _ = swtpm_factory(f"tools-{alg}")
    tools = Tools(proc, tmp_path / f"work-{alg}")
    ek, ak, ek_handle = _tools_ek_and_ak(tools, alg)
    assert ek.type.name == alg.upper()
    challenge, expected = start_enrollment(ek, ak)
    tools.path("cred.in").write_bytes(
        _to_tools_blob(challenge.id_object, challenge.encrypted_secret)
    )
    # The TCG EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential Profile B.3.3).
    tools("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
    tools("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
    tools(
        "tpm2_activatecredential",
        "-c",
        "ak.ctx",
        "-C",
        ek_handle,
        "-i",
        "cred.in",
        "-o",
        "secret.out",
        "-P",
        "session:session.ctx",
    )
    tools("tpm2_flushcontext", "session.ctx")
    finish_enrollment(expected, tools.path("secret.out").read_bytes())


def test_p384_credential_activates_in_the_tpm(swtpm_factory: Factory, tmp_path: Path) -> None:
    # The TCG high-range P-384 EK template carries a PolicyOR authPolicy that tpm2-tools cannot
    # satisfy simply; the credential math only depends on the key, nameAlg and symmetric
    # definition, so use a P-384 storage key with those (SHA-384, AES-256-CFB) and userWithAuth.
    proc, _ = swtpm_factory("tools-p384")
    tools = Tools(proc, tmp_path / "work-p384")
    tools(
        "tpm2_createprimary",
        "-C",
        "e",
        "-g",
        "sha384",
        "-G",
        "ecc384:aes256cfb",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt",
        "-c",
        "primary.ctx",
    )
    tools("tpm2_evictcontrol", "-C", "o", "-c", "primary.ctx", "0x81018002")
    tools("tpm2_flushcontext", "-t")
    tools(
        "tpm2_create",
        "-C",
        "0x81018002",
        "-G",
        "ecc256:ecdsa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "-u",
        "ak.pub",
        "-r",
        "ak.priv",
    )
    tools("tpm2_load", "-C", "0x81018002", "-u", "ak.pub", "-r", "ak.priv", "-c", "ak.ctx")
    tools("tpm2_readpublic", "-c", "0x81018002", "-o", "ek.pub")
    ek = parse_public(tools.path("ek.pub").read_bytes())
    ak = parse_public(tools.path("ak.pub").read_bytes())
    assert (ek.curve, ek.name_alg.bank_name, ek.symmetric.key_bits) == (4, "sha384", 256)
    challenge, expected = start_enrollment(ek, ak)
    tools.path("cred.in").write_bytes(
        _to_tools_blob(challenge.id_object, challenge.encrypted_secret)
    )
    tools(
        "tpm2_activatecredential",
        "-c",
        "ak.ctx",
        "-C",
        "0x81018002",
        "-i",
        "cred.in",
        "-o",
        "secret.out",
    )
    finish_enrollment(expected, tools.path("secret.out").read_bytes())
