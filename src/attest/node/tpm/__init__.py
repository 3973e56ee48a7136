"""TPM access. ``port`` is the interface the rest of attest programs against; ``esapi`` is the
only module that imports ``tpm2_pytss`` (import it only where a real TPM is needed: it costs
~350 ms); ``fake`` is a software TPM for tests and benchmarks."""
