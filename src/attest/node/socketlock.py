"""One daemon per socket: an exclusive ``flock`` on ``<socket>.lock`` (an adapter of both
daemons).

A daemon removes a stale socket of its previous run before it binds its own. Without a lock a
second daemon started with the same configuration would remove the socket of the first, which
then keeps running unreachable. The lock is taken before anything else touches the socket and
held for the life of the process (the kernel drops it when the process dies, however it dies),
so only the holder may remove and bind. The lock file stays: removing it would let two
processes lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from attest.errors import SocketInUse


class SocketLock:
    """A held lock; ``release`` (or the process's end) drops it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_socket(socket_path: str | os.PathLike[str]) -> SocketLock:
    """Lock ``socket_path`` for this process, or raise ``SocketInUse`` naming the holder's pid.
    ``OSError`` when the lock file cannot be created (e.g. a missing directory)."""
    sock = Path(socket_path)
    path = sock.with_name(sock.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "?"
        with contextlib.suppress(OSError, ValueError):
            holder = str(int(os.pread(fd, 16, 0).decode().strip()))
        os.close(fd)
        raise SocketInUse(
            f"{sock} belongs to another running process (pid {holder}, lock {path}); "
            "not replacing it",
            path=str(sock),
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return SocketLock(fd, path)
