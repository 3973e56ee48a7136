"""The fleet's scheduler (an adapter between the store, the node API and the appraisal).

One asyncio loop per worker process: it leases due nodes from the store (up to its free
concurrency), challenges each over a keep-alive connection with a fresh nonce, appraises the
evidence, and writes results back in batches (one transaction per ``batch`` results or per
``flush_interval``). Per node: the next challenge is due ``interval`` after this one, with
``jitter`` (a fraction, uniform) so the fleet does not beat in step; a node that does not
answer is retried with exponential backoff (``interval * 2**failures``, at most
``max_backoff``), marked ``unreachable`` after ``unreachable_after`` consecutive failures, and
is never dropped. A node whose answer was refused only because the answers being read at the
same time held the pool's memory budget (``ReadBudgetSpent``, attest.verifier.fleet.http) is
asked again after ``DEFER_DELAY`` seconds, its failures and verdict unchanged.

Each node's ``NodeMemory`` (``attest.appraisal``) is kept in this process between two of its
appraisals: the firmware event log is fetched once per boot, the runtime log from the next
record, and only what is new is checked (docs/fleet.md, "Incremental appraisal"). When the
evidence does not continue what is held (TPM reset, rotated log), the node is challenged again
at once for the whole logs. A node leased by another worker in between needs nothing special:
what is held stays a prefix of what its PCRs commit to.

The store calls run on two dedicated threads, off the event loop: one takes leases, the other
writes results (on PostgreSQL each has its own connection), so a batch commit never delays
the next lease. While the database is unreachable the loop keeps running: leases are retried
every ``DB_RETRY`` seconds (the store reconnects with backoff and logs once per outage), results
that cannot be written are dropped (their leases expire and the nodes fall due again), and
appraisals resume when the database answers.

Fail closed: with a trusted registry configured (``attest.verifier.fleet.trust``), a node is
appraised only while the registry is valid and fresh; otherwise its verdict is could-not-appraise
(``none``) with the registry's problem named, in the store, the EAR and the webhook -- and the
node is not challenged. Every appraisal is made under the service's ``VerifierRules`` (its
runtime PCR is the one quoted) and the node's stored ``Continuity``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from attest.appraisal import AppraisalResult, Appraised, unappraisable
from attest.appraisal.claims import Tier, Verdict
from attest.appraisal.ear import collateral, ear_claims, submod
from attest.appraisal.layers import GUEST, GUEST_SNP, HOST
from attest.appraisal.memory import Continuity, NodeMemory
from attest.appraisal.pair import PairResult, guest_evidence_of
from attest.appraisal.pair import guest_nonce as pair_guest_nonce
from attest.appraisal.pair import host_nonce as pair_host_nonce
from attest.appraisal.rules import DEFAULT_RULES, VerifierRules
from attest.enroll import Enrollment
from attest.errors import AttestError, DatabaseUnavailable, ReadBudgetSpent, TransportError
from attest.manifest import VerifiedRegistry
from attest.model import HashAlg, PcrSelection
from attest.tpmstruct import ClockInfo
from attest.verifier.fleet.appraiser import (
    Appraiser,
    continuity_of,
    continuity_text,
    pair_continuity_text,
    summarize,
)
from attest.verifier.fleet.config import DEFAULT_SELECTION
from attest.verifier.fleet.enrolled import PairEnrollment, enrollment_from_json
from attest.verifier.fleet.http import HttpPool, Origin, Response
from attest.verifier.fleet.model import NodeStatus
from attest.verifier.fleet.outbox import OutboxEvent
from attest.verifier.fleet.pairs import (
    PairRound,
    SnpCollateral,
    pair_explanation,
    pair_layers,
    snp_only_pair,
    vtpm_pair,
)
from attest.verifier.fleet.signing import EarSigner
from attest.verifier.fleet.store import Leased, Outcome, Store
from attest.verifier.fleet.trust import NO_REGISTRY, RegistryState

logger = logging.getLogger(__name__)

DB_RETRY = 0.5  # seconds between lease attempts while the database is unreachable
DEFER_DELAY = 1.0  # seconds before a node whose answer was put off for the read budget
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class PollSettings:
    worker_id: str = "worker-1"
    interval: float = 10.0
    jitter: float = 0.1
    concurrency: int = 256
    timeout: float = 5.0
    max_backoff: float = 300.0
    unreachable_after: int = 2
    lease_ttl: float = 60.0
    # Leave a node another worker took last to it (that worker holds the node's logs;
    # PostgreSQL only) until it is overdue by ``affinity`` intervals and this worker has room to
    # spare, or by ``takeover`` intervals whatever the room: a dead or stalled worker's nodes
    # are taken over then; workers that are all behind keep to their own.
    affinity: float = 1.0
    takeover: float = 3.0
    batch: int = 500
    flush_interval: float = 0.25
    tick: float = 0.05
    selection: str = DEFAULT_SELECTION  # the rules' runtime PCR is added
    platform_id: str | None = None
    host_platform_id: str | None = None  # a pair's host layer (default: platform_id)

    def validate(self) -> PollSettings:
        if self.interval <= 0 or not 0 <= self.jitter < 1:
            raise ValueError("interval must be positive and jitter in [0, 1)")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError("concurrency and batch must be at least 1")
        if self.lease_ttl <= self.timeout * 2:
            raise ValueError("lease_ttl must exceed twice the timeout")
        PcrSelection.parse(self.selection)
        return self


@dataclass(frozen=True, slots=True)
class _Contact:
    """One challenge of one node (or pair layer): the appraisal, or why there is none."""

    nonce: bytes
    appraised: Appraised | None = None
    error: str = ""  # the node did not answer
    raised: AttestError | None = None  # the appraiser raised instead of returning a result
    deferred: bool = False  # not read whole for lack of the pool's budget: not the node's fault
    doc: Mapping[str, Any] | None = None  # the evidence answered (a pair's guest-snp layer)
    tls_binding: bytes | None = None  # the TLS key it came over (``_challenge`` only)


def _layer_result(c: _Contact, node_id: str, now: datetime) -> AppraisalResult:
    """A pair layer's appraisal, or could-not-appraise when the appraiser raised."""
    if c.appraised is not None:
        return c.appraised.result
    return unappraisable(node_id, f"appraisal failed: {c.raised}", nonce=c.nonce, now=now)


def _document(resp: Response) -> Mapping[str, Any]:
    """The evidence document of a ``POST /v1/evidence`` answer; ``TransportError`` for any
    other answer (not HTTP 200, not a JSON object)."""
    if resp.status != 200:
        raise TransportError(f"HTTP {resp.status}: {resp.body[:200]!r}")
    doc = resp.json()
    if not isinstance(doc, Mapping):
        raise TransportError("the evidence is not a JSON object")
    return doc


@dataclass
class PollMetrics:
    appraisals: int = 0
    failures: int = 0
    dropped: int = 0  # results whose lease was lost
    deferred: int = 0  # contacts put off for the pool's read budget (not failures)
    leased: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    appraise_seconds: float = 0.0  # time inside appraise(): the CPU part of an appraisal
    refetches: int = 0  # second challenges for the whole logs (TPM reset, rotated log)
    latencies: list[float] = field(default_factory=list)  # kept only when record_latencies

    def observe(self, seconds: float, keep: bool) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                break
        else:
            self.latency_buckets[-1] += 1
        self.latency_sum += seconds
        if keep:
            self.latencies.append(seconds)


class Poller:
    def __init__(
        self,
        store: Store,
        *,
        settings: PollSettings,
        appraise: Appraiser,
        registry: Callable[[], RegistryState] = lambda: NO_REGISTRY,
        on_change: Callable[[Outcome], None] | None = None,
        outbox: Callable[[Outcome], OutboxEvent] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        record_latencies: bool = False,
        signer: EarSigner | None = None,
        host_registry: Callable[[], RegistryState] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        rules: VerifierRules = DEFAULT_RULES,
        snp: SnpCollateral | None = None,
    ) -> None:
        """``ssl_context`` verifies the nodes' TLS certificates on https URLs (default: the
        system's CAs); the appraisal then binds each answer to the TLS key connected to.
        ``registry``: the trusted registry now (a problem makes every node could-not-appraise);
        ``rules``: the verifier's rules every appraisal is made under. ``outbox`` builds the
        webhook event of a verdict change (``webhooks.verdict_event``), stored in the webhook
        outbox in the transaction that stores the change; ``on_change`` is called after that
        transaction commits."""
        self.store = store
        self.signer = signer
        self.host_registry = host_registry or registry  # a pair's host layer
        self.settings = settings.validate()
        self.appraise = appraise
        self.registry = registry
        self.rules = rules
        self.snp = snp or SnpCollateral()  # a pair's guest-snp layer (pairs.SnpCollateral)
        self.on_change = on_change
        self.outbox = outbox
        self.clock = clock
        self.rng = rng or random.Random()
        self.record_latencies = record_latencies
        self.metrics = PollMetrics()
        self.pool = HttpPool(
            timeout=settings.timeout, max_idle=settings.concurrency, ssl_context=ssl_context
        )
        self._selection = self._select(PcrSelection.parse(settings.selection), rules.runtime_pcr)
        self._enrollments: dict[str, tuple[str, Enrollment | PairEnrollment]] = {}
        self._origins: dict[str, Origin] = {}
        self._pending: list[Outcome] = []
        self._inflight = 0
        self._min_lease = max(1, min(settings.batch, settings.concurrency // 4))
        self._slots = asyncio.Event()  # set when _min_lease slots are free
        self._memory: dict[str, NodeMemory] = {}
        # Per node: the stored continuity text last seen and what it parses to, so that an
        # unchanged continuity (the steady state) is neither parsed nor serialised again.
        self._continuity: dict[str, tuple[str, Continuity | None]] = {}
        # The EAR's collateral per (platform id, registry object): the registry's SHA-256 and
        # its platform reference's canonical SHA-256, ~80 µs for a 3 KB registry, which change
        # when the registry does, not per node. A pair's two layers may use two registries.
        self._collaterals: dict[
            tuple[str | None, int], tuple[VerifiedRegistry | None, dict[str, Any]]
        ] = {}
        self._lease_db = ThreadPoolExecutor(1, thread_name_prefix="fleet-lease")
        self._write_db = ThreadPoolExecutor(1, thread_name_prefix="fleet-write")

    # --- one node ---------------------------------------------------------------------------

    @staticmethod
    def _select(base: PcrSelection, runtime_pcr: int) -> tuple[PcrSelection, dict[str, list[int]]]:
        """The PCRs to quote: ``base`` and the rules' runtime PCR (never the enrollment's:
        the appraisal refuses an enrollment that recorded another)."""
        sel = base.as_dict()
        sha256 = set(sel.get(HashAlg.SHA256, ())) | {runtime_pcr}
        full = PcrSelection.of({**sel, HashAlg.SHA256: sorted(sha256)})
        return full, {alg.bank_name: list(idx) for alg, idx in full.banks}

    def _collateral(
        self, registry: VerifiedRegistry | None, platform_id: str | None
    ) -> dict[str, Any]:
        """``attest.appraisal.ear.collateral(registry, platform_id)``, computed once per
        registry object (a new snapshot is a new object) and platform id. Shared by the
        appraisals' EARs: read, never changed."""
        key = (platform_id, id(registry))
        hit = self._collaterals.get(key)
        if hit is not None and hit[0] is registry:  # the object itself: an id can be reused
            return hit[1]
        if len(self._collaterals) >= 8:  # registries replaced since: let them go
            self._collaterals.clear()
        found = collateral(registry, platform_id)
        self._collaterals[key] = (registry, found)
        return found

    def _enrollment(self, node: Leased) -> Enrollment | PairEnrollment | None:
        if node.enrollment_doc is None:
            return None
        cached = self._enrollments.get(node.node_id)
        if cached is None or cached[0] != node.enrollment_doc:
            cached = (node.enrollment_doc, enrollment_from_json(json.loads(node.enrollment_doc)))
            self._enrollments[node.node_id] = cached
            for key in (node.node_id, f"{node.node_id}\0host", f"{node.node_id}\0guest"):
                self._memory.pop(key, None)  # held logs belong to the old enrollment
        return cached[1]

    def _stored_continuity(self, node: Leased) -> Continuity | None:
        """The node's stored continuity, parsed once per stored text (``continuity_of``)."""
        text = node.continuity
        if not text:
            return None
        held = self._continuity.get(node.node_id)
        if held is not None and held[0] == text:
            return held[1]
        parsed = continuity_of(text)
        self._continuity[node.node_id] = (text, parsed)
        return parsed

    def _continuity_text(self, node: Leased, new: Continuity | None) -> str | None:
        """The text to store for ``new``: the stored text itself when nothing changed."""
        held = self._continuity.get(node.node_id)
        if new is not None and held is not None and held[0] == node.continuity and held[1] == new:
            return held[0]
        text = continuity_text(new)
        if text is not None:
            self._continuity[node.node_id] = (text, new)
        return text

    def _ear(
        self, submods: Mapping[str, Mapping[str, Any]], start: float, nonce: bytes | None
    ) -> dict[str, Any] | None:
        """The EAR claims of one attempt (``attest.appraisal.ear``; None without a signer). They are
        signed on the writer thread, just before the result is stored (``_complete``): the
        ECDSA signature runs there without the GIL, off the event loop."""
        if self.signer is None:
            return None
        now = datetime.fromtimestamp(start, UTC)
        return ear_claims(submods, now=now, nonce=nonce)

    def _complete(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Sign the outcomes' EARs, build the webhook events of verdict changes, then store
        them (on the writer thread)."""
        signer = self.signer
        if signer is not None:
            outcomes = [
                o
                if o.ear_claims is None
                else replace(o, ear=signer.sign(o.ear_claims), ear_claims=None)
                for o in outcomes
            ]
        events = self.outbox
        if events is not None:
            outcomes = [
                replace(o, event=events(o)) if o.verdict != o.previous_verdict else o
                for o in outcomes
            ]
        return self.store.complete(self.settings.worker_id, outcomes)

    def _next_due(self, now: float, delay: float) -> float:
        j = self.settings.jitter
        return now + delay * (1.0 + self.rng.uniform(-j, j))

    async def _one(self, node: Leased) -> None:
        start = self.clock()
        t0 = time.perf_counter()
        try:
            outcome = await self._attempt(node, start)
        except Exception as exc:  # a bug must not stop the fleet: report it on the node
            logger.exception("appraisal crashed", extra={"node_id": node.node_id})
            outcome = self._failed(node, start, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._inflight -= 1
            if self.settings.concurrency - self._inflight >= self._min_lease:
                self._slots.set()
        self.metrics.observe(time.perf_counter() - t0, self.record_latencies)
        if outcome.result is None:
            if outcome.failures > node.failures:  # a deferral is not the node's failure
                self.metrics.failures += 1
        else:
            self.metrics.appraisals += 1
            self.metrics.by_status[outcome.verdict] = (
                self.metrics.by_status.get(outcome.verdict, 0) + 1
            )
        self._pending.append(outcome)

    def _origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = Origin.parse(url)
        return origin

    async def _post_evidence(
        self, url: str, nonce: bytes, logs: Mapping[str, Mapping[str, int]]
    ) -> Response:
        """``POST /v1/evidence`` through the pool (its bounds: the timeout, the read budget):
        the challenge ``nonce`` over the poller's PCRs, the logs from where ``logs`` says.
        Raises ``TransportError`` (``ReadBudgetSpent``: put off, not the node's fault)."""
        _, pcrs = self._selection
        body = {"nonce": nonce.hex(), "pcrs": pcrs, "logs": dict(logs)}
        return await self.pool.request(self._origin(url), "POST", "/v1/evidence", body)

    async def _challenge(self, url: str, nonce: bytes) -> _Contact:
        """Challenge a layer with nothing enrolled to appraise it against (a pair's guest
        without a vTPM): its evidence document and the TLS key it came over, not appraised
        here (the pair appraises its SEV-SNP report), or why there is none -- the same pool,
        bounds and transport errors as ``_contact``."""
        try:
            resp = await self._post_evidence(url, nonce, {})
            doc = _document(resp)
        except TransportError as exc:
            return _Contact(nonce, error=str(exc), deferred=isinstance(exc, ReadBudgetSpent))
        return _Contact(nonce, doc=doc, tls_binding=resp.tls_binding)

    async def _contact(
        self,
        key: str,
        url: str,
        enrollment: Enrollment,
        *,
        start: float,
        previous: ClockInfo | None,
        registry: VerifiedRegistry | None,
        platform_id: str | None,
        continuity: Continuity | None,
        nonce: bytes | None = None,
    ) -> _Contact:
        """Challenge one node (or one layer of a pair: ``key`` names its memory) and appraise
        the answer incrementally. ``nonce``: the challenge to answer (a pair layer's, derived
        from the pair's challenge); a fresh one per request otherwise."""
        selection, _ = self._selection
        memory = self._memory.pop(key, None) or NodeMemory()
        now = datetime.fromtimestamp(start, UTC)
        # At most two challenges: the second, for the whole logs, when the node cannot continue
        # the held ones (HTTP 400: an offset past the end of a rotated log) or the evidence
        # does not continue them (Appraised.complete is False).
        while True:
            challenge = nonce or os.urandom(32)
            try:
                resp = await self._post_evidence(url, challenge, memory.log_request())
                if resp.status == 400 and memory.holds_logs:
                    self.metrics.refetches += 1
                    memory = memory.forget_logs()
                    continue
                doc = _document(resp)
            except TransportError as exc:
                self._memory[key] = memory
                return _Contact(
                    challenge, error=str(exc), deferred=isinstance(exc, ReadBudgetSpent)
                )
            c0 = time.perf_counter()
            try:
                appraised: Appraised = self.appraise(
                    doc,
                    memory=memory,
                    enrollment=enrollment,
                    nonce=challenge,
                    selection=selection,
                    registry=registry,
                    platform_id=platform_id,
                    previous=previous,
                    tls_binding=resp.tls_binding,
                    now=now,
                    rules=self.rules,
                    continuity=continuity,
                )
            except AttestError as exc:  # an appraisal that raises instead of returning a result
                self.metrics.appraise_seconds += time.perf_counter() - c0
                return _Contact(challenge, raised=exc, doc=doc)
            self.metrics.appraise_seconds += time.perf_counter() - c0
            if appraised.complete or not memory.holds_logs:
                break
            logger.info(
                "held logs do not continue: fetching them again",
                extra={"node_id": key, "reason": appraised.result.first_divergence},
            )
            self.metrics.refetches += 1
            memory = appraised.memory
        self._memory[key] = appraised.memory
        return _Contact(challenge, appraised, doc=doc)

    async def _attempt(self, node: Leased, start: float) -> Outcome:
        s = self.settings
        enrollment = self._enrollment(node)
        if enrollment is None:
            return self._outcome(
                node,
                start,
                NodeStatus.UNENROLLED,
                "the node is registered but not enrolled: no AK is trusted yet",
                result={},
            )
        if isinstance(enrollment, PairEnrollment):
            return await self._attempt_pair(node, enrollment, start)
        strength = enrollment.strength.value
        state = self.registry()
        if not state.ok:
            return self._not_appraised(node, start, str(state.problem), strength)
        c = await self._contact(
            node.node_id,
            node.url,
            enrollment,
            start=start,
            previous=node.clock,
            registry=state.registry,
            platform_id=s.platform_id,
            continuity=self._stored_continuity(node),
        )
        if c.raised is not None:
            exc = c.raised
            claims = self._ear(
                {
                    node.node_id: {
                        "ear.status": Tier.CONTRAINDICATED.label,
                        "ear.trustworthiness-vector": {},
                        "ear.appraisal-policy-id": self.rules.policy_id,
                        "attest.verdict": Verdict.CONTRAINDICATED.value,
                        "attest.enrollment": strength,
                        "attest.node.port-id": node.node_id,
                        "attest.explanation": {
                            "first_divergence": str(exc),
                            "explanations": [str(exc)],
                        },
                    }
                },
                start,
                c.nonce,
            )
            return self._outcome(
                node,
                start,
                NodeStatus.CONTRAINDICATED,
                str(exc),
                first_divergence=getattr(exc, "check", "appraisal"),
                result={"error": str(exc)},
                ear_claims=claims,
                enrollment=strength,
            )
        if c.appraised is None:
            return self._failed(node, start, c.error, strength, deferred=c.deferred)
        result = c.appraised.result
        summary = summarize(result)
        claims = self._ear(
            {
                node.node_id: {
                    **submod(result, self._collateral(state.registry, s.platform_id)),
                    "attest.node.port-id": result.node_id,
                }
            },
            start,
            c.nonce,
        )
        return self._outcome(
            node,
            start,
            summary.status,
            summary.explanation,
            first_divergence=summary.first_divergence,
            release=summary.release,
            clock=summary.clock,
            result=summary.doc,
            ear_claims=claims,
            continuity=self._continuity_text(node, result.continuity),
            enrollment=result.enrollment,
        )

    def _not_appraised(self, node: Leased, start: float, reason: str, strength: str) -> Outcome:
        """Could not appraise (no valid fresh registry): said on the node, its EAR and webhook;
        the node is not challenged, its continuity and clock stay as they are."""
        r = unappraisable(
            node.node_id,
            reason,
            nonce=b"",
            now=datetime.fromtimestamp(start, UTC),
            policy_id=self.rules.policy_id,
        )
        sm = {**submod(r), "attest.enrollment": strength, "attest.node.port-id": node.node_id}
        return self._outcome(
            node,
            start,
            NodeStatus.NONE,
            f"could not appraise: {reason}",
            first_divergence=reason,
            result={**r.to_json(), "enrollment": strength},
            ear_claims=self._ear({node.node_id: sm}, start, None),
            enrollment=strength,
        )

    async def _attempt_pair(self, node: Leased, pe: PairEnrollment, start: float) -> Outcome:
        """A host and its guest as one node (``attest.appraisal.pair``), as ``attest verify
        --host``: one challenge, the guest challenged first, then the host with a nonce
        committing to the challenge and the guest's evidence. A guest without a vTPM
        (``pe.guest`` None, as ``--no-guest-vtpm``) is challenged but has no appraisal of its
        own: its SEV-SNP report is its layer (``guest-snp``), vouched for by the host's chip."""
        s = self.settings
        if node.host_url is None:
            raise RuntimeError(f"pair {node.node_id} has no host URL")
        gname = GUEST if pe.guest is not None else GUEST_SNP
        host_state, guest_state = self.host_registry(), self.registry()
        for layer, state in ((HOST, host_state), (gname, guest_state)):
            if not state.ok:
                return self._not_appraised(
                    node, start, f"{layer} layer: {state.problem}", pe.strength.value
                )
        challenge = os.urandom(32)
        guest_nonce = pair_guest_nonce(challenge)
        # The guest first, then the host: the host's nonce commits to the guest's evidence as
        # received (attest.appraisal.pair.host_nonce), so the two are sequential.
        if pe.guest is None:
            guest_c = await self._challenge(node.url, guest_nonce)
        else:
            guest_c = await self._contact(
                f"{node.node_id}\0guest",
                node.url,
                pe.guest,
                start=start,
                previous=node.clock,
                registry=guest_state.registry,
                platform_id=s.platform_id,
                continuity=continuity_of(node.continuity, GUEST),
                nonce=guest_nonce,
            )

        def silent(layer: str, url: str, c: _Contact) -> Outcome | None:
            """A layer that does not answer: the pair does not (its host is then not asked)."""
            if c.appraised is not None or c.raised is not None or c.doc is not None:
                return None
            why = f"{layer} layer ({url}): {c.error}"
            return self._failed(node, start, why, pe.strength.value, deferred=c.deferred)

        if (failed := silent(gname, node.url, guest_c)) is not None:
            return failed
        digest = guest_evidence_of(guest_c.doc, vtpm=pe.guest is not None)
        host_nonce = pair_host_nonce(challenge, digest)
        host_c = await self._contact(
            f"{node.node_id}\0host",
            node.host_url,
            pe.host,
            start=start,
            previous=node.host_clock,
            registry=host_state.registry,
            platform_id=s.host_platform_id or s.platform_id,
            continuity=continuity_of(node.continuity, HOST),
            nonce=host_nonce,
        )
        if (failed := silent(HOST, node.host_url, host_c)) is not None:
            return failed
        now = datetime.fromtimestamp(start, UTC)
        r = PairRound(
            pe,
            challenge,
            digest,
            now,
            guest_state.registry,
            host_c.appraised,
            _layer_result(host_c, pe.host.node_id, now),
            guest_c.doc,
            guest_c.tls_binding,
        )
        platform = s.platform_id
        if pe.guest is None:
            pair = snp_only_pair(r, self.snp, platform=platform)
            return self._pair_outcome(node, start, r, pair, None, host_state, guest_state)
        guest_r = _layer_result(guest_c, pe.guest.node_id, now)
        pair = vtpm_pair(r, pe.guest, guest_r, self.snp, platform=platform)
        return self._pair_outcome(node, start, r, pair, guest_r, host_state, guest_state)

    def _pair_outcome(
        self,
        node: Leased,
        start: float,
        r: PairRound,
        pair: PairResult,
        guest_r: AppraisalResult | None,
        host_state: RegistryState,
        guest_state: RegistryState,
    ) -> Outcome:
        """The pair's verdict as the node's: stored, signed (submodules: the pair's layers,
        eat_nonce its challenge) and sent. A guest without a vTPM (``guest_r`` None) has no
        TPM clock and no continuity: the stored ones stay as they are."""
        s = self.settings
        status = NodeStatus.of_tier(pair.verdict.tier)
        # The pair's EAR is attest verify --host's: submods host and guest (host, guest-snp
        # and guest-vtpm for a confidential guest; host and guest-snp without a vTPM).
        found = {
            HOST: self._collateral(host_state.registry, s.host_platform_id or s.platform_id),
            pair.guest_name: self._collateral(guest_state.registry, s.platform_id),
        }
        claims = None if self.signer is None else pair.ear_claims(now=r.now, found=found)
        guest_clock = None if guest_r is None else guest_r.clock
        guest_continuity = None if guest_r is None else guest_r.continuity
        host_r = r.host_r
        return self._outcome(
            node,
            start,
            status,
            pair_explanation(pair),
            first_divergence=pair.first_divergence,
            release=summarize(pair.guest_result).release,
            clock=guest_clock or node.clock,
            result=pair.to_json(),
            layers=pair_layers(pair, node.host_url or "", node.url),
            host_clock=host_r.clock or node.host_clock,
            ear_claims=claims,
            continuity=pair_continuity_text(host_r.continuity, guest_continuity, node.continuity),
            enrollment=r.pe.strength.value,
        )

    def _outcome(
        self,
        node: Leased,
        start: float,
        verdict: NodeStatus,
        explanation: str,
        *,
        result: dict[str, Any],
        first_divergence: str | None = None,
        release: str | None = None,
        clock: ClockInfo | None = None,
        ear_claims: dict[str, Any] | None = None,
        enrollment: str | None = None,
        continuity: str | None = None,
        layers: dict[str, Any] | None = None,
        host_clock: ClockInfo | None = None,
    ) -> Outcome:
        """An attempt that ended in a verdict (not a node that did not answer): one more
        appraisal, no failures, due again one interval after ``start``."""
        return Outcome(
            node.node_id,
            node.token,
            start,
            verdict,
            explanation,
            first_divergence,
            release,
            clock,
            result,
            "",
            0,
            self._next_due(start, self.settings.interval),
            node.appraisals + 1,
            node.verdict,
            ear_claims=ear_claims,
            enrollment=enrollment,
            continuity=continuity,
            layers=layers,
            host_clock=host_clock,
        )

    def _failed(
        self,
        node: Leased,
        start: float,
        error: str,
        strength: str | None = None,
        *,
        deferred: bool = False,
    ) -> Outcome:
        s = self.settings
        if deferred:  # the pool's budget, not the node: soon again, nothing counted against it
            self.metrics.deferred += 1
            return Outcome(
                node.node_id,
                node.token,
                start,
                node.verdict,
                f"not read this round ({error}); asked again in {DEFER_DELAY:g} s",
                None,
                None,
                None,
                None,
                error,
                node.failures,
                self._next_due(start, min(s.interval, DEFER_DELAY)),
                node.appraisals,
                node.verdict,
                enrollment=strength,
            )
        failures = node.failures + 1
        delay = min(s.interval * (2 ** min(failures, 20)), s.max_backoff)
        unreachable = failures >= s.unreachable_after
        verdict = NodeStatus.UNREACHABLE if unreachable else node.verdict
        explanation = f"the node does not answer ({failures} attempts): {error}"
        logger.info(
            "node did not answer",
            extra={"node_id": node.node_id, "error": error, "failures": failures},
        )
        # Once the node is unreachable its latest EAR says so (status none); before that, the
        # last appraisal's EAR stands.
        claims = None
        if unreachable and self.signer is not None:
            r = unappraisable(
                node.node_id,
                explanation,
                nonce=b"",
                now=datetime.fromtimestamp(start, UTC),
                policy_id=self.rules.policy_id,
            )
            sm = {**submod(r), "attest.enrollment": strength, "attest.node.port-id": node.node_id}
            claims = self._ear({node.node_id: sm}, start, None)
        return Outcome(
            node.node_id,
            node.token,
            start,
            verdict,
            explanation,
            None,
            None,
            None,
            None,
            error,
            failures,
            self._next_due(start, delay),
            node.appraisals,
            node.verdict,
            ear_claims=claims,
            enrollment=strength,
        )

    # --- the loop ---------------------------------------------------------------------------

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        s = self.settings
        for i in range(0, len(batch), s.batch):
            part = batch[i : i + s.batch]
            done = await loop.run_in_executor(self._write_db, self._complete, part)
            self.metrics.dropped += len(part) - len(done)
            if self.on_change is not None:
                for o in done:
                    if o.verdict != o.previous_verdict:
                        self.on_change(o)

    async def _flush_logged(self) -> None:
        try:
            await self._flush()
        except DatabaseUnavailable:  # logged by the store once per outage
            logger.debug("results not written: the database is unreachable")
        except Exception:
            logger.exception("writing results failed; the leases will expire")

    def _lease(self, limit: int) -> list[Leased]:
        s = self.settings
        return self.store.lease(
            s.worker_id,
            now=self.clock(),
            limit=limit,
            ttl=s.lease_ttl,
            affinity=s.affinity * s.interval,
            takeover=s.takeover * s.interval,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; then finish the appraisals in flight and flush."""
        s = self.settings
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        last_flush = time.monotonic()
        flushing: asyncio.Task[None] | None = None
        try:
            last_lease = 0.0
            while not stop.is_set():
                free = s.concurrency - self._inflight
                want = min(free, s.batch)
                got: Sequence[Leased] = ()
                # Lease in batches: when a quarter of the slots are free (or a tick passed),
                # not for every slot that frees -- one round trip per batch, not per node.
                leasing = want >= self._min_lease or (
                    want > 0 and time.monotonic() - last_lease >= s.tick
                )
                if leasing:
                    last_lease = time.monotonic()
                    try:
                        got = await loop.run_in_executor(self._lease_db, self._lease, want)
                    except DatabaseUnavailable:  # logged by the store once per outage
                        got = ()
                        await asyncio.sleep(DB_RETRY)
                    except Exception:  # keep what we have, retry
                        logger.exception("lease failed")
                        got = ()
                        await asyncio.sleep(DB_RETRY)
                    self.metrics.leased += len(got)
                    for node in got:
                        self._inflight += 1
                        t = loop.create_task(self._one(node))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
                now = time.monotonic()
                if (
                    self._pending
                    and (flushing is None or flushing.done())
                    and (len(self._pending) >= s.batch or now - last_flush >= s.flush_interval)
                ):
                    # Written in the background: challenges go on while the batch commits.
                    last_flush = now
                    flushing = loop.create_task(self._flush_logged())
                if (leasing and len(got) < want) or not leasing:
                    # Nothing more is due (wait a tick), or too few slots are free (wait until
                    # enough are, at most a tick).
                    self._slots.clear()
                    waits = {asyncio.ensure_future(stop.wait())}
                    if not leasing:
                        waits.add(asyncio.ensure_future(self._slots.wait()))
                    _, pending = await asyncio.wait(
                        waits, timeout=s.tick, return_when=asyncio.FIRST_COMPLETED
                    )
                    for w in pending:
                        w.cancel()
                else:
                    await asyncio.sleep(0)
        finally:
            if tasks:
                await asyncio.wait(tasks, timeout=s.timeout + 1)
            if flushing is not None:
                await flushing
            await self._flush()
            self.pool.close()

    def close(self) -> None:
        self._lease_db.shutdown(wait=True)
        self._write_db.shutdown(wait=True)
