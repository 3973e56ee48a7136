"""Host facts served by attestd-tpm (``attest.node.broker.host``): the firmware event log in
bounded chunks, the kernel command line and the dm-verity report, their wire codecs, and the
path rule (the file read is the broker's configuration, never the request's)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.dm import ROOT, ROOT_UUID, USR_UUID, FakeDmsetup, make_dm, table

from attest.errors import TransportError
from attest.model import PcrSelection
from attest.node.api.app import read_firmware_log
from attest.node.broker import protocol as p
from attest.node.broker import results
from attest.node.broker.client import BrokerClient
from attest.node.broker.host import HostFacts
from attest.node.broker.local import LocalNode
from attest.node.broker.protocol import OPS
from attest.node.broker.server import BrokerServer
from attest.node.port import FIRMWARE_LOG_CHUNK, FirmwareLogChunk
from attest.node.tpm.fake import FakeTpm
from attest.node.verity_watch import SysfsContext, VerityWatcher
from attest.runtime import verify_runtime_log
from attest.verity.devices import VerityReport, VerityStatus

OPTION_ROM = "goattest__option_rom_eventlog.bin"  # 72,817 bytes: several 16 KiB chunks


@pytest.fixture()
def fw_log(shared_dir: Path) -> Path:
    return shared_dir / "eventlogs" / OPTION_ROM


# --- the firmware log ------------------------------------------------------------------------


def test_firmware_log_is_served_from_the_configured_file_in_chunks(fw_log: Path) -> None:
    log = fw_log.read_bytes()
    host = HostFacts(firmware_log=fw_log)
    first = host.firmware_log(0, 16384)
    assert first == FirmwareLogChunk(0, len(log), log[:16384])
    last = host.firmware_log(65536, 16384)
    assert last is not None and last.data == log[65536:] and last.total == len(log)


def test_a_request_for_a_huge_chunk_is_capped(tmp_path: Path) -> None:
    big = tmp_path / "log"
    big.write_bytes(bytes(range(256)) * (3 * FIRMWARE_LOG_CHUNK // 256))
    chunk = HostFacts(firmware_log=big).firmware_log(0, 1 << 40)
    assert chunk is not None and len(chunk.data) == FIRMWARE_LOG_CHUNK
    assert chunk.total == 3 * FIRMWARE_LOG_CHUNK


def test_an_offset_beyond_the_end_gets_no_data_and_the_size(fw_log: Path) -> None:
    size = fw_log.stat().st_size
    chunk = HostFacts(firmware_log=fw_log).firmware_log(size + 5000, 100)
    assert chunk == FirmwareLogChunk(size, size, b"")


def test_missing_empty_or_oversized_log_is_not_served(tmp_path: Path, fw_log: Path) -> None:
    assert HostFacts(firmware_log=tmp_path / "absent").firmware_log(0, 100) is None
    assert HostFacts().firmware_log(0, 100) is None  # configured: none
    (tmp_path / "empty").write_bytes(b"")
    assert HostFacts(firmware_log=tmp_path / "empty").firmware_log(0, 100) is None
    (tmp_path / "none").write_bytes(b"none")  # the unit file's SetCredential= stand-in
    assert HostFacts(firmware_log=tmp_path / "none").firmware_log(0, 100) is None
    limit = fw_log.stat().st_size - 1
    assert HostFacts(firmware_log=fw_log, max_firmware_log=limit).firmware_log(0, 100) is None


def test_firmware_log_appearing_later_is_served(tmp_path: Path) -> None:
    path = tmp_path / "log"
    host = HostFacts(firmware_log=path)
    assert host.firmware_log(0, 10) is None
    path.write_bytes(b"abc" * 11)
    assert host.firmware_log(0, 10) == FirmwareLogChunk(0, 33, b"abcabcabca")


def test_kernel_cmdline_is_read_bounded_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "cmdline"
    path.write_bytes(b"quiet roothash=" + ROOT.encode() + b" \xff\n")
    assert HostFacts(cmdline=path).kernel_cmdline() == f"quiet roothash={ROOT} \ufffd"
    path.write_bytes(b"a" * (1 << 20))
    assert len(HostFacts(cmdline=path).kernel_cmdline() or "") == 1 << 16
    assert HostFacts(cmdline=tmp_path / "absent").kernel_cmdline() is None
    assert HostFacts().kernel_cmdline() is None


# --- the wire --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"offset": 0, "max_bytes": 10, "path": "/etc/shadow"},
        {"offset": 0, "max_bytes": 10, "file": "/etc/shadow"},
        {"path": "/etc/shadow"},
        {"offset": -1, "max_bytes": 10},
        {"offset": 0, "max_bytes": "all"},
        {"offset": 0},
    ],
)
def test_firmware_log_request_names_no_path_and_only_bounded_integers(args: Any) -> None:
    body = json.dumps({"op": "firmware_log", "args": args}).encode()
    with pytest.raises(TransportError, match="firmware_log"):
        p.decode_request(body)


def test_kernel_cmdline_and_verity_report_take_no_arguments() -> None:
    for name in ("kernel_cmdline", "verity_report"):
        body = json.dumps({"op": name, "args": {"path": "/etc/shadow"}}).encode()
        with pytest.raises(TransportError, match="unknown member"):
            p.decode_request(body)


@pytest.mark.parametrize(
    "doc",
    [
        {"present": True, "offset": 10, "total": 12, "data": "aabbcc"},  # ends past the log
        {"present": False, "total": 0},
        {"present": True, "offset": 0, "total": 1},
        {"present": "yes"},
        {"present": True, "offset": 0, "total": 1 << 30, "data": "00" * (FIRMWARE_LOG_CHUNK + 1)},
    ],
)
def test_firmware_chunk_decoder_rejects_malformed_answers(doc: Any) -> None:
    with pytest.raises(TransportError):
        results.firmware_chunk_from_json(doc)


def _report(tmp_path: Path, *, status: str = "V") -> VerityReport:
    from attest.node.verity_watch import verity_report

    sysfs = tmp_path / "sys"
    make_dm(sysfs, "dm-0", uuid=ROOT_UUID, name="root", dev="253:0")
    make_dm(sysfs, "dm-2", uuid=USR_UUID, name="usr", dev="253:2")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"roothash={ROOT} usrhash={'cc' * 32}")
    dm = FakeDmsetup(
        tables={ROOT_UUID: table(ROOT, " 1 restart_on_corruption")},
        statuses={ROOT_UUID: f"0 2048 verity {status}\n"},
    )
    return verity_report(context=SysfsContext(sysfs), run=dm, cmdline_path=cmdline)


def test_verity_report_round_trips_with_tables_errors_and_unbacked_hashes(tmp_path: Path) -> None:
    report = _report(tmp_path)
    assert [d.name for d in report.devices] == ["root", "usr"]
    assert report.devices[1].table is None and report.devices[1].error  # dmsetup failed
    assert report.unbacked and not report.cmdline_backed
    doc = json.loads(json.dumps(results.verity_report_to_json(report)))
    again = results.verity_report_from_json(doc)
    assert again == report and again is not None and again.to_json() == report.to_json()
    assert results.verity_report_from_json({"report": None}) is None


def test_verity_report_decoder_rejects_a_bad_table_line(tmp_path: Path) -> None:
    doc = results.verity_report_to_json(_report(tmp_path))
    doc["report"]["devices"][0]["table"] = "0 2048 linear 7:0 0"
    with pytest.raises(TransportError, match="device table"):
        results.verity_report_from_json(doc)
    doc["report"]["devices"][0]["table"] = None
    doc["report"]["devices"][0]["status"] = "fine"
    with pytest.raises(TransportError, match="unknown status"):
        results.verity_report_from_json(doc)


# --- through the broker's API socket ---------------------------------------------------------


@pytest.fixture()
def served(tmp_path: Path, fw_log: Path) -> Iterator[tuple[Path, LocalNode]]:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 ro\n")
    host = HostFacts(firmware_log=fw_log, cmdline=cmdline)
    (tmp_path / "state").mkdir()
    node = LocalNode.open(FakeTpm(), tmp_path / "state", host=host)
    api = tmp_path / "api.sock"
    server = BrokerServer(node, api).start()
    yield api, node
    server.shutdown()
    node.close()


def test_attestd_reads_the_whole_log_through_the_socket_in_chunks(
    served: tuple[Path, LocalNode], fw_log: Path
) -> None:
    api, _ = served
    with BrokerClient(api) as client:
        assert read_firmware_log(client, limit=1 << 20) == fw_log.read_bytes()
        assert client.kernel_cmdline() == "console=ttyS0 ro"
        assert client.verity_report() is None  # not watching
        small = client.call(OPS.firmware_log, p.FirmwareLogRead(100, 7))
        assert small == FirmwareLogChunk(100, fw_log.stat().st_size, fw_log.read_bytes()[100:107])
        with pytest.raises(TransportError, match="over 1000"):
            read_firmware_log(client, limit=1000)


class _Node:
    """A node port whose firmware log answers are given by the test (a lying broker)."""

    def __init__(self, answer: Callable[[int, int], FirmwareLogChunk | None]) -> None:
        self.firmware_log = answer


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda o, n: FirmwareLogChunk(o, 100 + o, b"x" * min(n, 10)), "changed"),
        (lambda o, n: FirmwareLogChunk(0, 100, b"x" * 10), "changed"),
        (lambda o, n: FirmwareLogChunk(o, 100, b""), "empty chunk"),
        (lambda o, n: None if o else FirmwareLogChunk(0, 100, b"x"), "disappeared"),
    ],
)
def test_attestd_refuses_a_log_whose_chunks_do_not_add_up(answer: Any, message: str) -> None:
    with pytest.raises(TransportError, match=message):
        read_firmware_log(_Node(answer), limit=1 << 20)  # type: ignore[arg-type]


# --- dm-verity in the broker -----------------------------------------------------------------


def test_broker_records_verity_devices_and_again_after_a_tpm_reset(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    make_dm(sysfs, "dm-0", uuid=ROOT_UUID, name="root", dev="253:0")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"roothash={ROOT}")
    dm = FakeDmsetup(tables={ROOT_UUID: table(ROOT)}, statuses={ROOT_UUID: "0 2048 verity V\n"})
    tpm = FakeTpm()
    (tmp_path / "state").mkdir()
    host = HostFacts(cmdline=cmdline)
    node = LocalNode.open(tpm, tmp_path / "state", host=host)
    watchers: list[VerityWatcher] = []

    def watcher(callback: Callable[[VerityReport], None]) -> VerityWatcher:
        w = VerityWatcher(
            callback,
            context=SysfsContext(sysfs),
            run=dm,
            cmdline_path=cmdline,
            observer_factory=lambda on_event: _NoObserver(),
            poll_interval=3600,
        )
        watchers.append(w)
        return w

    try:
        host.watch_verity(node.runtime, watcher=watcher)
        report = node.verity_report()
        assert report is not None and report.cmdline_backed
        events = [r for r in node.runtime_log() if r.content_type == "attest/verity-device"]
        assert [e.content for e in events] == [
            {"name": "root", "root_hash": ROOT, "status": "verified"}
        ]
        watchers[0].refresh()  # the same state again: not recorded twice
        dm.statuses[ROOT_UUID] = "0 2048 verity C\n"
        watchers[0].refresh()  # corruption: a new state, recorded
        kinds = [
            r.content.get("status")
            for r in node.runtime_log()
            if r.content_type == "attest/verity-device"
        ]
        assert kinds == ["verified", "corrupted"]
        report = node.verity_report()
        assert report is not None and report.devices[0].status is VerityStatus.CORRUPTED

        tpm.reset()  # a TPM reset: the runtime log starts afresh and the devices are recorded
        fresh = node.runtime_log()
        assert fresh[0].recnum == 0
        assert [r.content for r in fresh if r.content_type == "attest/verity-device"] == [
            {"name": "root", "root_hash": ROOT, "status": "corrupted"}
        ]
        verify_runtime_log(fresh, node.read_pcrs(PcrSelection.parse("sha256:13")), pcr=13)
    finally:
        node.close()
    assert node.verity_report() is None


class _NoObserver:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_broker_reads_the_firmware_log_systemd_passed_as_a_credential(tmp_path: Path) -> None:
    from attest.node.broker.host import FIRMWARE_LOG
    from attest.node.broker.main import default_firmware_log

    assert default_firmware_log({}) == FIRMWARE_LOG
    assert default_firmware_log({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == FIRMWARE_LOG
    (tmp_path / "firmware-log").write_bytes(b"log")
    assert default_firmware_log({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == (
        tmp_path / "firmware-log"
    )


def test_attestd_with_a_broker_loads_no_host_reader_appraisal_or_firmware_log_parser() -> None:
    """attestd (broker mode) asks the broker; the modules that read the host stay unloaded.
    Its start (a node under TCG pays ~14x for every import) loads no ``attest.appraisal``
    (the self-appraisal imports it at the first /v1/status or /metrics) and no firmware event
    log parser (the broker's and the verifier's), and no X.509 (the registry's SEV-SNP policy
    types load without it)."""
    import subprocess
    import sys

    code = (
        "import sys, attest.node.daemon, attest.node.api.app, attest.node.broker.client\n"
        "import attest.node.api.upgrades\n"
        "from attest.node.config import Settings\n"
        "attest.node.daemon.make_status(Settings())\n"
        "loaded = [m for m in sys.modules if m.startswith(('attest.node.verity_watch',"
        " 'attest.node.broker.host', 'attest.node.broker.local', 'pyudev', 'attest.appraisal',"
        " 'attest.eventlog.parse', 'attest.eventlog.uefi', 'cryptography.x509'))]\n"
        "print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
