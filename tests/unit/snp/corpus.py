"""The real SEV-SNP corpus: reports, AMD certificates and an OVMF suffix from public projects.

The files are committed in ``tests/data/snp/`` (small, public, Apache-2.0 or MIT), with their
provenance (repository, commit, path, licence, SHA-256) in its ``PROVENANCE.md`` and
``rebuild.py`` to re-take them from upstream. ``ATTEST_SNP_CORPUS`` points the tests at another
copy; only such an override may be absent (the tests then skip, naming it). ``EXPECTED`` is
checked file by file.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from attest.snp.certs import AmdCertificate, load_certificates
from attest.snp.report import Product, Signer

REPO = Path(__file__).resolve().parents[3]
ENV = "ATTEST_SNP_CORPUS"
IN_REPO = REPO / "tests" / "data" / "snp"
CORPUS = Path(os.environ.get(ENV) or IN_REPO)

# the in-repo corpus is never skipped (a missing file fails); only an absent override is
requires_corpus = pytest.mark.skipif(
    CORPUS != IN_REPO and not CORPUS.is_dir(),
    reason=f"the SEV-SNP corpus {ENV}={CORPUS} is absent (unset it to use {IN_REPO})",
)

# every data file of the corpus and its SHA-256; PROVENANCE.md lists each with the same hash
EXPECTED: dict[str, str] = {
    "amd/genoa-ask-ark-asvk-trustee.pem": (
        "7397ae50f4bac4699393121cf7ce9e72bac49f9f7b8c524be8df97e59ca151e3"
    ),
    "amd/milan-ask-ark-asvk-trustee.pem": (
        "cc871f0d2294176386175d9b5b962e18556b15ec13f55f8698b5f7a07aebf0c7"
    ),
    "amd/turin-ask-ark-asvk-trustee.pem": (
        "34251ef16c414387e2bf36a69b675329156361e6e8113241209e46ebbd6da93f"
    ),
    "genoa-v3-vcek-azure.report.bin": (
        "227a641db25e82ae50344a548bdb8497ddcbb4783d67012b56d2c052ac57b4ad"
    ),
    "genoa-v3-vcek-azure.vcek.pem": (
        "d1d0050a7dde712e22d8d1fc5be85698beebb1cac9e320641d82afb2eeb076cd"
    ),
    "genoa-v3-vcek-msft.ask.pem": (
        "22fea250e0390b22008c9a415f4bd915ae8cef4a240f9d21702e84eb250b9186"
    ),
    "genoa-v3-vcek-msft.report.bin": (
        "4ae0e73ab3a0e461bedf193795f0d90646a59d3617c0571cac0b0bfeb0ee908f"
    ),
    "genoa-v3-vcek-msft.vcek.pem": (
        "2a25bac52864ff316e6968870d95989d84a678db2082cbe37e7908c09930ca33"
    ),
    "milan-v2-vcek-gosevguest.report.bin": (
        "377e6241d3b373ab1df80c0f96978594e7e21f4797dd6ea95e2957e1c1e26060"
    ),
    "milan-v2-vcek-gosevguest.vcek.der": (
        "0d057f9b6e29a69eda9c0154b259567d291c1c08d73a11e9d31ace07c435b6d8"
    ),
    "milan-v2-vcek-trustee.report.bin": (
        "7c614616feb65823351fa42620ea260fb84fd22b2337a480ca0d5f04f363ca38"
    ),
    "milan-v2-vcek-trustee.vcek.der": (
        "3430987528a9feebc90c1ba5cfac5849926ace82ae652a1bbf464d33bdc36d45"
    ),
    "milan-v2-vcek-virtee.chain.pem": (
        "22e62f8d2c21a156470145fc75f7b5a377cb053ced3e97f0bd3f8d8ca5941ce6"
    ),
    "milan-v2-vcek-virtee.report.bin": (
        "120d77b213c8868dd42f160ccb0114f05336ec715f6d51070f534b33c7e03f3b"
    ),
    "milan-v2-vcek-virtee.vcek.der": (
        "3bbfb6ee259f75a95d13168cfdf2e034181bb93c7c016825731cbe8ea16c95e1"
    ),
    "milan-v3-vcek-msft.ask.pem": (
        "8da3a65af1cb7cb90a21fac78431a2431a9ee7811f48c36569c53fb80ad31fee"
    ),
    "milan-v3-vcek-msft.report.bin": (
        "e75e8d4efa81c2ce16e982419ca82cb042b5feca3ef82dfc48dda06926d9ece1"
    ),
    "milan-v3-vcek-msft.vcek.pem": (
        "ddc96c5867c51a2824477127a016ea21976c5459b9c59a651e3837d503c5effc"
    ),
    "milan-v3-vlek-trustee.chain.pem": (
        "cc871f0d2294176386175d9b5b962e18556b15ec13f55f8698b5f7a07aebf0c7"
    ),
    "milan-v3-vlek-trustee.report.bin": (
        "decdab949afc590668e45869b20f23e4afc7ac03c61201ab20208c6668a58a2d"
    ),
    "milan-v3-vlek-trustee.vlek.der": (
        "296a7c99053efe4b1e480bb76d421fd24633d245f3e34708399a18a7713b7a7c"
    ),
    "milan-vcek-invalid-trustee.der": (
        "f875ab6fb518d27b07897528f320346abe1a152c0d731d15e42092339acce889"
    ),
    "ovmf-amdsev-suffix-virtee.bin": (
        "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c"
    ),
    "turin-v5-vcek-msft.ask.pem": (
        "c72a54fb75a0a06b0c8dbf68b04893d0891751b94ce4da8231d11fd18a0da944"
    ),
    "turin-v5-vcek-msft.report.bin": (
        "85da705e19cdc2b8e4551f069de88685dba92d8961b59e4a17149bb35b606556"
    ),
    "turin-v5-vcek-msft.vcek.pem": (
        "38fec03f98ca5308443dae3077ba3be01e2356fad88c40f590b2f41e6be29911"
    ),
}
AMD_DIR = CORPUS / "amd"  # laid out as an operator's --ark-dir: ASK + ARK + ASVK per product


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def amd_certs() -> list[AmdCertificate]:
    """Every ARK, ASK and ASVK of ``amd/`` (what ``--ark-dir`` loads)."""
    return [c for f in sorted(AMD_DIR.glob("*.pem")) for c in load_certificates(f.read_bytes())]


@dataclass(frozen=True)
class Real:
    name: str
    product: Product
    signer: Signer
    version: int
    leaf: str
    chain: str | None  # the report's own chain file: ASK only (msft), ASK + ARK, or none
    now: dt.datetime

    def report(self) -> bytes:
        return read(f"{self.name}.report.bin")

    def leaf_bytes(self) -> bytes:
        return read(self.leaf)

    def chain_bytes(self) -> bytes:
        return read(self.chain) if self.chain else b""

    def kds_chain(self) -> bytes:
        """The product's AMD certificates (ASK, ARK, ASVK): what AMD's KDS serves."""
        return read(f"amd/{self.product.value.lower()}-ask-ark-asvk-trustee.pem")


_2026 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
_2025 = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
_M, _G, _T, _VCEK = Product.MILAN, Product.GENOA, Product.TURIN, Signer.VCEK
REAL = [
    Real(
        "milan-v2-vcek-gosevguest", _M, _VCEK, 2, "milan-v2-vcek-gosevguest.vcek.der", None, _2025
    ),
    Real(
        "milan-v2-vcek-virtee",
        _M,
        _VCEK,
        2,
        "milan-v2-vcek-virtee.vcek.der",
        "milan-v2-vcek-virtee.chain.pem",
        _2025,
    ),
    Real("milan-v2-vcek-trustee", _M, _VCEK, 2, "milan-v2-vcek-trustee.vcek.der", None, _2025),
    Real(
        "milan-v3-vlek-trustee",
        _M,
        Signer.VLEK,
        3,
        "milan-v3-vlek-trustee.vlek.der",
        "milan-v3-vlek-trustee.chain.pem",
        _2025,
    ),
    Real("genoa-v3-vcek-azure", _G, _VCEK, 3, "genoa-v3-vcek-azure.vcek.pem", None, _2025),
    Real(
        "milan-v3-vcek-msft",
        _M,
        _VCEK,
        3,
        "milan-v3-vcek-msft.vcek.pem",
        "milan-v3-vcek-msft.ask.pem",
        _2026,
    ),
    Real(
        "genoa-v3-vcek-msft",
        _G,
        _VCEK,
        3,
        "genoa-v3-vcek-msft.vcek.pem",
        "genoa-v3-vcek-msft.ask.pem",
        _2026,
    ),
    Real(
        "turin-v5-vcek-msft",
        _T,
        _VCEK,
        5,
        "turin-v5-vcek-msft.vcek.pem",
        "turin-v5-vcek-msft.ask.pem",
        _2026,
    ),
]
REAL_BY_NAME = {r.name: r for r in REAL}
