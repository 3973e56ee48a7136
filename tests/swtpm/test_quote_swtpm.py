"""The TPM adapter and quote verification against a real swtpm, and interop with tpm2-tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_binaries

from attest.errors import ClockError, OperationNotAllowed, PcrSelectionError, TpmError
from attest.model import HashAlg, PcrSelection
from attest.node.tpm.esapi import AkSpec, EsapiTpm
from attest.quote import verify_quote
from attest.tpmstruct import TPM_RH_ENDORSEMENT_QN

NONCE = bytes.fromhex("c0ffee" * 8)


def attest_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attest", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def tools(tcti: str, *args: str | Path, cwd: Path) -> str:
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )
    assert proc.returncode == 0, f"{args[0]} failed: {proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("kind", ["ecc256", "ecc384", "rsa2048", "rsa2048-pss"])
def test_quote_verifies_for_each_ak_type(swtpm: Any, kind: str) -> None:
    proc, _ = swtpm
    with EsapiTpm(proc.tcti, ak=AkSpec(kind)) as tpm:
        sel = PcrSelection.parse("sha256:0-23+sha1:0,1,2")
        q = tpm.quote(sel, NONCE)
        vq = verify_quote(q.attest, q.signature, ak=tpm.ak_public(), nonce=NONCE, pcrs=q.pcrs)
    assert vq.selection == sel
    assert len(vq.pcrs.values[HashAlg.SHA256]) == 24
    # The AK is a primary under the endorsement hierarchy: its qualified name says so.
    assert vq.qualified_signer == tpm.ak_public().qualified_name(TPM_RH_ENDORSEMENT_QN)


def test_reads_every_pcr_of_every_active_bank(tpm: EsapiTpm) -> None:
    banks = tpm.banks()
    assert set(banks) == {HashAlg.SHA1, HashAlg.SHA256}  # what swtpm_setup activated
    values = tpm.read_pcrs(PcrSelection.of({b: range(24) for b in banks}))
    for b in banks:
        assert sorted(values.values[b]) == list(range(24))
        # PCRs 17-22 reset to all-ones only with locality 4 (DRTM); swtpm starts them at 0xff.
        assert all(len(v) == b.digest_size for v in values.values[b].values())


def test_extend_changes_the_quoted_value(tpm: EsapiTpm) -> None:
    from attest.model import extend

    sel = PcrSelection.parse("sha256:16")
    before = tpm.read_pcrs(sel).get(HashAlg.SHA256, 16)
    digest = HashAlg.SHA256.digest(b"attest test")
    tpm.extend(16, {HashAlg.SHA256: digest, HashAlg.SHA1: HashAlg.SHA1.digest(b"x")})
    after = tpm.read_pcrs(sel).get(HashAlg.SHA256, 16)
    assert after == extend(HashAlg.SHA256, before, digest)
    q = tpm.quote(sel, NONCE)
    vq = verify_quote(q.attest, q.signature, ak=tpm.ak_public(), nonce=NONCE, pcrs=q.pcrs)
    assert vq.pcrs.get(HashAlg.SHA256, 16) == after


def test_ak_is_stable_across_connections(swtpm: Any) -> None:
    proc, _ = swtpm
    with EsapiTpm(proc.tcti) as a:
        name_a = a.ak_public().name
    with EsapiTpm(proc.tcti) as b:
        assert b.ak_public().name == name_a


def test_no_transient_handles_leak(swtpm: Any) -> None:
    """swtpm has no resource manager: 40 connections x (AK + EK + quote) must not fill it."""
    proc, _ = swtpm
    sel = PcrSelection.parse("sha256:0")
    for _ in range(40):
        with EsapiTpm(proc.tcti) as tpm:
            tpm.quote(sel, NONCE)
            tpm.ek_public()
    env = {**os.environ, "TPM2TOOLS_TCTI": proc.tcti}
    out = subprocess.run(
        ["tpm2_getcap", "handles-transient"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_ek_certificates_are_read_from_nv(tpm: EsapiTpm) -> None:
    from cryptography import x509

    certs = tpm.ek_certificates()
    assert 0x01C00002 in certs  # RSA-2048 EK certificate
    assert 0x01C00016 in certs  # ECC P-384 EK certificate (high range) on swtpm 0.7
    for der in certs.values():
        cert = x509.load_der_x509_certificate(der)
        assert "swtpm-localca" in cert.issuer.rfc4514_string()


def test_nv_counter_only_increments(tpm: EsapiTpm) -> None:
    index = 0x01500101
    first = tpm.nv_counter_define(index)
    assert tpm.nv_counter_define(index) == first  # defining again is a no-op
    assert tpm.nv_counter_increment(index) == first + 1
    assert tpm.nv_counter_read(index) == first + 1


def test_an_ordinary_nv_index_is_not_read_as_a_counter(swtpm: Any, tmp_path: Path) -> None:
    """The broker reads counters with owner authorisation for the API: an ordinary index
    (someone else's data) is refused, not its first 8 bytes returned."""
    proc, _ = swtpm
    index = "0x01800123"
    attrs = "ownerread|ownerwrite|authread|authwrite"
    tools(proc.tcti, "tpm2_nvdefine", index, "-C", "o", "-s", "16", "-a", attrs, cwd=tmp_path)
    (tmp_path / "secret").write_bytes(b"S3CRETKEY-123456")
    tools(proc.tcti, "tpm2_nvwrite", index, "-C", "o", "-i", "secret", cwd=tmp_path)
    with EsapiTpm(proc.tcti) as tpm:
        for call in (tpm.nv_counter_read, tpm.nv_counter_define):
            with pytest.raises(OperationNotAllowed, match="0x01800123 is not a counter"):
                call(int(index, 16))
        assert tpm.recoveries() == 0


def test_a_bank_the_tpm_lacks_is_refused_without_reconnecting(tpm: EsapiTpm) -> None:
    """swtpm has no SHA-384 or SHA-512 bank here: reading or quoting one is the adapter's
    TpmError, and the connection and the loaded AK stay (it re-created the AK each time)."""
    tpm.quote(PcrSelection.parse("sha256:0"), b"\x01" * 32)  # the AK is loaded
    context, ak = tpm._esapi, tpm._ak
    for text in ("sha384:0", "sha512:0,1"):
        for call in (tpm.read_pcrs, lambda s: tpm.quote(s, b"\x02" * 32)):
            with pytest.raises(TpmError, match="the TPM returned no value"):
                call(PcrSelection.parse(text))
    assert tpm._esapi is context and tpm._ak is ak and tpm.recoveries() == 0


def test_reading_an_undefined_counter_is_a_tpm_error(tpm: EsapiTpm) -> None:
    with pytest.raises(TpmError) as exc:
        tpm.nv_counter_read(0x01500999)
    assert exc.value.rc != 0


def test_adapter_recovers_when_swtpm_restarts(swtpm: Any) -> None:
    proc, _ = swtpm
    sel = PcrSelection.parse("sha256:0")
    with EsapiTpm(proc.tcti) as tpm:
        first = tpm.quote(sel, NONCE)
        proc.stop()
        with pytest.raises(TpmError):
            tpm.quote(sel, NONCE)
        proc.start()
        second = tpm.quote(sel, NONCE)
        v1 = verify_quote(
            first.attest, first.signature, ak=tpm.ak_public(), nonce=NONCE, pcrs=first.pcrs
        )
        v2 = verify_quote(
            second.attest,
            second.signature,
            ak=tpm.ak_public(),
            nonce=NONCE,
            pcrs=second.pcrs,
            previous=v1,
        )
    # A restart of swtpm with startup-clear is a TPM Reset.
    assert v2.clock.reset_count == v1.clock.reset_count + 1


def test_power_cut_marks_clock_unsafe(swtpm: Any) -> None:
    proc, _ = swtpm
    sel = PcrSelection.parse("sha256:0")
    with EsapiTpm(proc.tcti) as tpm:
        tpm.quote(sel, NONCE)
    proc.stop(orderly=False)
    proc.start()
    with EsapiTpm(proc.tcti) as tpm:
        q = tpm.quote(sel, NONCE)
        with pytest.raises(ClockError, match="safe"):
            verify_quote(q.attest, q.signature, ak=tpm.ak_public(), nonce=NONCE, pcrs=q.pcrs)


def test_a_dead_tpm_is_a_tpm_error(tmp_path: Path) -> None:
    from attest.node.tpm.swtpm import free_port_pair

    with pytest.raises(TpmError):
        EsapiTpm(f"swtpm:host=127.0.0.1,port={free_port_pair()}").quote(
            PcrSelection.parse("sha256:0"), NONCE
        )


# --- interop with tpm2-tools -----------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ecc", "rsa"])
def test_tpm2_quote_verifies_with_attest(swtpm: Any, tmp_path: Path, alg: str) -> None:
    need_binaries("tpm2_createek", "tpm2_createak", "tpm2_quote")
    proc, _ = swtpm
    t = proc.tcti
    scheme = "ecdsa" if alg == "ecc" else "rsassa"
    tools(t, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub", cwd=tmp_path)
    tools(
        t,
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-c",
        "ak.ctx",
        "-G",
        alg,
        "-g",
        "sha256",
        "-s",
        scheme,
        "-u",
        "ak.pub",
        "-f",
        "pem",
        "-n",
        "ak.name",
        cwd=tmp_path,
    )
    tools(t, "tpm2_flushcontext", "-t", cwd=tmp_path)
    tools(t, "tpm2_flushcontext", "-s", cwd=tmp_path)
    tools(
        t,
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        "sha256:0,1,2,16",
        "-q",
        NONCE.hex(),
        "-m",
        "q.msg",
        "-s",
        "q.sig",
        "-o",
        "q.pcrs",
        "-g",
        "sha256",
        cwd=tmp_path,
    )
    out = attest_cli(
        "quote",
        "verify",
        "--ak",
        tmp_path / "ak.pub",
        "--nonce",
        NONCE.hex(),
        "--quote",
        tmp_path / "q.msg",
        "--signature",
        tmp_path / "q.sig",
        "--pcrs",
        tmp_path / "q.pcrs",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] is True
    assert doc["pcr_selection"] == "sha256:0,1,2,16"
    assert doc["nonce"] == NONCE.hex()
    # The same files with the wrong nonce: one line naming the check, exit 1.
    bad = attest_cli(
        "quote",
        "verify",
        "--ak",
        tmp_path / "ak.pub",
        "--nonce",
        "00" * 24,
        "--quote",
        tmp_path / "q.msg",
        "--signature",
        tmp_path / "q.sig",
        "--pcrs",
        tmp_path / "q.pcrs",
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "nonce check failed" in bad.stderr
    # Asking for another selection than the quote covers is refused too.
    other = attest_cli(
        "quote",
        "verify",
        "--ak",
        tmp_path / "ak.pub",
        "--nonce",
        NONCE.hex(),
        "--quote",
        tmp_path / "q.msg",
        "--signature",
        tmp_path / "q.sig",
        "--pcrs",
        tmp_path / "q.pcrs",
        "--pcr-list",
        "sha256:0,1,2,17",
    )
    assert other.returncode == 1 and "pcr-selection" in other.stderr


@pytest.mark.parametrize("kind", ["ecc256", "rsa2048"])
def test_attest_quote_verifies_with_tpm2_checkquote(swtpm: Any, tmp_path: Path, kind: str) -> None:
    need_binaries("tpm2_checkquote")
    proc, _ = swtpm
    out = attest_cli(
        "quote",
        "create",
        "--tcti",
        proc.tcti,
        "--nonce",
        NONCE.hex(),
        "--pcrs",
        "sha256:0,1,7",
        "--ak-type",
        kind,
        "-m",
        tmp_path / "q.msg",
        "-s",
        tmp_path / "q.sig",
        "-o",
        tmp_path / "q.pcrs",
        "--ak-pem",
        tmp_path / "ak.pem",
        "--ak-public",
        tmp_path / "ak.tpm2b",
    )
    assert out.returncode == 0, out.stderr
    check = subprocess.run(
        [
            "tpm2_checkquote",
            "-u",
            str(tmp_path / "ak.pem"),
            "-m",
            str(tmp_path / "q.msg"),
            "-s",
            str(tmp_path / "q.sig"),
            "-f",
            str(tmp_path / "q.pcrs"),
            "-l",
            "sha256:0,1,7",
            "-q",
            NONCE.hex(),
            "-g",
            "sha256",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    # and attest verifies its own files, with the AK as TPM2B_PUBLIC this time
    ours = attest_cli(
        "quote",
        "verify",
        "--ak",
        tmp_path / "ak.tpm2b",
        "--nonce",
        NONCE.hex(),
        "-m",
        tmp_path / "q.msg",
        "-s",
        tmp_path / "q.sig",
        "-f",
        tmp_path / "q.pcrs",
        "--pcr-list",
        "sha256:0,1,7",
    )
    assert ours.returncode == 0, ours.stderr
    assert json.loads(ours.stdout)["ak_name"] is not None


def test_relabelled_values_refused_by_attest_but_not_by_tpm2_checkquote(
    swtpm: Any, tmp_path: Path
) -> None:
    """The peer's weakness, shown on the same files: the values of PCRs 0,1,7 presented as
    PCRs 2,3,4 pass tpm2_checkquote and are refused by attest."""
    need_binaries("tpm2_checkquote")
    proc, _ = swtpm
    with EsapiTpm(proc.tcti) as tpm:
        tpm.extend(7, {HashAlg.SHA256: HashAlg.SHA256.digest(b"secure boot")})
        sel = PcrSelection.parse("sha256:0,1,7")
        q = tpm.quote(sel, NONCE)
        ak = tpm.ak_public()
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "ak.pem").write_bytes(
        ak.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "q.msg").write_bytes(q.attest)
    (tmp_path / "q.sig").write_bytes(q.signature)
    vals = q.pcrs.values[HashAlg.SHA256]
    (tmp_path / "q.pcrs").write_bytes(vals[0] + vals[1] + vals[7])
    relabelled = {"sha256": {"2": vals[0].hex(), "3": vals[1].hex(), "4": vals[7].hex()}}
    (tmp_path / "relabelled.json").write_text(json.dumps(relabelled))
    peer = subprocess.run(
        [
            "tpm2_checkquote",
            "-u",
            str(tmp_path / "ak.pem"),
            "-m",
            str(tmp_path / "q.msg"),
            "-s",
            str(tmp_path / "q.sig"),
            "-f",
            str(tmp_path / "q.pcrs"),
            "-l",
            "sha256:2,3,4",
            "-q",
            NONCE.hex(),
            "-g",
            "sha256",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = attest_cli(
        "quote",
        "verify",
        "--ak",
        tmp_path / "ak.pem",
        "--nonce",
        NONCE.hex(),
        "-m",
        tmp_path / "q.msg",
        "-s",
        tmp_path / "q.sig",
        "-f",
        tmp_path / "relabelled.json",
    )
    assert ours.returncode == 1 and "pcr-selection check failed" in ours.stderr
    with pytest.raises(PcrSelectionError):
        verify_quote(
            q.attest,
            q.signature,
            ak=ak,
            nonce=NONCE,
            pcrs={HashAlg.SHA256: {2: vals[0], 3: vals[1], 4: vals[7]}},
        )
    # Record what the peer does with the same relabelled input (FACTS.md: it accepts).
    print(f"tpm2_checkquote on relabelled PCRs: exit {peer.returncode}")


def test_demo_command_runs(tmp_path: Path) -> None:
    need_binaries("swtpm_setup")
    out = attest_cli("demo", "--workdir", tmp_path / "demo", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] is True
    # attested as running blessed release 1.0.0 (its dm-verity root hash from the runtime log,
    # blessed in a registry signed with the TEST keys), through the appraisal of attest verify
    assert doc["release"] == "1.0.0"
    assert doc["verdict"] == "affirming" and doc["result"]["status"] == "affirming"
    assert doc["result"]["release"]["status"] == "blessed"
    assert doc["result"]["release"]["version"] == "1.0.0"
    assert doc["enrollment"]["activated"] is True
    checks = {f["check"] for f in doc["result"]["findings"] if f["tier"] == "affirming"}
    assert {"quote", "runtime-log", "audit-chain", "verity", "release"} <= checks
    # the one rule waived (a software TPM has no firmware), said in the result and the policy id
    (platform,) = [f for f in doc["result"]["findings"] if f["check"] == "platform"]
    assert platform["value"] == 0 and "waived by the verifier's policy" in platform["explanation"]
    assert doc["result"]["policy_id"].startswith("attest/custom@"), doc["result"]["policy_id"]
    assert doc["ear"].count(".") == 2
    assert "firmware_manifests/test" in doc["test_keys"]
    # the relabelled quote is refused
    assert "quote (pcr-selection)" in doc["relabelled_quote_refused"]
    # an image nobody blessed: the gate refuses it with its reason code, nothing switched
    up = doc["upgrade"]
    assert up["refused"] is True and up["status"] == 409
    assert up["check"] == "unknown-artifact" and up["pointer_unchanged"] is True
    # PCR 13 extended behind the broker: the node still answers, the verifier contraindicates
    # naming the runtime PCR
    tamper = doc["tamper"]
    assert tamper["verdict"] == "contraindicated" and tamper["pcr"] == 13
    assert "PCR 13" in tamper["reason"] and "runtime-log" in tamper["contraindicated"]
    assert tamper["names_runtime_pcr"] is True
    assert doc["seconds"] < 30


def test_demo_text_output_names_each_step(tmp_path: Path) -> None:
    need_binaries("swtpm_setup")
    out = attest_cli("demo", "--workdir", tmp_path / "demo")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()

    def line(prefix: str) -> str:
        found = [x for x in lines if x.startswith(prefix)]
        assert found, f"no {prefix!r} line in:\n{out.stdout}"
        return found[0]

    assert "TEST keys" in line("registry ")
    assert "plays the node's kernel" in line("node kernel")
    assert "AFFIRMING as release 1.0.0" in line("RELEASE ")
    assert "REFUSED" in line("attack ")
    assert "REFUSED unknown-artifact" in line("upgrade ") and "unchanged" in line("upgrade ")
    assert "CONTRAINDICATED" in line("tamper ")
    assert any("runtime-log" in x and "PCR 13" in x for x in lines)
    assert "every step came out" in line("mission ")


def test_demo_keep_leaves_a_node_the_printed_commands_appraise(tmp_path: Path) -> None:
    """``attest demo --keep``: after the mission the node boots again (a TPM reset) and stays
    up; the ``attest verify`` line it prints appraises it affirming as release 1.0.0, the
    ``attest fleet add`` line enrolls it, and SIGTERM stops it (exit 0, the node gone)."""
    import signal
    import threading

    import httpx

    need_binaries("swtpm_setup")
    proc = subprocess.Popen(
        [sys.executable, "-m", "attest", "demo", "--keep", "--json", "--workdir", tmp_path],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its node (swtpm, attestd-tpm, attestd) in its process group
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        doc: dict[str, Any] | None = None
        deadline = time.monotonic() + 150
        while doc is None:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            try:
                doc = json.loads("".join(lines))
            except ValueError:
                time.sleep(0.2)
        assert doc["valid"] is True
        keep = doc["keep"]
        run = [sys.executable, "-m", "attest"]
        out = subprocess.run(
            [*run, *keep["verify"][1:], "--json"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr
        verdict = json.loads(out.stdout)
        assert verdict["verdict"] == "affirming", verdict
        assert verdict["release"]["version"] == "1.0.0", verdict
        found = {f["check"]: f["value"] for f in verdict["result"]["findings"]}
        assert found["platform"] == 0  # the platform waived, as the demo says
        out = subprocess.run(
            [*run, *keep["fleet_add"][1:]], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "enrolled" in out.stdout, out.stdout + out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(lines)
        with pytest.raises(httpx.TransportError):
            httpx.get(keep["url"] + "/healthz", timeout=2)
    finally:  # a failed test stops the demo and its node too (none left running)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(5)
