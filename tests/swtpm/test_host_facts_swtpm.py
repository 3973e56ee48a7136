"""The host facts through the real daemons: attestd-tpm reads the firmware event log and the
kernel command line from the files its own flags name, and attestd, which reads no host
file, serves them in its evidence (issue #16: privileges where the data is)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from tests.swtpm.conftest import NodeFactory

from attest.model import PcrSelection
from attest.node.broker.client import BrokerClient

LOG = "ovmf__q35-direct-boot.bin"


def test_evidence_carries_the_firmware_log_and_cmdline_the_broker_reads(
    node_factory: NodeFactory, shared_dir: Path, tmp_path: Path
) -> None:
    log_path = shared_dir / "eventlogs" / LOG
    log = log_path.read_bytes()
    cmdline = tmp_path / "broker-cmdline"
    cmdline.write_text("console=ttyS0 roothash=" + "ab" * 32 + " ro\n")
    # attestd's own (development-mode) settings name other files: they must not be read.
    decoy = tmp_path / "attestd-cmdline"
    decoy.write_text("read-by-attestd\n")
    node = node_factory(
        broker_args=("--firmware-log", str(log_path), "--cmdline", str(cmdline)),
        env={"ATTEST_LOGS_CMDLINE": str(decoy), "ATTEST_LOGS_FIRMWARE_LOG": str(decoy)},
    )
    selection = PcrSelection.parse("sha256:0,13")
    with node.client() as client:
        doc = client.evidence(secrets.token_bytes(32), selection, firmware_from=0)
        fw = doc["firmware_log"]
        assert fw["start"] == 0 and fw["total"] == len(log)
        assert base64.b64decode(fw["data"]) == log
        assert doc["boot"]["cmdline"] == "console=ttyS0 roothash=" + "ab" * 32 + " ro"
        later = client.evidence(secrets.token_bytes(32), selection, firmware_from=1000)
        assert base64.b64decode(later["firmware_log"]["data"]) == log[1000:]
        assert later["firmware_log"]["total"] == len(log)
    with BrokerClient(node.work / "run" / "tpm.sock") as api:
        assert api.verity_report() is None  # --watch-verity off
        chunk = api.firmware_log(len(log) - 10, 1 << 30)
        assert chunk is not None and chunk.data == log[-10:] and chunk.total == len(log)


def test_a_broker_without_a_firmware_log_serves_evidence_without_one(
    node_factory: NodeFactory,
) -> None:
    node = node_factory(broker_args=("--cmdline", "none"))
    with node.client() as client:
        doc = client.evidence(
            secrets.token_bytes(32), PcrSelection.parse("sha256:13"), firmware_from=0
        )
    assert doc["firmware_log"] is None and doc["boot"]["cmdline"] is None
    assert doc["quote"]  # the evidence itself is there


def test_the_brokers_verity_watcher_reports_to_attestd(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """--watch-verity on in a real attestd-tpm: this host has no dm-verity device, so the
    root hash the command line names is unbacked, and attestd's evidence and /v1/status say
    so from the broker's report (attestd runs no watcher: it has no device to watch)."""
    root = "cd" * 32
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"console=ttyS0 roothash={root}\n")
    node = node_factory(broker_args=("--cmdline", str(cmdline), "--watch-verity", "on"))
    with BrokerClient(node.work / "run" / "tpm.sock") as api:
        report = api.verity_report()
    assert report is not None and report.devices == ()
    assert [h.root_hash.hex() for h in report.unbacked] == [root]
    with node.client() as client:
        doc = client.evidence(secrets.token_bytes(32), PcrSelection.parse("sha256:13"))
        assert doc["verity"] == report.to_json()
        assert doc["verity"]["cmdline_backed"] is False
        assert client.status()["checks"]["verity"] == "unbacked"
