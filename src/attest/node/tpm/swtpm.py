"""Run a software TPM (swtpm) for demos, tests and the VM harness.

``manufacture`` creates TPM state with EK certificates signed by a private local CA kept in a
directory of ours (never the system-wide ``/var/lib/swtpm-localca``); ``SwtpmProcess`` serves
that state on free loopback ports and is cleaned up on ``stop()`` or context exit.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from attest.errors import TpmError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SwtpmState:
    state_dir: Path
    ca_dir: Path

    @property
    def root_ca(self) -> Path:
        """The local CA's root certificate (PEM), the trust anchor for EK certificates."""
        return self.ca_dir / "swtpm-localca-rootca-cert.pem"

    @property
    def intermediate_ca(self) -> Path:
        return self.ca_dir / "issuercert.pem"


def require_binaries(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise TpmError(
            f"missing {', '.join(missing)}: install the Debian packages swtpm swtpm-tools "
            f"(the README's commands do this)"
        )


def manufacture(
    workdir: Path, *, banks: Sequence[str] = ("sha256", "sha1"), ca_dir: Path | None = None
) -> SwtpmState:
    """Create a manufactured TPM in ``workdir/state`` with EK and platform certificates issued
    by a local CA in ``ca_dir`` (default ``workdir/ca``; pass a shared one to make several TPMs
    under one CA). Takes a few seconds."""
    require_binaries("swtpm", "swtpm_setup", "swtpm_localca")
    state = workdir / "state"
    ca = ca_dir or workdir / "ca"
    state.mkdir(parents=True, exist_ok=True)
    ca.mkdir(parents=True, exist_ok=True)
    localca_conf = workdir / "swtpm-localca.conf"
    localca_conf.write_text(
        f"statedir = {ca}\n"
        f"signingkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\n"
        f"certserial = {ca}/certserial\n"
    )
    options = workdir / "swtpm-localca.options"
    options.write_text(
        "--platform-manufacturer attest\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    setup_conf = workdir / "swtpm_setup.conf"
    setup_conf.write_text(
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {localca_conf}\n"
        f"create_certs_tool_options = {options}\n"
        f"active_pcr_banks = {','.join(banks)}\n"
    )
    cmd = [
        "swtpm_setup",
        "--tpm2",
        "--tpmstate",
        str(state),
        "--config",
        str(setup_conf),
        "--create-ek-cert",
        "--create-platform-cert",
        "--pcr-banks",
        ",".join(banks),
        "--overwrite",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise TpmError(f"swtpm_setup failed ({proc.returncode}): {' | '.join(tail)}")
    return SwtpmState(state, ca)


def free_port_pair() -> int:
    """A port P such that P and P+1 were both free on 127.0.0.1 a moment ago."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise TpmError("no free pair of loopback ports")


# TPM_ST_NO_SESSIONS, size 12, TPM_CC_Shutdown, TPM_SU_CLEAR
_TPM2_SHUTDOWN_CLEAR = bytes.fromhex("80010000000c000001450000")


class SwtpmProcess:
    """A running ``swtpm socket`` serving ``state_dir`` on 127.0.0.1."""

    def __init__(self, state_dir: Path, *, port: int | None = None) -> None:
        require_binaries("swtpm")
        self.state_dir = state_dir
        self.port = port or free_port_pair()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"swtpm-{self.port}.log"

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self, *, timeout: float = 10.0, startup: bool = True) -> SwtpmProcess:
        """Serve the state; ``startup=False`` leaves TPM2_Startup to the client (the TPM
        answers TPM_RC_INITIALIZE until then, as a TPM the firmware did not start)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("swtpm already running")
        cmd = [
            "swtpm",
            "socket",
            "--tpm2",
            "--server",
            f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
            "--flags",
            "startup-clear,not-need-init" if startup else "not-need-init",
            "--tpmstate",
            f"dir={self.state_dir}",
            "--log",
            f"file={self.log_path},level=1",
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise TpmError(f"swtpm exited with {self.proc.returncode}: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.02)
        self.stop()
        raise TpmError(f"swtpm did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def shutdown_tpm(self) -> None:
        """Send TPM2_Shutdown(TPM_SU_CLEAR), an orderly power-down (Part 3 §9.4). Without it
        the next start reports ``clockInfo.safe = NO``, as a real TPM does after power loss."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(_TPM2_SHUTDOWN_CLEAR)
            s.recv(64)

    def stop(self, *, orderly: bool = True) -> None:
        """Stop swtpm; ``orderly=False`` is a power cut (no TPM2_Shutdown)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if orderly:
                with contextlib.suppress(OSError):
                    self.shutdown_tpm()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> SwtpmProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
