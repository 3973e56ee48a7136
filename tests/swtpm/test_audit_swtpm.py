"""Issue 15 item 8: an operator audit entry appended to ``audit.log`` while attestd-tpm is
stopped is not silently anchored at the next start. On a real node (swtpm + attestd-tpm +
attestd): after a clean stop (SIGTERM: ``audit-close`` recorded) a chain-valid entry written
with the node's own key is reported by the broker (``audit-unanchored``, clean stop) and
``attest verify`` is contraindicated, naming the entry; ``attest audit verify`` fails. After a
SIGKILL (no clean stop) the same append is only a warning: a crash between writing and
anchoring an entry leaves the same trace."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.swtpm.conftest import Node, attest_verify, wait

from attest.audit import new_entry, parse_entry
from attest.manifest.canonical import canonicalize
from attest.node.broker.client import BrokerClient


def append_behind_the_broker(node: Node, user: str) -> int:
    """What a root can do while attestd-tpm is down: write the next chain-valid entry with the
    node's pseudonymisation key. Returns its sequence number."""
    state = Path(node.env["ATTEST_TPM_STATE_DIR"])
    key = (state / "audit.key").read_bytes()
    chunks = [c for c in (state / "audit.log").read_bytes().split(b"\x1e") if c.strip()]
    last = parse_entry(json.loads(chunks[-1]))
    entry = new_entry(
        key,
        {"event": "login", "user": user, "service": "sshd", "time": "2026-01-02T03:04:05Z"},
        seq=last.seq + 1,
        prev_hash=last.entry_hash,
    )
    with (state / "audit.log").open("ab") as f:
        f.write(b"\x1e" + canonicalize(entry.to_json()) + b"\n")
    return entry.seq


def stop_broker(node: Node, sig: int) -> None:
    node.broker.send_signal(sig)
    node.broker.wait(timeout=30)


def restart_broker(node: Node) -> None:
    node.start_broker()
    with node.client() as c:
        wait(c.ready, 60, "attestd ready again")


def audit_finding(doc: dict[str, Any]) -> dict[str, Any]:
    found = [f for f in doc["result"]["findings"] if f["check"] == "audit-unanchored"]
    assert len(found) == 1, doc["result"]["findings"]
    return found[0]


def audit_verify(node: Node) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "attest", "audit", "verify", "--json"]
    cmd += ["--socket", str(node.broker_operator_sock)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_entry_appended_while_the_broker_was_stopped_is_reported(
    node: Node, tmp_path: Path
) -> None:
    state = tmp_path / "verifier"
    with BrokerClient(str(node.broker_operator_sock)) as broker:
        broker.audit_record({"event": "login", "user": "alice", "service": "sshd"})
    before = attest_verify(node, state)  # enrolls; no registry: a warning
    assert before.returncode == 10, before.stdout + before.stderr
    assert not [
        f for f in json.loads(before.stdout)["result"]["findings"] if "unanch" in f["check"]
    ]
    assert audit_verify(node).returncode == 0

    # a clean stop (SIGTERM): the broker records audit-close; then a root appends an entry
    stop_broker(node, signal.SIGTERM)
    forged = append_behind_the_broker(node, "mallory")
    restart_broker(node)

    after = attest_verify(node, state)
    assert after.returncode == 11, after.stdout + after.stderr  # contraindicated
    doc = json.loads(after.stdout)
    finding = audit_finding(doc)
    assert finding["value"] == 96 and finding["tier"] == "contraindicated"
    assert (
        f"entry #{forged} was appended to audit.log while attestd-tpm was stopped"
        in (finding["explanation"])
    )
    assert "not written by attest" in finding["explanation"]
    checked = audit_verify(node)  # the node's own check refuses it too
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"#{forged}..#{forged} were appended while attestd-tpm was stopped" in checked.stderr

    # a SIGKILL (no clean stop): the next append is indistinguishable from a crash: a warning,
    # reported next to the first (which stays in this boot's runtime log)
    stop_broker(node, signal.SIGKILL)
    late = append_behind_the_broker(node, "eve")
    restart_broker(node)
    again = attest_verify(node, state)
    assert again.returncode == 11, again.stdout + again.stderr
    text = audit_finding(json.loads(again.stdout))["explanation"]
    assert f"entry #{late} was found unanchored when attestd-tpm started after an unclean stop" in (
        text
    )
    assert f"entry #{forged} was appended" in text
