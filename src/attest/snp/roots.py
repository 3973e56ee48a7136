"""The AMD SEV-SNP roots, pinned by fingerprint (data; no certificate is shipped).

A product's ARK (AMD Root Key) is the trust anchor. attest does not carry it: the caller
presents it (in the chain, the certificate table or an operator's roots directory) and
``attest.snp.verify`` accepts it only when it is self-signed, valid at ``now`` and the SHA-256
of its SubjectPublicKeyInfo DER equals the one pinned here for that product. A root with AMD's
names and another key is refused. Pinning the key rather than the certificate's bytes lets
AMD re-issue the ARK under the same key; the self-signature proves the holder of that key
issued it.

The ASK (VCEK issuer) and ASVK (VLEK issuer) rows are recorded, not trusted: an intermediate
is accepted only because the pinned ARK signed it. ``cert_sha256`` is the SHA-256 of each
certificate's DER, for comparing a copy by hand and for the real-data tests.

Source: AMD's Key Distribution Service, https://kdsintf.amd.com/vcek/v1/{Milan,Genoa,Turin}/
cert_chain (ASK + ARK) and https://kdsintf.amd.com/vlek/v1/{...}/cert_chain (ASVK + ARK).
The fingerprints were computed by attest's developers from the copies in
google/go-sev-guest verify/trust/*.pem, virtee/sev src/certs/snp/builtin/*/,
confidential-containers/trustee deps/verifier/src/snp/*_ask_ark_asvk.pem and
microsoft/TEE-Attestation-Verification src/pinned_arks/*.pem: all four agree. To rotate: fetch
the new cert_chain from the KDS, compare two independent copies, replace the fingerprints
here and record the change in docs/snp.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from attest.snp.report import Product


@dataclass(frozen=True)
class PinnedFingerprint:
    product: Product
    role: str  # "ARK", "ASK" or "ASVK"
    subject_cn: str
    cert_sha256: str  # SHA-256 of the certificate DER, hex
    spki_sha256: str  # SHA-256 of its SubjectPublicKeyInfo DER, hex


def _pin(product: Product, role: str, cn: str, cert: str, spki: str) -> PinnedFingerprint:
    return PinnedFingerprint(product, role, cn, cert, spki)


_M, _G, _T = Product.MILAN, Product.GENOA, Product.TURIN
PINNED: tuple[PinnedFingerprint, ...] = (
    _pin(
        _M,
        "ARK",
        "ARK-Milan",
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
    ),
    _pin(
        _M,
        "ASK",
        "SEV-Milan",
        "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        "42491669ccb851d627ea9846cd24eccbeb7de7c2a62740120fff88001d38ebb6",
    ),
    _pin(
        _M,
        "ASVK",
        "SEV-VLEK-Milan",
        "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
        "66450a123ea5876206df67f2514a4fea224c0f63b18313423078b0edc4535e33",
    ),
    _pin(
        _G,
        "ARK",
        "ARK-Genoa",
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
    ),
    _pin(
        _G,
        "ASK",
        "SEV-Genoa",
        "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        "0324d55bcd48ba877a8fd87c0e1b4934dec8448e3807a24384a34dc6a6c9ebb8",
    ),
    _pin(
        _G,
        "ASVK",
        "SEV-VLEK-Genoa",
        "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
        "7d1633252ebbadaa75f96e9b4e6f7d43a90ceb3f843937482630f8da2459264e",
    ),
    _pin(
        _T,
        "ARK",
        "ARK-Turin",
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
    ),
    _pin(
        _T,
        "ASK",
        "SEV-Turin",
        "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        "0000ead352025f208bf55297c4192c34cd1b878002107366d8f2065a9ae7d3a9",
    ),
    _pin(
        _T,
        "ASVK",
        "SEV-VLEK-Turin",
        "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
        "bfc441408b2f806c5dbf180bd8920e6e60dd404d82141780d85dbf962954d386",
    ),
)


@dataclass(frozen=True)
class ArkPins:
    """The trust anchors: per product, the SHA-256 of its ARK's SubjectPublicKeyInfo DER."""

    spki_sha256: Mapping[Product, bytes]

    def product_of(self, spki_sha256: bytes) -> Product | None:
        """The product whose ARK has this key, or None for a key that is not pinned."""
        return next((p for p, pin in self.spki_sha256.items() if pin == spki_sha256), None)


AMD_ARK_PINS = ArkPins(
    MappingProxyType({p.product: bytes.fromhex(p.spki_sha256) for p in PINNED if p.role == "ARK"})
)
