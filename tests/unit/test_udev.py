"""The dm-verity discovery adapter, against a fake sysfs tree, a fake ``dmsetup`` and a fake
udev observer. Real devices are exercised by the VM harness (the host has no device-mapper)."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.dm import (
    LUKS_UUID,
    ROOT,
    ROOT_UUID,
    USR,
    USR_UUID,
    FakeDmsetup,
    make_dm,
    table,
)

from attest.node.verity_watch import (
    SysfsContext,
    SysfsDevice,
    UdevDevice,
    VerityWatcher,
    default_context,
    discover,
    read_cmdline,
    verity_report,
)
from attest.verity.devices import CorruptionMode, VerityReport, VerityStatus


@pytest.fixture()
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    make_dm(root, "dm-0", uuid=ROOT_UUID, name="root", dev="253:0")
    make_dm(root, "dm-1", uuid=LUKS_UUID, name="home", dev="253:1")
    make_dm(root, "dm-2", uuid=USR_UUID, name="usr", dev="253:2")
    vda = root / "devices" / "pci0000:00" / "block" / "vda"
    vda.mkdir(parents=True)
    (root / "class" / "block" / "vda").symlink_to(vda)
    return root


@pytest.fixture()
def dmsetup() -> FakeDmsetup:
    return FakeDmsetup(
        tables={ROOT_UUID: table(ROOT, " 1 restart_on_corruption"), USR_UUID: table(USR)},
        statuses={ROOT_UUID: "0 2048 verity V\n", USR_UUID: "0 2048 verity V\n"},
    )


@dataclass(frozen=True)
class FakeUdevDevice:
    sys_name: str
    sys_path: str
    properties: Mapping[str, str]


@dataclass
class FakeContext:
    devices: list[FakeUdevDevice]

    def list_devices(self, **kwargs: Any) -> Iterator[FakeUdevDevice]:
        assert kwargs == {"subsystem": "block"}
        yield from self.devices


# --- discovery --------------------------------------------------------------------------------


def test_discovers_only_verity_dm_devices(sysfs: Path, dmsetup: FakeDmsetup) -> None:
    devices = discover(context=SysfsContext(sysfs), run=dmsetup)
    assert [(d.name, d.uuid, d.devno, d.status) for d in devices] == [
        ("root", ROOT_UUID, "253:0", VerityStatus.VERIFIED),
        ("usr", USR_UUID, "253:2", VerityStatus.VERIFIED),
    ]
    root = devices[0]
    assert root.table is not None and root.table.root_digest.hex() == ROOT
    assert root.table.corruption_mode is CorruptionMode.RESTART
    assert root.error is None
    # the LUKS device and vda were never queried; nothing asked for keys
    assert {c[3] for c in dmsetup.calls} == {ROOT_UUID, USR_UUID}
    assert not any("--showkeys" in c for c in dmsetup.calls)


def test_queries_dmsetup_by_uuid_so_a_hostile_name_is_never_an_argument(
    tmp_path: Path, dmsetup: FakeDmsetup
) -> None:
    make_dm(tmp_path, "dm-0", uuid=ROOT_UUID, name="--showkeys", dev="253:0")
    [dev] = discover(context=SysfsContext(tmp_path), run=dmsetup)
    assert dev.name == "--showkeys"
    assert dmsetup.calls == [
        ["dmsetup", "table", "-u", ROOT_UUID],
        ["dmsetup", "status", "-u", ROOT_UUID],
    ]


def test_uses_udev_properties_when_sysfs_lacks_dm_attributes(
    tmp_path: Path, dmsetup: FakeDmsetup
) -> None:
    ctx = FakeContext(
        [
            FakeUdevDevice(
                "dm-0",
                str(tmp_path / "nowhere"),
                {"DM_UUID": ROOT_UUID, "DM_NAME": "root", "MAJOR": "253", "MINOR": "0"},
            ),
            FakeUdevDevice("sda", str(tmp_path / "sda"), {"DM_UUID": USR_UUID}),  # not dm-*
        ]
    )
    [dev] = discover(context=ctx, run=dmsetup)
    assert (dev.name, dev.uuid, dev.devno) == ("root", ROOT_UUID, "253:0")


def test_sysfs_uuid_wins_over_a_stale_udev_property(sysfs: Path, dmsetup: FakeDmsetup) -> None:
    # The udev database says dm-1 is verity; the kernel says it is LUKS.
    ctx = FakeContext(
        [FakeUdevDevice("dm-1", str(sysfs / "devices/virtual/block/dm-1"), {"DM_UUID": ROOT_UUID})]
    )
    assert discover(context=ctx, run=dmsetup) == []


def test_dmsetup_failure_is_reported_in_the_device(sysfs: Path, dmsetup: FakeDmsetup) -> None:
    del dmsetup.tables[USR_UUID]
    dmsetup.statuses[USR_UUID] = "0 2048 verity ?\n"
    usr = discover(context=SysfsContext(sysfs), run=dmsetup)[1]
    assert usr.table is None
    assert usr.status is VerityStatus.UNKNOWN
    assert usr.error is not None
    assert "table: dmsetup table failed: Command failed." in usr.error
    assert "status: verity status: '?' is neither V nor C" in usr.error


def test_missing_dmsetup_is_reported_not_raised(sysfs: Path) -> None:
    def no_dmsetup(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", "dmsetup")

    devices = discover(context=SysfsContext(sysfs), run=no_dmsetup)
    assert [d.status for d in devices] == [VerityStatus.UNKNOWN] * 2
    assert all(d.error and "install Debian's dmsetup package" in d.error for d in devices)


def test_dmsetup_timeout_is_reported(sysfs: Path) -> None:
    def hang(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(args), kwargs["timeout"])

    devices = discover(context=SysfsContext(sysfs), run=hang)
    assert all(d.error and "timed out" in d.error for d in devices)


def test_missing_sysfs_finds_nothing(tmp_path: Path, dmsetup: FakeDmsetup) -> None:
    assert discover(context=SysfsContext(tmp_path / "absent"), run=dmsetup) == []
    assert list(SysfsContext(tmp_path).list_devices(subsystem="net")) == []


def test_default_context_falls_back_to_sysfs_without_pyudev(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pyudev", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="attest.node.verity_watch"):
        ctx = default_context()
    assert ctx == SysfsContext()
    assert "pyudev unavailable" in caplog.text


def test_real_pyudev_context_satisfies_the_protocol(dmsetup: FakeDmsetup) -> None:
    pyudev = pytest.importorskip("pyudev")
    # The host kernel has no device-mapper: enumeration works and finds no verity device.
    assert discover(context=pyudev.Context(), run=dmsetup) == []


def test_verity_report_combines_devices_and_cmdline(
    sysfs: Path, dmsetup: FakeDmsetup, tmp_path: Path
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"BOOT_IMAGE=/vmlinuz roothash={ROOT} usrhash={USR} ro\n")
    report = verity_report(context=SysfsContext(sysfs), run=dmsetup, cmdline_path=cmdline)
    assert report.cmdline_backed
    assert [h.backed_by for h in report.cmdline_root_hashes] == [("root",), ("usr",)]


def test_unreadable_cmdline_backs_nothing(
    sysfs: Path, dmsetup: FakeDmsetup, tmp_path: Path
) -> None:
    assert read_cmdline(tmp_path / "absent") == ""
    report = verity_report(
        context=SysfsContext(sysfs), run=dmsetup, cmdline_path=tmp_path / "absent"
    )
    assert not report.cmdline_backed


# --- watching ---------------------------------------------------------------------------------


class FakeObserver:
    def __init__(self, on_event: Callable[[str, UdevDevice], None]) -> None:
        self.on_event = on_event
        self.started = False
        self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def fire(self, action: str, sys_name: str) -> None:
        self.on_event(action, SysfsDevice(sys_name, f"/sys/devices/virtual/block/{sys_name}"))


class Reports:
    def __init__(self) -> None:
        self.items: list[VerityReport] = []
        self.arrived = threading.Event()

    def __call__(self, report: VerityReport) -> None:
        self.items.append(report)
        self.arrived.set()

    def wait(self, n: int, timeout: float = 5.0) -> None:
        while len(self.items) < n:
            self.arrived.clear()
            if len(self.items) >= n:
                break
            assert self.arrived.wait(timeout), f"only {len(self.items)} reports, wanted {n}"


def test_watcher_reports_on_dm_events(sysfs: Path, dmsetup: FakeDmsetup, tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"roothash={ROOT}")
    observers: list[FakeObserver] = []

    def factory(on_event: Callable[[str, UdevDevice], None]) -> FakeObserver:
        observers.append(FakeObserver(on_event))
        return observers[-1]

    reports = Reports()
    watcher = VerityWatcher(
        reports,
        context=SysfsContext(sysfs),
        run=dmsetup,
        cmdline_path=cmdline,
        observer_factory=factory,
        poll_interval=3600,
    )
    watcher.start()
    try:
        assert watcher.mode == "udev"
        [observer] = observers
        assert observer.started
        assert len(reports.items) == 1 and reports.items[0].cmdline_backed  # initial report

        dmsetup.statuses[ROOT_UUID] = "0 2048 verity C\n"  # dm-verity hit a bad block
        observer.fire("change", "dm-0")
        assert len(reports.items) == 2 and reports.items[1].corrupted

        observer.fire("add", "vda")  # not a dm device
        observer.fire("bind", "dm-0")  # not an action we watch
        assert len(reports.items) == 2

        del dmsetup.tables[ROOT_UUID]  # the root device is gone (remove event)
        observer.fire("remove", "dm-0")
        assert len(reports.items) == 3 and not reports.items[2].cmdline_backed
        assert watcher.last_report is reports.items[2]
    finally:
        watcher.stop()
    assert observer.stopped
    observer.fire("change", "dm-0")  # late events after stop are dropped
    assert len(reports.items) == 3


def test_watcher_polls_when_udev_is_unavailable(
    sysfs: Path, dmsetup: FakeDmsetup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def no_netlink(on_event: Callable[[str, UdevDevice], None]) -> FakeObserver:
        raise OSError(93, "Protocol not supported")

    reports = Reports()
    watcher = VerityWatcher(
        reports,
        context=SysfsContext(sysfs),
        run=dmsetup,
        cmdline_path=tmp_path / "cmdline",
        observer_factory=no_netlink,
        poll_interval=0.01,
    )
    with caplog.at_level(logging.WARNING, logger="attest.node.verity_watch"):
        watcher.start()
    try:
        assert watcher.mode == "polling"
        assert caplog.text.count("udev monitor unavailable") == 1
        reports.wait(1)
        calls = len(dmsetup.calls)
        while len(dmsetup.calls) < calls + 8:  # several polls, nothing changed: no callback
            threading.Event().wait(0.01)
        assert len(reports.items) == 1
        dmsetup.statuses[USR_UUID] = "0 2048 verity C\n"
        reports.wait(2)
        assert reports.items[1].corrupted
    finally:
        watcher.stop()
    with pytest.raises(RuntimeError):
        watcher.start()


def test_watcher_survives_a_failing_callback(
    sysfs: Path, dmsetup: FakeDmsetup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[VerityReport] = []

    def flaky(report: VerityReport) -> None:
        calls.append(report)
        if len(calls) == 2:
            raise ValueError("callback bug")

    observers: list[FakeObserver] = []

    def factory(on_event: Callable[[str, UdevDevice], None]) -> FakeObserver:
        observers.append(FakeObserver(on_event))
        return observers[-1]

    watcher = VerityWatcher(
        flaky,
        context=SysfsContext(sysfs),
        run=dmsetup,
        cmdline_path=tmp_path / "cmdline",
        observer_factory=factory,
        poll_interval=3600,
    )
    watcher.start()
    try:
        with caplog.at_level(logging.ERROR, logger="attest.node.verity_watch"):
            observers[0].fire("change", "dm-0")  # raises inside: logged, swallowed
        observers[0].fire("change", "dm-0")
        assert len(calls) == 3
        assert "verity refresh failed" in caplog.text
    finally:
        watcher.stop()


def test_watcher_rejects_nonpositive_poll_interval() -> None:
    with pytest.raises(ValueError):
        VerityWatcher(lambda r: None, poll_interval=0)
