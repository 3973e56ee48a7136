"""``attest verify URL``: enroll a node on first contact, appraise it on every contact, and
print a verdict with the first thing that diverged (and a signed EAR).

Exit codes (distinct from attest's 0-6): 0 affirming, 10 warning, 11 contraindicated (also an
identity alarm, and a refused enrollment), 12 could not appraise (node unreachable, malformed
evidence, no usable registry). docs/verify.md has the details.

``attest verify --host HOST_URL GUEST_URL`` appraises a host and its guest VM as one node
(``attest.appraisal.pair``; docs/host-guest.md): the host first, then the guest, whose AK is
accepted only
when the host vouched for its vTPM in a quote answering the same challenge. One EAR with the
submodules ``host`` and ``guest``; the exit code is the worse layer's. A guest that sends an
SEV-SNP report (docs/snp.md) adds the layer ``guest-snp`` (``attest.cli.verify_snp``): the
submodules are then ``host``, ``guest-snp`` and ``guest-vtpm``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from attest.appraisal import (
    AppraisalResult,
    enrollment_refused,
    unappraisable,
)
from attest.appraisal.claims import Tier, Verdict
from attest.appraisal.pair import (
    GUEST_SNP,
    HOST,
    GuestIdentity,
    appraise_pair,
    pair_nonces,
    vouchings_of,
)
from attest.appraisal.rules import DEFAULT_RULES, MAX_RULES_BYTES, VerifierRules, parse_rules
from attest.cli._common import EXIT_OK, print_json
from attest.cli._registry import add_registry_arguments, load_registry
from attest.cli.verify_snp import add_snp_arguments, snp_layer
from attest.enroll import Enrollment
from attest.errors import (
    AttestError,
    ConfigError,
    EnrollmentPolicyError,
    TransportError,
    VerificationError,
)
from attest.manifest.model import VerifiedRegistry, format_time
from attest.model import PcrSelection
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

DEFAULT_STATE = "~/.local/state/attest/verifier"


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="appraise one node: enroll on first contact, then attest")
    add_arguments(p)
    p.set_defaults(func=cmd_verify)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the node's API, e.g. https://node-7:8443 or http://127.0.0.1:P")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help=f"enrollment records (default {DEFAULT_STATE}, or $ATTEST_VERIFIER_STATE)",
    )
    p.add_argument(
        "--ek-ca",
        action="append",
        default=[],
        metavar="PEM",
        help="EK certificate CA (roots and intermediates; repeat)",
    )
    p.add_argument(
        "--tofu",
        action="store_true",
        help="enroll without an EK chain or credential activation (trust on first use); "
        "without it enrollment fails closed",
    )
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the verifier's rules (JSON or TOML: runtime_pcr, allow_unidentified_release, "
        "waive_platform; "
        "docs/verify.md); the EAR names them",
    )
    p.add_argument("--client-cert", help="client certificate for the node's mutual-TLS listener")
    p.add_argument("--client-key", help="its private key")
    p.add_argument(
        "--activation-url",
        metavar="URL",
        help="the node's mutual-TLS listener (default: URL; e.g. "
        "https://node-7:7444): credential activation and the audit log go "
        "there with --client-cert",
    )
    p.add_argument("--operator-socket", help="the node's operator Unix socket (activation, audit)")
    p.add_argument("--tls-ca", help="CA that signs the node's TLS certificate (https URLs)")
    add_registry_arguments(
        p, trust_dir_help="the verifier's trusted manifest state (attest manifest verify --state)"
    )
    p.add_argument(
        "--platform",
        help="the node's platform id in the registry (e.g. ovmf-q35): firmware PCRs 0-7 are "
        "appraised against its signed reference (none named: a warning, unless the policy "
        "has waive_platform)",
    )
    p.add_argument(
        "--pcrs",
        type=PcrSelection.parse,
        default=None,
        help="PCRs to quote besides the runtime PCR (default sha256:0-9,11,12,15)",
    )
    p.add_argument("--ear-key", help="P-256 private key (PEM) that signs the EAR")
    p.add_argument(
        "--ear-out", help="write the EAR to this file (a JWT and a newline, or the CWT's bytes)"
    )
    p.add_argument(
        "--format",
        choices=("jwt", "cwt"),
        default="jwt",
        help="the EAR's serialisation (draft-ietf-rats-ear): a JWT (default) or a CWT "
        "(COSE_Sign1, CBOR); --json prints a CWT in base64url",
    )
    p.add_argument(
        "--re-enroll",
        action="store_true",
        help="operator action: replace the enrolled AK/EK with what the node presents",
    )
    p.add_argument("--json", action="store_true")
    h = p.add_argument_group("host and guest (docs/host-guest.md): URL is then the guest's")
    h.add_argument(
        "--host", metavar="HOST_URL", help="appraise URL as the guest VM of this host, as one node"
    )
    h.add_argument("--guest-id", help="the guest's id on the host (default: its enrolled node id)")
    h.add_argument(
        "--host-ek-ca",
        action="append",
        default=[],
        metavar="PEM",
        help="the host TPM's EK certificate CAs (--ek-ca is then the guest's: the host's vTPM CA)",
    )
    h.add_argument("--host-operator-socket", help="the host's operator Unix socket")
    h.add_argument("--host-client-cert", help="client certificate for the host's mTLS listener")
    h.add_argument("--host-client-key", help="its private key")
    h.add_argument(
        "--host-activation-url",
        metavar="URL",
        help="the host's mutual-TLS listener (default: HOST_URL)",
    )
    h.add_argument("--host-tls-ca", help="CA that signs the host's TLS certificate")
    h.add_argument("--host-trust-dir", type=Path, help="trusted manifests for the host's images")
    h.add_argument("--host-root", type=Path, help="trust root for the host (with --host-snapshot)")
    h.add_argument("--host-snapshot", type=Path, help="registry snapshot for the host")
    h.add_argument(
        "--host-platform",
        help="the host's platform id (--platform: the guest's, i.e. the VM template)",
    )
    add_snp_arguments(h)


# --- adapters the command needs --------------------------------------------------------------


def _ek_cas(paths: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """The EK CAs given with ``--ek-ca``, else the vendor CAs bundled with attest."""
    if paths:
        from attest.verifier.contact import load_ek_cas

        return load_ek_cas(paths)
    from attest.verifier.ek_roots import bundled_ek_roots

    store = bundled_ek_roots()
    return list(store.roots), list(store.intermediates)


def _rules(args: argparse.Namespace) -> VerifierRules:
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


def _ear_key(path: str | None) -> Any:
    if path is None:
        return None
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(path).read_bytes(), None)
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
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{url[:200]!r} is not an http(s) URL of a node", key=key)


def _check_client_cert(cert: str, key: str) -> None:
    """The client certificate and key load (a usage error naming the files, not a TLS one)."""
    import ssl

    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: no such file", key="--client-cert") from None
    except (ssl.SSLError, OSError):
        raise ConfigError(
            f"{cert} and {key} are not a PEM certificate and its private key",
            key="--client-cert",
        ) from None


def _clients(
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


# --- the command -----------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    if getattr(args, "host", None):
        return cmd_verify_pair(args)
    now = datetime.now(UTC)  # taken once for the whole appraisal
    state_dir = (
        args.state or Path(os.environ.get("ATTEST_VERIFIER_STATE", DEFAULT_STATE)).expanduser()
    )
    store = EnrollmentStore(state_dir)
    ear_key = _ear_key(args.ear_key)
    layer = _appraise_layer(args, store, nonce=os.urandom(32), now=now)
    return _report(
        args,
        layer.result,
        ear_key,
        now,
        layer.record,
        layer.notes,
        layer.re_enrollment,
        layer.found,
    )


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


def _write_ear(args: argparse.Namespace, claims: dict[str, Any], ear_key: Any) -> str:
    """Sign the EAR claims in ``--format``, write them to ``--ear-out`` if given; the token's
    text for the JSON output (a CWT in base64url)."""
    from attest.appraisal.ear import sign_as

    fmt = getattr(args, "format", "jwt")
    data, text = sign_as(fmt, claims, ear_key)
    if args.ear_out:
        from attest.storage.files import atomic_write_bytes

        atomic_write_bytes(args.ear_out, data + b"\n" if fmt == "jwt" else data)
    return text


def _report(
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
        token = _write_ear(args, result_claims(result, now=now, found=found), ear_key)
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
    _print_claims(result, out, indent="  ")
    for n in all_notes:
        print(f"  note: {n}", file=out)
    if token is not None and args.ear_out:
        print(f"  EAR written to {args.ear_out}", file=out)
    return code


# --- a host and its guest as one node (attest.appraisal.pair) ---


@dataclass
class _Layer:
    """One layer's appraisal in a pair verification, and what the pair needs of it."""

    address: str
    result: AppraisalResult
    record: NodeRecord | None
    notes: list[str]
    re_enrollment: dict[str, Any] | None = None
    vouchings: tuple[VtpmVouch, ...] | None = None  # verified vtpm events (a host's)
    found: dict[str, Any] | None = None  # the collateral it used (attest.appraisal.ear)
    doc: dict[str, Any] | None = None  # the evidence document, when one was gathered
    registry: VerifiedRegistry | None = None


def _host_args(args: argparse.Namespace) -> argparse.Namespace:
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


def _print_claims(result: AppraisalResult, out: TextIO, *, indent: str) -> None:
    """One line per claim that says something: value, tier and its worst finding."""
    for c in result.claims:
        if c.value == 0 and not c.findings:
            continue
        worst = max(c.findings, key=lambda f: (f.tier, f.value)) if c.findings else None
        why = worst.explanation if worst is not None else ""
        label = c.tier.label if c.tier is not Tier.NONE else "no claim"
        print(f"{indent}{c.claim.value:<18} {c.value:>3} {label:<16} {why}", file=out)


def _appraise_layer(
    ns: argparse.Namespace, store: EnrollmentStore, *, nonce: bytes, now: datetime
) -> _Layer:
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
        return _Layer(
            address,
            unappraisable(node_id, f"no usable registry: {exc}", nonce=nonce, now=now),
            record,
            notes,
        )
    if registry is None:
        notes.append(
            "no registry given (--trust-dir or --root/--snapshot): releases, dm-verity "
            "and expected PCRs are not appraised"
        )
    rules = _rules(ns)
    roots, inter = _ek_cas(ns.ek_ca) if record is None or ns.re_enroll else ([], [])
    re_enrollment = None
    with _clients(ns) as (client, operator):
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
                        ek_roots=roots if ns.ek_ca or not ns.tofu else [],
                        ek_intermediates=inter,
                        activator=operator,
                        runtime_pcr=rules.runtime_pcr,
                    )
                except VerificationError as exc:
                    result = enrollment_refused(
                        str(identity.get("node_id", ""))[:256],
                        f"{exc.check}: {exc}",
                        nonce=nonce,
                        now=now,
                    )
                    return _Layer(address, result, record, notes)
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
            return _Layer(address, result, record, notes, re_enrollment)
        except AttestError as exc:
            node_id = record.enrollment.node_id if record else node_id
            result = unappraisable(node_id, f"malformed answer: {exc}", nonce=nonce, now=now)
            return _Layer(address, result, record, notes, re_enrollment)
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
    if result.verdict is not Verdict.ALARM:
        record = store.appraised(
            record,
            clock=result.clock,
            verdict=result.verdict.value,
            at=format_time(now),
            continuity=result.continuity,
        )
    from attest.appraisal.ear import collateral

    enrolled_against = (
        [c.der for c in roots] if (ns.ek_ca or not ns.tofu) and notes_enrolled(notes) else []
    )
    found = collateral(registry, ns.platform, enrolled_against)
    return _Layer(address, result, record, notes, re_enrollment, vouchings, found, ev.doc, registry)


def notes_enrolled(notes: Sequence[str]) -> bool:
    """Whether this run enrolled the node (its EK certificate checked against the roots)."""
    return any(n.startswith(("enrolled on first contact", "RE-ENROLLED")) for n in notes)


def cmd_verify_pair(args: argparse.Namespace) -> int:
    """``attest verify --host HOST_URL GUEST_URL``: the host first, then the guest."""
    now = datetime.now(UTC)
    state_dir = (
        args.state or Path(os.environ.get("ATTEST_VERIFIER_STATE", DEFAULT_STATE)).expanduser()
    )
    store = EnrollmentStore(state_dir)
    ear_key = _ear_key(args.ear_key)
    challenge = os.urandom(32)
    host_nonce, guest_nonce = pair_nonces(challenge)
    host = _appraise_layer(_host_args(args), store, nonce=host_nonce, now=now)
    guest = _appraise_layer(args, store, nonce=guest_nonce, now=now)
    enrolled = guest.record.enrollment if guest.record is not None else None
    guest_id = args.guest_id or (enrolled.node_id if enrolled else guest.result.node_id)
    ident = GuestIdentity(guest_id, enrolled.ek_sha256 if enrolled else None)
    snp = snp_layer(
        args,
        doc=guest.doc,
        ak_public=enrolled.ak_public if enrolled else None,
        node_id=guest.result.node_id,
        nonce=guest_nonce,
        registry=guest.registry,
        now=now,
    )
    pair = appraise_pair(
        host.result, guest.result, host.vouchings, ident, challenge=challenge, snp=snp
    )
    token = None
    gname = pair.guest_name
    if ear_key is not None:
        found = {HOST: host.found or {}, gname: guest.found or {}}
        token = _write_ear(args, pair.ear_claims(now=now, found=found), ear_key)
    code = EXIT_CODES[pair.verdict]
    layers = {HOST: (host, pair.host), gname: (guest, pair.guest)}
    if pair.snp is not None:
        layers = {HOST: layers[HOST], GUEST_SNP: (guest, pair.snp), gname: layers[gname]}
    notes = [] if token is not None else ["no --ear-key: the attestation result is not signed"]
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
        f"{pair.host.node_id or args.host} + {pair.guest.node_id or args.url}: "
        f"{pair.verdict.value.upper()}",
        file=out,
    )
    if pair.first_divergence:
        print(f"  first divergence: {pair.first_divergence}", file=out)
    for name, (lay, r) in layers.items():
        print(f"  {name} {r.node_id or lay.address}: {r.verdict.value}", file=out)
        _print_claims(r, out, indent="    ")
        for n in [*lay.notes, *r.notes]:
            print(f"    note: {n}", file=out)
    for n in notes:
        print(f"  note: {n}", file=out)
    if token is not None and args.ear_out:
        print(f"  EAR written to {args.ear_out}", file=out)
    return code
