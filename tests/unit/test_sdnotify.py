"""sd_notify over a real AF_UNIX datagram socket (attest.node.sdnotify), and the socket lock
(attest.node.socketlock) within one process."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attest.errors import SocketInUse
from attest.node.sdnotify import notify, watchdog_interval
from attest.node.socketlock import lock_socket


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    s.bind(str(path))
    s.settimeout(2)
    yield s, str(path)
    s.close()


def test_ready_reaches_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    s, path = receiver
    assert notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=serving"


def test_abstract_namespace_socket_is_addressed_with_a_leading_nul() -> None:
    name = f"attest-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(2)
        assert notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("value", ["", "relative/notify", "vsock:2:1234"])
def test_no_or_unsupported_notify_socket_sends_nothing(value: str) -> None:
    env = {"NOTIFY_SOCKET": value} if value else {}
    assert notify("READY=1", environ=env) is False


def test_an_unreachable_notify_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_a_receiver_that_does_not_read_never_blocks_the_sender(
    receiver: tuple[socket.socket, str],
) -> None:
    """Datagrams queue up to net.unix.max_dgram_qlen; beyond, a blocking send would stall
    the daemon's event loop. They are dropped instead (and said so)."""
    s, path = receiver
    start = time.monotonic()
    sent = [notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": path}) for _ in range(500)]
    assert time.monotonic() - start < 5
    assert sent[0] and not sent[-1]
    assert s.recv(4096) == b"WATCHDOG=1"  # what was queued is still there


def test_watchdog_interval_is_half_the_timeout_for_this_process() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(environ=env) == 15.0
    assert watchdog_interval(environ={"WATCHDOG_USEC": "2000000"}) == 1.0


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},  # the watchdog is another's
    ],
)
def test_no_watchdog_when_systemd_expects_none(env: dict[str, str]) -> None:
    assert watchdog_interval(environ=env) is None


def test_a_held_socket_lock_refuses_a_second_holder_naming_the_pid(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    first = lock_socket(sock)
    # flock locks belong to the open file description: a second open conflicts even in-process
    with pytest.raises(SocketInUse, match=rf"pid {os.getpid()}\b") as exc:
        lock_socket(sock)
    assert exc.value.path == str(sock)
    first.release()
    lock_socket(sock).release()  # released: free again


def test_socket_lock_does_not_follow_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("x")
    (tmp_path / "api.sock.lock").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        lock_socket(tmp_path / "api.sock")
    assert (tmp_path / "target").read_text() == "x"
