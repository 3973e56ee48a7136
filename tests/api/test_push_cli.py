"""``attest registry push`` and ``attest upgrade push`` against a real uvicorn server serving the
node's API with its gate in-process: over the operator Unix socket and over TCP; the node's
decision printed (or as JSON), refusals exit 5 with their reason code, the public channel's
403 exit 4; progress on stderr only when asked (or on a terminal)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.gate import World, corrupt, gate_app

from attest.cli import main
from attest.storage.trusted_state import load_state


@contextlib.contextmanager
def unix_server(app: Any, path: Path) -> Iterator[str]:
    """The app served by uvicorn on the Unix socket ``path`` (the operator socket's shape)."""
    import uvicorn

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, lifespan="on", access_log=False, log_level=None)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield str(path)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


def write(w: World, name: str, data: bytes) -> str:
    path = w.tmp / name
    path.write_bytes(data)
    return str(path)


def trusted(w: World) -> int:
    state = load_state(w.node.trust_dir)
    assert state is not None
    return state.floor_sequence


def test_registry_push_over_the_operator_socket_then_a_replay_is_refused(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    new, old = write(w, "new.json", w.snap(11)), write(w, "old.json", w.snap(10))
    with unix_server(gate_app(w, "operator"), w.tmp / "api.sock") as sock:
        assert main(["registry", "push", sock, new]) == 0
        out = capsys.readouterr()
        assert out.out == (
            "node accepted registry #0 -> #11 (registry-updated): registry #0 -> #11\n"
        )
        assert out.err == ""  # no progress: stderr is not a terminal
        assert trusted(w) == 11

        assert main(["registry", "push", f"unix:{sock}", old]) == 5
        err = capsys.readouterr().err
        assert err.startswith("attest: refused (snapshot-rollback): registry sequence 10")

        assert main(["registry", "push", sock, old, "--json"]) == 5
        doc = json.loads(capsys.readouterr().out)
        assert doc["accepted"] is False and doc["reason"] == "snapshot-rollback"
        assert doc["status"] == 409
    assert trusted(w) == 11


def test_registry_push_json_and_progress_over_tcp(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import uvicorn_server

    snap = write(w, "s.json", w.snap(10))
    with uvicorn_server(gate_app(w, "mtls")) as url:
        assert main(["registry", "push", url, snap, "--json", "--progress"]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert (doc["reason"], doc["previous_sequence"], doc["sequence"]) == ("registry-updated", 0, 10)
    size = len(w.snap(10)) + 8
    assert f"attest: uploading {size} / {size} bytes (100%)" in out.err


def test_registry_push_on_the_public_listener_exits_4_and_changes_nothing(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import uvicorn_server

    snap = write(w, "s.json", w.snap(10))
    with uvicorn_server(gate_app(w, "public")) as url:
        assert main(["registry", "push", url, snap]) == 4
    err = capsys.readouterr().err
    assert "HTTP 403 Forbidden" in err and "authenticated client" in err
    assert not (w.node.trust_dir / "registry.json").exists()


def test_registry_push_to_a_missing_socket_is_a_usage_error(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = write(w, "s.json", w.snap(10))
    assert main(["registry", "push", str(w.tmp / "nothing.sock"), snap]) == 2
    assert "no such socket" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1"])
@pytest.mark.parametrize("command", ["registry", "upgrade"])
def test_push_timeout_that_is_no_positive_number_is_a_usage_error(
    w: World, capsys: pytest.CaptureFixture[str], timeout: str, command: str
) -> None:
    """--timeout nan reached the socket layer: ValueError, exit 70."""
    snap = write(w, "s.json", w.snap(10))
    sock = w.tmp / "node.sock"
    with socket.socket(socket.AF_UNIX) as listener:  # a socket that exists; never reached
        listener.bind(str(sock))
        args = [str(sock), snap] if command == "registry" else [str(sock), snap, snap]
        assert main([command, "push", *args, "--timeout", timeout]) == 2
    err = capsys.readouterr().err
    says = f"--timeout: {float(timeout)} is not a finite number over 0"
    assert err == f"attest: configuration error: {says}\n"


def test_upgrade_push_stages_the_image_and_prints_the_gates_decision(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = write(w, "s.json", w.snap(10))
    bad = corrupt(w.v1, w.tmp / "bad.img", block=3)
    with unix_server(gate_app(w, "operator"), w.tmp / "api.sock") as sock:
        code = main(["upgrade", "push", sock, str(bad), snap, "--version", "1.0.0"])
        assert code == 5
        err = capsys.readouterr().err
        assert err.startswith("attest: refused (verity-root-mismatch):")
        assert w.gate.slots.load().pending is None

        assert main(["upgrade", "push", sock, str(w.v1.path), snap, "--progress"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("node staged 1.0.0 in slot b (upgrade):")
    assert "attest: uploading" in out.err and "(100%)" in out.err
    assert w.gate.slots.load().pending == "b"
