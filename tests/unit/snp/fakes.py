"""One fake AMD per product for the whole run, shared by the conftest fixture and the modules
(one module, so one cache: the conftest itself may be imported under two names)."""

from __future__ import annotations

import datetime as dt

from attest.snp.report import Product
from attest.testing.snp import FakeAmd, make_fake_amd

# the fake chain's certificates are valid 2024-01-01 .. (VLEK) 2024-12-31
FAKE_NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)

_FAKES: dict[Product, FakeAmd] = {}


def fake(product: Product) -> FakeAmd:
    """RSA keys take a while to make: each product's fake is made once."""
    if product not in _FAKES:
        _FAKES[product] = make_fake_amd(product)
    return _FAKES[product]
