"""Affirming means a blessed release on a trusted identity, or nothing (issue 14), through real
processes: a relay in front of a real node (attestd-tpm + attestd on swtpm) that lies about the
runtime PCR or withholds the runtime log, and a node rebooted with its audit log deleted."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.swtpm.conftest import Node, NodeFactory, verify

from attest.node.broker.client import BrokerClient

Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]


class Relay:
    """A man in the middle on 127.0.0.1: forwards to the node, rewriting JSON answers."""

    def __init__(self, target: str, rewrite: Rewrite) -> None:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self, method: str) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else None
                r = httpx.request(
                    method,
                    target + self.path,
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    timeout=30,
                )
                data = r.content
                if r.status_code == 200 and r.headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    data = json.dumps(relay.rewrite(self.path, r.json())).encode()
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "text/plain"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 -- http.server's spelling
                self._forward("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._forward("POST")

        self.rewrite = rewrite
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def relay_for(node: Node) -> Iterator[Callable[[Rewrite], Relay]]:
    started: list[Relay] = []

    def make(rewrite: Rewrite) -> Relay:
        r = Relay(node.url, rewrite)
        r.thread.start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.server.shutdown()
        r.server.server_close()


@pytest.mark.parametrize("claim", [16, 10, "abc", None, [13], 99, -1])
def test_relay_claiming_another_runtime_pcr_is_not_enrolled(
    claim: object,
    node: Node,
    relay_for: Callable[[Rewrite], Relay],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def lie(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "runtime_pcr": claim} if path.startswith("/v1/identity") else doc

    relay = relay_for(lie)
    code, doc = verify(capsys, node, tmp_path / "v", None, url=relay.url)
    assert code == 11, doc
    assert "runtime-pcr" in (doc["explanation"] or "") and "PCR 13" in doc["explanation"]
    assert doc["enrollment"] is None  # nothing registered


def test_relay_withholding_the_runtime_log_is_contraindicated(
    node: Node,
    relay_for: Callable[[Rewrite], Relay],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    withholding = {"on": False}

    def withhold(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        if withholding["on"] and path.startswith("/v1/evidence"):
            return {**doc, "runtime_log": None}
        return doc

    relay = relay_for(withhold)
    state = tmp_path / "v"
    code, doc = verify(capsys, node, state, None, url=relay.url)
    assert code == 0, doc["explanation"]
    assert doc["result"]["continuity"]["runtime_seen"] is True
    withholding["on"] = True  # the same TPM epoch: the log was verified, now it is hidden
    code, doc = verify(capsys, node, state, None, url=relay.url)
    assert code == 11, doc
    assert "withheld its runtime log" in doc["explanation"]


def _record_login(node: Node, user: str) -> None:
    with BrokerClient(str(node.broker_operator_sock)) as broker:
        broker.audit_record(
            {"event": "login", "user": user, "source": "127.0.0.1", "service": "sshd"}
        )


def test_audit_history_deleted_across_a_reboot_is_contraindicated(
    node_factory: NodeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = node_factory()
    for user in ("alice", "bob"):
        _record_login(node, user)
    state = tmp_path / "v"
    code, doc = verify(capsys, node, state, None)
    assert code == 0, doc["explanation"]
    head = doc["result"]["continuity"]["audit_head"]
    assert head is not None and head["seq"] >= 1
    # Reboot: daemons stopped, the TPM power-cycled (a TPM Reset), and the node's root deletes
    # the audit log (and the set-aside runtime logs) before attestd-tpm starts again.
    node.stop()
    node.swtpm.stop()
    node.swtpm.start()
    node_state = node.work / "state"
    for f in node_state.iterdir():
        if f.name.startswith(("audit.log", "runtime.log")):
            f.unlink()
    again = node_factory(port=node.port, tpm=(node.swtpm, node.state))
    _record_login(again, "mallory")  # a fresh, self-consistent chain
    code, doc = verify(capsys, again, state, None)
    assert code == 11, doc
    assert "audit-history" in doc["explanation"] or any(
        "audit history was deleted" in e for e in doc["result"]["explanations"]
    )
    assert any("TPM reset since" in n for n in doc["notes"])
