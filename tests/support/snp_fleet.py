"""A confidential guest for the fleet tests: the fake AMD chip (``attest.testing.snp``), an
SEV-SNP guest whose reports that chip signs, a registry whose release 1.0.0 blesses the guest's
launch, and the fleet's SEV-SNP collateral (the chip's pinned roots, a fresh CRL)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from tests.support.manifest import NOW, World, release, snp_launch
from tests.support.poller import SIM_PLATFORMS
from tests.unit.snp.fakes import fake

from attest.manifest import VerifiedRegistry, verify_snapshot
from attest.manifest.model import ReleaseSnp
from attest.node.port import SnpGuestReport
from attest.node.snp_guest import FakeSnpGuest
from attest.snp.certs import load_crl
from attest.snp.report import Product
from attest.snp.reportdata import encode_report_data
from attest.snp.verify import SnpVerifier
from attest.testing.snp import FakeAmd, fake_guest_dir, make_crl
from attest.verifier.fleet.pairs import SnpCollateral
from attest.verifier.fleet.trust import RegistryState

BLESSED = b"\x5b" * 48  # the guest's launch measurement, blessed by release 1.0.0


@dataclass(frozen=True)
class SnpFleet:
    amd: FakeAmd
    guest: FakeSnpGuest
    verified: VerifiedRegistry
    collateral: SnpCollateral

    def state(self) -> RegistryState:
        return RegistryState(self.verified, configured=True)

    def root_hash(self, version: str) -> bytes:
        return self.verified.snapshot.releases[version].verity.root_hash


def snp_fleet(world: World, directory: Path) -> SnpFleet:
    """Releases 1.0.0 (with the guest's SEV-SNP launch) and 1.1.0 of ``world``; the guest's
    files in ``directory``."""
    amd = fake(Product.MILAN)
    guest = FakeSnpGuest.from_dir(fake_guest_dir(amd, directory, measurement=BLESSED))
    snap = world.snapshot(
        releases=[
            dataclasses.replace(
                release("1.0.0", 1),
                snp=ReleaseSnp(launches=(snp_launch("a", measurement=BLESSED),)),
            ),
            release("1.1.0", 2),
        ],
        platforms=SIM_PLATFORMS,
    )
    verified = verify_snapshot(world.root, world.registry_bytes(snap), now=NOW)
    now = dt.datetime.now(dt.UTC)
    crl = load_crl(make_crl(amd, this_update=now - dt.timedelta(hours=1)))
    collateral = SnpCollateral(verifier=SnpVerifier(pins=amd.pins), crls=(crl,))
    return SnpFleet(amd, guest, verified, collateral)


class StaleGuest:
    """An SEV-SNP guest that answers every request with the report of one earlier request
    (bound to another nonce; ``ak``: the vTPM AK it bound then, None without a vTPM)."""

    def __init__(self, guest: FakeSnpGuest, ak: bytes | None) -> None:
        data = encode_report_data(nonce=b"e" * 32, tls_spki=None, vtpm_ak=ak)
        self.old = guest.get_report(data)

    def get_report(self, report_data: bytes) -> SnpGuestReport:
        return self.old
