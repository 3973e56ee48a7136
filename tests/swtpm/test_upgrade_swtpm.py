"""The upgrade gate against a real NV counter (swtpm via EsapiTpm + LocalNode): an accepted and
confirmed upgrade raises the counter; a rolled-back state file is still refused; every decision
is in the runtime log, which verifies against the quoted runtime PCR, and in the audit log."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.support.upgrade import NOW, make_image, new_node, offer, signed, snapshot

from attest.audit import verify_audit_chain
from attest.errors import UpgradeRefused
from attest.model import PcrSelection
from attest.node.broker.local import LocalNode
from attest.node.tpm.esapi import EsapiTpm
from attest.node.upgrade.slots import SlotStore
from attest.node.upgrade.stager import LocalGateNode, UpgradeGate
from attest.runtime import verify_runtime_log

PCR = 13


def test_nv_counter_anti_rollback_on_swtpm(swtpm: Any, tmp_path: Path) -> None:
    v1 = make_image(tmp_path, "1.0.0", 1)
    v2 = make_image(tmp_path, "2.0.0", 2, blocks=80)
    v3 = make_image(tmp_path, "3.0.0", 3, blocks=96)
    snap = signed(snapshot(4, [v1.release, v2.release, v3.release]))
    node_dir = new_node(tmp_path / "node").root
    tpm = EsapiTpm(swtpm[0].tcti)
    local = LocalNode.open(tpm, node_dir / "state", pcr=PCR)
    try:

        def gate() -> UpgradeGate:
            return UpgradeGate(
                SlotStore(node_dir / "slots", capacity=1 << 20),
                LocalGateNode(local),
                node_dir / "trust",
            )

        def install(img: Any) -> int:
            g = gate()
            g.stage(offer(img, snap), now=NOW)
            g.boot()
            g.confirm()
            return int(g.status()["nv_counter"]["value"])

        raw1 = install(v1)
        saved = tmp_path / "saved"
        shutil.copytree(node_dir / "slots", saved / "slots")
        shutil.copytree(node_dir / "trust", saved / "trust")
        raw3 = install(v3)
        assert raw3 == raw1 + 2 == tpm.nv_counter_read(0x01000A77)  # 1 -> 3: two increments
        assert gate().status()["nv_counter"]["committed_sequence"] == 3

        # roll the state files back to "1.0.0 installed": the TPM counter still says 3
        for name in ("slots", "trust"):
            shutil.rmtree(node_dir / name)
            shutil.copytree(saved / name, node_dir / name)
        with pytest.raises(UpgradeRefused) as info:
            gate().stage(offer(v2, snap), now=NOW)
        assert info.value.reason == "rollback-unauthorised"
        assert "the TPM NV counter says #3" in str(info.value)
        assert tpm.nv_counter_read(0x01000A77) == raw3  # refusals do not touch the counter

        # a remote verifier: the runtime log replays into the quoted PCR; decisions and the
        # counter values are in it; the audit chain matches its anchors
        sel = PcrSelection.parse(f"sha256:{PCR}")
        quoted = tpm.read_pcrs(sel)
        log = verify_runtime_log(local.runtime_log(), quoted, pcr=PCR)
        decisions = [
            (e.content["accepted"], e.content["reason"], e.content["version"])
            for e in log.of_kind("upgrade-decision")
        ]
        assert decisions == [
            (True, "upgrade", "1.0.0"),
            (True, "upgrade", "3.0.0"),
            (False, "rollback-unauthorised", "2.0.0"),
        ]
        counters = [e.content["value"] for e in log.of_kind("nv-counter")]
        assert counters[-1] == raw3
        entries = [dict(e) for e in local.audit_log()]
        verify_audit_chain(entries, log.audit_anchors)
        assert [e["service"] for e in entries] == [
            "upgrade.upgrade",
            "upgrade.confirm",
            "upgrade.upgrade",
            "upgrade.confirm",
            "upgrade.rollback-unauthorised",
        ]
    finally:
        local.close()


def test_cli_confirm_with_nothing_staged_is_refused_in_one_line(
    swtpm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.cli import main

    node_dir = new_node(tmp_path / "node").root
    argv = ["upgrade", "confirm", "--tcti", swtpm[0].tcti, "--slots-dir", str(node_dir / "slots")]
    argv += ["--trust-dir", str(node_dir / "trust"), "--state-dir", str(node_dir / "state")]
    assert main(argv) == 5  # a decision refused the request: not 1 ("a check failed"), not 70
    err = capsys.readouterr().err.strip()
    assert err.startswith("attest: refused (nothing-to-confirm): nothing to confirm")
    assert "\n" not in err and "Traceback" not in err
