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
from typing import Any

from attest.cli._verify_args import add_arguments
from attest.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="appraise one node: enroll on first contact, then attest")
    add_arguments(p)
    p.set_defaults(func=cmd_verify)


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
    # The appraisal, the verifier's client and X.509 load here, after the usage checks: the
    # parser, --help and a usage error need none of them (~0.3 s of a process).
    from attest.cli import verify_saved
    from attest.cli._verify_common import (
        appraise_layer,
        load_ear_key,
        report,
        save_evidence,
        state_dir,
    )
    from attest.cli.verify_pair import cmd_verify_pair
    from attest.verifier.enrollments import EnrollmentStore

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
