"""The ``guest-snp`` layer of ``attest verify --host HOST_URL GUEST_URL`` (docs/snp.md, "One verdict
for host and guest"): the AMD certificates and CRLs its options name (``--snp*``, in
``attest.cli._verify_args``), and the call into
``attest.appraisal.snp.guest_snp_layer`` with the guest layer's evidence and enrollment (the
fleet's pairs make the same call).

The verifier chooses what is checked: ``--snp auto`` appraises the SEV-SNP report a guest
sends, ``require`` also contraindicates a guest that sends none, ``off`` ignores it;
``--no-guest-vtpm`` appraises a guest that has no vTPM by its report alone (a report is then
always required, and ``--snp off`` is a usage error). The
policy and the blessed launches are the guest's registry's (``--root/--snapshot`` or
``--trust-dir``); ``--snp-crl`` gives AMD's CRLs (the policy refuses a report without one
unless the release allows it); the AMD roots are the ones pinned in attest
(``attest.snp.roots``), whatever the guest's certificate table says.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from attest.appraisal import AppraisalResult
from attest.appraisal.snp import HostChips, guest_snp_layer
from attest.errors import ConfigError
from attest.manifest.model import VerifiedRegistry
from attest.snp.certs import UnverifiedCrl, load_certificates, load_crl
from attest.snp.roots import AMD_ARK_PINS
from attest.snp.verify import SnpVerifier
from attest.storage.files import read_bytes

MAX_INPUT = 1 << 20


def _crls(paths: list[Path]) -> list[UnverifiedCrl]:
    return [load_crl(read_bytes(p, max_size=MAX_INPUT)) for p in paths]


def snp_layer(
    args: argparse.Namespace,
    *,
    doc: dict[str, Any] | None,
    ak_public: bytes | None,
    node_id: str,
    nonce: bytes,
    registry: VerifiedRegistry | None,
    now: datetime,
    host_chips: HostChips | None = None,
    peer_binding: bytes | None = None,
) -> AppraisalResult | None:
    """The guest-snp layer, or None when there is none (``--snp off``, or ``auto`` and the
    guest sent no report). ``doc``: the guest's evidence (None: not gathered -- the guest
    layer says why, and an SNP layer adds nothing then). ``host_chips``: the guest has no
    vTPM (``--no-guest-vtpm``; ``attest.appraisal.snp.guest_snp_layer``). Raises
    ``ConfigError`` and the format errors of the verifier's own files (CRLs, AMD
    certificates)."""
    if args.snp == "off" and host_chips is None:
        return None
    amd: list[Any] = []
    for path in args.snp_amd_cert:
        amd += load_certificates(read_bytes(path, max_size=MAX_INPUT))
    if args.snp_release is not None and registry is None:
        raise ConfigError("--snp-release needs the guest's registry", key="--snp-release")
    return guest_snp_layer(
        doc,
        require=args.snp == "require",
        node_id=node_id,
        nonce=nonce,
        ak_public=ak_public,
        verifier=SnpVerifier(pins=AMD_ARK_PINS, amd_certs=amd),
        registry=registry,
        crls=_crls(args.snp_crl),
        release=args.snp_release,
        platform=args.platform,
        now=now,
        host_chips=host_chips,
        peer_binding=peer_binding,
    )
