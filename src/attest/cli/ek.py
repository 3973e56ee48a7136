"""`attest ek verify CERT [--roots DIR] [--intermediates DIR] [--now T] [--json]`: verify one
EK certificate on its own -- PEM, DER, or the raw contents of a TPM NV index with its padding --
with the same code ``attest verify`` and the fleet run (``attest.enroll.verify_ek_certificate``
-> ``attest.ekcert``).

Exit 0: the chain, the TPM manufacturer/model/version from the subjectAltName, and every
tolerated deviation. Exit 1: a check failed; the line names it. Exit 3: not a certificate.
Without ``--roots`` the vendor CA store shipped with attest is used
(``attest.verifier.ek_roots.bundled_ek_roots``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from attest.cli._common import EXIT_OK, EXIT_VERIFY_FAILED, parse_now, print_json
from attest.ekcert.parse import MAX_INPUT_BYTES, parse_input
from attest.ekcert.verify import VerifiedChain, verify_ek_chain
from attest.errors import CertificateError
from attest.storage.files import read_bytes
from attest.verifier.ek_roots import CaStore, bundled_ek_roots, load_ca_dirs


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ek", help="verify TPM EK certificates against the vendors' CAs"
    )
    cmds = p.add_subparsers(dest="ek_cmd", metavar="COMMAND")
    cmds.required = True
    v = cmds.add_parser(
        "verify", help="verify one EK certificate (PEM, DER, or raw NV contents) to a root"
    )
    v.add_argument("cert", type=Path, help="the EK certificate")
    v.add_argument(
        "--roots",
        action="append",
        default=[],
        metavar="DIR",
        help="trust anchors: a directory or file of PEM/DER certificates (repeat; default: "
        "the vendor CA store shipped with attest)",
    )
    v.add_argument(
        "--intermediates",
        action="append",
        default=[],
        metavar="DIR",
        help="untrusted intermediate CAs for path building (repeat)",
    )
    v.add_argument("--now", help="verify at this time (ISO 8601 with a zone; default: now)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_verify)


def _store(args: argparse.Namespace) -> tuple[CaStore, str]:
    """The CAs, and which: the paths given, or the bundled store with its count."""
    if args.roots:
        store = load_ca_dirs(roots=args.roots, intermediates=args.intermediates)
        source = ", ".join(args.roots)
    else:
        store = bundled_ek_roots()
        source = (
            f"bundled vendor EK CA store ({len(store.roots)} roots, "
            f"{len(store.intermediates)} intermediates)"
        )
        if args.intermediates:
            store = store.merged(load_ca_dirs(roots=[], intermediates=args.intermediates))
    for err in store.errors:
        print(f"attest: warning: CA file not loaded: {err.path}: {err.error}", file=sys.stderr)
    return store, source


def _print(v: VerifiedChain) -> None:
    print(f"EK certificate verified at {v.verified_at.isoformat()}")
    ident = v.identity
    print(
        f"  TPM: manufacturer {ident.manufacturer or '-'}, model {ident.model or '-'}, "
        f"version {ident.version or '-'}"
    )
    print("  chain:")
    for i, c in enumerate(v.chain):
        role = "EK" if i == 0 else "root" if i == len(v.chain) - 1 else "CA"
        subject = c.subject.rfc4514_string() or "<empty subject>"
        print(f"    {i} {role:4} {subject}  sha256:{c.sha256.hex()[:16]}…")
    if v.deviations:
        print("  tolerated deviations:")
        for who, t in v.deviations:
            print(f"    {t.deviation.value}: {t.detail} (in {who})")
    else:
        print("  tolerated deviations: none")


def cmd_verify(args: argparse.Namespace) -> int:
    now = parse_now(args.now)
    leaf = parse_input(read_bytes(args.cert, max_size=MAX_INPUT_BYTES))  # exit 3 if not a cert
    store, source = _store(args)
    try:
        verified = verify_ek_chain(
            leaf, anchors=store.roots, intermediates=store.intermediates, now=now
        )
    except CertificateError as exc:
        if args.json:
            print_json(
                {"verified": False, "check": exc.reason, "error": str(exc), "ek_roots": source}
            )
        # with --json too: the error line goes to stderr, as every command's does
        print(
            f"attest: certificate check failed ({exc.reason}): {exc} (EK roots: {source})",
            file=sys.stderr,
        )
        return EXIT_VERIFY_FAILED
    if args.json:
        print_json({"verified": True, **verified.describe(), "ek_roots": source})
    else:
        _print(verified)
        print(f"  EK roots: {source}")
    return EXIT_OK
