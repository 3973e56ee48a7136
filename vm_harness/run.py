"""VM lifecycle: a manufactured swtpm per VM, QEMU q35 + OVMF (a fresh VARS copy per VM) +
tpm-crb, the node's disks as copy-on-write overlays of the built image, user networking with the
daemon's port forwarded to 127.0.0.1, QMP control (``qemu.qmp``), the serial log captured and
its milestones timed.

Every process started here is stopped by ``Vm.stop()``: on context exit, at interpreter exit
(atexit), on SIGTERM/SIGINT/SIGHUP (turned into ``SystemExit`` so that ``finally`` blocks run),
and -- for a VM left running by ``up`` -- by ``down`` from the pids recorded in its run
directory (each checked against its command line before it is signalled).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from attest.node.tpm.swtpm import SwtpmState, manufacture
from attest.verifier.client import NodeClient

from . import WORK
from .build import NodeImage
from .image import GUEST_API_PORT, GUEST_MTLS_PORT, build_state_disk, read_state_file
from .kvm import OVMF_CODE, OVMF_VARS, QEMU, choose_accel
from .prodnode import GUEST_DEBUG_PORT, GUEST_OPERATOR_PORT
from .trust import STATE_DISK_MIB, state_files

BOOT_TIMEOUT = 240.0  # TCG: ~45-60 s (systemd, two daemons); a loaded machine doubles it
MEMORY_MIB = 512
# TCG runs each vCPU in a host thread of its own (MTTCG): with two, attestd-tpm and attestd
# start side by side when the host has a core to spare. Changes PCR 0 (record-platform).
VCPUS = 2
SLOT_SIZE_SLACK = 64 << 20

_live: weakref.WeakSet[Vm] = weakref.WeakSet()
_handlers_installed = False


class VmError(RuntimeError):
    """The VM could not be started or did not reach a state in time."""


def _stop_all() -> None:
    for vm in list(_live):
        with contextlib.suppress(Exception):
            vm.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal (e.g. from `timeout`, which
        signal.signal(sig, signal.SIG_IGN)  # forwards its own) must not abort the clean-up
    raise SystemExit(128 + signum)


def install_cleanup_handlers() -> None:
    """atexit + SIGTERM/SIGHUP -> SystemExit (SIGINT already raises KeyboardInterrupt)."""
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Qmp:
    """A synchronous face on ``qemu.qmp.QMPClient`` (its own event loop)."""

    def __init__(self, path: Path) -> None:
        from qemu.qmp import QMPClient  # the optional 'vm' extra: imported when a VM starts

        self.loop = asyncio.new_event_loop()
        self.client = QMPClient("attest-vm")
        self.path = path

    def connect(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.loop.run_until_complete(self.client.connect(str(self.path)))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def cmd(self, name: str, **args: Any) -> Any:
        return self.loop.run_until_complete(self.client.execute(name, args or None))

    def close(self) -> None:
        with contextlib.suppress(Exception, EOFError):
            self.loop.run_until_complete(self.client.disconnect())
        self.loop.close()


@dataclass
class Milestone:
    host_s: float  # seconds after QEMU started, as seen by the host
    text: str


@dataclass(eq=False)
class Vm:
    """One node VM. ``start()`` boots it; ``wait_ready()`` waits for attestd's API."""

    image: NodeImage
    name: str = "node"
    work: Path = WORK
    memory_mib: int = MEMORY_MIB
    accel: str | None = None
    swtpm_state: Path | None = None  # reuse a manufactured TPM (scenario 8 swaps it)
    port: int = 0
    mtls_port: int = 0  # host port of the guest's mutual-TLS listener (upgrades)
    debug_port: int = 0  # host port of the test image's debug agent (prodnode.DEBUG_AGENT)
    operator_port: int = 0  # host port of the test image's operator relay (upgrade confirm)
    milestones: list[Milestone] = field(default_factory=list)
    t_start: float = 0.0

    def __post_init__(self) -> None:
        self.dir = self.work / "run" / self.name
        self.qemu: subprocess.Popen[bytes] | None = None
        self.swtpm: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self._serial_pos = 0

    # --- paths ---------------------------------------------------------------------------
    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mtls_url(self) -> str:
        return f"https://127.0.0.1:{self.mtls_port}"

    @property
    def state_disk(self) -> Path:
        return self.dir / "state.img"

    def state_file(self, rel: str) -> bytes | None:
        """A file of the node's state disk (``attest/slots/boot.json`` …), crash-consistent."""
        return read_state_file(self.state_disk, rel)

    @property
    def slot_b(self) -> Path:
        return self.dir / "slot-b.img"

    @property
    def ca_dir(self) -> Path:
        return self.work / "ca"

    def tpm_state(self) -> SwtpmState:
        return SwtpmState(self.dir / "tpm" / "state", self.ca_dir)

    # --- preparation ---------------------------------------------------------------------
    def prepare(self, *, fresh_disks: bool = True, fresh_tpm: bool = True) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh_tpm:
            shutil.rmtree(self.dir / "tpm", ignore_errors=True)
            manufacture(self.dir / "tpm", banks=("sha256",), ca_dir=self.ca_dir)
        if fresh_disks:
            for f in ("esp.qcow2", "slot-a.qcow2", "slot-b.img", "state.img", "vars.fd"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / f).unlink()
            self._overlay(Path(self.image.esp), self.dir / "esp.qcow2")
            self._overlay(Path(self.image.root), self.dir / "slot-a.qcow2")
            size = Path(self.image.root).stat().st_size + SLOT_SIZE_SLACK
            with (self.dir / "slot-b.img").open("wb") as fh:
                fh.truncate(size)
            build_state_disk(
                self.state_disk, files=state_files(self.image, self.work), size_mib=STATE_DISK_MIB
            )
            shutil.copyfile(OVMF_VARS, self.dir / "vars.fd")

    @staticmethod
    def _overlay(base: Path, out: Path) -> None:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(out)],
            check=True,
            capture_output=True,
        )

    # --- processes -----------------------------------------------------------------------
    def _start_swtpm(self) -> Path:
        sock = self.dir / "swtpm.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        state = self.swtpm_state or self.tpm_state().state_dir
        log = self.dir / "swtpm.log"
        self.swtpm = subprocess.Popen(
            [
                "swtpm",
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={state}",
                "--ctrl",
                f"type=unixio,path={sock}",
                "--terminate",
                "--log",
                f"file={log},level=1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(200):
            if sock.exists():
                return sock
            if self.swtpm.poll() is not None:
                raise VmError(f"swtpm exited ({self.swtpm.returncode}); see {log}")
            time.sleep(0.025)
        raise VmError("swtpm did not create its control socket")

    def qemu_command(self, tpm_sock: Path, qmp_sock: Path) -> list[str]:
        accel = self.accel or "tcg"
        cpu = ["-cpu", "host"] if accel == "kvm" else []
        d = self.dir
        return [
            QEMU,
            "-name",
            f"attest-{self.name}",
            "-machine",
            "q35",
            "-accel",
            accel,
            *cpu,
            "-m",
            str(self.memory_mib),
            "-smp",
            str(VCPUS),
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.serial_log}",
            "-qmp",
            f"unix:{qmp_sock},server=on,wait=off",
            "-pidfile",
            str(d / "qemu.pid"),
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={d / 'vars.fd'}",
            "-chardev",
            f"socket,id=chrtpm,path={tpm_sock}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-crb,tpmdev=tpm0",
            "-drive",
            f"if=none,id=esp,format=qcow2,file={d / 'esp.qcow2'}",
            "-device",
            "virtio-blk-pci,drive=esp,serial=esp,bootindex=0",
            "-drive",
            f"if=none,id=slota,format=qcow2,file={d / 'slot-a.qcow2'}",
            "-device",
            "virtio-blk-pci,drive=slota,serial=slot-a",
            "-drive",
            f"if=none,id=slotb,format=raw,file={d / 'slot-b.img'}",
            "-device",
            "virtio-blk-pci,drive=slotb,serial=slot-b",
            "-drive",
            f"if=none,id=state,format=raw,file={self.state_disk}",
            "-device",
            "virtio-blk-pci,drive=state,serial=state",
            "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:{GUEST_API_PORT},"
            f"hostfwd=tcp:127.0.0.1:{self.mtls_port}-:{GUEST_MTLS_PORT},"
            f"hostfwd=tcp:127.0.0.1:{self.debug_port}-:{GUEST_DEBUG_PORT},"
            f"hostfwd=tcp:127.0.0.1:{self.operator_port}-:{GUEST_OPERATOR_PORT}",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]

    def start(self) -> Vm:
        install_cleanup_handlers()
        if self.qemu is not None and self.qemu.poll() is None:
            raise RuntimeError("the VM is already running")
        if self.accel is None:
            self.accel, _why = choose_accel(self.work)
        if not self.port:
            self.port = free_port()
        if not self.mtls_port:
            self.mtls_port = free_port()
        if not self.debug_port:
            self.debug_port = free_port()
        if not self.operator_port:
            self.operator_port = free_port()
        _live.add(self)
        tpm_sock = self._start_swtpm()
        qmp_sock = self.dir / "qmp.sock"
        with contextlib.suppress(FileNotFoundError):
            qmp_sock.unlink()
        self.serial_log.write_bytes(b"")
        self._serial_pos = 0
        self.milestones = []
        cmd = self.qemu_command(tpm_sock, qmp_sock)
        (self.dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self.t_start = time.monotonic()
        self.qemu = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=(self.dir / "qemu.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._write_state()
        self.qmp = Qmp(qmp_sock)
        try:
            self.qmp.connect()
        except Exception as exc:
            self.stop()
            out = (self.dir / "qemu.out").read_text(errors="replace")[-400:]
            raise VmError(f"QMP did not answer: {exc}; qemu: {out}") from None
        return self

    def _write_state(self) -> None:
        doc = {
            "name": self.name,
            "port": self.port,
            "url": self.url,
            "mtls_url": self.mtls_url,
            "qemu_pid": self.qemu.pid if self.qemu else None,
            "swtpm_pid": self.swtpm.pid if self.swtpm else None,
            "serial_log": str(self.serial_log),
            "accel": self.accel,
            "version": self.image.version,
        }
        (self.dir / "state.json").write_text(json.dumps(doc, indent=2))

    def alive(self) -> bool:
        return self.qemu is not None and self.qemu.poll() is None

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def poll_serial(self) -> None:
        """Time-stamp new milestone lines of the serial log (as the host sees them)."""
        try:
            with self.serial_log.open("rb") as fh:
                fh.seek(self._serial_pos)
                chunk = fh.read()
        except OSError:
            return
        last_nl = chunk.rfind(b"\n")
        if last_nl < 0:
            return
        self._serial_pos += last_nl + 1
        now = time.monotonic() - self.t_start
        for line in chunk[: last_nl + 1].decode(errors="replace").splitlines():
            if (
                line.startswith(("attest-init:", "BdsDxe", "EFI stub"))
                or "attest-node: " in line  # the script init's, or journald's (systemd)
                or "Kernel panic" in line
                or "attestd" in line
            ):
                self.milestones.append(Milestone(round(now, 2), line.strip()[:200]))

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait until attestd answers /readyz through the port forward; seconds since start."""
        deadline = self.t_start + timeout
        with NodeClient(self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                self.poll_serial()
                if not self.alive():
                    raise VmError(
                        f"QEMU exited ({self.qemu.returncode if self.qemu else '?'})"
                        f" before the daemon was ready: {self.failure_reason()}"
                    )
                if client.ready():
                    t = time.monotonic() - self.t_start
                    self.milestones.append(Milestone(round(t, 2), "attestd /readyz 200"))
                    return t
                time.sleep(0.25)
        raise VmError(
            f"attestd not ready within {timeout:.0f} s; serial tail: "
            f"{' | '.join(self.serial_text().strip().splitlines()[-4:])}"
        )

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        assert self.qemu is not None
        deadline = self.t_start + timeout
        while time.monotonic() < deadline:
            self.poll_serial()
            if self.qemu.poll() is not None:
                return self.qemu.returncode
            time.sleep(0.25)
        raise VmError(f"the VM did not stop within {timeout:.0f} s")

    def failure_reason(self) -> str:
        """The serial log's account of why the node stopped (panic, fail-closed line)."""
        text = self.serial_text()
        for pat in (
            r"attest-init: t=\S+ FAIL-CLOSED: .*",
            r"device-mapper: verity.*corrupted.*",
            r"Kernel panic - not syncing: .*",
            r"attest-node: .*exited.*",
        ):
            m = re.search(pat, text)
            if m:
                return m.group(0).strip()
        tail = text.strip().splitlines()[-3:]
        return " | ".join(tail) if tail else "no serial output"

    def quit(self) -> None:
        """Power cut: QMP ``quit`` (no guest shutdown, no TPM2_Shutdown)."""
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.cmd("quit")
        if self.qemu is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.qemu.wait(timeout=10)

    def stop(self) -> None:
        if self.qmp is not None:
            if self.alive():
                with contextlib.suppress(Exception):
                    self.qmp.cmd("quit")
            self.qmp.close()
            self.qmp = None
        for proc in (self.qemu, self.swtpm):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.qemu = None
        self.swtpm = None
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "state.json").unlink()
        _live.discard(self)

    def boot_report(self) -> list[dict[str, Any]]:
        return [{"host_s": m.host_s, "event": m.text} for m in self.milestones]

    def __enter__(self) -> Vm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(image: NodeImage, **kw: Any) -> Iterator[Vm]:
    vm = Vm(image, **kw)
    vm.prepare()
    with vm:
        vm.wait_ready()
        yield vm


def down(name: str = "node", work: Path = WORK) -> list[str]:
    """Stop a VM left running by ``up`` (only the pids it recorded, each checked)."""
    d = work / "run" / name
    state = d / "state.json"
    if not state.exists():
        return []
    doc = json.loads(state.read_text())
    stopped = []
    for key, expect in (("qemu_pid", QEMU), ("swtpm_pid", "swtpm")):
        pid = doc.get(key)
        if not pid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if expect not in cmdline or str(d) not in cmdline:
            continue  # not ours any more
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        stopped.append(f"{key.split('_')[0]} {pid}")
    state.unlink()
    return stopped
