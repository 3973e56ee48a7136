"""What ``attest verify`` shares between its modes (one node, a host and its guest, saved
evidence): exit codes, the adapters it needs, one layer's live contact (``appraise_layer``)
and the report of one node's result. The command itself is ``attest.cli.verify``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from attest import cmw
from attest.appraisal import (
    AppraisalResult,
    enrollment_refused,
    unappraisable,
)
from attest.appraisal.claims import Tier, Verdict
from attest.appraisal.layers import GUEST, HOST
from attest.appraisal.pair import (
    host_chips_of,
    vouchings_of,
)
from attest.appraisal.rules import DEFAULT_RULES, MAX_RULES_BYTES, VerifierRules, parse_rules
from attest.cli._common import EXIT_OK, print_json
from attest.cli._registry import load_registry
from attest.cli._verify_args import DEFAULT_STATE
from attest.enroll import Enrollment
from attest.errors import (
    AttestError,
    ConfigError,
    EnrollmentPolicyError,
    TransportError,
    VerificationError,
)
from attest.evidence import encode_members
from attest.manifest.model import VerifiedRegistry, format_time
from attest.runtime import VtpmVouch
from attest.verifier.client import NodeClient
from attest.verifier.enrollments import EnrollmentStore, NodeRecord

EXIT_AFFIRMING = EXIT_OK
EXIT_WARNING = 10
EXIT_CONTRAINDICATED = 11
EXIT_UNAPPRAISABLE = 12

EXIT_CODES = {
    Verdict.AFFIRMING: EXIT_AFFIRMING,
    Verdict.WARNING: EXIT_WARNING,
    Verdict.CONTRAINDICATED: EXIT_CONTRAINDICATED,
    Verdict.ALARM: EXIT_CONTRAINDICATED,
    Verdict.UNAPPRAISABLE: EXIT_UNAPPRAISABLE,
}

MAX_EAR_KEY_BYTES = 16 << 10  # a PEM P-256 private key is ~250 bytes
NO_REGISTRY_NOTE = (
    "no registry given (--trust-dir or --root/--snapshot): releases, dm-verity "
    "and expected PCRs are not appraised"
)


# --- adapters the command needs --------------------------------------------------------------


def _ek_cas(paths: Sequence[str]) -> Any:
    """The EK CAs given with ``--ek-ca`` (``bundled`` among them: the vendor store too), else
    the vendor CAs bundled with attest (``attest.verifier.ek_roots.verifier_ek_roots``)."""
    from attest.verifier.ek_roots import verifier_ek_roots

    return verifier_ek_roots(paths)


def load_rules(args: argparse.Namespace) -> VerifierRules:
    path = getattr(args, "policy", None)
    if path is None:
        return DEFAULT_RULES
    from attest.storage.files import read_bytes

    try:
        return parse_rules(read_bytes(path, max_size=MAX_RULES_BYTES))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", key="--policy") from None


def _enrollment_refusal(ns: argparse.Namespace, roots: Sequence[Any], activator: Any) -> str | None:
    """Why enrolling would be weaker than asked (fail closed), or None."""
    if getattr(ns, "tofu", False):
        return None
    if not roots:
        return (
            "enrollment fails closed: no EK CA verifies the node's TPM (give --ek-ca PEM|DIR, "
            "or --tofu to trust the AK on first use)"
        )
    if activator is None:
        return (
            "enrollment fails closed: credential activation needs an authenticated channel "
            "(--operator-socket, or --client-cert/--client-key), or --tofu"
        )
    return None


def load_ear_key(path: str | None) -> Any:
    if path is None:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from attest.storage.files import read_bytes

    try:
        key = load_pem_private_key(read_bytes(path, max_size=MAX_EAR_KEY_BYTES), None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key (the .pub.json of keygen is the "
            "public half)",
            key="--ear-key",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path}: the EAR key must be an EC P-256 private key", key="--ear-key")
    return key


def _check_url(url: str, key: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- ValueError: a port that is no number in 0-65535
    except ValueError:
        ok = False
    if ok and (parts.username is not None or parts.password is not None):
        # Never echoed: the verdict, its explanations and the logs would carry the password.
        raise ConfigError(
            "a node URL with a user or password is not taken (it would be shown in every "
            "verdict and log line): a node authenticates by TLS (--client-cert/--client-key)",
            key=key,
        )
    if not ok:
        raise ConfigError(f"{url[:200]!r} is not an http(s) URL of a node", key=key)


def _check_client_cert(cert: str, key: str) -> None:
    """The client certificate and key load (a usage error naming the files, not a TLS one)."""
    import ssl

    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        # ssl's error names no file: find the one that is missing
        missing = exc.filename or next((p for p in (cert, key) if not os.path.exists(p)), cert)
        raise ConfigError(f"{missing}: no such file", key="--client-cert") from None
    except (ssl.SSLError, OSError):
        raise ConfigError(
            f"{cert} and {key} are not a PEM certificate and its private key",
            key="--client-cert",
        ) from None


def clients(
    args: argparse.Namespace,
) -> contextlib.AbstractContextManager[tuple[NodeClient, NodeClient | None]]:
    from attest.verifier.contact import open_channels

    _check_url(args.url, "URL")
    cert = None
    if args.client_cert or args.client_key:
        if not (args.client_cert and args.client_key):
            raise ConfigError("give --client-cert and --client-key together", key="--client-key")
        cert = (args.client_cert, args.client_key)
        _check_client_cert(args.client_cert, args.client_key)
    activation_url = getattr(args, "activation_url", None)
    if activation_url and cert is None:
        raise ConfigError(
            "--activation-url needs --client-cert and --client-key", key="--activation-url"
        )
    return open_channels(
        args.url,
        tls_ca=args.tls_ca,
        operator_socket=args.operator_socket,
        client_cert=cert,
        activation_url=activation_url,
    )


def state_dir(args: argparse.Namespace) -> Path:
    """``--state``, else ``$ATTEST_VERIFIER_STATE``, else ``DEFAULT_STATE``."""
    state: Path | None = args.state
    return state or Path(os.environ.get("ATTEST_VERIFIER_STATE", DEFAULT_STATE)).expanduser()


def _enrolled_line(e: Enrollment, *, first: bool) -> str:
    how = "credential activation" if e.activated else "no activation"
    ek = f"EK certificate {e.ek_certificate}" if e.ek_certificate else "EK certificate not checked"
    what = "enrolled on first contact" if first else "RE-ENROLLED by operator action (--re-enroll)"
    return f"{what}: node {e.node_id}, AK {e.ak_name.hex()}; {ek}; {how}"


def _release_json(result: AppraisalResult) -> dict[str, str] | None:
    d = result.release
    if d is None or d.release is None:
        return None
    return {"version": d.release.version, "status": d.status.value}


def write_ear(args: argparse.Namespace, claims: dict[str, Any], ear_key: Any) -> str:
    """Sign the EAR claims in ``--format``, write them to ``--ear-out`` if given; the token's
    text for the JSON output (a CWT in base64url)."""
    from attest.appraisal.ear import sign_as

    fmt = getattr(args, "format", "jwt")
    data, text = sign_as(fmt, claims, ear_key)
    if args.ear_out:
        from attest.storage.files import atomic_write_bytes

        atomic_write_bytes(args.ear_out, data + b"\n" if fmt == "jwt" else data)
    return text


def report(
    args: argparse.Namespace,
    result: AppraisalResult,
    ear_key: Any,
    now: datetime,
    record: NodeRecord | None,
    notes: list[str],
    re_enrollment: dict[str, Any] | None,
    found: dict[str, Any] | None = None,
) -> int:
    from attest.appraisal.ear import result_claims

    token = None
    if ear_key is not None:
        token = write_ear(args, result_claims(result, now=now, found=found), ear_key)
    all_notes = [*notes, *result.notes]
    if token is None:
        all_notes.append("no --ear-key: the attestation result is not signed")
    code = EXIT_CODES[result.verdict]
    if args.json:
        print_json(
            {
                "address": args.url.rstrip("/"),
                "status": result.status,
                "verdict": result.verdict.value,
                "exit_code": code,
                "ear": token,
                "ear_format": getattr(args, "format", "jwt") if token else None,
                "claims": result.trustworthiness_vector,
                "explanation": result.first_divergence,
                "release": _release_json(result),
                "enrollment_strength": result.enrollment,
                "policy_id": result.policy_id,
                "result": result.to_json(),
                "enrollment": None if record is None else record.enrollment.to_json(),
                "re_enrollment": re_enrollment,
                "notes": all_notes,
            }
        )
        return code
    out = sys.stdout
    print(f"{result.node_id or args.url}: {result.verdict.value.upper()}", file=out)
    rel = _release_json(result)
    running = "not identified" if rel is None else f"{rel['version']} ({rel['status']})"
    strength = result.enrollment or "not enrolled"
    print(f"  release: {running}; enrollment: {strength}; policy: {result.policy_id}", file=out)
    if result.first_divergence:
        print(f"  first divergence: {result.first_divergence}", file=out)
    print_claims(result, out, indent="  ")
    for n in all_notes:
        print(f"  note: {n}", file=out)
    if token is not None and args.ear_out:
        print(f"  EAR written to {args.ear_out}", file=out)
    return code


# --- a host and its guest as one node (attest.appraisal.pair) ---


@dataclass
class Layer:
    """One layer's appraisal in a pair verification, and what the pair needs of it."""

    address: str
    result: AppraisalResult
    record: NodeRecord | None
    notes: list[str]
    re_enrollment: dict[str, Any] | None = None
    vouchings: tuple[VtpmVouch, ...] | None = None  # verified vtpm events (a host's)
    found: dict[str, Any] | None = None  # the collateral it used (attest.appraisal.ear)
    document: dict[str, Any] | None = None  # the evidence document appraised (--save-evidence)
    registry: VerifiedRegistry | None = None  # the verified registry it was appraised against
    chips: tuple[bytes, ...] | None = None  # verified snp-host events' chip ids (a host's)
    peer_binding: bytes | None = None  # SHA-256 of the TLS key the connection saw (live)


def host_args(args: argparse.Namespace) -> argparse.Namespace:
    """The host's options under the names the one-node helpers read."""
    return argparse.Namespace(
        url=args.host,
        ek_ca=args.host_ek_ca,
        operator_socket=args.host_operator_socket,
        client_cert=args.host_client_cert,
        client_key=args.host_client_key,
        activation_url=args.host_activation_url,
        tls_ca=args.host_tls_ca,
        trust_dir=args.host_trust_dir,
        root=args.host_root,
        snapshot=args.host_snapshot,
        platform=args.host_platform,
        pcrs=args.pcrs,
        re_enroll=args.re_enroll,
        tofu=args.tofu,
        policy=args.policy,
    )


def print_claims(result: AppraisalResult, out: TextIO, *, indent: str) -> None:
    """One line per claim that says something: value, tier and its worst finding."""
    for c in result.claims:
        if c.value == 0 and not c.findings:
            continue
        worst = max(c.findings, key=lambda f: (f.tier, f.value)) if c.findings else None
        why = worst.explanation if worst is not None else ""
        label = c.tier.label if c.tier is not Tier.NONE else "no claim"
        print(f"{indent}{c.claim.value:<18} {c.value:>3} {label:<16} {why}", file=out)


def appraise_layer(
    ns: argparse.Namespace, store: EnrollmentStore, *, nonce: bytes, now: datetime
) -> Layer:
    """One node's contact (enroll on first contact, challenge, appraise) for ``cmd_verify``
    and for each layer of a pair, keeping the verified runtime log's ``vtpm`` events. Never
    raises for the node's faults."""
    from attest.verifier.contact import appraise_evidence, enroll, gather, selection_for

    address = ns.url.rstrip("/")
    notes: list[str] = []
    record = store.load(address)
    node_id = record.enrollment.node_id if record else ""
    try:
        registry = load_registry(ns, now)
    except (VerificationError, ConfigError) as exc:
        return Layer(
            address,
            unappraisable(node_id, f"no usable registry: {exc}", nonce=nonce, now=now),
            record,
            notes,
        )
    if registry is None:
        notes.append(NO_REGISTRY_NOTE)
    rules = load_rules(ns)
    enrolling = record is None or ns.re_enroll
    ek = _ek_cas(ns.ek_ca) if enrolling and (ns.ek_ca or not ns.tofu) else None
    roots, inter = (ek.roots, ek.intermediates) if ek is not None else ([], [])
    re_enrollment = None
    with clients(ns) as (client, operator):
        try:
            identity = client.identity()
            if record is None or ns.re_enroll:
                refusal = _enrollment_refusal(ns, roots, operator)
                try:
                    if refusal is not None:
                        raise EnrollmentPolicyError(refusal)
                    enrollment = enroll(
                        client,
                        now=now,
                        ek_roots=roots,
                        ek_intermediates=inter,
                        activator=operator,
                        runtime_pcr=rules.runtime_pcr,
                    )
                except VerificationError as exc:
                    against = f" (EK roots: {ek.source})" if ek is not None and roots else ""
                    result = enrollment_refused(
                        str(identity.get("node_id", ""))[:256],
                        f"{exc.check}: {exc}{against}",
                        nonce=nonce,
                        now=now,
                    )
                    return Layer(address, result, record, notes)
                if ek is not None:
                    notes.append(f"EK roots: {ek.source}")
                if record is None:
                    record = store.enroll(address, enrollment)
                    notes.append(_enrolled_line(enrollment, first=True))
                else:
                    record, re_enrollment = store.replace(address, enrollment, at=format_time(now))
                    notes.append(_enrolled_line(enrollment, first=False))
                if operator is None:
                    notes.append(
                        "enrolled WITHOUT credential activation (no --operator-socket "
                        "or client certificate): the AK is trusted on first use"
                    )
            selection = selection_for(rules.runtime_pcr, ns.pcrs)
            ev = gather(client, selection, nonce=nonce)
            audit: list[dict[str, Any]] | None = None
            if operator is not None:
                try:
                    entries = operator.audit(0).get("entries")
                    audit = entries if isinstance(entries, list) else None
                except TransportError as exc:
                    notes.append(f"audit log not fetched: {exc}")
        except TransportError as exc:
            node_id = record.enrollment.node_id if record else node_id
            result = unappraisable(node_id, f"node unreachable: {exc}", nonce=nonce, now=now)
            return Layer(address, result, record, notes, re_enrollment)
        except AttestError as exc:
            node_id = record.enrollment.node_id if record else node_id
            result = unappraisable(node_id, f"malformed answer: {exc}", nonce=nonce, now=now)
            return Layer(address, result, record, notes, re_enrollment)
    done = appraise_evidence(
        dataclasses.replace(ev, identity=identity, audit_entries=audit),
        enrollment=record.enrollment,
        registry=registry,
        platform_id=ns.platform,
        previous=record.last_clock,
        now=now,
        rules=rules,
        continuity=record.continuity,
    )
    result = done.result
    # memory.runtime is set only when the quote verified (our nonce, the enrolled AK) and the
    # runtime log replayed into its runtime PCR: only then are its vtpm events facts.
    rt = done.memory.runtime
    vouchings = None if rt is None else vouchings_of(rt.log.events)
    chips = None if rt is None else host_chips_of(rt.log.events)
    if result.verdict is not Verdict.ALARM:
        record = store.appraised(
            record,
            clock=result.clock,
            verdict=result.verdict.value,
            at=format_time(now),
            continuity=result.continuity,
        )
    from attest.appraisal.ear import collateral

    enrolled_against = [c.der for c in roots] if notes_enrolled(notes) else []
    found = collateral(registry, ns.platform, enrolled_against)
    return Layer(
        address, result, record, notes, re_enrollment, vouchings, found, ev.doc, registry, chips
    )


def notes_enrolled(notes: Sequence[str]) -> bool:
    """Whether this run enrolled the node (its EK certificate checked against the roots)."""
    return any(n.startswith(("enrolled on first contact", "RE-ENROLLED")) for n in notes)


def save_evidence(path: Path, layers: Mapping[str, Mapping[str, Any] | None], nonce: bytes) -> str:
    """Write the gathered evidence documents as a CMW record (one layer ``node``) or a
    host+guest collection; the note to print. Nothing is written when a layer has none."""
    from attest.storage.files import atomic_write_bytes

    docs = {name: doc for name, doc in layers.items() if doc is not None}
    if len(docs) != len(layers):
        missing = ", ".join(sorted(set(layers) - set(docs)))
        return f"evidence not saved to {path}: no evidence was gathered ({missing})"
    if set(docs) == {HOST, GUEST}:
        wrapped: cmw.Cmw = cmw.pair_collection(
            encode_members(docs[HOST]), encode_members(docs[GUEST])
        )
    else:
        (doc,) = docs.values()
        wrapped = cmw.evidence_record(encode_members(doc))
    atomic_write_bytes(path, cmw.encode_json(wrapped) + b"\n")
    return (
        f"evidence saved to {path} (CMW, {cmw.CMW_JSON}); it answers nonce {nonce.hex()} "
        f"(attest verify ... --evidence {path} --nonce {nonce.hex()})"
    )
