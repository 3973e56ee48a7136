"""sd_notify(3) without libsystemd: readiness, status and watchdog messages to systemd (an
adapter of both daemons).

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and waits for ``READY=1`` before it starts the units ordered after this one; with
``WatchdogSec=`` it passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts a service that
has not sent ``WATCHDOG=1`` within that time. Outside systemd (tests, development) there is no
``NOTIFY_SOCKET`` and every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (newline-separated ``KEY=VALUE`` lines, e.g. ``"READY=1"``) to
    ``$NOTIFY_SOCKET``. False when there is none or it cannot be reached (logged: systemd then
    times the start-up out or the watchdog restarts the service, which is the right outcome)."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        address = b"\0" + target[1:].encode()  # abstract namespace
    elif target.startswith("/"):
        address = target.encode()
    else:
        if target:
            logger.warning("NOTIFY_SOCKET %r is not a Unix socket address: not notified", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            # Never block: a full queue (a receiver that does not read; the kernel queues
            # net.unix.max_dgram_qlen datagrams) must not stall the event loop.
            s.sendto(message.encode(), socket.MSG_DONTWAIT, address)
    except BlockingIOError:
        logger.warning("systemd's notify socket %s is full: %r dropped", target, message)
        return False
    except OSError as exc:
        logger.warning("cannot notify systemd at %s: %s", target, exc)
        return False
    return True


def watchdog_interval(*, environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WatchdogSec=`` (sd_watchdog_enabled(3)),
    or None when systemd expects none (no ``WATCHDOG_USEC``, or ``WATCHDOG_PID`` names another
    process)."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
