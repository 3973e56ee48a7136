"""An enrollment as the fleet stores it (pure): one node's ``attest.enroll.Enrollment``, or a
host + guest pair's ``PairEnrollment``, each read back from its JSON, with the strengths' order
and the AK names the history records. ``attest.verifier.fleet.enrollment`` makes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attest.enroll import Enrollment, EnrollmentStrength

# The enrollment strengths, weakest first (attest.enroll.EnrollmentStrength).
STRENGTH_RANK = {
    EnrollmentStrength.TOFU.value: 0,
    EnrollmentStrength.ACTIVATED.value: 1,
    EnrollmentStrength.EK_CHAIN.value: 2,
}


@dataclass(frozen=True, slots=True)
class PairEnrollment:
    """Both layers' enrollments and the id the host knows the guest by. ``guest`` None: the
    guest has no vTPM (appraised by its SEV-SNP report alone), and ``guest_id`` is its node id."""

    host: Enrollment
    guest: Enrollment | None
    guest_id: str

    @property
    def node_id(self) -> str:
        return self.guest_id if self.guest is None else self.guest.node_id

    @property
    def strength(self) -> EnrollmentStrength:
        """The weaker layer's: a pair is trusted as far as its weaker enrollment reaches (a
        guest without a vTPM has no enrollment: the host's)."""
        h = self.host.strength
        if self.guest is None:
            return h
        g = self.guest.strength
        return h if STRENGTH_RANK[h.value] < STRENGTH_RANK[g.value] else g

    @property
    def ak_names(self) -> str:
        """The AK names (hex) as the history records them; a pair's: ``host/guest`` (``host/-``
        for a guest without a vTPM)."""
        guest = "-" if self.guest is None else self.guest.ak_name.hex()
        return f"{self.host.ak_name.hex()}/{guest}"

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": {
                "guest_id": self.guest_id,
                "host": self.host.to_json(),
                "guest": None if self.guest is None else self.guest.to_json(),
            }
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PairEnrollment:
        p = doc["pair"]
        guest = None if p["guest"] is None else Enrollment.from_json(p["guest"])
        return cls(Enrollment.from_json(p["host"]), guest, str(p["guest_id"]))


def enrollment_from_json(doc: Mapping[str, Any]) -> Enrollment | PairEnrollment:
    return PairEnrollment.from_json(doc) if "pair" in doc else Enrollment.from_json(doc)


def ak_names(e: Enrollment | PairEnrollment) -> str:
    return e.ak_names if isinstance(e, PairEnrollment) else e.ak_name.hex()
