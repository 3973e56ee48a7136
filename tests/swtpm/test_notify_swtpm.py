"""Both daemons as systemd's Type=notify units see them, on a swtpm: attestd-tpm says READY=1
only once its sockets are bound and the TPM answered, then pings the watchdog; attestd too;
a second attestd-tpm with the same sockets stops without touching the first one's
(issue 16, item 2)."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.swtpm.conftest import Node, NodeFactory

_UCRED = struct.Struct("3i")


class Notify:
    """systemd's side of NOTIFY_SOCKET: datagrams with the sender's pid (SCM_CREDENTIALS),
    read all the time by a thread, as systemd does (an unread queue fills after
    net.unix.max_dgram_qlen datagrams)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.seen: list[tuple[int, str]] = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(raw[: _UCRED.size])[0]
            self.seen.append((pid, data.decode()))

    def collect(self, seconds: float) -> list[tuple[int, str]]:
        """Everything received so far and during the next ``seconds``."""
        time.sleep(seconds)
        return list(self.seen)

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture()
def notify(tmp_path: Path) -> Iterator[Notify]:
    n = Notify(tmp_path / "notify")
    yield n
    n.close()


def test_both_daemons_notify_ready_and_ping_the_watchdog(
    node_factory: NodeFactory, notify: Notify
) -> None:
    node = node_factory(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"})
    seen = notify.collect(2.0)
    by_pid: dict[int, list[str]] = {}
    for pid, msg in seen:
        by_pid.setdefault(pid, []).append(msg)
    broker, api = by_pid.get(node.broker.pid, []), by_pid.get(node.api.pid, [])
    assert broker and broker[0].startswith("READY=1\nSTATUS=serving on "), broker
    assert str(node.work / "run" / "tpm.sock") in broker[0]
    assert api and api[0].startswith("READY=1\nSTATUS=serving on "), api
    assert f"127.0.0.1:{node.port}" in api[0]
    # WatchdogSec=0.6 s: a ping every 0.3 s from each
    assert broker.count("WATCHDOG=1") >= 3 and api.count("WATCHDOG=1") >= 3, by_pid
    assert set(by_pid) == {node.broker.pid, node.api.pid}
    node.broker.terminate()
    assert node.broker.wait(timeout=20) == 0
    assert (node.broker.pid, "STOPPING=1") in notify.collect(1.0)


def test_a_second_broker_does_not_take_the_first_ones_sockets(node: Node) -> None:
    sock = node.work / "run" / "tpm.sock"
    inode = sock.stat().st_ino
    second = subprocess.run(
        node.broker_cmd, env=dict(node.env), capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 1, second.stdout + second.stderr
    lines = (second.stdout + second.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "SocketInUse" in lines[0] and f"pid {node.broker.pid}" in lines[0]
    assert sock.stat().st_ino == inode and node.broker.poll() is None
    with node.client() as c:
        assert c.ready()
