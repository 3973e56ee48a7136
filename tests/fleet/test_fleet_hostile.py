"""The fleet service (a real ``attest fleet serve`` process on 127.0.0.1) against hostile
clients and nodes: it does not start open to the network, writes and reads need their tokens,
registration contacts only origin URLs inside ``--allow-nodes`` and reflects nothing a peer
answered, every node id follows one rule, a node streaming without end is cut off, and bad JSON
is a clean 422 -- with no traceback in the service's log."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.fleet.conftest import dev_policy, sim_server
from tests.support.hostile import assert_refused_cleanly, raw_error, raw_exchange

from attest.testing.fleet_sim import EK_ATTRS, SimFleet, SimNode
from attest.testing.hostile_peers import MARKER, hostile
from attest.testing.pg import free_port
from attest.tpmstruct import Alg, SymDef, public_from_key

WRITE = "write-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
W = {"Authorization": f"Bearer {WRITE}"}
R = {"Authorization": f"Bearer {READ}"}


@dataclass
class Service:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _serve(tmp: Path, *args: str, wait: bool = True) -> Service:
    port = free_port()
    log = tmp / f"fleet-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "attest.cli.fleet",
        "serve",
        "--db",
        f"sqlite:///{tmp}/fleet-{port}.db",
        "--interval",
        "600",
        "--tofu",
        "--ear-key",
        str(tmp / "ear.pem"),
        "--listen",
        f"127.0.0.1:{port}",
        *(() if "--trust-dir" in args else ("--policy", dev_policy(tmp))),
        *args,
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    svc = Service(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 30
    while wait:
        assert proc.poll() is None, svc.text()
        try:
            if httpx.get(svc.url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, svc.text()
        time.sleep(0.1)
    return svc


def _stop(svc: Service) -> None:
    if svc.proc.poll() is None:
        svc.proc.terminate()
        try:
            svc.proc.wait(15)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()


def _token(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    return str(path)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Write and read tokens, nodes only on loopback."""
    tmp = tmp_path_factory.mktemp("fleet-hostile")
    svc = _serve(
        tmp,
        "--api-token-file",
        _token(tmp, "write", WRITE),
        "--read-token-file",
        _token(tmp, "read", READ),
        "--allow-nodes",
        "127.0.0.0/8,::1/128",
    )
    try:
        yield svc
    finally:
        _stop(svc)
    assert "Traceback" not in svc.text(), svc.text()[-4000:]


# --- open by default (finding 3) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "--api-token-file"),
        (("--insecure-no-auth", "--listen", "192.0.2.1:7500"), "loopback"),
        (("--api-token-file", "TOKEN", "--listen", "192.0.2.1:7500"), "TLS"),
    ],
    ids=["no-token", "open-on-the-network", "token-in-clear-on-the-network"],
)
def test_fleet_refuses_to_start_open(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    args = tuple(_token(tmp_path, "t", WRITE) if a == "TOKEN" else a for a in args)
    svc = _serve(tmp_path, *args, wait=False)
    assert svc.proc.wait(30) != 0
    out = svc.text()
    assert says in out and "Traceback" not in out, out


def test_insecure_no_auth_on_loopback_warns_once_per_open_thing(tmp_path: Path) -> None:
    svc = _serve(tmp_path, "--insecure-no-auth")
    try:
        r = httpx.post(svc.url + "/v1/nodes", json={"url": "ftp://x"}, timeout=10)
    finally:
        _stop(svc)
    assert r.status_code == 422  # the write was let through to validation
    opened = [line for line in svc.text().splitlines() if "OPEN:" in line]
    assert len(opened) == 4, opened
    for what in ("register and remove", "read node URLs", "plain HTTP", "any address"):
        assert sum(what in line for line in opened) == 1, (what, opened)


def test_listener_serves_tls_with_listen_cert(tmp_path: Path) -> None:
    cert, key = _client_cert(tmp_path)  # self-signed: the client does not verify it here
    port = free_port()
    svc = _serve(
        tmp_path,
        "--api-token-file",
        _token(tmp_path, "w", WRITE),
        "--listen-cert",
        cert,
        "--listen-key",
        key,
        "--listen",
        f"127.0.0.1:{port}",
        wait=False,
    )
    try:
        url = f"https://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + 30
        while True:
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.text()
            try:
                ok = httpx.get(url, verify=False, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        _stop(svc)
    assert ok.status_code == 200
    assert "plain HTTP" not in svc.text() and "https://127.0.0.1" in svc.text()


def test_writes_need_the_write_token_and_reads_a_token(fleet: Service) -> None:
    body = {"url": "http://127.0.0.1:1"}
    post = httpx.post(fleet.url + "/v1/nodes", json=body, timeout=10)
    assert post.status_code == 401 and post.json()["check"] == "api-token"
    assert "Bearer" in post.headers["www-authenticate"]
    with_read = httpx.post(fleet.url + "/v1/nodes", json=body, headers=R, timeout=10)
    assert with_read.status_code == 403
    wrong = {"Authorization": "Bearer " + WRITE[:-1] + "x"}
    assert httpx.post(fleet.url + "/v1/nodes", json=body, headers=wrong).status_code == 401
    assert httpx.delete(fleet.url + "/v1/nodes/x", timeout=10).status_code == 401
    assert httpx.delete(fleet.url + "/v1/nodes/x", headers=R, timeout=10).status_code == 403
    for path in ("/v1/nodes", "/", "/metrics", "/v1/releases", "/openapi.json"):
        assert httpx.get(fleet.url + path, timeout=10).status_code == 401, path
        assert httpx.get(fleet.url + path, headers=R, timeout=10).status_code == 200, path
        assert httpx.get(fleet.url + path, headers=W, timeout=10).status_code == 200, path
    basic = "Basic " + base64.b64encode(f"anyone:{READ}".encode()).decode()
    page = httpx.get(fleet.url + "/", headers={"Authorization": basic}, timeout=10)
    assert page.status_code == 200 and "<html" in page.text  # a browser can open the page
    assert httpx.get(fleet.url + "/healthz", timeout=10).status_code == 200


# --- SSRF and reflection (finding 2) ----------------------------------------------------------


def _register(fleet: Service, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(fleet.url + "/v1/nodes", json=body, headers=W, timeout=60)


def test_registration_answers_the_same_whatever_a_non_node_answers(fleet: Service) -> None:
    """A teapot with a secret in its error, a JSON service, a closed port: one fixed 502, the
    peer's text nowhere in it, and only the attest path was asked."""
    answers = []
    for behaviour in ("reflect", "json"):
        with hostile(behaviour) as srv:
            answers.append(_register(fleet, {"url": srv.url}))
            assert [h.split(b" ")[:2] for h in srv.requests] == [[b"GET", b"/v1/identity"]]
    answers.append(_register(fleet, {"url": f"http://127.0.0.1:{free_port()}"}))
    bodies = {r.text for r in answers}
    assert len(bodies) == 1, bodies
    r = answers[0]
    assert r.status_code == 502 and r.json() == {
        "error": "NodeUnreachable",
        "check": "node-unreachable",
        "detail": "the node did not answer as an attest node",
    }
    assert MARKER not in r.text


def _client_cert(tmp: Path) -> tuple[str, str]:
    """A self-signed client certificate and key (the service's for mutual TLS)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(tmp / "c.pem"), str(tmp / "k.pem")


def test_a_refused_activation_does_not_reflect_the_channel(tmp_path: Path) -> None:
    """The activation channel (``activation_url``) answers an HTTP error with a secret in it:
    the refusal names the check and the status, not the text."""
    cert, key = _client_cert(tmp_path)
    svc = _serve(
        tmp_path,
        "--api-token-file",
        _token(tmp_path, "w", WRITE),
        "--client-cert",
        cert,
        "--client-key",
        key,
    )
    try:
        fleet = SimFleet(1)
        # An EK fit for credential activation (a storage key with AES-128-CFB).
        fleet.nodes[0]._ek = public_from_key(
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            attributes=EK_ATTRS,
            scheme=Alg.NULL,
            scheme_hash=None,
            symmetric=SymDef(Alg.AES, 128, Alg.CFB),
        )
        with sim_server(fleet) as sim, hostile("reflect") as srv:
            r = _register(svc, {"url": sim.origin(0), "activation_url": srv.url})
            asked = [h.split(b" ")[:2] for h in srv.requests]
    finally:
        _stop(svc)
    assert asked == [[b"POST", b"/v1/enroll/activate"]], r.text
    assert r.status_code == 422 and r.json()["check"] == "credential-activation", r.text
    assert "HTTP 418" in r.json()["detail"] and MARKER not in r.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/admin",
        "http://127.0.0.1:{port}/?x=1",
        "http://127.0.0.1:{port}/#frag",
        "http://user:pw@127.0.0.1:{port}",
        "http://127.0.0.1:{port}\\@evil",
        "http://127.0.0.1:99999",
        "https://127.0.0.1:{port}/v1/identity/../..",
    ],
)
def test_only_origin_urls_are_contacted(fleet: Service, url: str) -> None:
    with hostile("reflect") as srv:
        r = _register(fleet, {"url": url.format(port=srv.port)})
        assert srv.requests == []  # nothing was sent
    assert r.status_code == 422 and r.json()["check"] == "node-url", r.text


@pytest.mark.parametrize("field", ["host_url", "activation_url", "host_activation_url"])
def test_every_url_of_a_registration_is_checked(fleet: Service, field: str) -> None:
    with hostile("reflect") as srv:
        body = {"url": srv.url, "host_url": srv.url, field: srv.url + "/admin"}
        r = _register(fleet, body)
        assert srv.requests == []
    assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_allow_nodes_refuses_hosts_outside_the_networks(fleet: Service) -> None:
    r = _register(fleet, {"url": "http://192.0.2.7:7443"})
    assert r.status_code == 422 and "--allow-nodes" in r.json()["detail"], r.text
    with hostile("reflect") as srv:  # a name that resolves inside is contacted
        r = _register(fleet, {"url": f"http://localhost:{srv.port}"})
        assert r.status_code == 502 and srv.requests, r.text


def test_a_node_streaming_without_end_is_cut_off_during_enrollment(fleet: Service) -> None:
    with hostile("endless") as srv:
        t0 = time.monotonic()
        r = _register(fleet, {"url": srv.url})
        took = time.monotonic() - t0
        sent = srv.sent
    assert r.status_code == 502 and took < 30, (r.text, took)
    assert sent < 64 << 20  # the fleet stopped reading at its cap (16 MiB) plus buffers


# --- node ids (finding 5) ---------------------------------------------------------------------


class _Claims(SimFleet):
    """Simulated nodes that claim the ids given."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(len(ids))
        self.ids = ids

    def identity(self, node: SimNode) -> dict[str, Any]:
        return {**super().identity(node), "node_id": self.ids[node.index]}


BAD_IDS = ["a/b/../c", "<script>", "x" * 3000, "-starts-with-dash", "sp ace", ""]


@pytest.mark.parametrize("bad", BAD_IDS[:-1])
def test_node_ids_from_the_client_follow_the_rule(fleet: Service, bad: str) -> None:
    r = _register(fleet, {"url": "http://127.0.0.1:1", "node_id": bad})
    assert r.status_code == 422 and "A-Za-z0-9" in r.json()["detail"], r.text
    assert bad not in r.text


def test_node_ids_claimed_by_a_node_follow_the_rule(fleet: Service) -> None:
    sim = _Claims([*BAD_IDS[:4], "good-1"])
    with sim_server(sim) as srv:
        for i, bad in enumerate(BAD_IDS[:4]):
            r = _register(fleet, {"url": srv.origin(i)})
            assert r.status_code == 422 and r.json()["check"] == "node-id", (bad, r.text)
            assert "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$" in r.json()["detail"]
        ok = _register(fleet, {"url": srv.origin(4)})
        assert ok.status_code == 201, ok.text
    listed = httpx.get(fleet.url + "/v1/nodes", headers=R, timeout=10).json()["nodes"]
    assert [n["node_id"] for n in listed] == ["good-1"]  # every registered node is reachable
    assert httpx.get(fleet.url + "/v1/nodes/good-1", headers=R, timeout=10).status_code == 200
    gone = httpx.delete(fleet.url + "/v1/nodes/good-1", headers=W, timeout=10)
    assert gone.status_code == 200 and gone.json() == {"removed": "good-1"}


# --- bad JSON (finding 4) ---------------------------------------------------------------------

BAD_BODIES = {
    "nan": '{"url": NaN}',
    "infinity": '{"url": "http://127.0.0.1:1", "node_id": Infinity}',
    "1e999": '{"url": 1e999}',
    "lone-surrogate": '{"url": "http://127.0.0.1:1/\\ud800"}',
    "lone-surrogate-id": '{"url": "http://127.0.0.1:1", "node_id": "\\ud800"}',
    "lone-surrogate-key": '{"\\udfff": "http://127.0.0.1:1"}',
    "bare-nan": "NaN",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_non_standard_json_is_a_clean_4xx_at_the_fleet(fleet: Service, name: str) -> None:
    before = fleet.text().count("Traceback")
    r = httpx.post(
        fleet.url + "/v1/nodes",
        content=BAD_BODIES[name].encode(),
        headers={**W, "content-type": "application/json"},
        timeout=30,
    )
    assert_refused_cleanly(r)
    assert r.json()["check"] in ("request-schema", "node-url"), r.text
    time.sleep(0.2)
    assert fleet.text().count("Traceback") == before, fleet.text()[-3000:]


def test_every_body_field_refuses_non_standard_json_at_the_fleet(fleet: Service) -> None:
    """The fleet's own OpenAPI, as served: NaN, ±Infinity, ±1e999 and lone surrogates in every
    member of every JSON body (and as the body, and as a dictionary key), NaN/inf/1e999 in every
    numeric query parameter (tests/support/hostile_json.py): each a 4xx in the error shape,
    echoing nothing, and no traceback in the service's log."""
    from tests.support.hostile_json import cases, check_refusal, param_cases

    spec = httpx.get(fleet.url + "/openapi.json", headers=R, timeout=10).json()
    todo = cases(spec) + param_cases(spec)
    assert any(c.path == "/v1/nodes" and c.method == "post" for c in todo)
    before = fleet.text().count("Traceback")
    with httpx.Client(base_url=fleet.url, headers=W, timeout=30) as client:
        for case in todo:
            headers = {"content-type": "application/json"} if case.body else {}
            r = client.request(case.method.upper(), case.path, content=case.body, headers=headers)
            check_refusal(case, r.status_code, r.text)
    time.sleep(0.2)
    assert fleet.text().count("Traceback") == before, fleet.text()[-3000:]


# --- limits before any route: the request's head and body -------------------------------------


def _nodes(fleet: Service) -> list[Any]:
    return list(httpx.get(fleet.url + "/v1/nodes", headers=R, timeout=10).json()["nodes"])


def test_a_body_over_the_limit_is_refused_before_it_is_read(fleet: Service) -> None:
    """The fleet read any body a writer sent (and invited a declared gigabyte with ``100
    Continue``) into memory; a body over the limit is a 413, declared or streamed."""
    before = _nodes(fleet)
    head = (
        b"POST /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + WRITE.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
    )
    declared = raw_exchange(
        fleet.url, head + b"Expect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n"
    )
    assert b"100 Continue" not in declared, declared[:200]
    chunk = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
    streamed = raw_exchange(fleet.url, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 64)
    for answer in (declared, streamed):
        status, doc = raw_error(answer)
        assert status == 413 and doc["error"] == "RequestTooLarge", doc
    assert _nodes(fleet) == before


def test_a_request_head_over_the_limit_is_a_431_at_the_fleet(fleet: Service) -> None:
    """``attest fleet serve`` parses with the guarded protocol (attest.serving): uvicorn's own
    kept every header it was sent, before the token was checked."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (1 << 20) + b"\r\n\r\n"
    status, doc = raw_error(raw_exchange(fleet.url, head))
    assert status == 431 and doc["error"] == "RequestHeadTooLarge", doc
    status, doc = raw_error(raw_exchange(fleet.url, b"GARBAGE\r\n\r\n"))
    assert status == 400 and doc["error"] == "BadRequest", doc


async def test_a_body_that_stops_arriving_is_a_408_at_the_fleet() -> None:
    """A writer's body that stopped arriving held the request for ever."""
    from attest.serving.body import BodyLimit

    reached: list[object] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope)

    parts = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop()
        await asyncio.Event().wait()  # the client sends nothing more
        raise AssertionError

    async def send(message: Any) -> None:
        sent.append(message)

    await BodyLimit(app, 1024, deadline=0.2)({"type": "http", "headers": []}, receive, send)
    assert reached == [] and sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"] == "RequestTimeout"


def test_schemathesis_finds_no_server_error_at_the_fleet(tmp_path: Path) -> None:
    """Property-based requests against the fleet's published OpenAPI, with the write token (so
    registrations reach validation and the node-URL rules): no 5xx but the documented 503s.
    (Schemathesis draws no NaN, Infinity or lone surrogate: the test above sends those.)"""
    svc = _serve(
        tmp_path,
        "--api-token-file",
        _token(tmp_path, "write", WRITE),
        "--allow-nodes",
        "127.0.0.0/8",
    )
    try:
        started = time.monotonic()
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{svc.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {WRITE}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "20",
                "--request-timeout",
                "10",
                "--exclude-path",
                "/metrics",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - started
    finally:
        _stop(svc)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert elapsed < 60, elapsed
    assert "Traceback" not in svc.text(), svc.text()[-3000:]


# --- forwarded headers (finding 7) ------------------------------------------------------------


def test_fleet_believes_forwarded_headers_only_from_trusted_proxies(tmp_path: Path) -> None:
    import argparse

    from attest.cli._fleet_service import _security
    from attest.cli.fleet import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    token = _token(tmp_path, "w", WRITE)
    base = ["fleet", "serve", "--tofu", "--api-token-file", token]
    _, _, default = _security(parser.parse_args(base), "127.0.0.1")
    assert default["proxy_headers"] is False
    args = parser.parse_args([*base, "--trusted-proxies", "10.0.0.1,10.1.0.0/16"])
    _, _, proxied = _security(args, "127.0.0.1")
    assert proxied["proxy_headers"] is True
    assert proxied["forwarded_allow_ips"] == ["10.0.0.1/32", "10.1.0.0/16"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["http://127.0.0.1:1/admin"], "path"),
        (["http://127.0.0.1:1", "--host", "http://u:p@127.0.0.1:2"], "user information"),
        (["http://127.0.0.1:1", "--activation-url", "https://127.0.0.1:3/?x"], "query"),
    ],
)
def test_fleet_add_takes_origin_urls_only(
    tmp_path: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from attest.cli.fleet import main

    with hostile("reflect") as srv:
        argv = [a.replace("127.0.0.1:1", f"127.0.0.1:{srv.port}") for a in argv]
        rc = main(["add", *argv, "--tofu", "--db", f"sqlite:///{tmp_path}/f.db"])
        assert srv.requests == []
    assert rc != 0 and says in capsys.readouterr().err
