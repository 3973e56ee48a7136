"""What ``attest registry push`` and ``attest upgrade push`` share: the node's URL (an
authenticated channel), the streamed upload with its progress line, and the node's answer read
as a decision (exit 0), a refusal (exit 5) or an error.

URL: the node's operator Unix socket (a path, or ``unix:PATH``), or its mutual-TLS listener
(``https://node:7444`` with ``--client-cert``/``--client-key``, ``--tls-ca`` for the node's
certificate). The public listener refuses pushes (403).

Progress: ``attest: uploading N / TOTAL bytes (P%)`` on stderr, redrawn in place -- by default
only when stderr is a terminal; ``--progress`` forces it (a line per 10 %), ``--no-progress``
silences it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from attest.cli._common import EXIT_OK, EXIT_REFUSED, print_json
from attest.errors import ConfigError, EvidenceFormatError, TransportError

CHUNK = 1 << 20
_REFUSALS = ("RegistryRefused", "UpgradeRefused")


def add_push_arguments(p: argparse.ArgumentParser, *, timeout: float) -> None:
    p.add_argument("--client-cert", help="client certificate for the node's mutual-TLS listener")
    p.add_argument("--client-key", help="its private key")
    p.add_argument("--tls-ca", help="CA that signs the node's TLS certificate (https URLs)")
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help="seconds for the whole request, upload and decision (default %(default)s)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="upload progress on stderr (default: only when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true", help="the node's decision as JSON on stdout")


def socket_path(url: str) -> str | None:
    """The operator socket a URL names (``unix:PATH`` or a file system path), else None."""
    if url.startswith("unix:"):
        return url.removeprefix("unix:")
    if url.startswith(("/", "./", "../")):
        return url
    return None


def open_client(args: argparse.Namespace) -> Any:
    from attest.cli._verify_common import _check_client_cert, _check_url
    from attest.verifier.client import NodeClient

    if not (math.isfinite(args.timeout) and args.timeout > 0):  # argparse's float takes nan
        raise ConfigError(f"{args.timeout} is not a finite number over 0", key="--timeout")
    uds = socket_path(args.url)
    if uds is not None:
        if not os.path.exists(uds):
            raise ConfigError(f"{uds}: no such socket", key="URL")
        return NodeClient("http://operator", uds=uds, timeout=args.timeout)
    _check_url(args.url, "URL")
    cert = None
    if args.client_cert or args.client_key:
        if not (args.client_cert and args.client_key):
            raise ConfigError("give --client-cert and --client-key together", key="--client-key")
        _check_client_cert(args.client_cert, args.client_key)
        cert = (args.client_cert, args.client_key)
    import ssl

    verify: Any = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else True
    return NodeClient(args.url, verify=verify, cert=cert, timeout=args.timeout)


class Progress:
    """The upload's progress line on stderr (module docstring)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = self.tty if enabled is None else enabled
        self.total = total
        self.sent = 0
        self._shown = -1

    def chunks(self, parts: Iterable[bytes | Path]) -> Iterator[bytes]:
        for part in parts:
            if isinstance(part, Path):
                with part.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        yield self._count(chunk)
            else:
                yield self._count(part)
        self.done()

    def _count(self, chunk: bytes) -> bytes:
        self.sent += len(chunk)
        if self.enabled:
            pct = 100 * self.sent // max(self.total, 1)
            step = pct if self.tty else pct - pct % 10
            if step != self._shown:
                self._shown = step
                end = "\r" if self.tty else "\n"
                msg = f"attest: uploading {self.sent} / {self.total} bytes ({pct}%)"
                print(msg, end=end, file=sys.stderr, flush=True)
        return chunk

    def done(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


def push(
    args: argparse.Namespace,
    path: str,
    parts: list[bytes | Path],
    *,
    media_type: str,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Upload ``parts`` (bytes, or files streamed) to ``path``; the answer's status and JSON."""
    total = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in parts)
    progress = Progress(total, args.progress)
    with open_client(args) as client:
        status, doc = client.upload(
            path,
            progress.chunks(parts),
            length=total,
            media_type=media_type,
            params=params,
            timeout=args.timeout,
        )
    return int(status), doc


def answer(args: argparse.Namespace, status: int, doc: Any, line: Callable[[Any], str]) -> int:
    """The node's answer: an accepted decision printed (``line(doc)``, or the JSON) with exit
    0; a refusal printed as JSON (``--json``, exit 5) or raised as the error the node named
    (exit 5 for the gate's refusals); any other error raised."""
    from attest.errors import RegistryRefused, UpgradeRefused

    if status == 200 and isinstance(doc, dict) and doc.get("accepted") is True:
        if args.json:
            print_json(doc)
        else:
            print(line(doc))
        return EXIT_OK
    if not isinstance(doc, dict) or not {"error", "check", "detail"} <= set(doc):
        raise TransportError(f"{args.url}: HTTP {status}: not a decision or an error answer")
    error, check, detail = (str(doc.get(k)) for k in ("error", "check", "detail"))
    if error in _REFUSALS:
        if args.json:
            print_json({"accepted": False, "reason": check, "message": detail, "status": status})
            return EXIT_REFUSED
        raise (RegistryRefused if error == "RegistryRefused" else UpgradeRefused)(check, detail)
    if status == 400:
        raise EvidenceFormatError(f"the node refused the upload as malformed: {detail}")
    raise TransportError(f"{args.url}: HTTP {status} {error}: {detail}")
