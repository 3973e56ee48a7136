"""``attest verify URL``: enroll a node on first contact, appraise it on every contact, and
print a verdict with the first thing that diverged (and a signed EAR).

Exit codes (distinct from attest's 0-6): 0 affirming, 10 warning, 11 contraindicated (also an
identity alarm, and a refused enrollment), 12 could not appraise (node unreachable, malformed
evidence, no usable registry). docs/verify.md has the details.

``attest verify --host HOST_URL GUEST_URL`` appraises a host and its guest VM as one node
(``attest.appraisal.pair``; docs/host-guest.md): the host first, then the guest, whose AK is
accepted only
when the host vouched for its vTPM in a quote answering the same challenge. One EAR with the
submodules ``host`` and ``guest``; the exit code is the worse layer's.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.cli import verify_saved
from attest.cli._registry import add_registry_arguments
from attest.cli._verify_common import (
    DEFAULT_STATE,
    appraise_layer,
    load_ear_key,
    report,
    save_evidence,
    state_dir,
)
from attest.cli.verify_pair import cmd_verify_pair
from attest.cli.verify_snp import add_snp_arguments
from attest.errors import ConfigError
from attest.model import PcrSelection
from attest.verifier.enrollments import EnrollmentStore


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
        help="EK certificate CA (roots and intermediates; repeat); default: the vendor EK CA "
        "store bundled with attest (not with --tofu); given, they replace it -- "
        "'--ek-ca bundled' keeps it beside a private CA",
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
    verify_saved.add_arguments(p)


# --- the command -----------------------------------------------------------------------------


# Flags of a host and its guest (``--host``): without it they would be ignored unsaid.
_PAIR_ONLY = (
    "guest_id",
    "host_ek_ca",
    "host_operator_socket",
    "host_client_cert",
    "host_client_key",
    "host_activation_url",
    "host_tls_ca",
    "host_trust_dir",
    "host_root",
    "host_snapshot",
    "host_platform",
    "no_guest_vtpm",
    "snp_crl",
    "snp_amd_cert",
    "snp_release",
)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_combinations(args: argparse.Namespace) -> None:
    """Flags that contradict each other or go with one that is missing: a usage error (exit 2)
    naming them, before anything is read or contacted -- never a verdict about the node."""
    if not getattr(args, "host", None):
        given = [_flag(d) for d in _PAIR_ONLY if getattr(args, d, None)]
        if getattr(args, "snp", "auto") != "auto":
            given.append("--snp")
        if given:
            more = f" (as do {', '.join(given[1:])})" if len(given) > 1 else ""
            raise ConfigError(
                f"goes with --host HOST_URL: a host and its guest{more}", key=given[0]
            )
    elif getattr(args, "snp", "auto") == "off" and getattr(args, "snp_release", None):
        raise ConfigError("--snp-release appraises the SNP report: not with --snp off", key="--snp")
    for prefix in ("", "host_"):
        trust_dir = getattr(args, prefix + "trust_dir", None)
        root = getattr(args, prefix + "root", None)
        snapshot = getattr(args, prefix + "snapshot", None)
        if trust_dir is not None and (root is not None or snapshot is not None):
            raise ConfigError(
                f"give {_flag(prefix + 'trust_dir')} or {_flag(prefix + 'root')} with "
                f"{_flag(prefix + 'snapshot')}, not both",
                key=_flag(prefix + "trust_dir"),
            )
        if (root is None) != (snapshot is None):
            raise ConfigError(
                f"give {_flag(prefix + 'root')} and {_flag(prefix + 'snapshot')} together",
                key=_flag(prefix + ("snapshot" if root is not None else "root")),
            )


def cmd_verify(args: argparse.Namespace) -> int:
    check_combinations(args)
    if getattr(args, "evidence", None) is not None:
        return verify_saved.cmd_verify_saved(args)
    verify_saved.check_arguments(args)
    if getattr(args, "host", None):
        return cmd_verify_pair(args)
    now = datetime.now(UTC)  # taken once for the whole appraisal
    store = EnrollmentStore(state_dir(args))
    ear_key = load_ear_key(args.ear_key)
    nonce = os.urandom(32)
    layer = appraise_layer(args, store, nonce=nonce, now=now)
    notes = layer.notes
    if getattr(args, "save_evidence", None) is not None:
        notes = [*notes, save_evidence(args.save_evidence, {"node": layer.document}, nonce)]
    return report(
        args,
        layer.result,
        ear_key,
        now,
        layer.record,
        notes,
        layer.re_enrollment,
        layer.found,
    )
