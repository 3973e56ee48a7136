"""EK certificates as TPM vendors ship them: a tolerant reader, a strict verifier.

Pure: bytes in, typed values out, ``CertificateFormatError`` for bytes that are not a
certificate and ``CertificateError`` for a certificate that does not verify.

- ``attest.ekcert.der``: a bounded DER/BER reader and the DER re-encoding of what it read,
  naming every BER deviation it had to tolerate;
- ``attest.ekcert.parse``: ``parse_certificate`` (one certificate, DER or BER, with trailing NV
  padding), ``parse_bundle`` (PEM or DER files as vendors publish them), the TCG fields;
- ``attest.ekcert.verify``: ``verify_ek_chain``: path building to a trust anchor, every signature
  checked over the *original* to-be-signed bytes, validity at the caller's ``now``, CA
  constraints, name and key-identifier chaining, critical extensions.
"""
