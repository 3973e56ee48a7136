"""The ``attest`` command line: one parser, a sub-command module per capability.

Each ``attest.cli.<group>`` module exposes ``register(subparsers)`` and command functions that
take the parsed arguments and return an exit code. Only the module of the command being run is
imported (``COMMANDS`` names them), so ``attest quote verify`` loads neither the fleet service
nor the HTTP stack. Errors are mapped here, once, to an exit code and one clear line on stderr
(``attest.cli._common``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

from attest import __version__
from attest.cli._common import EXIT_INTERNAL, EXIT_PIPE, error_line
from attest.errors import AttestError

# name -> (module, one line of help); the order is the order of ``attest --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("attest.cli.demo", "run a node (swtpm + attestd) and attest it end to end"),
    "verify": ("attest.cli.verify", "appraise one node: enroll on first contact, then attest"),
    "fleet": ("attest.cli.fleet", "the fleet verifier service"),
    "ear": ("attest.cli.ear", "verify signed attestation results (EAR: JWT or CWT)"),
    "quote": ("attest.cli.quote", "take and verify TPM quotes"),
    "eventlog": ("attest.cli.eventlog", "parse, replay and explain TCG firmware event logs"),
    "manifest": ("attest.cli.manifest", "trust root, blessed registry: create, sign, verify, show"),
    "upgrade": ("attest.cli.upgrade", "stage, confirm and inspect A/B image upgrades"),
    "registry": ("attest.cli.registry", "push signed registry snapshots to nodes"),
    "node": ("attest.cli.node", "install the node's units, users and configuration"),
    "vtpm": ("attest.cli.vtpm", "host side: create guest vTPMs and vouch for them"),
    "audit": ("attest.cli.audit", "record, show and verify the operator audit log"),
    "ek": ("attest.cli.ek", "verify TPM EK certificates against the vendors' CAs"),
    "snp": ("attest.cli.snp", "verify AMD SEV-SNP reports, predict launch measurements"),
}

EPILOG = """exit codes:
  0  success (verify: affirming)
  1  a check failed; the error line names it
  2  usage or configuration error
  3  input does not parse
  4  the TPM or a peer could not be reached or failed
  5  a decision refused the request (e.g. the upgrade gate)
  6  a file could not be read or written
  10 verify: warning   11 verify: contraindicated   12 verify: could not appraise
  70 a bug in attest (one line; -vv shows the traceback)
"""


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is one), or None."""
    for word in argv:
        if word in COMMANDS:
            return word
        if not word.startswith("-"):
            return None
    return None


def _only_verbose_before(argv: Sequence[str], command: str) -> bool:
    """Whether every word before ``command`` is ``-v``/``-vv``/``--verbose``: then the top-level
    parser can only hand over to that command (no ``-h``, abbreviated or not, prints its help)."""
    for word in argv[: list(argv).index(command)]:
        if word != "--verbose" and not (len(word) > 1 and word == "-" + "v" * (len(word) - 1)):
            return False
    return True


@functools.cache
def _columns() -> int:
    """The terminal width as ``shutil.get_terminal_size().columns`` reports it ($COLUMNS, else
    the terminal of stdout, else 80), without importing shutil (and its compression modules)
    into every process: argparse builds a formatter for every parser with sub-commands."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )


class _RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose formatters take the width without importing shutil;
    sub-command parsers are of this class too (``add_subparsers`` passes it down)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with the full argument set of the command named in ``argv`` (if any) and a
    help line for every other command (none when only ``-v`` precedes the command: see below)."""
    parser = _Parser(
        prog="attest",
        description="Node-integrity attestation: evidence, appraisal, manifests.",
        epilog=EPILOG,
        formatter_class=_RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attest {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    chosen = _command_in(argv)
    # When the command is certain, the other commands' parsers could only serve the top-level
    # help, which is then never printed: building them costs more than the command's own work
    # (each argparse parser looks its messages up in gettext's catalogue directories).
    alone = chosen is not None and _only_verbose_before(argv, chosen)
    for name, (module, help_) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(sub)
        elif not alone:
            sub.add_parser(name, help=help_)
    return parser


def quiet_libraries(verbose: int, *, logs_nothing: bool = False) -> None:
    """A command's output is its documented lines: library logging (ours and the TSS C
    library's ``ERROR:esys:…`` lines for failures our errors report once) shows only with
    ``-v`` (info) or ``-vv`` (debug).

    ``logs_nothing``: the command (``set_defaults(logs_nothing=True)``) loads no module that
    logs, which tests/unit/test_cli_parser.py asserts; without ``-v`` it then skips importing
    and configuring ``logging`` (~10 ms of a ~100 ms process)."""
    if verbose < 2:
        # Read by libtss2 at its first log call; tpm2_pytss is imported later, lazily.
        os.environ.setdefault("TSS2_LOG", "all+NONE")
    if logs_nothing and not verbose and "logging" not in sys.modules:
        return
    import logging

    level = (logging.ERROR, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("esys").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose, logs_nothing=getattr(args, "logs_nothing", False))
    # A file name that is not UTF-8 (Python holds its bytes as surrogates) is echoed as those
    # bytes, as ls does: under a locale whose stdout is strict it was a UnicodeEncodeError.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        rc: int = args.func(args)
        return rc
    except BrokenPipeError as exc:
        if not _stdout_gone():
            code, line = error_line(exc)
            print(line, file=sys.stderr)
            return code
        return EXIT_PIPE
    except (AttestError, OSError) as exc:
        code, line = error_line(exc)
        print(line, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("attest: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- the one place every failure ends as one line
        if args.verbose >= 2:
            raise
        text = " ".join(str(exc).split())[:300]
        print(
            f"attest: unexpected error ({type(exc).__name__}): {text} -- a bug in attest; "
            "-vv shows where",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _stdout_gone() -> bool:
    """Whether the reader of stdout went away (``attest ... | head``: the pipe's write end
    reports an error); if so, stdout is pointed at /dev/null so that nothing fails again when
    Python flushes it at exit."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, 0)  # no events asked for: POLLERR and POLLHUP are always reported
        gone = any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor behind stdout
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def run() -> None:
    sys.exit(main())
