"""What every ``attest`` sub-command shares: exit codes, the one error line, JSON output.

A leaf module: it imports only ``attest.errors``, so each sub-command module can import it
without importing the parser (``attest.cli``) that imports the sub-commands.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from attest.errors import (
    AttestError,
    ConfigError,
    DatabaseUnavailable,
    EvidenceFormatError,
    TpmError,
    TransportError,
    UpgradeRefused,
    VerificationError,
)

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from attest.model import PcrSelection

# Exit codes (documented in the README's CLI reference).
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1  # evidence parsed but a check failed; the line names the check
EXIT_USAGE = 2  # bad arguments (argparse uses 2 as well)
EXIT_FORMAT = 3  # input does not parse
EXIT_TPM = 4  # the TPM or a peer could not be reached / failed
EXIT_REFUSED = 5  # a decision refused the request (e.g. the upgrade gate)
EXIT_IO = 6  # a file could not be read or written
EXIT_INTERNAL = 70  # a bug in attest (sysexits EX_SOFTWARE): one line, -vv shows the traceback
EXIT_PIPE = 141  # the reader of stdout went away (`| head`): quiet, as a tool stopped by SIGPIPE


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
    if isinstance(exc, DatabaseUnavailable):
        return EXIT_TPM, f"attest: the fleet's database is unreachable: {exc}"
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


def parse_now(text: str | None) -> datetime:
    """``--now``: an ISO 8601 time with a zone (``ConfigError`` otherwise); absent, now."""
    from datetime import UTC, datetime  # not at the top: most commands take no time

    if text is None:
        return datetime.now(UTC)
    try:
        now = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an ISO 8601 time", key="--now") from None
    if now.tzinfo is None:
        raise ConfigError(f"{text!r} has no time zone (e.g. append Z)", key="--now")
    try:  # year 1 at +01:00 is before datetime.min in UTC: every comparison would overflow
        now.astimezone(UTC)
    except OverflowError:
        raise ConfigError(f"{text!r} is out of range in UTC", key="--now") from None
    return now


def path_arg(text: str) -> Path:
    """``type=`` for a path argument as ``Path``, with pathlib imported only when the argument
    is given (the commands on the hot path take theirs as ``str``)."""
    from pathlib import Path

    return Path(text)


def count_arg(text: str) -> int:
    """``type=`` for a count or an offset: a whole number, 0 or more (argparse makes anything
    else a usage error, exit 2, before a socket or the TPM is touched)."""
    import argparse

    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def size_arg(text: str) -> int:
    """``type=`` for a size in bytes: a whole number over 0."""
    import argparse

    n = count_arg(text)
    if n == 0:
        raise argparse.ArgumentTypeError("a size must be over 0")
    return n


MAX_INPUT_FILE = 16 * 1024 * 1024  # as storage.files.DEFAULT_MAX_READ; a node serves 4 MiB logs


def pcr_selection_arg(text: str) -> PcrSelection:
    """``type=`` for a PCR selection (``sha256:0,1,2+sha1:7``): a usage error that says what is
    wrong with it (argparse alone says "invalid parse value"), the model loaded only when the
    argument is given."""
    import argparse

    from attest.model import PcrSelection

    try:
        return PcrSelection.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_file(path: str | os.PathLike[str], *, max_size: int = MAX_INPUT_FILE) -> bytes:
    """A whole input file, as ``storage.files.read_bytes`` reads it (the ``OSError`` names the
    file; over ``max_size`` bytes, e.g. /dev/zero, it is ``EFBIG``, not read whole), for the
    commands on the hot path that take paths as ``str`` so as not to import ``pathlib``."""
    with open(path, "rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise OSError(errno.EFBIG, f"file larger than {max_size} bytes", os.fspath(path))
    return data


def print_json(doc: Any) -> None:
    # One write: json.dump writes each of its chunks (every key, comma and indent) on its own,
    # a third of `fleet ls --json`'s time for 10,000 nodes.
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
