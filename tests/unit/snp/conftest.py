"""The ``amd`` fixture: a fake AMD per product (real data: ``corpus.py``, from tests/data/snp)."""

from __future__ import annotations

import pytest
from tests.unit.snp.fakes import fake

from attest.snp.report import Product
from attest.testing.snp import FakeAmd


@pytest.fixture(params=list(Product), ids=lambda p: p.value)
def amd(request: pytest.FixtureRequest) -> FakeAmd:
    return fake(request.param)
