"""``python -m attest.node.broker``: the same as ``attestd-tpm``."""

from attest.node.broker.main import run

run()
