"""After a TPM reset the broker starts a fresh runtime log; the API records its events again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.conftest import AppFactory, _running

from attest.node.broker.local import LocalNode
from attest.node.tpm.fake import FakeTpm


async def test_api_events_are_recorded_again_after_a_tpm_reset(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    tpm = FakeTpm()
    (tmp_path / "n").mkdir()
    node = LocalNode.open(tpm, tmp_path / "n", pcr=13)
    calls: list[int] = []

    def record() -> None:
        calls.append(1)
        node.measure("config", {"sha256": "11" * 32})

    record()
    app: Any = app_factory(node=node, on_fresh_log=record)
    async with _running(app, "public"):
        ctx = app.ctx
        before = node.runtime_log(0)
        ctx.check_log()  # nothing changed: nothing recorded again
        assert len(calls) == 1
        tpm.reset()  # PCRs cleared: the next measurement makes the broker rotate its log
        node.measure("daemon-start", {"version": "test"})
        assert node.runtime_log(0)[0] != before[0]
        ctx.check_log()
        kinds = [r.content_type for r in node.runtime_log(0)]
        assert "attest/config" in kinds
        assert len(calls) == 2
    node.close()
