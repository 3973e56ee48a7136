"""attest: node-integrity attestation with TPM quotes, event logs and blessed manifests."""

__version__ = "0.1.0"
