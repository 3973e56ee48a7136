"""``attest manifest bless --snp-*`` / ``snp-launch`` write a release's SNP launches (measured
with sev-snp-measure on a generated OVMF), and ``attest snp verify --root/--snapshot`` appraises
a report against them: blessed, mismatch explained, revoked, HOST_DATA, usage errors."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from tests.unit.snp.fakes import FAKE_NOW, fake
from tests.unit.snp.ovmf_fixture import make_ovmf

import attest.cli.snp
from attest.cli import main
from attest.manifest.parse import load_registry
from attest.manifest.snp import release_host_data
from attest.snp.report import Product
from attest.snp.roots import ArkPins
from attest.testing.snp import make_crl

pytest.importorskip("sevsnpmeasure.guest")

CMDLINE = "console=ttyS0 root=/dev/mapper/root roothash={roothash} attest.slot="
WHEN = "2024-01-02T00:00:00Z"
NO_SMT, SMT = 1 << 17, 1 << 16  # guest policy: the must-be-one bit 17; SMT allowed


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@dataclass(frozen=True)
class Blessed:
    dir: Path
    ovmf: Path
    kernel: Path
    initrd: Path
    host_data: str  # what bless printed

    def launch_args(self, slot: str) -> list[str]:
        return [
            "--snp-ovmf", str(self.ovmf),
            "--snp-kernel", str(self.kernel),
            "--snp-initrd", str(self.initrd),
            "--snp-cmdline", CMDLINE + slot,
            "--snp-vcpus", "4",
            "--snp-vcpu-type", "EPYC-v4",
            "--snp-slot", slot,
        ]  # fmt: skip

    def sign(self, capsys: pytest.CaptureFixture[str]) -> None:
        for k in ("l1", "l2"):
            assert _run(capsys, "manifest", "sign", "reg.json", "--key", f"{k}.pem")[0] == 0

    def registry(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads((self.dir / "reg.json").read_text())["signed"]
        return doc

    def release(self) -> dict[str, object]:
        releases = self.registry()["releases"]
        assert isinstance(releases, dict)
        rel: dict[str, object] = releases["1.0.0"]
        return rel


@pytest.fixture()
def blessed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Blessed:
    monkeypatch.chdir(tmp_path)
    pins = {p: fake(p).pins.spki_sha256[p] for p in Product}
    monkeypatch.setattr(attest.cli.snp, "AMD_ARK_PINS", ArkPins(pins))
    for name in ("r1", "l1", "l2", "p1"):
        assert _run(capsys, "manifest", "keygen", "--out", name)[0] == 0
    rc, out, _ = _run(
        capsys,
        "manifest", "init", "--out", "root.json", "--registry-out", "reg.json",
        "--root-key", "r1.pub.json", "--releases-key", "l1.pub.json",
        "--releases-key", "l2.pub.json", "--releases-threshold", "2",
        "--platform-key", "p1.pub.json",
        "--now", "2024-01-01T00:00:00Z", "--expires", "2030-01-01T00:00:00Z",
    )  # fmt: skip
    assert rc == 0, out
    assert _run(capsys, "manifest", "sign", "root.json", "--key", "r1.pem")[0] == 0
    (tmp_path / "img").write_bytes(hashlib.sha256(b"image").digest() * 128 * 9)
    b = Blessed(
        tmp_path,
        make_ovmf(tmp_path / "OVMF.fd"),
        tmp_path / "vmlinuz",
        tmp_path / "initrd.img",
        "",
    )
    b.kernel.write_bytes(b"kernel " * 1000)
    b.initrd.write_bytes(b"initrd " * 1000)
    rc, out, err = _run(
        capsys,
        "manifest", "bless", "img", "--version", "1.0.0", "--commit", "ab" * 20,
        "--registry", "reg.json", "--now", WHEN,
        *b.launch_args("a"),
        "--snp-min-tcb", "Milan=1.0.5.100", "--snp-no-smt", "--snp-bind-host-data",
    )  # fmt: skip
    assert rc == 0, err
    assert " snp[a]=" in out
    [host_data] = [w.split("=")[1].rstrip(";") for w in out.split() if w.startswith("host_data=")]
    rc, out, err = _run(
        capsys,
        "manifest", "snp-launch", "1.0.0", "--registry", "reg.json", "--now", WHEN,
        *b.launch_args("b"),
    )  # fmt: skip
    assert rc == 0, err
    b.sign(capsys)
    return replace(b, host_data=host_data)


def _snp(release: dict[str, object]) -> dict[str, object]:
    snp = release["snp"]
    assert isinstance(snp, dict)
    return snp


def test_bless_records_the_measurement_sev_snp_measure_predicts(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = blessed.release()
    verity = rel["verity"]
    assert isinstance(verity, dict)
    root_hash = verity["root_hash"]
    launches = _snp(rel)["launches"]
    assert isinstance(launches, list) and [x["slot"] for x in launches] == ["a", "b"]
    for launch in launches:
        cmdline = CMDLINE.replace("{roothash}", root_hash) + launch["slot"]
        rc, out, _ = _run(
            capsys,
            "snp", "measure", "--ovmf", str(blessed.ovmf), "--vcpus", "4",
            "--vcpu-type", "EPYC-v4", "--kernel", str(blessed.kernel),
            "--initrd", str(blessed.initrd), "--append", cmdline,
        )  # fmt: skip
        assert rc == 0
        assert launch["measurement"] == out.strip()
        assert launch["inputs"] == {
            "ovmf": hashlib.sha256(blessed.ovmf.read_bytes()).hexdigest(),
            "kernel": hashlib.sha256(blessed.kernel.read_bytes()).hexdigest(),
            "initrd": hashlib.sha256(blessed.initrd.read_bytes()).hexdigest(),
            "cmdline": hashlib.sha256(cmdline.encode()).hexdigest(),
        }
    assert launches[0]["measurement"] != launches[1]["measurement"]
    policy = _snp(rel)["policy"]
    assert isinstance(policy, dict)
    assert policy["min_tcb"] == {"Milan": {"bootloader": 1, "tee": 0, "snp": 5, "microcode": 100}}
    assert policy["allow_smt"] is False and policy["bind_host_data"] is True
    assert policy["crl_missing"] == "refuse" and policy["vmpl"] == 0
    rc, out, _ = _run(capsys, "manifest", "show", "reg.json", "--now", WHEN)
    assert rc == 0
    assert f"snp slot a (4 x EPYC-v4): measurement {launches[0]['measurement']}" in out
    assert f"host_data {blessed.host_data}" in out and "smt False" in out


def _host_data(blessed: Blessed) -> bytes:
    """The HOST_DATA ``bless`` printed, which must be the appraisal's record digest."""
    _, snap = load_registry((blessed.dir / "reg.json").read_bytes())
    printed = bytes.fromhex(blessed.host_data)
    assert printed == release_host_data(snap.releases["1.0.0"])
    return printed


def _verify(
    blessed: Blessed,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    slot: int = 0,
    measurement: bytes | None = None,
    host_data: bytes | None = None,
    crl: bool = True,
    policy: int = NO_SMT,
) -> tuple[int, str, str]:
    amd = fake(Product.MILAN)
    launches = _snp(blessed.release())["launches"]
    assert isinstance(launches, list)
    m = measurement or bytes.fromhex(launches[slot]["measurement"])
    hd = host_data if host_data is not None else _host_data(blessed)
    (blessed.dir / "report.bin").write_bytes(amd.report(measurement=m, host_data=hd, policy=policy))
    (blessed.dir / "vcek.der").write_bytes(amd.vcek.der)
    (blessed.dir / "chain.pem").write_bytes(amd.cert_chain())
    argv = [
        "snp", "verify", "--report", "report.bin", "--vcek", "vcek.der", "--chain", "chain.pem",
        "--now", FAKE_NOW.isoformat(), "--root", "root.json", "--snapshot", "reg.json",
    ]  # fmt: skip
    if crl:
        raw = make_crl(amd, this_update=FAKE_NOW - dt.timedelta(days=1))
        (blessed.dir / "milan.crl").write_bytes(raw)
        argv += ["--crl", "milan.crl"]
    return _run(capsys, *argv, *extra)


@pytest.mark.parametrize(("slot", "name"), [(0, "a"), (1, "b")])
def test_verify_affirms_a_blessed_launch(
    blessed: Blessed, capsys: pytest.CaptureFixture[str], slot: int, name: str
) -> None:
    rc, out, err = _verify(blessed, capsys, slot=slot)
    assert rc == 0, err
    assert f"blessed: release 1.0.0, slot {name} (4 x EPYC-v4)" in out
    rc, out, err = _verify(blessed, capsys, "--release", "1.0.0", "--json", slot=slot)
    assert rc == 0, err
    appraisal = json.loads(out)["appraisal"]
    assert appraisal == {
        "affirmed": True,
        "release": "1.0.0",
        "slot": name,
        "refusals": [],
        "warnings": [],
    }


def test_verify_explains_a_measurement_mismatch(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _verify(blessed, capsys, "--release", "1.0.0", measurement=b"\x42" * 48)
    assert rc == 1
    assert err.startswith("attest: snp-measurement check failed: measurement 4242")
    assert "matches no blessed launch of release 1.0.0" in err and err.count("\n") == 1
    for launch in _snp(blessed.release())["launches"]:  # type: ignore[union-attr]
        assert launch["inputs"]["cmdline"] in err and launch["measurement"] in err
    assert "refused: snp-measurement:" in out


def test_verify_refuses_wrong_host_data_smt_and_a_missing_crl(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every refusal is listed on stdout; the error line names the first and counts the rest."""
    rc, out, err = _verify(blessed, capsys, host_data=b"\x07" * 32, crl=False, policy=NO_SMT | SMT)
    assert rc == 1
    assert "snp-host-data check failed" in err and "(and 2 more refusal(s))" in err
    assert "refused: snp-crl-missing:" in out and "refused: snp-smt:" in out


def test_verify_refuses_a_launch_of_a_revoked_release(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _run(
        capsys, "manifest", "revoke", "1.0.0", "--reason", "CVE-2026-1",
        "--registry", "reg.json", "--now", WHEN,
    )  # fmt: skip
    assert rc == 0, err
    blessed.sign(capsys)
    rc, out, err = _verify(blessed, capsys)
    assert rc == 1 and "snp-release-revoked check failed" in err and "CVE-2026-1" in err


def test_verify_usage_errors(blessed: Blessed, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["snp", "verify", "--report", "r", "--vcek", "v", "--now", FAKE_NOW.isoformat()]
    amd = fake(Product.MILAN)
    (blessed.dir / "r").write_bytes(amd.report())
    (blessed.dir / "v").write_bytes(amd.vcek.der)
    (blessed.dir / "c").write_bytes(amd.cert_chain())
    base += ["--chain", "c"]
    rc, _, err = _run(capsys, *base, "--release", "1.0.0")
    assert rc == 2 and "need a registry" in err
    rc, _, err = _run(capsys, *base, "--root", "root.json")
    assert rc == 2 and "--root and --snapshot together" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--snp-min-tcb", "Rome=1.2.3.4"], "not one of Milan"),
        (["--snp-min-tcb", "Milan=1.2.3"], "Milan=BL.TEE.SNP.UCODE"),
        (["--snp-min-tcb", "Milan=1.2.3.256"], "0-255"),
        (["--snp-min-tcb", "Milan=1.2.3.4", "--snp-min-tcb", "Milan=1.2.3.5"], "two floors"),
        (["--snp-min-tcb", "Turin=1.2.3.4.5.6"], "Turin=BL.TEE.SNP.UCODE[.FMC]"),
        (["--snp-chip-id", "ab"], "64 bytes"),
        (["--snp-vmpl", "4"], "VMPL is 0-3"),
        (["--snp-min-report-version", "0"], "report versions are 2-5"),
        (["--snp-slot", "a b"], "slot name"),
        (["--snp-vcpu-type", "Pentium"], "unknown vCPU type"),
        (["--snp-vcpus", "0"], "at least one vCPU"),
        (["--snp-vcpus", "513"], "at most 512"),
    ],
)
def test_bless_snp_usage_errors_exit_2(
    blessed: Blessed, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = blessed.launch_args("c")
    for flag in ("--snp-vcpu-type", "--snp-vcpus", "--snp-slot"):
        if flag in extra:
            i = args.index(flag)
            del args[i : i + 2]
    rc, _, err = _run(
        capsys, "manifest", "snp-launch", "1.0.0", "--registry", "reg.json", *args, *extra
    )
    assert rc == 2 and message in err, err


def test_bless_snp_launch_needs_an_ovmf_and_a_kernel(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["manifest", "bless", "img", "--version", "2.0.0", "--commit", "cd" * 20]
    base += ["--registry", "reg.json"]
    rc, _, err = _run(capsys, *base, "--snp-vcpus", "2")
    assert rc == 2 and "--snp-ovmf" in err
    rc, _, err = _run(capsys, *base, "--snp-no-smt")
    assert rc == 2 and "needs an SNP launch" in err
    args = blessed.launch_args("a")
    i = args.index("--snp-kernel")
    del args[i : i + 2]
    rc, _, err = _run(capsys, *base, *args)
    assert rc == 2 and "need --snp-kernel" in err


def test_verify_reads_the_registry_from_the_trusted_state(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    when = FAKE_NOW.isoformat()
    rc, _, err = _run(
        capsys, "manifest", "verify", "--state", "trust", "--root", "root.json",
        "--registry", "reg.json", "--now", when,
    )  # fmt: skip
    assert rc == 0, err
    rc, out, err = _verify(blessed, capsys, slot=1)  # writes the report, with --root/--snapshot
    assert rc == 0, err
    argv = ["snp", "verify", "--report", "report.bin", "--vcek", "vcek.der", "--chain", "chain.pem"]
    argv += ["--now", when, "--trust-dir", "trust", "--crl", "milan.crl"]
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    assert "blessed: release 1.0.0, slot b" in out
    rc, _, err = _run(capsys, *argv[:-4], "--trust-dir", "empty", "--crl", "milan.crl")
    assert rc == 2 and "no trusted manifest state in empty" in err


def test_snp_policy_replaces_the_release_policy_and_keeps_its_launches(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snp(blessed.release())
    seq = blessed.registry()["sequence"]
    rc, out, err = _run(
        capsys, "manifest", "snp-policy", "--version", "1.0.0", "--registry", "reg.json",
        "--now", WHEN, "--snp-min-tcb", "Milan=2.0.6.101", "--snp-min-report-version", "3",
    )  # fmt: skip
    assert rc == 0, err
    assert "release 1.0.0's SNP policy replaced" in out and "(unsigned)" in out
    after = _snp(blessed.release())
    assert after["launches"] == before["launches"]
    policy = after["policy"]
    assert isinstance(policy, dict)
    assert policy["min_tcb"] == {"Milan": {"bootloader": 2, "tee": 0, "snp": 6, "microcode": 101}}
    assert policy["min_report_version"] == 3
    # replaced whole: flags left out take their defaults (SMT allowed, HOST_DATA not bound)
    assert policy["allow_smt"] is True and policy["bind_host_data"] is False
    assert blessed.registry()["sequence"] == seq + 1  # type: ignore[operator]
    # an unsigned draft is not a registry anyone appraises under; re-signed, it is
    rc, _, err = _verify(blessed, capsys, policy=NO_SMT | SMT, host_data=b"\x07" * 32)
    assert rc != 0
    blessed.sign(capsys)
    rc, out, err = _verify(blessed, capsys, policy=NO_SMT | SMT, host_data=b"\x07" * 32)
    assert rc == 0, err


def test_snp_policy_usage_errors(blessed: Blessed, capsys: pytest.CaptureFixture[str]) -> None:
    reg = ["--registry", "reg.json", "--now", WHEN]
    rc, _, err = _run(capsys, "manifest", "snp-policy", "--version", "1.0.0", *reg)
    assert rc == 2 and "give the policy" in err
    rc, _, err = _run(capsys, "manifest", "snp-policy", "--version", "9.9.9", *reg, "--snp-no-smt")
    assert rc != 0 and "9.9.9" in err
    rc, _, err = _run(
        capsys, "manifest", "snp-policy", "--version", "1.0.0", *reg, "--snp-vmpl", "4"
    )
    assert rc == 2 and "VMPL is 0-3" in err


def test_platform_set_takes_an_snp_policy_that_verify_applies_with_platform(
    blessed: Blessed, capsys: pytest.CaptureFixture[str]
) -> None:
    floor = {"bootloader": 255, "tee": 255, "snp": 255, "microcode": 255}
    policy = _snp(blessed.release())["policy"]
    assert isinstance(policy, dict)
    ref = {
        "platform_id": "epyc",
        "description": "an SNP host",
        "example": False,
        "pcrs": {"sha256": {"0": "00" * 32}},
        "event_digests": {},
        "secure_boot": None,
        "snp": {**policy, "min_tcb": {"Milan": floor}, "bind_host_data": False},
    }
    (blessed.dir / "epyc.json").write_text(json.dumps(ref))
    reg = ["--registry", "reg.json", "--now", WHEN]
    rc, _, err = _run(capsys, "manifest", "platform-set", "--ref", "epyc.json", *reg)
    assert rc == 0, err
    rc, _, err = _run(
        capsys, "manifest", "sign", "reg.json", "--key", "p1.pem", "--platform", "epyc"
    )
    assert rc == 0, err
    blessed.sign(capsys)
    assert _verify(blessed, capsys)[0] == 0  # no platform named: the release's policy alone
    rc, out, err = _verify(blessed, capsys, "--platform", "epyc")
    assert rc == 1 and "snp-tcb-floor check failed" in err
    assert "[platform epyc policy]" in err
    rc, out, err = _verify(blessed, capsys, "--platform", "other")
    assert rc == 1 and "snp-platform check failed" in err
