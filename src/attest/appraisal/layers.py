"""The layer names of a host + guest pair's appraisal (pure): the keys of a pair's layers in
its result, its JSON, the fleet's store and pages (``attest.appraisal.pair``)."""

from __future__ import annotations

HOST = "host"
GUEST = "guest"
GUEST_SNP = "guest-snp"  # the guest's SEV-SNP report (attest.appraisal.snp)
GUEST_VTPM = "guest-vtpm"  # the guest layer's name when there is an SNP layer too
LAYERS = (HOST, GUEST, GUEST_SNP, GUEST_VTPM)  # every layer name a pair's JSON may hold
