"""A full state file system, for real: attestd-tpm on a swtpm keeps its logs on a 256 KiB tmpfs.

The tmpfs is filled until nothing is free. An audit entry can still land in the slack of
``audit.log``'s last page while the runtime log's last page has no room for its anchor (the
test steers the runtime log there with ``config`` events until one is refused): the record is
refused with ``StorageError``, both logs are byte for byte as before, ``attest audit verify``
passes, attestd's /v1/status and /metrics report the low space; once space is freed the next
record succeeds at once. Needs root (mount); skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.prom import samples
from tests.swtpm.conftest import BIN, Node, NodeFactory

from attest.errors import StorageError
from attest.node.broker.client import BrokerClient

FS_SIZE = 256 * 1024
THRESHOLD = 64 * 1024
PAGE = 4096
EVENT = {"event": "session-open", "user": "alice", "source": "198.51.100.7", "service": "sshd"}


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "statefs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs); not root here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE // 1024}k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # still held: detach


def fill(path: Path) -> int:
    """Write ``path`` until the file system has no free block; the bytes written."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (PAGE, 1):
            while True:
                try:
                    n += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return n


def verify_cli(node: Node) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "attest"),
            "audit",
            "verify",
            "--json",
            "--socket",
            str(node.work / "run" / "tpm.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def snapshot(state: Path) -> tuple[bytes, bytes]:
    return (state / "runtime.log").read_bytes(), (state / "audit.log").read_bytes()


def test_full_state_fs_refuses_the_record_and_leaves_both_logs_as_before(
    small_fs: Path, node_factory: NodeFactory
) -> None:
    node = node_factory(
        broker_args=("--state-dir", str(small_fs), "--low-space-bytes", str(THRESHOLD)),
        env={"ATTEST_TPM_STATE_DIR": str(small_fs)},
    )
    api_sock = node.work / "run" / "tpm.sock"
    with BrokerClient(node.broker_operator_sock) as op, BrokerClient(api_sock) as api:
        # With space: a few entries, until audit.log's last page has room for one more.
        op.audit_record(EVENT)
        for _ in range(20):
            size = (small_fs / "audit.log").stat().st_size
            if PAGE - size % PAGE > 1024:
                break
            op.audit_record(EVENT)
        assert PAGE - (small_fs / "audit.log").stat().st_size % PAGE > 1024
        status = node.client().status()
        assert status["state_fs"]["low"] is False
        assert status["state_fs"]["threshold_bytes"] == THRESHOLD

        filled = fill(small_fs / "filler")
        assert os.statvfs(small_fs).f_bavail == 0
        # The runtime log's last page fills up: a config event (smaller than an anchor) is
        # refused, so no anchor fits any more; the audit entry still fits in its page.
        refused = None
        for i in range(20):
            try:
                api.measure("config", {"sha256": hashlib.sha256(b"%d" % i).hexdigest()})
            except StorageError as exc:
                refused = exc
                break
        assert refused is not None and "No space left" in str(refused)

        before = snapshot(small_fs)
        t0 = time.monotonic()
        with pytest.raises(StorageError) as failed:
            op.audit_record(EVENT)
        refuse_s = time.monotonic() - t0
        # The entry was written (it fit) and rolled back because its anchor did not fit.
        assert "runtime event not recorded" in str(failed.value)
        assert "No space left on device" in str(failed.value)
        assert snapshot(small_fs) == before
        done = verify_cli(node)
        assert done.returncode == 0, done.stderr
        assert '"verified": true' in done.stdout

        status = node.client().status()
        fs = status["state_fs"]
        assert fs["low"] is True and fs["free_bytes"] < THRESHOLD
        assert fs["write_failures"] == 2  # the config event and the anchor
        metrics = samples(httpx.get(node.url + "/metrics", timeout=10).text)
        assert metrics["attest_state_fs_low"] == 1
        assert metrics["attest_state_fs_write_failures_total"] == 2

        # Space again: the next record succeeds at once, and the chain verifies.
        (small_fs / "filler").unlink()
        t0 = time.monotonic()
        entry = op.audit_record(EVENT)
        recover_s = time.monotonic() - t0
        entries_before = before[1].count(b"\x1e")
        assert entry["seq"] == entries_before
        done = verify_cli(node)
        assert done.returncode == 0, done.stderr
        assert f'"audit_entries": {entries_before + 1}' in done.stdout
        assert node.client().status()["state_fs"]["low"] is False
    print(
        f"\nfilled {filled} bytes; refused record in {refuse_s * 1000:.1f} ms: {failed.value}; "
        f"status state_fs {fs}; next record after freeing space in {recover_s * 1000:.1f} ms"
    )
