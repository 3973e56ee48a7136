"""Fixtures of the swtpm tier: the real node daemons (attestd-tpm + attestd) on a swtpm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import SwtpmFactory
from tests.support.cli import verify_main
from tests.unit.snp.fakes import fake

from attest.appraisal import Appraised
from attest.appraisal.rules import VerifierRules
from attest.enroll import Enrollment
from attest.model import PcrSelection
from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, free_port_pair
from attest.snp.report import Product, parse_report
from attest.testing.snp import FakeAmd, fake_guest_dir
from attest.tpmstruct import ClockInfo
from attest.verifier.client import NodeClient
from attest.verifier.contact import appraise_evidence, gather, selection_for

BIN = Path(sys.executable).parent


@dataclass
class Node:
    swtpm: SwtpmProcess | None  # None: a node without a TPM (attestd-tpm --no-tpm)
    state: SwtpmState | None
    port: int
    api_sock: Path
    broker: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    work: Path
    logs: tuple[IO[bytes], ...] = field(default=())
    broker_cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def start_broker(self) -> None:
        """Start attestd-tpm again (after a kill) with the same options."""
        self.broker = subprocess.Popen(
            self.broker_cmd, env=dict(self.env), stdout=self.logs[0], stderr=subprocess.STDOUT
        )

    def start_api(self) -> None:
        """Start attestd again (after a kill) with the same environment."""
        self.api = subprocess.Popen(
            [str(BIN / "attestd")],
            env=dict(self.env),
            stdout=self.logs[1],
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> NodeClient:
        return NodeClient(self.url)

    def operator(self) -> NodeClient:
        return NodeClient("http://operator", uds=str(self.api_sock))

    @property
    def broker_operator_sock(self) -> Path:
        """attestd-tpm's operator socket."""
        return self.work / "run" / "tpm-op.sock"

    def roots(self) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
        assert self.state is not None, "a node without a TPM has no EK CA"
        root = x509.load_pem_x509_certificate(self.state.root_ca.read_bytes())
        inter = x509.load_pem_x509_certificate(self.state.intermediate_ca.read_bytes())
        return [root], [inter]

    def stop(self) -> None:
        """Stop the daemons (the swtpm is stopped by its factory)."""
        for proc in (self.api, self.broker):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for f in self.logs:
            f.close()


def wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} within {timeout} s")


# The developer rules for swtpm nodes (docs/verify.md, --policy): they run no blessed image,
# and no firmware measured anything into PCRs 0-7, so there is no platform reference to equal.
NO_RELEASE_RULES = VerifierRules(allow_unidentified_release=True, waive_platform=True)


def no_release_policy(directory: Path) -> str:
    """A ``--policy`` file with the developer rules of ``NO_RELEASE_RULES``, for the CLI."""
    path = directory / "no-release-policy.json"
    path.write_text(json.dumps(NO_RELEASE_RULES.to_json()) + "\n")
    return str(path)


def appraise_contact(
    client: NodeClient,
    enrollment: Enrollment,
    *,
    pcrs: PcrSelection | None = None,
    operator: NodeClient | None = None,
    previous: ClockInfo | None = None,
    rules: VerifierRules = NO_RELEASE_RULES,
) -> Appraised:
    """One contact as ``attest verify`` makes it, without a registry: a fresh challenge
    (``gather``: the evidence with both logs from the start, the audit log over ``operator``)
    appraised whole (``appraise_evidence``). Raises ``TransportError`` (the node did not answer).
    These nodes run no blessed image, so the default rules say explicitly that the release is
    not appraised (``allow_unidentified_release``); with the product's default rules the
    verdict would be a warning ("no registry: release not appraised")."""
    ev = gather(
        client,
        selection_for(enrollment.runtime_pcr, pcrs),
        operator=operator,
        identity=client.identity(),
    )
    return appraise_evidence(
        ev,
        enrollment=enrollment,
        registry=None,
        platform_id=None,
        previous=previous,
        now=datetime.now(UTC),
        rules=rules,
    )


def verify(
    capsys: pytest.CaptureFixture[str],
    node: Node,
    state: Path,
    key: Path | None,
    *extra: str,
    url: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """``attest verify --json`` of ``node`` (or of ``url`` in front of it) with the swtpm's EK
    CAs, the operator socket and, unless ``extra`` names a ``--policy``, the developer rule of
    ``no_release_policy``; EAR signed with ``key`` when given. Returns (exit code, output)."""
    args = [
        url or node.url,
        "--state",
        str(state),
        *([] if key is None else ["--ear-key", str(key)]),
        "--json",
        "--ek-ca",
        str(node.state.root_ca),
        "--ek-ca",
        str(node.state.intermediate_ca),
        "--operator-socket",
        str(node.api_sock),
        *([] if "--policy" in extra else ["--policy", no_release_policy(state.parent)]),
        *extra,
    ]
    capsys.readouterr()
    code = verify_main(args)
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture()
def ear_key(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A fresh P-256 EAR signing key: its PEM file and the key."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ear.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key


NodeFactory = Callable[..., Node]


@pytest.fixture()
def node_factory(swtpm_factory: SwtpmFactory, tmp_path: Path) -> Iterator[NodeFactory]:
    """Start nodes: ``start(name="node", port=None, tpm=None, broker_args=(), env=None)`` --
    each on its own fresh copy of the session's swtpm state (or on ``tpm``, a running swtpm the
    caller owns) with its own node state dir; ``port`` reuses an address (a node restarted on
    another TPM); ``broker_args`` are more ``attestd-tpm`` options (e.g. the upgrade gate's)
    and ``env`` more environment for both daemons (e.g. ``ATTEST_UPGRADE_SPOOL_DIR``).
    ``no_tpm=True``: no swtpm at all, attestd-tpm ``--no-tpm`` (an SEV-SNP guest without a
    vTPM: give it ``--snp-guest`` in ``broker_args`` and ``ATTEST_SNP_ONLY`` in ``env``)."""
    nodes: list[Node] = []

    def start(
        name: str = "node",
        port: int | None = None,
        tpm: tuple[SwtpmProcess, SwtpmState] | None = None,
        broker_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        no_tpm: bool = False,
    ) -> Node:
        sw: SwtpmProcess | None = None
        state: SwtpmState | None = None
        if not no_tpm:
            sw, state = tpm if tpm is not None else swtpm_factory(f"{name}-tpm")
        work = tmp_path / name
        run = work / "run"
        run.mkdir(parents=True, exist_ok=True)  # a restart of ``name`` keeps its state
        for stale in run.glob("*.sock"):
            stale.unlink()
        node_state = work / "state"
        node_state.mkdir(mode=0o700, exist_ok=True)
        port = port or free_port_pair()
        env = {
            **os.environ,
            "ATTEST_TPM_BROKER_SOCKET": str(run / "tpm.sock"),
            "ATTEST_API_PORT": str(port),
            "ATTEST_API_OPERATOR_SOCKET": str(run / "api.sock"),
            "ATTEST_TPM_STATE_DIR": str(node_state),
            "ATTEST_NODE_ID": "swtpm-node",
            "ATTEST_LOGS_FIRMWARE_LOG": str(work / "none"),
            "ATTEST_API_RATE_PER_SECOND": "100000",
            "ATTEST_API_RATE_BURST": "100000",
            **(env or {}),
        }
        logs = (work / "broker.log").open("ab"), (work / "api.log").open("ab")
        broker_cmd = (
            str(BIN / "attestd-tpm"),
            *(("--no-tpm",) if sw is None else ("--tcti", sw.tcti)),
            "--socket",
            str(run / "tpm.sock"),
            "--operator-socket",
            str(run / "tpm-op.sock"),
            "--state-dir",
            str(node_state),
            # Not the host's firmware log (it would not replay into the swtpm's PCRs), no
            # dm-verity watcher (the host has no device-mapper); broker_args may override.
            "--firmware-log",
            str(work / "none"),
            "--watch-verity",
            "off",
            *broker_args,
        )
        broker = subprocess.Popen(broker_cmd, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
        wait(lambda: (run / "tpm.sock").exists(), 30, "broker socket")
        api = subprocess.Popen(
            [str(BIN / "attestd")], env=env, stdout=logs[1], stderr=subprocess.STDOUT
        )
        n = Node(sw, state, port, run / "api.sock", broker, api, work, logs, broker_cmd, env)
        nodes.append(n)
        with n.client() as c:
            wait(c.ready, 60, "attestd ready")
        return n

    yield start
    for n in nodes:
        n.stop()


@pytest.fixture()
def node(node_factory: NodeFactory) -> Node:
    return node_factory()


def attest_verify(node: Node, state: Path) -> subprocess.CompletedProcess[str]:
    """``attest verify NODE --json`` as a process, with the node's EK CA and operator socket."""
    root, inter = node.state.root_ca, node.state.intermediate_ca
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "attest",
            "verify",
            node.url,
            "--state",
            str(state),
            "--ek-ca",
            str(root),
            "--ek-ca",
            str(inter),
            "--operator-socket",
            str(node.api_sock),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- a host and its guest (test_pair_swtpm, test_pair_snp_swtpm) ---


class Pair:
    def __init__(self, host: Node, vtpm_dir: Path, guest: Node, guest_sw: SwtpmProcess) -> None:
        self.host, self.vtpm_dir, self.guest, self.guest_sw = host, vtpm_dir, guest, guest_sw


def verify_pair(
    capsys: pytest.CaptureFixture[str],
    pair: Pair,
    state: Path,
    key: Path,
    *extra: str,
    host_url: str | None = None,
    guest: Node | None = None,
) -> tuple[int, dict[str, Any]]:
    g = guest or pair.guest
    ca = pair.vtpm_dir / "ca"
    args = [
        g.url,
        "--host",
        host_url or pair.host.url,
        "--state",
        str(state),
        "--ear-key",
        str(key),
        "--json",
        "--ek-ca",
        str(ca / "swtpm-localca-rootca-cert.pem"),
        "--ek-ca",
        str(ca / "issuercert.pem"),
        "--operator-socket",
        str(g.api_sock),
        *host_verify_args(pair.host),
        *([] if "--policy" in extra else ["--policy", no_release_policy(state.parent)]),
        *extra,
    ]
    return verify_json(capsys, args)


def host_verify_args(host: Node, *, operator: bool = True) -> list[str]:
    """``attest verify --host``'s arguments for a host node: its EK CAs and (``operator``)
    its operator socket."""
    assert host.state is not None
    return [
        "--host-ek-ca",
        str(host.state.root_ca),
        "--host-ek-ca",
        str(host.state.intermediate_ca),
        *(["--host-operator-socket", str(host.api_sock)] if operator else []),
    ]


def verify_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, dict[str, Any]]:
    """``attest verify ARGS``: its exit code and its ``--json`` output."""
    capsys.readouterr()
    code = verify_main(args)
    return code, json.loads(capsys.readouterr().out)


# --- an SEV-SNP guest without a vTPM, and its host (test_snp_only_node_swtpm) ---


@dataclass
class SnpOnlyPair:
    """A host on swtpm whose attestd-tpm records the fake guest's chip (``--snp-host
    fake:HEX``), and an SEV-SNP guest with no TPM at all: attestd-tpm ``--no-tpm --snp-guest
    fake:DIR``, attestd ``[snp] only``. ``amd``: the fake AMD whose ARK a verifier pins in
    AMD's place; ``chip_id``: the CHIP_ID of the guest's reports (the host's chip)."""

    host: Node
    guest: Node
    amd: FakeAmd
    snp_dir: Path
    chip_id: bytes


def start_snp_only_pair(
    node_factory: NodeFactory,
    tmp_path: Path,
    *,
    guest_id: str = "g1",
    host_env: Mapping[str, str] | None = None,
    **report: Any,
) -> SnpOnlyPair:
    """Start the two (``report``: fields of the fake guest's reports, e.g. ``measurement``)."""
    amd = fake(Product.MILAN)
    snp_dir = fake_guest_dir(amd, tmp_path / "fake-snp-only", **report)
    chip = parse_report((snp_dir / "report.bin").read_bytes()).chip_id
    host = node_factory(
        "host",
        broker_args=["--snp-host", f"fake:{chip.hex()}"],
        env={"ATTEST_NODE_ID": "host-1", **(host_env or {})},
    )
    guest = node_factory(
        "guest",
        no_tpm=True,
        broker_args=["--snp-guest", f"fake:{snp_dir}"],
        env={"ATTEST_NODE_ID": guest_id, "ATTEST_SNP_ONLY": "true"},
    )
    return SnpOnlyPair(host, guest, amd, snp_dir, chip)


@pytest.fixture()
def snp_only_pair(node_factory: NodeFactory, tmp_path: Path) -> SnpOnlyPair:
    return start_snp_only_pair(node_factory, tmp_path)
