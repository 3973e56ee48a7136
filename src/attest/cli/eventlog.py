"""`attest eventlog show|replay|facts|diff FILE`: read firmware event logs offline."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import attest.eventlog as evlog  # describe, diff_logs, facts load on first use (replay: never)
from attest.cli._common import EXIT_OK, path_arg, print_json, read_file
from attest.eventlog import parse_event_log, replay_pcrs, replay_self
from attest.eventlog.parse import UnverifiedEventLog
from attest.model import HashAlg


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "eventlog", help="parse, replay and explain TCG firmware event logs"
    )
    cmds = p.add_subparsers(dest="eventlog_cmd", metavar="COMMAND")
    cmds.required = True

    show = cmds.add_parser("show", help="list events: PCR, type, decoded meaning, digest")
    show.add_argument("file", type=path_arg)  # printed in the header, as Path prints it
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)

    rep = cmds.add_parser("replay", help="replay the log into every bank it records")
    rep.add_argument("file", type=str)
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=cmd_replay, logs_nothing=True)

    fac = cmds.add_parser(
        "facts", help="Secure Boot, boot applications, command lines, dm-verity root hashes"
    )
    fac.add_argument("file", type=str)
    fac.add_argument("--json", action="store_true")
    fac.set_defaults(func=cmd_facts)

    dif = cmds.add_parser("diff", help="per PCR, the first event where two logs diverge")
    dif.add_argument("a", type=str)
    dif.add_argument("b", type=str)
    dif.add_argument("--json", action="store_true")
    dif.set_defaults(func=cmd_diff)


def _load(path: str | os.PathLike[str]) -> UnverifiedEventLog:
    return parse_event_log(read_file(path))


def _bank(alg: int) -> str:
    try:
        return HashAlg(alg).bank_name
    except ValueError:
        return f"0x{alg:04x}"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["kind"] = type(value).__name__
        return out
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def cmd_show(args: argparse.Namespace) -> int:
    log = _load(args.file)
    if args.json:
        print_json(
            {
                "format": log.format,
                "banks": [a.bank_name for a in log.banks],
                "startup_locality": log.startup_locality,
                "unknown_event_types": list(log.unknown_event_types),
                "malformed_events": list(log.malformed_events),
                "events": [
                    {
                        "index": e.index,
                        "pcr": e.pcr,
                        "type": e.type_name,
                        "type_value": e.type,
                        "digests": {_bank(a): d.hex() for a, d in e.digests.items()},
                        "meaning": evlog.describe(e),
                        "payload": _jsonable(e.payload),
                        "data": e.data.hex(),
                    }
                    for e in log.events
                ],
            }
        )
        return EXIT_OK
    pref = next((a for a in (HashAlg.SHA256, HashAlg.SHA1) if a in log.banks), None)
    print(f"# {args.file}: {log.format} log, banks {','.join(a.bank_name for a in log.banks)}")
    print(f"{'#':>4} {'PCR':>3}  {'TYPE':<34} {'DIGEST':<16}  MEANING")
    for e in log.events:
        d = e.digests.get(pref) if pref is not None else None
        digest = d.hex()[:16] if d else "-"
        print(f"{e.index:>4} {e.pcr:>3}  {e.type_name:<34} {digest:<16}  {evlog.describe(e)}")
    if log.unknown_event_types:
        print("unknown event types: " + ", ".join(f"0x{t:08x}" for t in log.unknown_event_types))
    if log.malformed_events:
        print("events with malformed data: " + ", ".join(map(str, log.malformed_events)))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    values = replay_pcrs(_load(args.file))
    if args.json:
        print_json(values.to_json())
        return EXIT_OK
    for bank, pcrs in values.to_json().items():
        print(f"{bank}:")
        for pcr, hexval in pcrs.items():
            print(f"  {int(pcr):>2}: {hexval}")
    return EXIT_OK


def cmd_facts(args: argparse.Namespace) -> int:
    verified = replay_self(_load(args.file))
    doc = evlog.facts(verified).to_json()
    if args.json:
        print_json(doc)
        return EXIT_OK
    print("UNVERIFIED: replayed against the log's own PCR values, not against a TPM quote")
    print(f"secure boot: {doc['secure_boot']}")
    for key in (
        "secure_boot_variables",
        "boot_applications",
        "kernel_cmdlines",
        "load_options_digests",
        "initrd_digests",
        "verity_root_hashes",
        "quirks",
        "untrusted_events",
        "anomalies",
    ):
        value = doc[key]
        if not value:
            continue
        print(f"{key}:")
        if isinstance(value, dict):
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif isinstance(value, list):
            for v in value:
                print(f"  - {v}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    divergences = evlog.diff_logs(_load(args.a), _load(args.b))
    if args.json:
        print_json([d.to_json() for d in divergences])
        return EXIT_OK
    if not divergences:
        print("the logs measure the same events")
    for d in divergences:
        print(d.explanation)
    return EXIT_OK
