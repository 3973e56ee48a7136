"""The options of ``attest verify`` (live, host and guest, SEV-SNP, saved evidence): the parser
alone, so that building it loads no appraisal (``attest verify --help`` and its usage errors).
The command is ``attest.cli.verify``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attest.cli._common import pcr_selection_arg
from attest.cli._registry import add_registry_arguments

DEFAULT_STATE = "~/.local/state/attest/verifier"


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
        type=pcr_selection_arg,
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
    add_saved_evidence_arguments(p)


def add_snp_arguments(h: Any) -> None:
    h.add_argument(
        "--no-guest-vtpm",
        action="store_true",
        help="the guest has no vTPM: appraise it by its SEV-SNP report alone, tied to the host "
        "by the chip the host's runtime log names (layers host and guest-snp; docs/snp.md)",
    )
    h.add_argument(
        "--snp",
        choices=["auto", "require", "off"],
        default="auto",
        help="the guest's SEV-SNP report (layer guest-snp): appraise it when sent (auto), "
        "require one, or ignore it (default %(default)s)",
    )
    h.add_argument(
        "--snp-crl",
        action="append",
        default=[],
        type=Path,
        metavar="CRL",
        help="an AMD CRL (DER or PEM, e.g. KDS crl for the product; repeatable)",
    )
    h.add_argument(
        "--snp-amd-cert",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="AMD certificates offered with every report (ARK, ASK; trusted only as far as "
        "they chain to a pinned ARK)",
    )
    h.add_argument(
        "--snp-release",
        metavar="VERSION",
        help="appraise the report under this release (default: the release whose blessed "
        "launch has its MEASUREMENT)",
    )


def add_saved_evidence_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("saved evidence (docs/cmw.md)")
    g.add_argument(
        "--evidence",
        type=Path,
        metavar="FILE",
        help="appraise this saved evidence offline (a CMW, JSON or CBOR, or the node's plain "
        "JSON answer) instead of contacting URL, which then only names the enrollment record "
        "in --state; needs --nonce",
    )
    g.add_argument(
        "--nonce",
        metavar="HEX",
        help="with --evidence: the challenge the evidence must answer (16-64 bytes; a pair's "
        "challenge with --host)",
    )
    g.add_argument(
        "--save-evidence",
        type=Path,
        metavar="FILE",
        help="write the evidence this contact gathered as a CMW (application/cmw+json; a "
        "host+guest collection with --host); the note names the nonce it answers",
    )
