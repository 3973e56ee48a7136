"""A signed guest registry blessing a fake SEV-SNP guest's launch, and a fresh CRL of the fake
ARK: the verifier options (``--root/--snapshot/--snp-crl``) the swtpm SNP pair tests pass."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from tests.support.appraisal import TEST_MANIFESTS, signer
from tests.support.manifest import FAR, release, sign_doc, snp_launch

from attest.manifest import edit
from attest.manifest.model import RegistrySnapshot, ReleaseSnp
from attest.testing.snp import FakeAmd, make_crl


def guest_registry_args(
    tmp_path: Path, amd: FakeAmd, measurement: bytes, *, version: str = "3.0.0"
) -> tuple[str, ...]:
    """--root/--snapshot (and --snp-crl) for the guest: release ``version`` blesses the launch
    ``measurement``; the CRL is ``amd``'s ARK's, fresh."""
    rel = dataclasses.replace(
        release(version, 1), snp=ReleaseSnp(launches=(snp_launch("a", measurement=measurement),))
    )
    snap = edit.checked(RegistrySnapshot(sequence=7, expires=FAR, releases={version: rel}))
    path = tmp_path / "guest-registry.json"
    path.write_bytes(sign_doc(snap.to_json(), [signer("releases-1"), signer("releases-2")]))
    now = dt.datetime.now(dt.UTC)
    crl = tmp_path / f"{amd.product.value.lower()}.crl"
    crl.write_bytes(make_crl(amd, this_update=now - dt.timedelta(hours=1)))
    return (
        "--root",
        str(TEST_MANIFESTS / "root.json"),
        "--snapshot",
        str(path),
        "--snp-crl",
        str(crl),
    )
