"""attestd over TLS: the evidence is bound to the node's TLS key, mutating endpoints need a
client certificate from the configured CA (the mutual-TLS listener)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.conftest import SwtpmFactory
from tests.support.poller import settings as poll_settings
from tests.support.upgrade import TEST_TRUST, signed, snapshot
from tests.swtpm.conftest import NO_RELEASE_RULES, no_release_policy

from attest.appraisal import Appraised
from attest.appraisal.claims import Verdict
from attest.errors import TransportError
from attest.model import PcrSelection
from attest.node.daemon import tls_binding
from attest.node.tpm.swtpm import free_port_pair
from attest.verifier.client import NodeClient
from attest.verifier.contact import appraise_evidence, enroll, gather, selection_for

BIN = Path(sys.executable).parent
NOW = dt.datetime.now(dt.UTC)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,  # noqa: E501
    *,
    ca: bool = False,
    san: str | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    iss_name, iss_key = issuer or (subject, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(iss_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(san))]),
            critical=False,
        )
    return b.sign(iss_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture()
def tls_node(swtpm_factory: SwtpmFactory, tmp_path: Path) -> Iterator[dict[str, object]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("attest test CA", ca_key, None, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("node", srv_key, (ca.subject, ca_key), san="127.0.0.1")
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("orchestrator", cli_key, (ca.subject, ca_key))
    _write(tmp_path / "ca", ca, None)
    _write(tmp_path / "server", srv, srv_key)
    _write(tmp_path / "client", cli, cli_key)
    sw, _ = swtpm_factory()
    state = tmp_path / "node"
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(TEST_TRUST / "root.json", trust / "root.json")
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    # free_port_pair's ports are free when chosen, not reserved: another process of the suite
    # may take one before attestd binds it. Then attestd exits (a failed bind is fatal) and we
    # start again on a new pair, at most three times.
    for attempt in range(3):
        port = free_port_pair()
        env = {
            **os.environ,
            "ATTEST_TPM_TCTI": sw.tcti,
            "ATTEST_TPM_STATE_DIR": str(state),
            "ATTEST_API_PORT": str(port),
            "ATTEST_API_MTLS_PORT": str(port + 1),
            "ATTEST_API_TLS_CERT": str(tmp_path / "server.crt"),
            "ATTEST_API_TLS_KEY": str(tmp_path / "server.key"),
            "ATTEST_API_CLIENT_CA": str(tmp_path / "ca.crt"),
            "ATTEST_API_OPERATOR_SOCKET": str(tmp_path / "no-such-dir" / "api.sock"),
            "ATTEST_LOGS_FIRMWARE_LOG": str(tmp_path / "none"),
            # the in-process upgrade gate's directories (registry push), under the TEST root
            "ATTEST_REGISTRY_TRUST_DIR": str(trust),
            "ATTEST_UPGRADE_SPOOL_DIR": str(tmp_path / "spool"),
            "ATTEST_UPGRADE_SLOTS_DIR": str(tmp_path / "slots"),
        }
        log = (tmp_path / "attestd.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / "attestd")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                url = f"https://127.0.0.1:{port}/readyz"
                ready = httpx.get(url, verify=verify).status_code == 200
            except httpx.HTTPError:
                pass
            if not ready and proc.poll() is not None:
                break
            time.sleep(0.1)
        if ready:
            break
        text = (tmp_path / "attestd.log").read_text()
        proc.wait(timeout=10)
        log.close()
        if "address already in use" not in text or attempt == 2:
            pytest.fail(text)
    yield {"port": port, "dir": tmp_path, "verify": verify}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def test_evidence_is_bound_to_the_tls_key_connected_to(tls_node: dict[str, object]) -> None:
    port, d, verify = tls_node["port"], tls_node["dir"], tls_node["verify"]
    assert isinstance(d, Path)
    with NodeClient(f"https://127.0.0.1:{port}", verify=verify) as c:
        e = enroll(c, now=NOW)
        ev = gather(
            c, selection_for(e.runtime_pcr, PcrSelection.parse("sha256:0")), identity=c.identity()
        )
        assert c.peer_binding == tls_binding(str(d / "server.crt"))
        assert ev.tls_binding == c.peer_binding

    def appraised(binding: bytes | None) -> Appraised:
        return appraise_evidence(
            dataclasses.replace(ev, tls_binding=binding),
            enrollment=e,
            registry=None,
            platform_id=None,
            previous=None,
            now=dt.datetime.now(dt.UTC),
            rules=NO_RELEASE_RULES,
        )

    done = appraised(ev.tls_binding)
    assert done.result.verdict is Verdict.AFFIRMING, done.result.first_divergence
    assert done.memory.runtime is not None
    assert "tls-key" in {x.kind for x in done.memory.runtime.log.events}
    # A relay holding another TLS key passes this node's answer on: the verifier connected
    # to the relay sees the relay's key, and the evidence names the node's.
    relayed = appraised(b"\x00" * 32).result
    assert relayed.verdict is Verdict.CONTRAINDICATED
    assert [f.check for f in relayed.findings] == ["quote:nonce"]
    assert "bound to another TLS key" in (relayed.first_divergence or "")


def test_activation_needs_a_client_certificate(tls_node: dict[str, object]) -> None:
    port, d, verify = tls_node["port"], tls_node["dir"], tls_node["verify"]
    assert isinstance(d, Path) and isinstance(port, int)
    with NodeClient(f"https://127.0.0.1:{port}", verify=verify) as public:
        with pytest.raises(TransportError, match="403"):
            public.activate(b"\x00" * 8, b"\x00" * 8)
        e_public = enroll(public, now=NOW)
    # Without a client certificate the mutual-TLS listener refuses the handshake.
    with (
        NodeClient(f"https://127.0.0.1:{port + 1}", verify=verify) as anonymous,
        pytest.raises(TransportError),
    ):
        anonymous.identity()
    with NodeClient(
        f"https://127.0.0.1:{port + 1}",
        verify=verify,
        cert=(str(d / "client.crt"), str(d / "client.key")),
    ) as mtls:
        e = enroll(mtls, now=NOW, activator=mtls)
    assert e.activated and e.ak_name == e_public.ak_name


def test_attest_verify_activates_over_the_separate_mutual_tls_listener(
    tls_node: dict[str, object],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``attest verify URL --activation-url MTLS --client-cert C --client-key K``: the
    evidence comes from the public listener, credential activation and the audit log from the
    node's mutual-TLS listener (another port, as attestd's ``api.mtls_port``)."""
    import json

    from tests.support.cli import verify_main as main

    from attest.cli._common import EXIT_USAGE

    port, d = tls_node["port"], tls_node["dir"]
    assert isinstance(d, Path) and isinstance(port, int)
    common = [
        f"https://127.0.0.1:{port}",
        "--state",
        str(tmp_path / "verifier"),
        "--tls-ca",
        str(d / "ca.crt"),
        "--json",
        "--tofu",  # the test CA's node has no EK CA to chain to; activation still runs
        "--policy",
        no_release_policy(tmp_path),
    ]
    # --activation-url without a client certificate: a usage error, nothing contacted
    assert main([*common, "--activation-url", f"https://127.0.0.1:{port + 1}"]) == EXIT_USAGE
    assert "--activation-url needs --client-cert" in capsys.readouterr().err
    code = main(
        [
            *common,
            "--activation-url",
            f"https://127.0.0.1:{port + 1}",
            "--client-cert",
            str(d / "client.crt"),
            "--client-key",
            str(d / "client.key"),
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["enrollment"]["activated"] is True, doc
    assert not any("WITHOUT credential activation" in n for n in doc["notes"])
    assert not any("audit log not fetched" in n for n in doc["notes"]), doc["notes"]
    assert doc["verdict"] in ("affirming", "warning") and code in (0, 10), doc["explanation"]
    # Activation sent to the public listener (403 there): the enrollment is refused as a failed
    # credential activation (exit 11), not reported as an unreachable node (12).
    code = main(
        [
            f"https://127.0.0.1:{port}",
            "--state",
            str(tmp_path / "verifier-2"),
            "--tls-ca",
            str(d / "ca.crt"),
            "--json",
            "--tofu",
            "--activation-url",
            f"https://127.0.0.1:{port}",
            "--client-cert",
            str(d / "client.crt"),
            "--client-key",
            str(d / "client.key"),
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 11, doc
    assert "credential-activation" in doc["explanation"] and "403" in doc["explanation"], doc


def test_fleet_poller_checks_the_nodes_tls_certificate(
    tls_node: dict[str, object], tmp_path: Path
) -> None:
    """``attest fleet serve --tls-ca``: the poller reaches an https node whose certificate
    chains to the private CA, and the appraisal binds the answer to that TLS key; with the
    system's CAs only, the same node is unreachable (certificate refused), never appraised."""
    import asyncio

    from attest.cli._fleet_service import _tls_context
    from attest.verifier.fleet.appraiser import default_appraiser
    from attest.verifier.fleet.poller import Poller
    from attest.verifier.fleet.store import SqliteStore

    port, d, verify = tls_node["port"], tls_node["dir"], tls_node["verify"]
    assert isinstance(d, Path)
    url = f"https://127.0.0.1:{port}"
    with NodeClient(url, verify=verify) as c:
        e = enroll(c, now=NOW)
    settings = poll_settings(
        jitter=0.0, concurrency=4, timeout=5.0, lease_ttl=20.0, unreachable_after=1
    )

    def poll(ctx: ssl.SSLContext | None, db: str) -> tuple[str, str]:
        store = SqliteStore(str(tmp_path / db))
        store.add_node("tls-node", url, e, now=time.time())
        poller = Poller(
            store,
            settings=settings,
            appraise=default_appraiser(),
            ssl_context=ctx,
            rules=NO_RELEASE_RULES,  # this node runs no blessed image
        )

        async def go() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(poller.run(stop))
            end = time.monotonic() + 30
            while time.monotonic() < end:
                row = store.get_node("tls-node")
                if row is not None and row.verdict not in ("none", "unenrolled"):
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await task

        asyncio.run(go())
        poller.close()
        row = store.get_node("tls-node")
        store.close()
        assert row is not None
        return row.verdict, row.explanation

    verdict, why = poll(_tls_context(str(d / "ca.crt")), "private-ca.db")
    assert verdict == "affirming", why
    verdict, why = poll(None, "system-ca.db")
    assert verdict == "unreachable"
    assert "CERTIFICATE_VERIFY_FAILED" in why, why


def test_registry_push_over_mutual_tls_needs_the_client_certificate(
    tls_node: dict[str, object], tmp_path: Path
) -> None:
    """``attest registry push https://NODE:MTLS SNAPSHOT --client-cert C --client-key K
    --tls-ca CA``: the node's in-process gate accepts the snapshot; without the client
    certificate the TLS handshake fails (exit 4), and on the public listener it is 403 (exit 4);
    neither moves the trusted sequence."""
    port, d = tls_node["port"], tls_node["dir"]
    assert isinstance(d, Path) and isinstance(port, int)
    snap = tmp_path / "registry-7.json"
    snap.write_bytes(signed(snapshot(7, [])))
    ca = ["--tls-ca", str(d / "ca.crt")]
    client = ["--client-cert", str(d / "client.crt"), "--client-key", str(d / "client.key")]

    def push(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "attest"), "registry", "push", url, str(snap), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = push(f"https://127.0.0.1:{port + 1}", *ca)  # no client certificate
    assert r.returncode == 4, r.stdout + r.stderr
    assert r.stderr.startswith("attest: transport error:")
    r = push(f"https://127.0.0.1:{port}", *ca, *client)  # the public listener
    assert r.returncode == 4 and "HTTP 403 Forbidden" in r.stderr, r.stderr
    assert not (d / "trust" / "registry.json").exists()

    r = push(f"https://127.0.0.1:{port + 1}", *ca, *client)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("node accepted registry #0 -> #7 (registry-updated)")
    assert (d / "trust" / "registry.json").read_bytes() == snap.read_bytes()
