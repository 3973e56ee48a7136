"""The ``attest`` command line: one parser, a sub-command module per capability.

Each ``attest.cli.<group>`` module exposes ``register(subparsers)`` and command functions that
take the parsed arguments and return an exit code. Errors are mapped here, once, to an exit code
and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from attest import __version__
from attest.errors import (
    AttestError,
    ConfigError,
    EvidenceFormatError,
    TpmError,
    TransportError,
    UpgradeRefused,
    VerificationError,
)

# Exit codes (documented in the README's CLI reference).
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1  # evidence parsed but a check failed; the line names the check
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_FORMAT = 3  # input does not parse
EXIT_TPM = 4  # the TPM or a peer could not be reached / failed
EXIT_REFUSED = 5  # a decision refused the request (e.g. the upgrade gate)
EXIT_IO = 6  # a file could not be read or written


def error_line(exc: BaseException) -> tuple[int, str]:
    """Map an error to (exit code, one line for stderr)."""
    if isinstance(exc, VerificationError):
        return EXIT_VERIFY_FAILED, f"attest: {exc.check} check failed: {exc}"
    if isinstance(exc, EvidenceFormatError):
        return EXIT_FORMAT, f"attest: malformed input: {exc}"
    if isinstance(exc, UpgradeRefused):
        return EXIT_REFUSED, f"attest: refused ({exc.reason}): {exc}"
    if isinstance(exc, TpmError):
        rc = f" (rc 0x{exc.rc:x})" if exc.rc else ""
        return EXIT_TPM, f"attest: TPM error{rc}: {exc}"
    if isinstance(exc, TransportError):
        return EXIT_TPM, f"attest: transport error: {exc}"
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, f"attest: configuration error: {exc}"
    if isinstance(exc, AttestError):
        return EXIT_VERIFY_FAILED, f"attest: {exc}"
    if isinstance(exc, OSError):
        name = f" {exc.filename}" if exc.filename else ""
        return EXIT_IO, f"attest: cannot access{name}: {exc.strerror or exc}"
    raise exc


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    from attest.cli import audit, demo, eventlog, fleet, manifest, quote, upgrade, verify, vtpm

    parser = argparse.ArgumentParser(
        prog="attest", description="Node-integrity attestation: evidence, appraisal, manifests."
    )
    parser.add_argument("--version", action="version", version=f"attest {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for module in (demo, verify, fleet, quote, eventlog, manifest, upgrade, vtpm, audit):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # tpm2-pytss reports every failed ESYS call on the "esys" logger; our errors say it once.
    logging.getLogger("esys").setLevel(logging.DEBUG if args.verbose >= 2 else logging.CRITICAL)
    try:
        rc: int = args.func(args)
        return rc
    except (AttestError, OSError) as exc:
        code, line = error_line(exc)
        print(line, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("attest: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())
