"""``attest vtpm``: the host's guest vTPMs (docs/host-guest.md), over ``attestd-tpm``'s operator
socket (root). The broker owns the created set and the runtime log; this command only asks.

    attest vtpm create --guest g1          manufacture g1's vTPM and vouch for it
    attest vtpm record --guest g1 --ek-public ek.pub
                                           vouch again (at every guest start / host boot);
                                           refused for a vTPM this host did not create, or when
                                           this boot already vouches another vTPM for g1
    attest vtpm ls                         the created set

Refusals exit with 5 (refused) and one line naming the reason; the broker logs them and records
a ``denied`` operator audit entry.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attest.cli._common import EXIT_OK, EXIT_REFUSED, print_json
from attest.errors import OperationNotAllowed
from attest.node.broker.client import DEFAULT_OPERATOR_SOCKET, BrokerClient
from attest.storage.files import read_bytes


def _guest(text: str) -> str:
    """``type=`` for ``--guest``: text the broker's request can carry (the broker applies its
    id rule); bytes that are not UTF-8 were a bug line (exit 70) when the request was encoded."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not UTF-8 text") from None
    return text


def register(sub: Any) -> None:
    p = sub.add_parser("vtpm", help="host side: create guest vTPMs and vouch for them")
    vs = p.add_subparsers(dest="vtpm_command", metavar="ACTION")
    vs.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--broker-socket",
            default=DEFAULT_OPERATOR_SOCKET,
            metavar="PATH",
            help="attestd-tpm's operator socket (default %(default)s)",
        )
        q.add_argument("--json", action="store_true")

    c = vs.add_parser("create", help="manufacture a guest's vTPM and vouch for it")
    c.add_argument(
        "--guest", required=True, metavar="ID", type=_guest, help="the guest's id on this host"
    )
    common(c)
    c.set_defaults(func=cmd_create)
    r = vs.add_parser("record", help="vouch for a guest's vTPM in this boot's runtime log")
    r.add_argument("--guest", required=True, metavar="ID", type=_guest)
    r.add_argument(
        "--ek-public",
        required=True,
        metavar="FILE",
        help="the vTPM's EK public area (TPM2B_PUBLIC or TPMT_PUBLIC, binary)",
    )
    common(r)
    r.set_defaults(func=cmd_record)
    ls = vs.add_parser("ls", help="the vTPMs this host created")
    common(ls)
    ls.set_defaults(func=cmd_ls)


def _refused(args: argparse.Namespace, exc: OperationNotAllowed) -> int:
    if args.json:
        print_json({"refused": True, "reason": str(exc)})
    else:
        print(f"attest: refused: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def _print_vouch(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    if args.json:
        print_json(doc)
        return
    how = "vouched in" if doc.get("recorded") else "already vouched in"
    print(
        f"guest {doc['guest_id']}: vTPM EK sha256 {doc['ek_sha256']} {how} runtime event "
        f"{doc['recnum']}; state {doc['state_dir']}"
    )


def cmd_create(args: argparse.Namespace) -> int:
    # manufacturing takes a few seconds (key generation, EK certificate)
    with BrokerClient(args.broker_socket, timeout=300.0) as client:
        try:
            doc = client.vtpm_create(args.guest).to_json()
        except OperationNotAllowed as exc:
            return _refused(args, exc)
    _print_vouch(args, doc)
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    ek = read_bytes(args.ek_public, max_size=4096)
    with BrokerClient(args.broker_socket) as client:
        try:
            doc = client.vtpm_record(args.guest, ek).to_json()
        except OperationNotAllowed as exc:
            return _refused(args, exc)
    _print_vouch(args, doc)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    with BrokerClient(args.broker_socket) as client:
        try:
            doc = {"vtpms": [v.to_json() for v in client.vtpm_list()]}
        except OperationNotAllowed as exc:
            return _refused(args, exc)
    if args.json:
        print_json(doc)
        return EXIT_OK
    for v in doc.get("vtpms", []):
        print(
            f"{v['guest_id']}\tEK sha256 {v['ek_sha256']}\tcreated {v['created_at']}\t"
            f"{v['state_dir']}"
        )
    return EXIT_OK
