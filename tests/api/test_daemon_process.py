"""The real ``attestd`` process as systemd runs it (no TPM: no broker is started, so it serves
not-ready): sd_notify readiness and watchdog over a real ``NOTIFY_SOCKET``, a failed bind is a
non-zero exit with one error line, and a second attestd cannot take the first one's operator
socket (issue 16, N1 and N5)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.hostile import raw_error, raw_exchange

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Notify:
    """The datagram socket systemd would listen on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def messages(self, timeout: float) -> Iterator[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                yield self.sock.recv(4096).decode()
            except TimeoutError:
                return

    def wait_for(self, prefix: str, timeout: float = 60) -> str:
        for m in self.messages(timeout):
            if m.startswith(prefix):
                return m
        pytest.fail(f"no {prefix} from attestd within {timeout} s")


@pytest.fixture()
def notify(tmp_path: Path) -> Iterator[Notify]:
    n = Notify(tmp_path / "notify")
    yield n
    n.sock.close()


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (tmp_path / "attestd.toml").write_text("")
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATTEST_", "NOTIFY_SOCKET", "WATCHDOG_"))
    }
    return {
        **base,
        "ATTEST_CONFIG": str(tmp_path / "attestd.toml"),
        "ATTEST_TPM_BROKER_SOCKET": str(tmp_path / "no-broker.sock"),
        "ATTEST_TPM_STATE_DIR": str(tmp_path / "state"),
        "ATTEST_API_PORT": str(port),
        "ATTEST_API_OPERATOR_SOCKET": str(run / "api.sock"),
        "ATTEST_LOGS_FIRMWARE_LOG": str(tmp_path / "none"),
        "ATTEST_REGISTRY_TRUST_DIR": str(tmp_path / "trust"),
        **extra,
    }


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / "attestd")], env=env, stdout=out, stderr=out)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(timeout=20)


def test_ready_once_listening_then_watchdog_pings_then_stopping(
    tmp_path: Path, notify: Notify
) -> None:
    port = _free_port()
    env = _env(tmp_path, port, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000")
    proc = _start(env, tmp_path / "attestd.log")
    try:
        ready = notify.wait_for("READY=1")
        # READY=1 comes after every listener is bound: both answer at once.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        uds = httpx.HTTPTransport(uds=env["ATTEST_API_OPERATOR_SOCKET"])
        with httpx.Client(transport=uds) as c:
            assert c.get("http://operator/healthz").status_code == 200
        assert f"127.0.0.1:{port}" in ready and "STATUS=serving on" in ready
        # WatchdogSec=0.4 s: a ping every 0.2 s from the event loop
        pings = [m for m in notify.messages(1.5) if m == "WATCHDOG=1"]
        assert len(pings) >= 3, pings
    finally:
        rc = _stop(proc)
    assert rc == 0, (tmp_path / "attestd.log").read_text()
    assert "STOPPING=1" in list(notify.messages(2))


def test_no_watchdog_pings_when_the_watchdog_is_another_process(
    tmp_path: Path, notify: Notify
) -> None:
    env = _env(
        tmp_path,
        _free_port(),
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="400000",
        WATCHDOG_PID="1",
    )
    proc = _start(env, tmp_path / "attestd.log")
    try:
        notify.wait_for("READY=1")
        assert [m for m in notify.messages(1.0) if m == "WATCHDOG=1"] == []
    finally:
        _stop(proc)


def test_attestd_bounds_a_request_head_before_the_app(tmp_path: Path, notify: Notify) -> None:
    """The real attestd parses with the guarded protocol (attest.serving): a head over its
    limit is a 431 in the error shape, where uvicorn's own kept every header it was sent."""
    port = _free_port()
    env = _env(tmp_path, port, NOTIFY_SOCKET=str(notify.path))
    proc = _start(env, tmp_path / "attestd.log")
    try:
        notify.wait_for("READY=1")
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n"
        status, doc = raw_error(raw_exchange(f"http://127.0.0.1:{port}", head))
        assert status == 431 and doc["error"] == "RequestHeadTooLarge", doc
    finally:
        _stop(proc)


def test_a_failed_bind_is_a_non_zero_exit_with_one_error_line(
    tmp_path: Path, notify: Notify
) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start(_env(tmp_path, port, NOTIFY_SOCKET=str(notify.path)), tmp_path / "log")
        try:
            rc = proc.wait(timeout=60)
        finally:
            _stop(proc)
    text = (tmp_path / "log").read_text()
    assert rc != 0, text
    errors = [line for line in text.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "address already in use" in errors[0], text
    assert "Traceback" not in text and "serving on" not in text
    assert not any(m.startswith("READY=1") for m in notify.messages(0.5))


def test_a_second_attestd_does_not_take_the_first_ones_operator_socket(
    tmp_path: Path, notify: Notify
) -> None:
    env = _env(tmp_path, _free_port(), NOTIFY_SOCKET=str(notify.path))
    first = _start(env, tmp_path / "first.log")
    try:
        notify.wait_for("READY=1")
        sock = Path(env["ATTEST_API_OPERATOR_SOCKET"])
        inode = sock.stat().st_ino
        second_env = {**env, "ATTEST_API_PORT": str(_free_port())}
        second = _start(second_env, tmp_path / "second.log")
        rc = second.wait(timeout=60)
        text = (tmp_path / "second.log").read_text()
        assert rc == 2, text
        assert text.strip().splitlines() == [
            f"attestd: {sock} belongs to another running process (pid {first.pid}, "
            f"lock {sock}.lock); not replacing it"
        ]
        # the first attestd's socket is untouched and still answers
        assert sock.stat().st_ino == inode
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
            assert c.get("http://operator/healthz").status_code == 200
        assert first.poll() is None
    finally:
        _stop(first)
    # and once the first has stopped, a new attestd starts on the same socket
    again = _start(env, tmp_path / "again.log")
    try:
        notify.wait_for("READY=1")
    finally:
        assert _stop(again) == 0


def test_an_operator_socket_it_cannot_lock_is_one_line_at_start(tmp_path: Path) -> None:
    """The lock file cannot be opened (here: a directory in its place; on a node, a runtime
    directory attestd may not write): exit 2 with the key's name, nothing served."""
    env = _env(tmp_path, _free_port())
    Path(env["ATTEST_API_OPERATOR_SOCKET"] + ".lock").mkdir()
    proc = _start(env, tmp_path / "log")
    assert proc.wait(timeout=60) == 2
    (line,) = (tmp_path / "log").read_text().strip().splitlines()
    assert line.startswith("attestd: api.operator_socket: cannot lock"), line
    assert "Is a directory" in line
