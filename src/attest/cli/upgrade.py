"""``attest upgrade stage | push | confirm | status | boot``: the upgrade gate (root).

``push URL IMAGE SNAPSHOT`` is the remote form of ``stage``: it uploads to a node's API
(``POST /v1/upgrades`` on its operator socket or mutual-TLS listener; ``attest.cli._push``)
and prints the gate's decision.

The gate is privileged work -- it writes the inactive slot and increments a TPM NV counter.
In production ``attestd-tpm`` owns the TPM and runs the gate: ``--broker-socket`` (its
operator socket, e.g. /run/attest/tpm-operator.sock) sends the commands there; ``stage``
first copies the image into the broker's spool directory (``--spool-dir``) unless it is
already in it (docs/upgrade.md, "Where the gate runs"). For development, without
``--broker-socket`` the gate runs in-process as root with the TPM at ``--tcti`` (the node
services -- runtime and audit logs -- are opened in ``--state-dir``, as the broker does).

``boot`` performs the boot-time slot selection with fallback of an unconfirmed slot; on a real
node the boot loader does that part (boot counting), and ``boot`` then only catches the NV
counter up.
"""

from __future__ import annotations

import argparse
import getpass
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attest.cli._common import EXIT_OK, EXIT_REFUSED, print_json, size_arg

DEFAULT_SLOTS_DIR = "/var/lib/attest/slots"
DEFAULT_TRUST_DIR = "/var/lib/attest/trust"
DEFAULT_STATE_DIR = "/var/lib/attest"
DEFAULT_SPOOL_DIR = "/var/lib/attest/spool"


def register(sub: Any) -> None:
    p = sub.add_parser("upgrade", help="stage, confirm and inspect A/B image upgrades")
    usub = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND")
    usub.required = True

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--broker-socket",
            metavar="PATH",
            help="production: attestd-tpm's operator socket, which runs the gate "
            "(e.g. /run/attest/tpm-operator.sock); the slot, trust, TPM and "
            "state options are then the broker's own",
        )
        q.add_argument(
            "--spool-dir",
            default=DEFAULT_SPOOL_DIR,
            help="with --broker-socket: the broker's spool directory (default %(default)s)",
        )
        q.add_argument(
            "--slots-dir",
            default=DEFAULT_SLOTS_DIR,
            help="slots and boot pointer (default %(default)s)",
        )
        q.add_argument(
            "--slot-device",
            action="append",
            default=[],
            metavar="SLOT=DEV",
            help="use a block device for a slot, e.g. b=/dev/vda3 (repeatable)",
        )
        q.add_argument(
            "--slot-capacity",
            type=size_arg,
            default=4 << 30,
            help="size of a file slot in bytes (default %(default)s)",
        )
        q.add_argument(
            "--trust-dir",
            default=DEFAULT_TRUST_DIR,
            help="trusted root.json / registry.json (default %(default)s)",
        )
        q.add_argument(
            "--state-dir",
            default=DEFAULT_STATE_DIR,
            help="runtime and audit logs (default %(default)s)",
        )
        q.add_argument(
            "--tcti",
            default=os.environ.get("ATTEST_TPM_TCTI", "device:/dev/tpmrm0"),
            help="TPM TCTI (default %(default)s)",
        )
        q.add_argument(
            "--nv-index",
            type=lambda s: int(s, 0),
            default=None,
            help="NV counter index (default 0x01000a77)",
        )
        q.add_argument("--json", action="store_true", help="JSON on stdout")

    s = usub.add_parser("stage", help="verify an image and write it to the inactive slot")
    s.add_argument("image")
    s.add_argument("--snapshot", required=True, help="the signed registry snapshot")
    s.add_argument("--root", action="append", default=[], help="a newer root (rotation)")
    s.add_argument("--hash-tree", help="its veritysetup hash tree, to name a corrupted block")
    s.add_argument("--version", dest="release", help="the release the image claims to be")
    s.add_argument("--now", help="ISO time instead of the clock (testing)")
    common(s)
    s.set_defaults(func=cmd_stage)
    from attest.cli._push import add_push_arguments

    push = usub.add_parser(
        "push",
        help="upload an image and its registry snapshot to a node's gate over its API",
        description="URL: the node's operator socket (a path or unix:PATH) or its mutual-TLS "
        "listener (https://node:7444 with --client-cert/--client-key). The node's gate "
        "verifies and stages the image (POST /v1/upgrades) and answers its decision.",
    )
    push.add_argument("url", metavar="URL")
    push.add_argument("image", type=Path, metavar="IMAGE")
    push.add_argument("snapshot", type=Path, metavar="SNAPSHOT", help="the signed registry.json")
    push.add_argument("--hash-tree", type=Path, help="its veritysetup hash tree")
    push.add_argument("--version", dest="release", help="the release the image claims to be")
    add_push_arguments(push, timeout=600.0)
    push.set_defaults(func=cmd_push)
    for name, func, text in (
        ("confirm", cmd_confirm, "commit the booted staged slot (after a good boot)"),
        ("status", cmd_status, "slots, versions, pending confirmation, NV counter"),
        ("boot", cmd_boot, "boot-time slot selection with fallback (the boot loader's job)"),
    ):
        q = usub.add_parser(name, help=text)
        common(q)
        q.set_defaults(func=func)


def _devices(args: argparse.Namespace) -> dict[str, str]:
    from attest.errors import ConfigError

    out: dict[str, str] = {}
    for item in args.slot_device:
        slot, sep, dev = item.partition("=")
        if not sep or slot not in ("a", "b") or not dev:
            raise ConfigError(f"{item!r} is not SLOT=DEVICE with SLOT a or b", key="slot-device")
        out[slot] = dev
    return out


class _Opened:
    def __init__(self, args: argparse.Namespace) -> None:
        from attest.node.broker.local import LocalNode
        from attest.node.tpm.esapi import EsapiTpm
        from attest.node.upgrade.slots import SlotStore
        from attest.node.upgrade.stager import DEFAULT_NV_INDEX, LocalGateNode, UpgradeGate

        self.node = LocalNode.open(EsapiTpm(args.tcti), args.state_dir)
        slots = SlotStore(args.slots_dir, devices=_devices(args), capacity=args.slot_capacity)
        self.gate = UpgradeGate(
            slots,
            LocalGateNode(self.node),
            args.trust_dir,
            nv_index=args.nv_index or DEFAULT_NV_INDEX,
        )

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.node.close()


def _actor() -> str:
    return (os.environ.get("SUDO_USER") or getpass.getuser())[:64]


def _broker(args: argparse.Namespace) -> Any:
    from attest.node.broker.client import STAGE_TIMEOUT, BrokerClient

    return BrokerClient(args.broker_socket, timeout=STAGE_TIMEOUT)


def _stage_via_broker(args: argparse.Namespace, offer: Any) -> dict[str, Any]:
    from attest.errors import ConfigError
    from attest.node.broker.client import stage_offer

    if args.now:
        raise ConfigError("the broker judges expiry by its own clock", key="now")
    doc: dict[str, Any] = stage_offer(args.broker_socket, args.spool_dir, offer).to_json()
    return doc


def cmd_stage(args: argparse.Namespace) -> int:
    from attest.errors import ConfigError, UpgradeRefused
    from attest.node.upgrade.stager import Offer, read_hash_tree
    from attest.node.upgrade.wire import MAX_SNAPSHOT
    from attest.storage.files import read_bytes

    try:
        now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        now.astimezone(UTC)  # OverflowError: year 1 at +01:00 is before datetime.min in UTC
    except (ValueError, OverflowError):
        raise ConfigError(f"{args.now!r} is not an ISO 8601 time in range", key="--now") from None
    offer = Offer(
        Path(args.image),
        read_bytes(args.snapshot, max_size=MAX_SNAPSHOT),
        roots=tuple(read_bytes(r, max_size=MAX_SNAPSHOT) for r in args.root),
        hash_tree=read_hash_tree(args.hash_tree) if args.hash_tree else None,
        version=args.release,
        actor=_actor(),
    )
    try:
        if args.broker_socket:
            doc = _stage_via_broker(args, offer)
        else:
            with _Opened(args) as o:
                doc = o.gate.stage(offer, now=now).to_json()
                doc["slot"] = o.gate.slots.load().pending
    except UpgradeRefused as exc:
        if args.json:
            print_json({"accepted": False, "reason": exc.reason, "message": str(exc)})
            return EXIT_REFUSED
        raise
    if args.json:
        print_json(doc)
    else:
        print(f"staged {doc['version']} in slot {doc['slot']} ({doc['reason']}): {doc['message']}")
        print("reboot into it, then run `attest upgrade confirm`")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    """``attest upgrade push URL IMAGE SNAPSHOT``: the body of ``POST /v1/upgrades``
    (snapshot, hash tree, then the image streamed from its file) and the gate's decision."""
    from attest.cli._push import answer, push
    from attest.node.upgrade.stager import read_hash_tree
    from attest.node.upgrade.wire import MAX_SNAPSHOT, UPGRADE_MEDIA_TYPE, upgrade_head
    from attest.storage.files import read_bytes

    snapshot = read_bytes(args.snapshot, max_size=MAX_SNAPSHOT)
    tree = read_hash_tree(args.hash_tree) if args.hash_tree else b""
    if not args.image.is_file():
        raise FileNotFoundError(2, "no such file", str(args.image))
    head = upgrade_head(snapshot, tree)
    params = {"version": args.release} if args.release else None
    status, doc = push(
        args, "/v1/upgrades", [head, args.image], media_type=UPGRADE_MEDIA_TYPE, params=params
    )
    return answer(
        args,
        status,
        doc,
        lambda d: (
            f"node staged {d['version']} in slot {d.get('slot')} ({d['reason']}): "
            f"{d['message']}\nreboot it into the slot, then run `attest upgrade confirm` there"
        ),
    )


def cmd_confirm(args: argparse.Namespace) -> int:
    if args.broker_socket:
        with _broker(args) as client:
            doc = client.upgrade_confirm(actor=_actor()).to_json()
        active, version = doc.get("active"), doc.get("version")
    else:
        with _Opened(args) as o:
            ptr = o.gate.confirm(actor=_actor())
        image = ptr.installed
        active, version = ptr.active, None if image is None else image.version
    if args.json:
        print_json({"active": active, "version": version})
    else:
        print(f"confirmed: slot {active} ({version}) is now the active slot")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    if args.broker_socket:
        with _broker(args) as client:
            doc = client.upgrade_status().to_json()
    else:
        with _Opened(args) as o:
            doc = o.gate.status()
    if args.json:
        print_json(doc)
        return EXIT_OK
    for slot in ("a", "b"):
        image = doc["slots"][slot]
        what = (
            "empty / being written"
            if image is None
            else f"{image['version']} (#{image['sequence']}, sha256 {image['sha256'][:16]}…)"
        )
        marks = [
            m
            for m, on in (
                ("active", doc["active"] == slot),
                ("pending", doc["pending"] == slot),
                ("booted", doc["booted"] == slot),
            )
            if on
        ]
        print(f"slot {slot}: {what} {' '.join(f'[{m}]' for m in marks)}")
    if doc["pending_confirmation"]:
        print("running an unconfirmed upgrade: `attest upgrade confirm` to commit it")
    elif doc["pending"]:
        print(f"staged in slot {doc['pending']}: reboot to try it ({doc['tries']} tries)")
    nv = doc["nv_counter"]
    value = "not defined yet" if nv["value"] is None else nv["value"]
    committed = nv["committed_sequence"]
    print(
        f"NV counter {nv['index']}: {value} "
        + ("(no release committed)" if committed is None else f"(committed release #{committed})")
    )
    return EXIT_OK


def cmd_boot(args: argparse.Namespace) -> int:
    if args.broker_socket:
        with _broker(args) as client:
            doc = client.upgrade_boot().to_json()
    else:
        with _Opened(args) as o:
            r = o.gate.boot()
        doc = {
            "slot": r.slot,
            "version": r.image.version,
            "fell_back": r.fell_back,
            "reason": r.reason,
        }
    if args.json:
        print_json(doc)
    else:
        print(
            f"boot slot {doc['slot']} ({doc['version']})"
            f"{' after fallback' if doc['fell_back'] else ''}: {doc['reason']}"
        )
    return EXIT_OK
