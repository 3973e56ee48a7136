"""One fake AMD per product for the whole run, shared by the conftest fixture and the modules
(one module, so one cache: the conftest itself may be imported under two names)."""

from __future__ import annotations

import datetime as dt

from attest.snp.certs import load_crl
from attest.snp.policy import VerifiedCrl, verify_crl
from attest.snp.report import Product, parse_report
from attest.snp.verify import VerifiedReport, verify_chain, verify_report
from attest.testing.snp import FakeAmd, make_crl, make_fake_amd

# the fake chain's certificates are valid 2024-01-01 .. (VLEK) 2024-12-31
FAKE_NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)

_FAKES: dict[Product, FakeAmd] = {}


def fake(product: Product) -> FakeAmd:
    """RSA keys take a while to make: each product's fake is made once."""
    if product not in _FAKES:
        _FAKES[product] = make_fake_amd(product)
    return _FAKES[product]


def milan_report(**fields: object) -> VerifiedReport:
    """A Milan report of the fake AMD with ``fields``, verified at ``FAKE_NOW``."""
    amd = fake(Product.MILAN)
    chain = verify_chain(amd.vcek, [amd.ask, amd.ark], now=FAKE_NOW, pins=amd.pins)
    return verify_report(parse_report(amd.report(**fields)), chain, now=FAKE_NOW)


def milan_crl(vr: VerifiedReport) -> VerifiedCrl:
    """The fake Milan CRL (fresh at ``FAKE_NOW``, nothing revoked), verified against vr's chain."""
    raw = make_crl(fake(Product.MILAN), this_update=FAKE_NOW - dt.timedelta(days=1))
    crl = verify_crl(load_crl(raw), vr.chain)
    assert crl is not None
    return crl
