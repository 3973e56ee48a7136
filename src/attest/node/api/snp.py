"""The SEV-SNP parts of attestd's answers (docs/snp.md): the evidence's ``snp`` member, and what
an SEV-SNP guest without a TPM (``[snp] only``) answers in place of the TPM's endpoints.

- ``snp_report_member``: this challenge's report, asked for through the node port (attestd-tpm's
  ``snp_report``), whose REPORT_DATA binds the verifier's nonce, attestd's TLS key and -- when
  the node has a TPM -- the AK (``attest.snp.reportdata``, encoding 1).
- ``tpmless_identity``: ``GET /v1/identity`` without a TPM: the node id and TLS binding, no key.
- ``add_tpmless_refusals``: the upgrade and registry endpoints answer 409 ``NoTpmError`` (the
  gate needs the TPM's NV counter and runtime log; such a guest is upgraded by relaunching it,
  its launch measurement names the release).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.params import Depends

from attest import __version__
from attest.errors import EvidenceFormatError, NoTpmError, SnpGuestError
from attest.evidence import snp_member
from attest.node.api.schemas import error_responses
from attest.node.port import NodePort
from attest.snp.reportdata import MAX_NONCE, MIN_NONCE, encode_report_data

NO_TPM = "this node has no TPM (an SEV-SNP guest attested by its report alone: [snp] only)"
NO_UPGRADE = (
    f"{NO_TPM}: it is upgraded by relaunching, its launch measurement names the release "
    "(no upgrade gate, no NV counter)"
)
TPMLESS_REFUSED = (
    ("POST", "/v1/upgrades"),
    ("GET", "/v1/upgrades"),
    ("POST", "/v1/upgrades/confirm"),
    ("POST", "/v1/registry"),
)


def snp_report_member(
    node: NodePort, *, nonce: bytes, tls_spki: bytes, ak: bytes | None
) -> dict[str, Any]:
    """This challenge's SEV-SNP report (docs/snp.md, "Guest evidence"): REPORT_DATA binds the
    verifier's nonce, the TLS key (``b""``: no TLS) and the AK's TPM2B_PUBLIC (None: no TPM,
    ``[snp] only``). ``EvidenceFormatError`` for a nonce REPORT_DATA cannot carry,
    ``SnpGuestError`` when the node has no SEV-SNP interface."""
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise EvidenceFormatError(
            f"an SEV-SNP guest answers nonces of {MIN_NONCE}..{MAX_NONCE} bytes, not {len(nonce)}"
        )
    spki = tls_spki or None
    got = node.snp_report(encode_report_data(nonce=nonce, tls_spki=spki, vtpm_ak=ak))
    if got is None:
        raise SnpGuestError("snp.enabled is set but attestd-tpm has no --snp-guest interface")
    return snp_member(got.report, got.certs, spki)


def tpmless_identity(node_id: str, tls_binding: bytes) -> dict[str, Any]:
    """``GET /v1/identity`` of a node without a TPM: the keys of a TPM node's answer, no key."""
    return {
        "node_id": node_id,
        "ak": None,
        "ek": None,
        "ek_certificates": {},
        "banks": [],
        "snp_only": True,
        "runtime_pcr": None,
        "tls_binding": tls_binding.hex() or None,
        "version": __version__,
    }


def add_tpmless_refusals(app: FastAPI, dependencies: Sequence[Depends]) -> None:
    """The ``TPMLESS_REFUSED`` endpoints, each answering 409 ``NoTpmError`` once
    ``dependencies`` (the channel check) pass."""

    async def refuse() -> None:
        raise NoTpmError(NO_UPGRADE)

    for method, path in TPMLESS_REFUSED:
        app.add_api_route(
            path,
            refuse,
            methods=[method],
            dependencies=dependencies,
            responses=error_responses(403, 409),
        )
