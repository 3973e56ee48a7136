"""``python -m attest.broker``: the same as ``attestd-tpm``."""

from attest.broker.main import run

run()
