"""``attest registry push URL SNAPSHOT``: push a signed registry snapshot to a node, no image.

The node's upgrade gate runs its trust refresh on it (root rotation with ``--root``, threshold,
sequence and freeze, expiry), records the decision in its audit and runtime logs and, when
accepted, persists it as its trusted registry (``POST /v1/registry``, docs/api.md). URL forms,
progress and ``--json``: ``attest.cli._push``. Exit 0 accepted, 5 refused (the line names the
reason code, e.g. ``snapshot-rollback``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attest.cli._push import add_push_arguments, answer, push


def register(sub: Any) -> None:
    p = sub.add_parser("registry", help="push signed registry snapshots to nodes")
    rsub = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND")
    rsub.required = True
    q = rsub.add_parser(
        "push",
        help="send a signed registry snapshot to a node's upgrade gate (no image)",
        description="URL: the node's operator socket (a path or unix:PATH) or its mutual-TLS "
        "listener (https://node:7444 with --client-cert/--client-key).",
    )
    q.add_argument("url", metavar="URL")
    q.add_argument("snapshot", type=Path, metavar="SNAPSHOT", help="the signed registry.json")
    q.add_argument(
        "--root",
        type=Path,
        action="append",
        default=[],
        help="a newer root.json (key rotation), oldest first; repeatable",
    )
    add_push_arguments(q, timeout=60.0)
    q.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    from attest.manifest.parse import MAX_ROOT_BYTES
    from attest.node.upgrade.wire import (
        MAX_SNAPSHOT,
        REGISTRY_MEDIA_TYPE,
        REGISTRY_PATH,
        registry_push_body,
    )
    from attest.storage.files import read_bytes

    snapshot = read_bytes(args.snapshot, max_size=MAX_SNAPSHOT)
    roots = tuple(read_bytes(r, max_size=MAX_ROOT_BYTES) for r in args.root)
    status, doc = push(
        args, REGISTRY_PATH, [registry_push_body(snapshot, roots)], media_type=REGISTRY_MEDIA_TYPE
    )
    return answer(
        args,
        status,
        doc,
        lambda d: (
            f"node accepted registry #{d['previous_sequence']} -> #{d['sequence']} "
            f"({d['reason']}): {d['message']}"
        ),
    )
