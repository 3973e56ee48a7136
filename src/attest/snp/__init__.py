"""AMD SEV-SNP evidence: the attestation report, its AMD certificate chain, policy (pure core).

- ``report``: the ATTESTATION_REPORT structure (versions 2, 3, 5), parsed into an
  ``UnverifiedReport``.
- ``certs``: AMD KDS certificates (VCEK, VLEK, ASK, ASVK, ARK) and CRLs.
- ``roots``: the SHA-256 fingerprints of AMD's roots for Milan, Genoa and Turin (the ARK's key
  is the trust anchor; the caller presents the certificate).
- ``certtable``: the extended report's / configfs-TSM auxblob certificate table.
- ``verify``: the link-by-link chain to a presented, pinned ARK; signature, product, TCB and
  chip-id consistency -> ``VerifiedReport``.
- ``policy``: the typed appraisal policy and ``evaluate_snp_policy`` -> ``SnpDecision``.
- ``reportdata``: the versioned REPORT_DATA binding of nonce, TLS key and vTPM AK.

Nothing here reads files or clocks: callers pass bytes and ``now``. See docs/snp.md.
"""
