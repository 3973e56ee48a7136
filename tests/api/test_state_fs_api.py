"""attestd reports the broker's state file system: /v1/status ``state_fs``, /metrics, 507."""

from __future__ import annotations

import errno
import os
from typing import Any

import httpx
import pytest
from tests.support.prom import samples

from attest.errors import StorageError
from attest.node.api.errors import status_for
from attest.node.logs import runtime as runtime_mod


async def test_status_and_metrics_report_the_state_file_system(
    client: httpx.AsyncClient, node: Any
) -> None:
    status = (await client.get("/v1/status")).json()
    fs = status["state_fs"]
    assert set(fs) == {"free_bytes", "total_bytes", "threshold_bytes", "low", "write_failures"}
    assert fs["low"] is (fs["free_bytes"] < fs["threshold_bytes"])
    got = samples((await client.get("/metrics")).text)
    assert got["attest_state_fs_low"] == 0 and got["attest_state_fs_free_bytes"] > 0
    node.low_space_bytes = 1 << 62  # every file system is "low" under this threshold
    assert (await client.get("/v1/status")).json()["state_fs"]["low"] is True
    assert samples((await client.get("/metrics")).text)["attest_state_fs_low"] == 1


async def test_write_failures_are_counted(
    client: httpx.AsyncClient, node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runtime_mod, "write_all", full)
    with pytest.raises(StorageError):
        node.audit_record({"event": "login", "user": "alice"})
    monkeypatch.undo()
    assert (await client.get("/v1/status")).json()["state_fs"]["write_failures"] == 1
    assert samples((await client.get("/metrics")).text)["attest_state_fs_write_failures_total"] == 1


def test_a_full_file_system_is_507() -> None:
    assert status_for(StorageError("no space")) == 507
