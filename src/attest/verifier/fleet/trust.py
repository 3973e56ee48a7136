"""The trusted registry the fleet appraises against (an adapter over the state directory that
``attest manifest verify --state DIR`` keeps).

The fleet fails closed, as ``attest verify`` does: with a ``--trust-dir`` every appraisal needs
a valid, fresh registry from it. A missing, unreadable, tampered or expired one is a
``RegistryState`` with a ``problem``; the poller then makes every node could-not-appraise with
that problem named (page, REST, metrics, webhooks, EAR) until a valid fresh registry is back.
The directory is re-read every ``refresh`` seconds; freshness is checked on every call, so a
registry that expires between two reads stops being used at once.

Without a ``--trust-dir`` there is no registry at all (``RegistryState()``): ``attest fleet
serve`` allows that only under the developer rule ``allow_unidentified_release``
(``attest.appraisal.rules``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from attest.errors import AttestError
from attest.manifest import VerifiedRegistry
from attest.manifest.trusted import TrustedState
from attest.storage.trusted_state import load_state
from attest.verifier.fleet.config import DEFAULT_REFRESH

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryState:
    """The registry to appraise against now. ``problem``: why there is none although one is
    required (``registry`` is then None and no node may be appraised)."""

    registry: VerifiedRegistry | None = None
    problem: str | None = None
    configured: bool = False  # a --trust-dir was given

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, object]:
        snap = None if self.registry is None else self.registry.snapshot
        return {
            "configured": self.configured,
            "ok": self.ok and self.registry is not None,
            "problem": self.problem,
            "sequence": None if snap is None else snap.sequence,
        }


NO_REGISTRY = RegistryState()


class RegistrySource:
    """``source()`` -> the ``RegistryState`` of ``trust_dir`` now (thread-safe: the poller,
    the API and the rollout watcher call it from their own threads)."""

    def __init__(
        self,
        trust_dir: str,
        *,
        refresh: float = DEFAULT_REFRESH,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.trust_dir = trust_dir
        self.refresh = refresh
        self.clock = clock
        self.now = now
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._state: TrustedState | None = None
        self._problem: str | None = None
        self._logged: str | None = ""  # the problem last logged ("": nothing logged yet)

    def _read(self) -> None:
        try:
            state = load_state(self.trust_dir)
        except (AttestError, OSError, ValueError) as exc:
            self._state, self._problem = None, f"unreadable ({type(exc).__name__}: {exc})"
            return
        if state is None:
            self._state, self._problem = None, "no trusted state (root.json) in the directory"
        else:
            self._state, self._problem = state, None

    def __call__(self) -> RegistryState:
        with self._lock:
            t = self.clock()
            if self._read_at is None or t - self._read_at >= self.refresh:
                self._read_at = t
                self._read()
            problem = self._problem
            registry = None
            if self._state is not None:
                try:
                    registry = self._state.check_fresh(now=self.now())
                except AttestError as exc:
                    problem = str(exc)
            if problem is not None:
                problem = f"no usable registry in {self.trust_dir}: {problem}"
            if problem != self._logged:  # each change once, not every call
                self._logged = problem
                if problem is None and registry is not None:
                    logger.warning(
                        "trusted registry #%d usable: appraising", registry.snapshot.sequence
                    )
                else:
                    logger.error("%s: every node is could-not-appraise", problem)
            return RegistryState(registry, problem, configured=True)
