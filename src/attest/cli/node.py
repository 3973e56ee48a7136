"""``attest node``: put a node's system files in place (docs/install.md).

    attest node install [--prefix /] [--bindir DIR] [--dry-run]
        the units of attestd and attestd-tpm (ExecStart= naming DIR's daemons, default: the
        scripts directory of this installation) in /usr/lib/systemd/system, the sysusers.d and
        tmpfiles.d files as /usr/lib/{sysusers,tmpfiles}.d/attest.conf, and
        /etc/attest/attestd.toml from the annotated example when it does not exist yet
    attest node uninstall [--prefix /] [--dry-run]
        remove those files, but the configuration (and never the node's state)

Prints one line per file: what was done (or, with --dry-run, what would be). It runs nothing
else: the next steps (systemd-sysusers, systemd-tmpfiles, systemctl) are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attest.cli._common import EXIT_OK
from attest.node.install import default_bindir, install, uninstall

NEXT_STEPS = """next:
  systemd-sysusers attest.conf            # users attest, attest-tpm; group attest
  systemd-tmpfiles --create attest.conf   # /var/lib/attest/{slots,trust,spool}
  systemctl daemon-reload
  $EDITOR /etc/attest/attestd.toml        # api.host, TLS (docs/install.md)
  systemctl enable --now attestd-tpm.service attestd.service"""


def register(sub: Any) -> None:
    p = sub.add_parser("node", help="install the node's units, users and configuration")
    ns = p.add_subparsers(dest="node_command", metavar="ACTION")
    ns.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--prefix",
            type=Path,
            default=Path("/"),
            help="root to install under (default %(default)s; a directory for packaging)",
        )
        q.add_argument(
            "--dry-run", action="store_true", help="print what would be done, change nothing"
        )

    i = ns.add_parser("install", help="units, sysusers.d, tmpfiles.d, /etc/attest/attestd.toml")
    common(i)
    i.add_argument(
        "--bindir",
        type=Path,
        default=default_bindir(),
        help="directory of attestd and attestd-tpm for the units' ExecStart= "
        "(default: this installation's, %(default)s)",
    )
    i.set_defaults(func=cmd_install)
    u = ns.add_parser("uninstall", help="remove what install wrote, but the configuration")
    common(u)
    u.set_defaults(func=cmd_uninstall)


def cmd_install(args: argparse.Namespace) -> int:
    steps = install(args.prefix, bindir=args.bindir, dry_run=args.dry_run)
    for step in steps:
        print(step.line(dry_run=args.dry_run))
    if args.prefix == Path("/") and not args.dry_run:
        print(NEXT_STEPS)
    return EXIT_OK


def cmd_uninstall(args: argparse.Namespace) -> int:
    for step in uninstall(args.prefix, dry_run=args.dry_run):
        print(step.line(dry_run=args.dry_run))
    return EXIT_OK
