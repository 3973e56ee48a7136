"""``attest verify --host HOST_URL GUEST_URL``: a host and its guest VM as one node
(``attest.appraisal.pair``; docs/host-guest.md), live or from saved evidence
(``attest.cli.verify_saved``). A guest that sends an SEV-SNP report (docs/snp.md) adds
the layer ``guest-snp`` (``attest.cli.verify_snp``): the submodules are then ``host``,
``guest-snp`` and ``guest-vtpm``. With ``--no-guest-vtpm`` the guest has no vTPM: it is
neither enrolled nor quoted, its report is its only layer (``host`` and ``guest-snp``), and
the host vouches for it by its SEV-SNP chip."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from datetime import UTC, datetime
from typing import Any

from attest.appraisal import (
    unappraisable,
)
from attest.appraisal.ear import collateral
from attest.appraisal.layers import GUEST, GUEST_SNP, HOST
from attest.appraisal.pair import (
    GuestIdentity,
    appraise_pair,
    guest_evidence_of,
    guest_nonce,
    host_nonce,
)
from attest.appraisal.snp import HostChips
from attest.cli._common import print_json
from attest.cli._registry import load_registry
from attest.cli._verify_common import (
    EXIT_CODES,
    NO_REGISTRY_NOTE,
    Layer,
    appraise_layer,
    clients,
    host_args,
    load_ear_key,
    load_rules,
    print_claims,
    save_evidence,
    state_dir,
    write_ear,
)
from attest.cli.verify_snp import snp_layer
from attest.errors import AttestError, ConfigError, TransportError, VerificationError
from attest.evidence import evidence_node_id
from attest.verifier.enrollments import EnrollmentStore


def cmd_verify_pair(args: argparse.Namespace) -> int:
    """``attest verify --host HOST_URL GUEST_URL``: the guest first, then the host (its nonce
    committing to the guest's evidence, ``attest.appraisal.pair.host_nonce``)."""
    check_pair_arguments(args)
    now = datetime.now(UTC)
    store = EnrollmentStore(state_dir(args))
    ear_key = load_ear_key(args.ear_key)
    challenge = os.urandom(32)
    # The guest first: the host's nonce commits to the guest's evidence as received.
    if args.no_guest_vtpm:
        guest = gather_snp_only(args, nonce=guest_nonce(challenge), now=now)
    else:
        guest = appraise_layer(args, store, nonce=guest_nonce(challenge), now=now)
    digest = guest_evidence_of(guest.document, vtpm=not args.no_guest_vtpm)
    host = appraise_layer(host_args(args), store, nonce=host_nonce(challenge, digest), now=now)
    notes: list[str] = []
    if getattr(args, "save_evidence", None) is not None:
        layers = {HOST: host.document, GUEST: guest.document}
        notes.append(save_evidence(args.save_evidence, layers, challenge))
    return report_pair(args, host, guest, challenge, digest, ear_key, now, notes)


def check_pair_arguments(args: argparse.Namespace) -> None:
    """Usage errors of a pair verification (exit 2)."""
    if getattr(args, "no_guest_vtpm", False) and args.snp == "off":
        raise ConfigError(
            "--no-guest-vtpm appraises the guest by its SEV-SNP report: it cannot go with "
            "--snp off",
            key="--no-guest-vtpm",
        )


def _snp_only_layer(
    args: argparse.Namespace,
    doc: dict[str, Any] | None,
    *,
    nonce: bytes,
    now: datetime,
    reason: str | None = None,
    peer_binding: bytes | None = None,
) -> Layer:
    """The guest layer of a guest without a vTPM before the host is known: its document and
    registry (the SEV-SNP layer is appraised in ``report_pair``, with the host's chips), or
    why there is none (``reason``, or a registry that does not load: unappraisable)."""
    notes: list[str] = []
    registry = None
    try:
        registry = load_registry(args, now)
    except (VerificationError, ConfigError) as exc:
        doc, reason = None, f"no usable registry: {exc}"
    if registry is None and reason is None:
        notes.append(NO_REGISTRY_NOTE)
    node_id = (evidence_node_id(doc) or "")[:256] if doc is not None else ""
    why = reason or "the SEV-SNP layer is appraised with the host's"
    return Layer(
        args.url.rstrip("/"),
        unappraisable(node_id, why, nonce=nonce, now=now),
        None,
        notes,
        found=collateral(registry, None, []),
        document=doc,
        registry=registry,
        peer_binding=peer_binding,
    )


def gather_snp_only(args: argparse.Namespace, *, nonce: bytes, now: datetime) -> Layer:
    """Challenge a guest without a vTPM (``--no-guest-vtpm``): its SEV-SNP evidence document
    and the TLS key the connection saw. No enrollment: the report is its identity. Never
    raises for the guest's faults."""
    from attest.verifier.contact import selection_for

    rules = load_rules(args)
    channels = clients(args)  # usage errors (ConfigError) are the operator's, not the guest's
    try:
        with channels as (client, _operator):
            doc = client.evidence(nonce, selection_for(rules.runtime_pcr, args.pcrs))
            binding = client.peer_binding or b""
    except TransportError as exc:
        return _snp_only_layer(args, None, nonce=nonce, now=now, reason=f"node unreachable: {exc}")
    except AttestError as exc:
        return _snp_only_layer(args, None, nonce=nonce, now=now, reason=f"malformed answer: {exc}")
    return _snp_only_layer(args, doc, nonce=nonce, now=now, peer_binding=binding)


def snp_only_guest(args: argparse.Namespace, doc: dict[str, Any], *, now: datetime) -> Layer:
    """The guest layer of saved pair evidence whose guest has no vTPM (``verify_saved``):
    the TLS key bound is the one the document carries (no connection to compare with)."""
    return _snp_only_layer(args, doc, nonce=b"", now=now)


def report_pair_unappraisable(
    args: argparse.Namespace,
    store: EnrollmentStore,
    reason: str,
    challenge: bytes,
    ear_key: Any,
    now: datetime,
) -> int:
    """A pair with nothing to appraise (its saved evidence does not parse): both layers
    could not be appraised, for ``reason``."""
    layers = []
    nonces = (host_nonce(challenge, None), guest_nonce(challenge))
    for url, nonce in zip((args.host, args.url), nonces, strict=True):
        record = store.load(url.rstrip("/"))
        node_id = record.enrollment.node_id if record else ""
        result = unappraisable(node_id, reason, nonce=nonce, now=now)
        layers.append(Layer(url.rstrip("/"), result, record, []))
    return report_pair(args, layers[0], layers[1], challenge, None, ear_key, now, [])


def report_pair(
    args: argparse.Namespace,
    host: Layer,
    guest: Layer,
    challenge: bytes,
    guest_evidence: bytes | None,
    ear_key: Any,
    now: datetime,
    extra_notes: list[str],
) -> int:
    """The pair's verdict (``appraise_pair``) from its two appraised layers: EAR, output
    and exit code, for a live and an offline (``--evidence``) pair verification alike.
    ``guest_evidence``: the digest of the guest's document the host's nonce committed to
    (``attest.appraisal.pair.guest_evidence_of``)."""
    enrolled = guest.record.enrollment if guest.record is not None else None
    guest_id = args.guest_id or (enrolled.node_id if enrolled else guest.result.node_id)
    ident = GuestIdentity(guest_id, enrolled.ek_sha256 if enrolled else None)
    vtpm = not getattr(args, "no_guest_vtpm", False)
    chips = None if vtpm else HostChips(host.result.node_id or args.host, host.chips)
    snp = snp_layer(
        args,
        doc=guest.document,
        ak_public=enrolled.ak_public if enrolled else None,
        node_id=guest.result.node_id,
        nonce=guest_nonce(challenge),
        registry=guest.registry,
        now=now,
        host_chips=chips,
        peer_binding=guest.peer_binding,
    )
    if not vtpm and snp is None:  # nothing gathered: the guest layer says why
        snp = dataclasses.replace(guest.result, nonce=guest_nonce(challenge))
    pair = appraise_pair(
        host.result,
        guest.result if vtpm else None,
        host.vouchings,
        ident,
        challenge=challenge,
        guest_evidence=guest_evidence,
        snp=snp,
    )
    token = None
    gname = pair.guest_name
    if ear_key is not None:
        found = {HOST: host.found or {}, gname: guest.found or {}}
        token = write_ear(args, pair.ear_claims(now=now, found=found), ear_key)
    code = EXIT_CODES[pair.verdict]
    layers = {HOST: (host, pair.host), gname: (guest, pair.guest_result)}
    if pair.snp is not None and pair.guest is not None:
        layers = {HOST: layers[HOST], GUEST_SNP: (guest, pair.snp), gname: layers[gname]}
    notes = [*extra_notes]
    if token is None:
        notes.append("no --ear-key: the attestation result is not signed")
    if args.json:
        print_json(
            {
                "status": pair.status,
                "verdict": pair.verdict.value,
                "exit_code": code,
                "ear": token,
                "ear_format": getattr(args, "format", "jwt") if token else None,
                "failed_layer": pair.failed_layer,
                "explanation": pair.first_divergence,
                "vouch": pair.vouch.to_json(),
                "challenge": challenge.hex(),
                "notes": notes,
                "layers": {
                    name: {
                        "address": lay.address,
                        "node_id": r.node_id,
                        "status": r.status,
                        "verdict": r.verdict.value,
                        "claims": r.trustworthiness_vector,
                        "explanation": r.first_divergence,
                        "result": r.to_json(),
                        "enrollment": None
                        if lay.record is None
                        else lay.record.enrollment.to_json(),
                        "re_enrollment": lay.re_enrollment,
                        "notes": [*lay.notes, *r.notes],
                        "vouchings": None
                        if lay.vouchings is None
                        else [
                            {"guest_id": v.guest_id, "ek_sha256": v.ek_sha256.hex()}
                            for v in lay.vouchings
                        ],
                    }
                    for name, (lay, r) in layers.items()
                },
            }
        )
        return code
    out = sys.stdout
    print(
        f"{pair.host.node_id or args.host} + {pair.guest_result.node_id or args.url}: "
        f"{pair.verdict.value.upper()}",
        file=out,
    )
    if pair.first_divergence:
        print(f"  first divergence: {pair.first_divergence}", file=out)
    for name, (lay, r) in layers.items():
        print(f"  {name} {r.node_id or lay.address}: {r.verdict.value}", file=out)
        print_claims(r, out, indent="    ")
        for n in [*lay.notes, *r.notes]:
            print(f"    note: {n}", file=out)
    for n in notes:
        print(f"  note: {n}", file=out)
    if token is not None and args.ear_out:
        print(f"  EAR written to {args.ear_out}", file=out)
    return code
