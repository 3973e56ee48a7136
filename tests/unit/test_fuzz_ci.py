"""Every fuzz target of ``attest.testing.fuzz_targets`` for a bounded time, from a fresh seed.

The seed is drawn from ``os.urandom`` each run (``ATTEST_FUZZ_SEED`` overrides it) and printed;
a failure names the seed, the target and the failing input in hex, so it can be replayed with
``ATTEST_FUZZ_SEED=<seed> pytest tests/unit/test_fuzz_ci.py -k <target>`` or by calling the
target on the input. ``ATTEST_FUZZ_SECONDS`` sets the time per target (default 1.5 s; 26
targets). ``bench/fuzz.py`` runs the same targets for ≥ 1M inputs each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from attest.ekcert.parse import parse_certificate
from attest.errors import CertificateFormatError, EvidenceFormatError, SnpFormatError
from attest.snp.certs import load_crl
from attest.testing.fuzz import Finding, Mutator, Target, check_one, run_target
from attest.testing.fuzz_targets import by_name, targets

REPO = Path(__file__).resolve().parents[2]
EVENTLOGS = (REPO / ".." / "shared" / "eventlogs").resolve()
SEED = int(os.environ.get("ATTEST_FUZZ_SEED") or int.from_bytes(os.urandom(8), "big"))
SECONDS = float(os.environ.get("ATTEST_FUZZ_SECONDS", "1.5"))
TARGETS = targets(eventlog_dirs=[EVENTLOGS])

# mutated serial numbers of the EK seed certificate: tolerated, and warned about, by cryptography
pytestmark = pytest.mark.filterwarnings("ignore", category=CryptographyDeprecationWarning)

print(f"\nfuzz seed: ATTEST_FUZZ_SEED={SEED}")


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_target_raises_only_its_documented_error(target: Target) -> None:
    result = run_target(target, SEED, seconds=SECONDS)
    print(
        f"fuzz {target.name}: seed={SEED} inputs={result.inputs} refused={result.refused} "
        f"findings={result.finding_count}"
    )
    assert result.inputs >= len(target.seeds)
    assert not result.findings, (
        f"ATTEST_FUZZ_SEED={SEED}: {result.finding_count} finding(s); first: "
        + result.findings[0].describe()
    )


def test_every_seed_is_accepted_by_its_target() -> None:
    """Seeds are valid inputs: mutations start from something the parser accepts (the
    event-log replay target may refuse a corpus log that does not replay into its fixed
    quote)."""
    for target in TARGETS:
        outcomes = [check_one(target, s) for s in target.seeds]
        assert not any(isinstance(o, Finding) for o in outcomes), target.name
        assert outcomes[0] is False, f"{target.name}: its first seed is refused"


def test_registry_covers_every_bounded_parser() -> None:
    names = set(by_name())
    for expected in (
        "tpms-attest", "tpmt-signature", "tpm2b-public", "quote-verify", "eventlog",
        "eventlog-replay", "cel", "manifest-root", "manifest-registry", "evidence",
        "verity-table", "verity-status", "uki", "ekcert", "snp-report", "snp-certtable",
    ):  # fmt: skip
        assert expected in names


def test_mutator_is_deterministic_from_its_seed() -> None:
    corpus = [bytes(range(64)), b"\x00\x10" * 20]
    a, b, c = Mutator(7, corpus), Mutator(7, corpus), Mutator(8, corpus)
    first = [a.next() for _ in range(200)]
    assert first == [b.next() for _ in range(200)]
    assert first != [c.next() for _ in range(200)]
    assert len(set(first)) > 150  # it does mutate


def test_an_escaping_exception_is_a_finding() -> None:
    def parse(data: bytes) -> object:
        if data[:1] == b"x":
            raise EvidenceFormatError("documented")
        return data[10]  # IndexError on short input: a finding

    target = Target("demo", parse, (b"x", b"0123456789ab"), (EvidenceFormatError,))
    assert check_one(target, b"x") is True
    assert check_one(target, b"0123456789ab") is False
    finding = check_one(target, b"short")
    assert isinstance(finding, Finding) and isinstance(finding.error, IndexError)
    assert "73686f7274" in finding.describe()  # the input's hex, to reproduce it
    result = run_target(target, 1, inputs=2000)
    assert result.inputs == 2000 and result.finding_count > 0


# --- regressions for what the fuzzer found ---------------------------------------------------


def test_ekcert_refuses_an_unknown_x509_version() -> None:
    """Finding: a certificate whose version INTEGER is not 0..2 let cryptography's
    ``InvalidVersion`` (not a ValueError) escape ``parse_certificate``."""
    der = by_name()["ekcert"].seeds[0]
    version_at = der.index(bytes.fromhex("a003020102"))
    bad = der[: version_at + 4] + b"\x06" + der[version_at + 5 :]
    with pytest.raises(CertificateFormatError, match="version"):
        parse_certificate(bad)
    x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER)  # seed is valid


def test_snp_crl_refuses_an_unknown_crl_version() -> None:
    """Finding: a CRL whose version INTEGER is not v1/v2 let ``InvalidVersion`` escape
    ``load_crl`` (only ``ValueError`` was caught)."""
    der = by_name()["snp-crl"].seeds[0]
    version_at = der.index(bytes.fromhex("020101"), 4)
    bad = der[:version_at] + bytes.fromhex("020132") + der[version_at + 3 :]
    with pytest.raises(SnpFormatError, match="CRL does not parse"):
        load_crl(bad)
    load_crl(der)  # the seed itself parses


def test_ekcert_refuses_an_unsupported_general_name_in_the_san() -> None:
    """Finding (also hit by test_ekcert's hypothesis test): a subjectAltName whose
    directoryName [4] is retagged x400Address [3] let cryptography's
    ``UnsupportedGeneralNameType`` (not a ValueError) escape ``parse_certificate``."""
    der = by_name()["ekcert"].seeds[0]
    tag_at = der.index(b"\xa4", der.index(bytes.fromhex("0603551d11")))
    bad = der[:tag_at] + b"\xa3" + der[tag_at + 1 :]
    with pytest.raises(CertificateFormatError, match="not supported"):
        parse_certificate(bad)
    assert parse_certificate(der).der == der
