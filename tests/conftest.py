"""Shared fixtures and the test tiers.

Tiers are directories: tests/unit (pure core), tests/api (the app with a fake TPM),
tests/swtpm (a real swtpm), tests/vm (QEMU). Each test gets its tier's marker, so
``pytest -m swtpm`` runs one tier. A tier whose binaries are missing is skipped with the reason
on a developer's machine, and FAILS under CI (``CI=true``), where .ci/run installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState

if TYPE_CHECKING:
    from attest.node.tpm.esapi import EsapiTpm

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TIERS = ("unit", "api", "swtpm", "fleet", "vm")


def pytest_configure(config: pytest.Config) -> None:
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: tests of the {tier} tier (tests/{tier})")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(REPO / "tests")
        tier = rel.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def need_binaries(*names: str) -> None:
    """Skip (or, under CI, fail) when a tier's binaries are missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if not missing:
        return
    msg = f"missing binaries {', '.join(missing)} (run the README's test command to install)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this tier: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the shared corpus must sit beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def swtpm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One manufactured TPM state (EK certs from a private CA), made once per session."""
    need_binaries("swtpm", "swtpm_setup", "swtpm_localca")
    from attest.node.tpm.swtpm import manufacture

    work = tmp_path_factory.mktemp("swtpm-template")
    manufacture(work)
    return work


SwtpmFactory = Callable[..., tuple[SwtpmProcess, SwtpmState]]


@pytest.fixture()
def swtpm_factory(swtpm_template: Path, tmp_path: Path) -> Iterator[SwtpmFactory]:
    """Start fresh swtpm processes, each on its own copy of the manufactured state."""
    started: list[SwtpmProcess] = []

    def start(name: str = "tpm") -> tuple[SwtpmProcess, SwtpmState]:
        work = tmp_path / name
        shutil.copytree(swtpm_template, work)
        proc = SwtpmProcess(work / "state").start()
        started.append(proc)
        return proc, SwtpmState(work / "state", work / "ca")

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture()
def swtpm(swtpm_factory: SwtpmFactory) -> tuple[SwtpmProcess, SwtpmState]:
    """A running swtpm (fresh state copy) -> (SwtpmProcess, SwtpmState)."""
    return swtpm_factory()


@pytest.fixture()
def tpm(swtpm: tuple[SwtpmProcess, SwtpmState]) -> Iterator[EsapiTpm]:
    """An EsapiTpm connected to a fresh swtpm (tpm2_pytss is imported only here)."""
    from attest.node.tpm.esapi import EsapiTpm

    t = EsapiTpm(swtpm[0].tcti)
    yield t
    t.close()


@contextlib.contextmanager
def uvicorn_server(app: Any, **config: Any) -> Iterator[str]:
    """Serve an ASGI app with a real uvicorn server on 127.0.0.1 (a free port) from a thread,
    with its lifespan: yields the base URL; stops the server on exit. uvicorn's loggers are
    left to propagate (no ``log_config``), so ``caplog`` sees what it logs."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, lifespan="on", access_log=False, **{"log_level": None, **config}
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
