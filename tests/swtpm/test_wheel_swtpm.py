"""The package as an orchestrator installs it: the wheel built with the standard tooling
(``pip wheel``, setuptools), installed with ``[verifier]`` into a fresh venv, has no TPM stack
(tpm2-pytss, pyudev, uvloop) and still runs ``attest --help``, every command's ``--help``, the
verifier library, and a real ``attest verify`` of a real node (issue 16, item 3).

In the swtpm tier (a node to verify, and ~1 min of wheel build and install from the package
index): too slow for the unit tier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.swtpm.conftest import Node, no_release_policy

from attest.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
DIST = "attest-node-integrity"
pytestmark = pytest.mark.slow


def _run(argv: list[str | os.PathLike[str]], cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"  # a copy: building writes build/ and *.egg-info beside the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", tree], work)
    (wheel,) = (work / "dist").glob("attest_node_integrity-*.whl")
    _run([sys.executable, "-m", "venv", work / "venv"], work)
    _run([work / "venv/bin/python", "-m", "pip", "install", "-q", f"{wheel}[verifier]"], work)
    return work / "venv"


def test_verifier_install_has_no_tpm_stack_and_every_command_starts(
    venv: Path, tmp_path: Path
) -> None:
    py = venv / "bin/python"
    probe = (
        "import importlib.util as u, attest, attest.verifier.contact, attest.verifier.fleet.api;"
        "print(attest.__file__);"
        "print([m for m in ('tpm2_pytss', 'pyudev', 'uvloop') if u.find_spec(m)])"
    )
    where, missing = _run([py, "-c", probe], tmp_path).splitlines()
    assert where.startswith(str(venv)) and missing == "[]"
    installed = json.loads(_run([py, "-m", "pip", "list", "--format=json"], tmp_path))
    names = {d["name"].lower() for d in installed}
    assert DIST in names and not names & {"tpm2-pytss", "pyudev", "uvloop", "psycopg"}
    assert "usage: attest" in _run([venv / "bin/attest", "--help"], tmp_path)
    for command in COMMANDS:
        out = _run([venv / "bin/attest", command, "--help"], tmp_path)
        assert out.startswith(f"usage: attest {command}"), command


def test_packaged_system_files_install_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    out = _run([venv / "bin/attest", "node", "install", "--prefix", tmp_path / "root"], tmp_path)
    lines = out.splitlines()
    assert len(lines) == 6 and all(line.startswith("installed: ") for line in lines), out
    rule = (tmp_path / "root/usr/lib/udev/rules.d/60-attest.rules").read_text()
    assert 'KERNEL=="device-mapper", OWNER="attest-tpm", MODE="0600"' in rule, rule
    unit = (tmp_path / "root/usr/lib/systemd/system/attestd.service").read_text()
    assert f"ExecStart={venv}/bin/attestd\n" in unit


def test_the_vendor_ek_ca_store_ships_in_the_wheel(venv: Path, tmp_path: Path) -> None:
    """The bundled store is package data: an installed wheel verifies a real vendor EK
    certificate with no roots given (``attest ek verify`` without ``--roots``)."""
    probe = (
        "from attest.verifier.ek_roots import bundled_ek_roots as b; s = b();"
        "print(len(s.roots) + len(s.intermediates), len(s.errors))"
    )
    assert _run([venv / "bin/python", "-c", probe], tmp_path).split() == ["198", "0"]
    leaf = REPO / "tests/data/ekcerts/leaves/infineon-rsa-ek-slb9670-mfr035.der"
    out = _run(
        [venv / "bin/attest", "ek", "verify", leaf, "--now", "2026-06-01T00:00:00Z", "--json"],
        tmp_path,
    )
    assert json.loads(out)["verified"] is True


def test_verifier_only_install_verifies_a_real_node(venv: Path, node: Node, tmp_path: Path) -> None:
    out = _run(
        [
            venv / "bin/attest",
            "verify",
            node.url,
            "--state",
            tmp_path / "verifier",
            "--ek-ca",
            node.state.root_ca,
            "--ek-ca",
            node.state.intermediate_ca,
            "--operator-socket",
            node.api_sock,
            "--policy",
            no_release_policy(tmp_path),
            "--json",
        ],
        tmp_path,
    )
    doc = json.loads(out)
    assert doc["verdict"] == "affirming", doc["explanation"]
