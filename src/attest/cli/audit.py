"""``attest audit record | show | verify``: the operator audit log, through the broker.

``record`` talks to the broker's operator socket (root only); identities travel to the broker
in clear over that socket and are pseudonymised there, before anything is stored. For sshd,
add to ``/etc/pam.d/sshd`` (pam_exec sets PAM_TYPE, PAM_USER, PAM_RHOST, PAM_SERVICE,
PAM_TTY in the environment):

    session optional pam_exec.so quiet /usr/bin/attest audit record --from-pam

``optional`` keeps operators from being locked out when the broker is down (the failure is
logged by pam_exec); use ``required`` to refuse sessions that cannot be audited.
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Mapping
from typing import Any

from attest.cli._common import EXIT_OK, count_arg, print_json
from attest.node.broker.client import DEFAULT_OPERATOR_SOCKET, DEFAULT_SOCKET

# PAM_TYPE (pam_exec(8)) -> audit event.
PAM_EVENTS = {
    "open_session": "session-open",
    "close_session": "session-close",
    "auth": "auth",
    "account": "account",
    "password": "password-change",
}


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="record, show and verify the operator audit log")
    asub = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND")
    asub.required = True

    r = asub.add_parser("record", help="record operator access (from PAM or sshd hooks)")
    r.add_argument(
        "--from-pam",
        action="store_true",
        help="take the event from PAM_TYPE, PAM_USER, PAM_RHOST, PAM_SERVICE, PAM_TTY (pam_exec)",
    )
    r.add_argument("--event", help="login, logout, session-open, session-close, command, ...")
    r.add_argument("--user", help="the operator (pseudonymised by the broker, never stored)")
    r.add_argument("--source", help="remote host (pseudonymised)")
    r.add_argument("--service", help="e.g. sshd")
    r.add_argument("--session", help="session id, e.g. the TTY (pseudonymised)")
    r.add_argument("--result", choices=["success", "failure", "denied"])
    r.add_argument(
        "--socket",
        default=DEFAULT_OPERATOR_SOCKET,
        help="the broker's operator socket (default %(default)s)",
    )
    r.add_argument("--json", action="store_true", help="print the stored entry as JSON")
    r.set_defaults(func=cmd_record)

    s = asub.add_parser("show", help="print the (pseudonymised) audit log")
    s.add_argument(
        "--from", dest="start", type=count_arg, default=0, metavar="N", help="start at entry N"
    )
    s.add_argument("--json", action="store_true", help="JSON on stdout")
    s.add_argument("--socket", default=DEFAULT_SOCKET, help="broker socket (default %(default)s)")
    s.set_defaults(func=cmd_show)

    v = asub.add_parser("verify", help="verify the audit chain against the runtime PCR")
    v.add_argument("--socket", default=DEFAULT_SOCKET, help="broker socket (default %(default)s)")
    v.add_argument("--json", action="store_true", help="JSON on stdout")
    v.set_defaults(func=cmd_verify)


def event_from_pam(env: Mapping[str, str]) -> dict[str, str]:
    """The raw audit event pam_exec describes in ``env``."""
    from attest.errors import ConfigError

    pam_type = env.get("PAM_TYPE", "")
    if pam_type not in PAM_EVENTS:
        raise ConfigError(
            f"PAM_TYPE {pam_type[:32]!r} is not one of {', '.join(PAM_EVENTS)}", key="PAM_TYPE"
        )
    if not env.get("PAM_USER"):
        raise ConfigError("PAM_USER is not set", key="PAM_USER")
    event = {"event": PAM_EVENTS[pam_type], "user": env["PAM_USER"]}
    for var, field in (("PAM_RHOST", "source"), ("PAM_SERVICE", "service"), ("PAM_TTY", "session")):
        if env.get(var):
            event[field] = env[var]
    return event


def cmd_record(args: argparse.Namespace) -> int:
    from attest.errors import ConfigError
    from attest.node.broker.client import BrokerClient

    if args.from_pam:
        event = event_from_pam(os.environ)
    else:
        if not args.event or not args.user:
            raise ConfigError("--event and --user are required (or --from-pam)", key="event")
        event = {"event": args.event, "user": args.user}
        for field in ("source", "service", "session", "result"):
            value = getattr(args, field)
            if value:
                event[field] = value
    with BrokerClient(args.socket) as client:
        entry = client.audit_record(event)
    if args.json:
        print_json(dict(entry))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from attest.node.broker.client import BrokerClient

    with BrokerClient(args.socket) as client:
        entries = client.audit_log(args.start)
    if args.json:
        print_json([dict(e) for e in entries])
        return EXIT_OK
    for e in entries:
        extras = " ".join(
            f"{k}={e[k]}" for k in ("source", "service", "session", "result") if k in e
        )
        print(f"{e['seq']:>6} {e['time']} {e['event']:<14} {e['operator']} {extras}".rstrip())
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Quote the runtime PCR with a fresh nonce, verify the quote with the node's AK, replay the
    runtime log into it and check the audit chain against its anchors. The logs are read
    around the quote and the whole read is retried when an event arrived meanwhile."""
    from attest.audit import verify_audit_chain
    from attest.errors import AuditChainError, TransportError
    from attest.model import PcrSelection
    from attest.node.broker.client import BrokerClient
    from attest.quote import verify_quote
    from attest.runtime import DEFAULT_RUNTIME_PCR, AuditUnanchored, verify_runtime_log

    with BrokerClient(args.socket) as client:
        ident = client.identity()
        for _ in range(5):
            entries = client.audit_log()
            records = client.runtime_log()
            pcr = records[0].pcr if records else DEFAULT_RUNTIME_PCR
            nonce = secrets.token_bytes(32)
            q = client.quote(PcrSelection.of({b: [pcr] for b in ident.banks}), nonce)
            if client.runtime_log(len(records)) or len(client.audit_log(len(entries))):
                continue  # something was recorded while we read: read again
            break
        else:
            raise TransportError("the logs kept changing while reading them")
    verify_quote(q.attest, q.signature, ak=ident.ak, nonce=nonce, pcrs=q.pcrs)
    runtime = verify_runtime_log(records, q.pcrs, pcr=pcr)
    chain = verify_audit_chain(entries, runtime.audit_anchors)
    head = chain[-1].entry_hash.hex() if chain else None
    # Entries attestd-tpm found at start but had not anchored (written while it was stopped).
    late = [e.detail for e in runtime.events if isinstance(e.detail, AuditUnanchored)]
    forged = [u for u in late if u.clean_stop]
    if forged:
        raise AuditChainError(
            f"audit entries #{forged[0].first_seq}..#{forged[0].last_seq} were appended while "
            "attestd-tpm was stopped after closing the log cleanly: not written by attest"
        )
    if args.json:
        print_json(
            {
                "runtime_pcr": pcr,
                "runtime_events": len(runtime.events),
                "audit_entries": len(chain),
                "audit_head": head,
                "verified": True,
                "unanchored_at_start": [
                    {"first_seq": u.first_seq, "last_seq": u.last_seq, "clean_stop": False}
                    for u in late
                ],
            }
        )
        return EXIT_OK
    print(
        f"audit log verified against the quoted runtime PCR {pcr}: {len(chain)} entries, "
        f"{len(runtime.events)} runtime events, head {head or 'none'}"
    )
    for u in late:
        print(
            f"  note: entries #{u.first_seq}..#{u.last_seq} were anchored only when attestd-tpm "
            "started after an unclean stop (a crash between writing and anchoring, or written "
            "by someone else while it was down)"
        )
    return EXIT_OK
