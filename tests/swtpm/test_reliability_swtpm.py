"""Faults injected into the real node daemons (attestd-tpm + attestd on a swtpm), each with
its recovery time measured (docs/reliability.md): the broker killed and started again, attestd
started before the broker, the TPM restarted between two commands and during one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from tests.swtpm.conftest import Node, appraise_contact

from attest.appraisal.claims import Verdict
from attest.model import PcrSelection
from attest.verifier.contact import enroll

SEL = PcrSelection.parse("sha256:0")

NONCE_BODY = {"pcrs": {"sha256": [0]}}


def _evidence(node: Node) -> httpx.Response:
    body = {"nonce": os.urandom(32).hex(), **NONCE_BODY}
    return httpx.post(f"{node.url}/v1/evidence", json=body, timeout=30)


def _readyz(node: Node) -> httpx.Response:
    return httpx.get(f"{node.url}/readyz", timeout=10)


def _metric(node: Node, name: str) -> str:
    text = httpx.get(f"{node.url}/metrics", timeout=10).text
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " "))


def _until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``pred`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"{what} within {timeout} s")


def _report(fault: str, **seconds: float) -> None:
    print(f"\nreliability {fault} " + " ".join(f"{k}={v:.2f}s" for k, v in seconds.items()))


def test_killed_broker_is_not_ready_then_recovers(node: Node) -> None:
    assert _evidence(node).status_code == 200
    node.broker.send_signal(signal.SIGKILL)
    node.broker.wait()
    not_ready = _until(lambda: _readyz(node).status_code == 503, 5, "/readyz 503")
    doc = _readyz(node).json()
    assert doc["ready"] is False and "attestd-tpm" in doc["reason"]
    r = _evidence(node)
    assert r.status_code == 503, r.text
    body = r.json()
    assert set(body) == {"error", "check", "detail"} and body["error"] == "BrokerUnavailable"
    assert r.headers["retry-after"] == "1"
    assert _metric(node, "attest_broker_up") == "0"
    assert _metric(node, "attest_tpm_ready") == "0"

    node.start_broker()  # attestd is not touched
    ready = _until(lambda: _readyz(node).status_code == 200, 30, "ready again")
    assert _readyz(node).json() == {"ready": True}
    assert _evidence(node).status_code == 200
    assert _metric(node, "attest_broker_up") == "1"
    _report("broker-killed", not_ready=not_ready, ready_after_restart=ready)


def test_attestd_started_before_the_broker_waits_then_serves(node: Node) -> None:
    node.api.terminate()
    node.api.wait()
    node.broker.send_signal(signal.SIGKILL)
    node.broker.wait()
    (node.work / "run" / "tpm.sock").unlink()  # as before attestd-tpm's first start
    node.start_api()
    _until(lambda: _reachable(node), 30, "attestd listening")
    doc = _readyz(node)
    assert doc.status_code == 503 and doc.json()["ready"] is False
    assert _evidence(node).status_code == 503
    assert node.api.poll() is None  # no traceback, no exit

    node.start_broker()
    ready = _until(lambda: _readyz(node).status_code == 200, 30, "ready after the broker")
    assert _evidence(node).status_code == 200
    # The start events attestd could not record at start-up are recorded now, and the node
    # appraises affirming.
    with node.client() as c:
        a = appraise_contact(c, enroll(c, now=datetime.now(UTC)), pcrs=SEL)
    assert a.result.verdict is Verdict.AFFIRMING, a.result.first_divergence
    assert a.memory.runtime is not None
    kinds = [ev.kind for ev in a.memory.runtime.log.events]
    # (attestd-tpm's and attestd's start events, before and after the restart)
    assert kinds == ["daemon-start", "daemon-start", "config"] * 2
    log = (node.work / "api.log").read_text(errors="replace")
    assert "Traceback" not in log
    _report("attestd-before-broker", ready_after_broker=ready)


def _reachable(node: Node) -> bool:
    try:
        _readyz(node)
    except httpx.HTTPError:
        return False
    return True
