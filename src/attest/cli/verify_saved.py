"""``attest verify URL --evidence FILE --nonce HEX``: appraise saved evidence offline, and
``--save-evidence FILE``: save what a live ``attest verify`` gathered (docs/cmw.md).

The offline appraisal is the live one without the contact: ``attest.verifier.contact.
appraise_evidence`` with the enrollment this verifier stored for URL (``--state``), the rules,
registry and platform of the options, the PCR selection of the rules and ``--pcrs``, and the
nonce the operator gives -- freshness is the verifier's: the file never says which challenge
it answers, and without ``--nonce`` the command refuses (a usage error, exit 2). Stateless: no
clock continuity against earlier contacts, no audit log, no TLS binding, and the enrollment
record is left as it is. Same output and exit codes as live verify (0, 10, 11, 12).

With ``--host HOST_URL`` the file is a host+guest collection and ``--nonce`` the pair's
challenge: the guest's nonce derives from it, the host's from it and the saved guest document
(``attest.appraisal.pair.host_nonce``), so a guest member swapped or tampered with no longer
fits the host's quote.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from attest import cmw
from attest.appraisal import unappraisable
from attest.appraisal.layers import GUEST, HOST
from attest.appraisal.pair import (
    guest_evidence_of,
    guest_nonce,
    host_chips_of,
    host_nonce,
    vouchings_of,
)
from attest.cli import _verify_common as common
from attest.cli import verify_pair
from attest.cli._registry import load_registry
from attest.errors import CmwFormatError, ConfigError, EvidenceFormatError, VerificationError
from attest.verifier.enrollments import EnrollmentStore

MIN_NONCE = 16  # bytes; attestd's API takes 16 to 64
MAX_NONCE = 64
OFFLINE_NOTE = (
    "offline appraisal of saved evidence ({form} from {file}): stateless -- no clock "
    "continuity against earlier contacts, no audit log, no TLS binding; the enrollment "
    "record is not updated"
)


def parse_nonce(args: argparse.Namespace) -> bytes:
    text = getattr(args, "nonce", None)
    if text is None:
        raise ConfigError(
            "--evidence needs --nonce HEX: the challenge the saved evidence must answer "
            "(freshness is the verifier's; the file cannot vouch for it)",
            key="--nonce",
        )
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise ConfigError("--nonce is not hex", key="--nonce") from None
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise ConfigError(
            f"--nonce is {len(nonce)} bytes, not {MIN_NONCE}-{MAX_NONCE}", key="--nonce"
        )
    return nonce


def _check_offline(args: argparse.Namespace) -> None:
    if args.nonce is not None and args.evidence is None:
        raise ConfigError("--nonce goes with --evidence (live verify draws its own)", key="--nonce")
    if args.evidence is None:
        return
    contact = {
        "--re-enroll": args.re_enroll,
        "--tofu": args.tofu,
        "--save-evidence": args.save_evidence,
        "--operator-socket": args.operator_socket,
        "--client-cert": args.client_cert,
        "--host-operator-socket": getattr(args, "host_operator_socket", None),
        "--host-client-cert": getattr(args, "host_client_cert", None),
    }
    named = [k for k, v in contact.items() if v]
    if named:
        raise ConfigError(
            f"--evidence appraises offline: {', '.join(named)} cannot be used without a live "
            "contact",
            key=named[0],
        )


def check_arguments(args: argparse.Namespace) -> None:
    """Usage errors of the saved-evidence options (exit 2), before anything is read."""
    _check_offline(args)
    if args.evidence is not None:
        parse_nonce(args)


# --- the offline appraisal ---------------------------------------------------------------------


def _read(args: argparse.Namespace) -> cmw.SavedEvidence:
    from attest.storage.files import read_bytes

    return cmw.read_saved_evidence(read_bytes(args.evidence, max_size=cmw.MAX_CMW_BYTES))


def cmd_verify_saved(args: argparse.Namespace) -> int:
    """``attest verify URL --evidence FILE --nonce HEX [--host HOST_URL]``."""
    check_arguments(args)
    nonce = parse_nonce(args)
    now = datetime.now(UTC)  # taken once for the whole appraisal
    store = EnrollmentStore(common.state_dir(args))
    ear_key = common.load_ear_key(args.ear_key)
    pair = bool(getattr(args, "host", None))
    try:
        saved = _read(args)
        if saved.is_pair != pair:
            raise CmwFormatError(
                "the file holds a host+guest pair: give --host HOST_URL"
                if saved.is_pair
                else "the file holds one node's evidence, not a host+guest pair (no --host)"
            )
        docs = {name: cmw.evidence_document(data) for name, data in saved.layers.items()}
    except EvidenceFormatError as exc:
        reason = f"malformed evidence file {args.evidence}: {exc}"
        if pair:
            return verify_pair.report_pair_unappraisable(args, store, reason, nonce, ear_key, now)
        record = store.load(args.url.rstrip("/"))
        node_id = record.enrollment.node_id if record else ""
        result = unappraisable(node_id, reason, nonce=nonce, now=now)
        return common.report(args, result, ear_key, now, record, [], None)
    note = OFFLINE_NOTE.format(form=saved.form, file=args.evidence)
    if not pair:
        layer = appraise_saved(args, store, docs["node"], nonce=nonce, now=now)
        return common.report(
            args, layer.result, ear_key, now, layer.record, [note, *layer.notes], None, layer.found
        )
    if getattr(args, "no_guest_vtpm", False):
        guest = verify_pair.snp_only_guest(args, docs[GUEST], now=now)
    else:
        guest = appraise_saved(args, store, docs[GUEST], nonce=guest_nonce(nonce), now=now)
    digest = guest_evidence_of(docs[GUEST], vtpm=not getattr(args, "no_guest_vtpm", False))
    committed = host_nonce(nonce, digest)
    host = appraise_saved(common.host_args(args), store, docs[HOST], nonce=committed, now=now)
    return verify_pair.report_pair(args, host, guest, nonce, digest, ear_key, now, [note])


def appraise_saved(
    ns: argparse.Namespace,
    store: EnrollmentStore,
    doc: dict[str, Any],
    *,
    nonce: bytes,
    now: datetime,
) -> common.Layer:
    """One layer of saved evidence through ``appraise_evidence`` (the path of live verify),
    against the enrollment stored for ``ns.url``: a ``verify.Layer``."""
    from attest.appraisal.ear import collateral
    from attest.verifier.contact import Evidence, appraise_evidence, selection_for

    address = ns.url.rstrip("/")
    record = store.load(address)
    notes: list[str] = []
    if record is None:
        reason = (
            f"{address} is not enrolled in this verifier's state: offline appraisal needs the "
            "enrollment of a live attest verify"
        )
        return common.Layer(address, unappraisable("", reason, nonce=nonce, now=now), None, notes)
    try:
        registry = load_registry(ns, now)
    except (VerificationError, ConfigError) as exc:
        result = unappraisable(
            record.enrollment.node_id, f"no usable registry: {exc}", nonce=nonce, now=now
        )
        return common.Layer(address, result, record, notes)
    if registry is None:
        notes.append(common.NO_REGISTRY_NOTE)
    rules = common.load_rules(ns)
    ev = Evidence(
        doc=doc,
        nonce=nonce,
        selection=selection_for(rules.runtime_pcr, ns.pcrs),
        tls_binding=None,
        identity=None,
        audit_entries=None,
    )
    done = appraise_evidence(
        ev,
        enrollment=record.enrollment,
        registry=registry,
        platform_id=ns.platform,
        previous=None,
        now=now,
        rules=rules,
        continuity=None,
    )
    rt = done.memory.runtime
    vouchings = None if rt is None else vouchings_of(rt.log.events)
    chips = None if rt is None else host_chips_of(rt.log.events)
    found = collateral(registry, ns.platform, [])
    return common.Layer(
        address, done.result, record, notes, None, vouchings, found, doc, registry, chips
    )
