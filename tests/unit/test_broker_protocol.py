"""The broker protocol (pure), and the server and client over a Unix socket with a fake TPM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.audit import verify_audit_chain
from attest.errors import (
    AttestError,
    AuditChainError,
    ConfigError,
    OperationNotAllowed,
    ReplayError,
    RollbackError,
    TpmError,
    TransportError,
    UpgradeRefused,
)
from attest.model import HashAlg, PcrSelection
from attest.node.broker import protocol as p
from attest.node.broker import wire
from attest.node.broker.client import BrokerClient
from attest.node.broker.local import LocalNode
from attest.node.broker.protocol import OPS
from attest.node.broker.server import BrokerServer
from attest.node.broker.transport import recv_frame
from attest.node.tpm.fake import FakeTpm
from attest.quote import verify_quote
from attest.runtime import verify_runtime_log

FIXTURES = Path(__file__).parent / "fixtures"
SEL = PcrSelection.of({HashAlg.SHA256: [0, 13], HashAlg.SHA1: [13]})

# --- pure: requests, framing, errors ---------------------------------------------------------

# One request for every operation of the table (a new operation fails
# test_every_operation_has_a_sample_request until it has one here).
REQUESTS: list[p.Request[Any, Any]] = [
    p.Request(OPS.identity, None),
    p.Request(OPS.read_pcrs, p.ReadPcrs(SEL)),
    p.Request(OPS.quote, p.Quote(SEL, b"\x01" * 32)),
    p.Request(OPS.activate_credential, p.ActivateCredential(b"\x02" * 50, b"\x03" * 256)),
    p.Request(OPS.measure, p.Measure("tls-key", {"spki_sha256": "ab" * 32})),
    p.Request(OPS.runtime_log, p.LogRead(5)),
    p.Request(OPS.audit_record, p.AuditRecord({"event": "login", "user": "u"})),
    p.Request(OPS.audit_log, p.LogRead(0)),
    p.Request(OPS.nv_counter_read, p.NvIndex(0x01500010)),
    p.Request(OPS.nv_counter_define, p.NvIndex(0x01000A77)),
    p.Request(OPS.nv_counter_increment, p.NvIndex(0x01000A77)),
    p.Request(OPS.state_fs, None),
    p.Request(OPS.firmware_log, p.FirmwareLogRead(4096, 1 << 20)),
    p.Request(OPS.kernel_cmdline, None),
    p.Request(OPS.verity_report, None),
    p.Request(OPS.snp_report, p.SnpReportRequest(b"\x07" * 64)),
    p.Request(
        OPS.upgrade_stage,
        p.UpgradeStage("/var/lib/attest/spool/.upload.x.img", b'{"signed":{}}', "api-mtls"),
    ),
    p.Request(
        OPS.upgrade_stage,
        p.UpgradeStage(
            "/s/u.img", b"{}", "alice", roots=(b"{}",), hash_tree_path="/s/t", version="1.0.0"
        ),
    ),
    p.Request(OPS.upgrade_refuse_upload, p.UpgradeRefuseUpload(1 << 33, "api-operator")),
    p.Request(OPS.registry_refresh, p.RegistryPush(b'{"signed":{}}', "api-mtls")),
    p.Request(
        OPS.registry_refresh,
        p.RegistryPush(b"", "api-operator", refused="upload-timeout", detail="too slow"),
    ),
    p.Request(OPS.registry_refresh, p.RegistryPush(b"{}", "alice", roots=(b"{}", b"[]"))),
    p.Request(OPS.upgrade_status, None),
    p.Request(OPS.upgrade_confirm, p.UpgradeConfirm("root")),
    p.Request(OPS.upgrade_boot, None),
    p.Request(OPS.vtpm_create, p.VtpmCreate("g1")),
    p.Request(OPS.vtpm_record, p.VtpmRecord("g1", b"\x00\x23")),
    p.Request(OPS.vtpm_list, None),
]
SAMPLE = {r.op: r for r in REQUESTS}  # the last sample of each operation


def test_every_operation_has_a_sample_request() -> None:
    assert set(SAMPLE) == set(p.TABLE)


def test_the_table_names_each_operation_once_as_its_attribute() -> None:
    assert [op.name for op in p.TABLE] == [k for k in vars(OPS) if not k.startswith("_")]
    assert len(p.BY_NAME) == len(p.TABLE)
    assert all(p.BY_NAME[op.name] is op for op in p.TABLE)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.op.name)
def test_every_request_round_trips(req: p.Request[Any, Any]) -> None:
    assert p.decode_request(p.encode_request(req.op, req.args)) == req


GOLDEN = json.loads((FIXTURES / "broker-wire-a6fb87b.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: str(c["op"]))
def test_wire_bytes_are_those_of_the_eleven_site_protocol(case: dict[str, str]) -> None:
    """Requests and results recorded from the protocol before it was a table (a6fb87b):
    each decodes and encodes again to the same bytes."""
    op = p.BY_NAME[case["op"]]
    request, response = case["request"].encode(), case["response"].encode()
    req = p.decode_request(request)
    assert req.op is op and p.encode_request(op, req.args) == request
    result = p.decode_response(op, response)
    if op is OPS.upgrade_refuse_upload:  # answered by an error; its result is never sent
        assert result is None and response == b'{"ok":{}}'
    else:
        assert p.encode_result(op, result) == response


def test_every_actor_argument_reaches_the_servers_actor_rule() -> None:
    """The server holds the API socket to ``api-<channel>`` through ``args.actor``."""
    with_actor = [r for r in REQUESTS if "actor" in r.op.args.to_json(r.args)]
    assert {r.op for r in with_actor} == {
        OPS.upgrade_stage,
        OPS.upgrade_refuse_upload,
        OPS.registry_refresh,
        OPS.upgrade_confirm,
    }
    for r in with_actor:
        decoded = p.decode_request(p.encode_request(r.op, r.args))
        assert decoded.args.actor == r.op.args.to_json(r.args)["actor"]


@pytest.mark.parametrize(
    "doc",
    [
        {"op": "shell", "args": {}},
        {"op": "identity", "args": {}, "extra": 1},
        {"op": "identity", "args": {"x": 1}},
        {"op": "quote", "args": {"selection": {"sha256": [0]}, "qualifying_data": "00" * 65}},
        {"op": "quote", "args": {"selection": {"sha256": [24]}, "qualifying_data": ""}},
        {"op": "read_pcrs", "args": {"selection": {"sha256": list(range(25))}}},
        {"op": "read_pcrs", "args": {"selection": {"md5": [0]}}},
        {"op": "read_pcrs", "args": {"selection": {"sha256": [True]}}},
        {"op": "measure", "args": {"kind": "evil", "content": {}}},
        {"op": "measure", "args": {"kind": "config", "content": []}},
        {"op": "runtime_log", "args": {"start": -1}},
        {"op": "nv_counter_read", "args": {"index": 0x81000001}},
        {"op": "activate_credential", "args": {"id_object": "0g", "encrypted_secret": ""}},
        {"op": "nv_counter_increment", "args": {"index": 0x81000001}},
        {"op": "upgrade_stage", "args": {"upload_path": "rel.img", "snapshot": "", "actor": "a"}},
        {"op": "upgrade_stage", "args": {"upload_path": "/a\u0000b", "snapshot": "", "actor": "a"}},
        {"op": "upgrade_stage", "args": {"upload_path": "/a", "snapshot": "", "actor": ""}},
        {"op": "upgrade_stage", "args": {"upload_path": "/a", "snapshot": "", "actor": "a\n"}},
        {
            "op": "upgrade_stage",
            "args": {"upload_path": "/a", "snapshot": "", "actor": "a", "now": "2020-01-01"},
        },
        {
            "op": "upgrade_stage",
            "args": {
                "upload_path": "/a",
                "actor": "a",
                "snapshot": "00" * (p.MAX_STAGE_SNAPSHOT + 1),
            },
        },
        {"op": "upgrade_confirm", "args": {}},
        {"op": "upgrade_refuse_upload", "args": {"limit": -1, "actor": "api-x"}},
        {"op": "registry_refresh", "args": {"snapshot": "", "actor": "a", "refused": "revoked"}},
        {"op": "registry_refresh", "args": {"snapshot": "0", "actor": "a"}},
        {"op": "registry_refresh", "args": {"snapshot": "", "actor": "a", "roots": ["00"] * 9}},
        {"op": "registry_refresh", "args": {"snapshot": "", "actor": "a", "now": "2020"}},
        {
            "op": "registry_refresh",
            "args": {"snapshot": "00" * (p.MAX_STAGE_SNAPSHOT + 1), "actor": "a"},
        },
    ],
)
def test_rejects_malformed_requests(doc: dict[str, Any]) -> None:
    with pytest.raises(TransportError):
        p.decode_request(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "body",
    [
        b'{"op":"identity","op":"identity","args":{}}',  # duplicate names
        b'{"op":"runtime_log","args":{"start":1.5}}',  # float
        b'{"op":"runtime_log","args":{"start":NaN}}',
        b"[" * 5000 + b"]" * 5000,  # deep nesting
        b'{"op":"runtime_log","args":{"start":' + b"9" * 5000 + b"}}",  # huge integer
        b"\xff\xfe",  # not UTF-8
        b'{"op":"identity","args":{"\\ud800":1}}',  # a lone surrogate: JSON, not Unicode
        b'{"op":"measure","args":{"kind":"config","content":{"sha256":"\\udfff"}}}',
        b"",
    ],
)
def test_rejects_hostile_json(body: bytes) -> None:
    with pytest.raises(TransportError):
        p.decode_request(body)


def test_rejects_oversized_frames_before_reading_them() -> None:
    with pytest.raises(TransportError, match="exceeds"):
        wire.frame_length(struct.pack(">I", wire.MAX_REQUEST + 1), limit=wire.MAX_REQUEST)
    with pytest.raises(TransportError):
        wire.encode_frame(b"x" * (wire.MAX_REQUEST + 1), limit=wire.MAX_REQUEST)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_frame_and_request_decoder_raise_only_transport_error(data: bytes) -> None:
    try:
        body = wire.decode_frame(data, limit=wire.MAX_REQUEST)
        p.decode_request(body)
    except TransportError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=20)
    | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
ops = st.sampled_from([op.name for op in p.TABLE] + ["x"])
arg_names = st.sampled_from(
    [
        "selection",
        "qualifying_data",
        "id_object",
        "encrypted_secret",
        "kind",
        "content",
        "start",
        "event",
        "index",
        "junk",
        "upload_path",
        "snapshot",
        "actor",
        "roots",
        "hash_tree_path",
        "version",
        "limit",
        "guest_id",
        "ek_public",
    ]
)


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(ops, st.dictionaries(arg_names, json_values, max_size=4))
def test_structured_request_decoder_raises_only_transport_error(
    op: str, args: dict[str, Any]
) -> None:
    try:
        req = p.decode_request(json.dumps({"op": op, "args": args}).encode())
    except TransportError:
        return
    assert req.op.name == op


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(p.TABLE), json_values)
def test_response_decoder_raises_only_attest_errors(op: p.Op[Any, Any], doc: Any) -> None:
    # A result that does not decode is a TransportError, whatever the operation's result type.
    with contextlib.suppress(TransportError):
        p.decode_response(op, json.dumps({"ok": doc}).encode())
    for wrapped in ({"error": doc}, doc):
        # Any attest error may legitimately come back; nothing else may escape.
        with contextlib.suppress(AttestError):
            p.decode_response(op, json.dumps(wrapped).encode())


@pytest.mark.parametrize(
    "exc",
    [
        TpmError("TPM is gone", rc=0xA000A),
        ReplayError("no", invalid_pcrs=[("sha256", 13)]),
        ConfigError("bad", key="runtime_pcr"),
        UpgradeRefused("rollback", "older than trusted"),
        RollbackError("older", trusted=5, got=4),
        AuditChainError("entry 3 was edited"),
        OperationNotAllowed("audit_record is not allowed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_cross_the_wire_as_their_own_class_with_fields(exc: Exception) -> None:
    with pytest.raises(type(exc)) as info:
        p.decode_response(OPS.identity, wire.encode_error(exc))
    got = info.value
    assert str(got) == str(exc) and type(got) is type(exc)
    for field in ("rc", "invalid_pcrs", "key", "reason", "trusted", "got"):
        assert getattr(got, field, None) == getattr(exc, field, None)


def test_unexpected_server_exception_is_reported_without_details() -> None:
    body = wire.encode_error(KeyError("/etc/shadow secret"))
    assert b"shadow" not in body
    with pytest.raises(TransportError, match="internal error"):
        p.decode_response(OPS.identity, body)


# --- server and client with a fake TPM -------------------------------------------------------


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[tuple[BrokerServer, Path, Path, FakeTpm]]:
    tpm = FakeTpm()
    node = LocalNode.open(tpm, tmp_path)
    api, op = tmp_path / "api.sock", tmp_path / "op.sock"
    server = BrokerServer(node, api, operator_socket_path=op, request_timeout=0.5).start()
    yield server, api, op, tpm
    server.shutdown()
    node.close()


def test_every_op_is_allowed_on_a_socket_and_operator_only_ops_not_on_the_api() -> None:
    assert frozenset(op.name for op in p.TABLE) == p.OPERATOR_OPS
    assert {op.name for op in OPERATOR_ONLY} == p.OPERATOR_ONLY_OPS
    # Named here, not derived: a flag flipped in the table fails this test.
    for name in (
        "audit_record",
        "nv_counter_define",
        "nv_counter_increment",
        "upgrade_confirm",
        "upgrade_boot",
        "vtpm_create",
        "vtpm_record",
        "vtpm_list",
    ):
        assert name in p.OPERATOR_ONLY_OPS and name not in p.UNPRIVILEGED_OPS
    assert {"upgrade_stage", "upgrade_status", "nv_counter_read", "state_fs"} <= p.UNPRIVILEGED_OPS
    assert {"firmware_log", "kernel_cmdline", "verity_report", "snp_report"} <= p.UNPRIVILEGED_OPS


OPERATOR_ONLY = [op for op in p.TABLE if op.privilege is p.Privilege.OPERATOR]
API_OPS = [op for op in p.TABLE if op.privilege is p.Privilege.API]


def _ask(path: Path, body: bytes) -> Any:
    """One raw request on a fresh connection; the decoded response document."""
    with _raw(path) as s:
        s.sendall(wire.encode_frame(body, limit=wire.MAX_REQUEST))
        answer = recv_frame(s, limit=wire.MAX_RESPONSE)
    assert answer is not None
    return json.loads(answer)


@pytest.mark.parametrize("op", OPERATOR_ONLY, ids=lambda o: o.name)
def test_api_socket_refuses_every_operator_only_operation(broker: Any, op: p.Op[Any, Any]) -> None:
    """Derived from the table: an operation added with ``Privilege.OPERATOR`` is covered."""
    _, api, operator, _ = broker
    refused = f"{op.name} is not allowed on the api socket"
    with BrokerClient(api) as c, pytest.raises(OperationNotAllowed, match=refused):
        c.call(op, SAMPLE[op].args)
    # Refused before its arguments are read, whatever they are.
    doc = _ask(api, wire.dumps({"op": op.name, "args": {"junk": [1, {"x": "y"}]}}))
    assert doc == {"error": {"type": "OperationNotAllowed", "message": refused}}
    # The operator socket does not refuse it for its privilege.
    with BrokerClient(operator) as o:
        try:
            o.call(op, SAMPLE[op].args)
        except AttestError as exc:
            assert "is not allowed on the" not in str(exc)


@pytest.mark.parametrize("op", API_OPS, ids=lambda o: o.name)
def test_api_socket_answers_every_api_operation(broker: Any, op: p.Op[Any, Any]) -> None:
    _, api, _, _ = broker
    with BrokerClient(api) as c:
        try:
            c.call(op, SAMPLE[op].args)
        except AttestError as exc:  # the fake TPM, no gate: but not refused for its privilege
            assert "is not allowed on the api socket" not in str(exc)


@pytest.mark.parametrize("op", p.TABLE, ids=lambda o: o.name)
def test_client_resends_after_a_dropped_connection_only_what_is_idempotent(
    tmp_path: Path, op: p.Op[Any, Any]
) -> None:
    """A broker that reads each request and hangs up unanswered: the client sends it a second
    time only when the table says it is idempotent (an event is never recorded twice)."""
    path = tmp_path / "drop.sock"
    seen: list[bytes] = []
    done = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(path))
        srv.listen(4)
        srv.settimeout(0.05)

        def drop() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    conn, _ = srv.accept()
                    with conn:
                        conn.settimeout(5)
                        body = recv_frame(conn, limit=wire.MAX_REQUEST)
                        assert body is not None
                        seen.append(body)

        t = threading.Thread(target=drop)
        t.start()
        try:
            with (
                BrokerClient(path, timeout=5) as c,
                pytest.raises(TransportError, match="cannot reach"),
            ):
                c.call(op, SAMPLE[op].args)
        finally:
            done.set()
            t.join()
    sent = p.encode_request(op, SAMPLE[op].args)
    assert seen == [sent, sent] if op.idempotent else seen == [sent]
    assert op.idempotent == (op.name in IDEMPOTENT)


# Named here, not derived: what may be resent after a dropped connection.
IDEMPOTENT = {
    "identity",
    "read_pcrs",
    "quote",
    "activate_credential",
    "runtime_log",
    "audit_log",
    "nv_counter_read",
    "state_fs",
    "firmware_log",
    "kernel_cmdline",
    "verity_report",
    "snp_report",
    "upgrade_status",
    "vtpm_list",
}


def test_upgrade_ops_without_a_gate_are_refused(broker: Any) -> None:
    _, _, op, _ = broker
    with BrokerClient(op) as c, pytest.raises(OperationNotAllowed, match="--slots-dir"):
        c.upgrade_status()


def test_sockets_have_restrictive_modes(broker: Any) -> None:
    _, api, op, _ = broker
    assert stat.S_IMODE(api.stat().st_mode) == 0o660
    assert stat.S_IMODE(op.stat().st_mode) == 0o600


def test_quote_runtime_log_and_audit_through_client_verify(broker: Any) -> None:
    _, api, op, _ = broker
    with BrokerClient(api) as c, BrokerClient(op) as o:
        c.measure("config", {"sha256": "11" * 32})
        o.audit_record({"event": "login", "user": "root", "service": "sshd"})
        ident = c.identity()
        sel = PcrSelection.of({HashAlg.SHA256: [13]})
        q = c.quote(sel, b"nonce")
        verify_quote(q.attest, q.signature, ak=ident.ak, nonce=b"nonce", pcrs=q.pcrs)
        v = verify_runtime_log(c.runtime_log(), q.pcrs, pcr=13)
        assert verify_audit_chain(c.audit_log(), v.audit_anchors)[0].service == "sshd"


def test_api_socket_cannot_record_audit_events(broker: Any) -> None:
    _, api, _, _ = broker
    with BrokerClient(api) as c, pytest.raises(OperationNotAllowed, match="audit_record"):
        c.audit_record({"event": "login", "user": "x"})


@pytest.mark.parametrize("kind", ["audit", "upgrade-decision", "nv-counter", "verity-device"])
def test_api_socket_cannot_measure_kinds_outside_allow_list(broker: Any, kind: str) -> None:
    _, api, _, _ = broker
    contents: dict[str, dict[str, Any]] = {
        "audit": {"audit_seq": 0, "entry_hash": "00" * 32},
        "upgrade-decision": {"accepted": True, "reason": "ok", "version": "2"},
        "nv-counter": {"index": 1, "value": 1},
        "verity-device": {"name": "root", "root_hash": "ab" * 32},  # names the release
    }
    content = contents[kind]
    with BrokerClient(api) as c, pytest.raises(OperationNotAllowed):
        c.measure(kind, content)


def test_operator_socket_cannot_forge_audit_anchors(broker: Any) -> None:
    _, _, op, _ = broker
    with BrokerClient(op) as o, pytest.raises(OperationNotAllowed):
        o.measure("audit", {"audit_seq": 0, "entry_hash": "00" * 32})


def test_tpm_error_keeps_rc_across_socket(broker: Any) -> None:
    _, api, _, tpm = broker
    with BrokerClient(api) as c:
        tpm.available = False
        with pytest.raises(TpmError) as info:
            c.quote(SEL, b"")
        assert info.value.rc == 0xA000A
        tpm.available = True
        assert c.read_pcrs(SEL).get(HashAlg.SHA256, 0) == bytes(32)


def _raw(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_hostile_frame_gets_error_and_connection_is_closed(broker: Any) -> None:
    _, api, _, _ = broker
    with _raw(api) as s:
        s.sendall(struct.pack(">I", 0xFFFFFFFF))
        n = struct.unpack(">I", s.recv(4))[0]
        doc = json.loads(s.recv(n))
        assert doc["error"]["type"] == "TransportError"
        assert s.recv(1) == b""


def test_garbage_json_gets_error_and_connection_stays_usable(broker: Any) -> None:
    _, api, _, _ = broker
    with _raw(api) as s:
        for body in (b"not json", p.encode_request(OPS.identity, None)):
            s.sendall(wire.encode_frame(body, limit=wire.MAX_REQUEST))
            n = struct.unpack(">I", s.recv(4))[0]
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
        assert "ok" in json.loads(data)


def test_a_refusal_quoting_the_client_is_logged_on_one_line(
    broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, api, _, _ = broker
    forged = "x\nERROR attest.node.broker: forged"
    with caplog.at_level(logging.INFO, logger="attest.node.broker.server"):
        doc = _ask(api, wire.dumps({"op": "identity", "args": {forged: 1}}))
    assert doc["error"]["type"] == "TransportError"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "\n" not in refusals[0] and "x\\nERROR" in refusals[0]


def test_a_lone_surrogate_in_a_member_name_gets_an_answer(broker: Any) -> None:
    """Quoted in the refusal, it made the answer unencodable: the connection's thread died
    unanswered (an uncaught UnicodeEncodeError)."""
    _, api, _, _ = broker
    doc = _ask(api, b'{"op":"identity","args":{"\\ud800":1}}')
    assert doc["error"] == {
        "type": "TransportError",
        "message": "string holds a lone surrogate (not Unicode)",
    }


def test_slow_client_does_not_block_others(broker: Any) -> None:
    _, api, _, _ = broker
    slow = _raw(api)
    slow.sendall(struct.pack(">I", 100) + b"{")  # starts a request and stalls
    t0 = time.monotonic()
    with BrokerClient(api) as c:
        c.identity()
    assert time.monotonic() - t0 < 0.5
    time.sleep(0.7)  # past request_timeout: the broker dropped the slow client
    assert slow.recv(1) == b""
    slow.close()


def test_trickling_client_is_dropped_at_request_timeout(broker: Any) -> None:
    """request_timeout bounds the whole frame once started, not each recv: a byte every
    0.2 s (each within the 0.5 s timeout) does not hold the connection open."""
    _, api, _, _ = broker
    with _raw(api) as slow:
        slow.sendall(struct.pack(">I", 100) + b"{")
        t0 = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - t0 < 3:
                time.sleep(0.2)
                slow.sendall(b" ")
        assert time.monotonic() - t0 < 1.5
    with BrokerClient(api) as c:
        c.identity()


def test_half_sent_header_is_dropped_at_request_timeout_not_idle_timeout(broker: Any) -> None:
    _, api, _, _ = broker  # idle_timeout is the default 300 s
    with _raw(api) as slow:
        slow.sendall(b"\x00\x00")
        t0 = time.monotonic()
        assert slow.recv(1) == b""
        assert time.monotonic() - t0 < 1.5


def test_client_reconnects_after_broker_restart(broker: Any, tmp_path: Path) -> None:
    server, api, op, _ = broker
    with BrokerClient(api) as c:
        c.identity()
        server.shutdown()
        server2 = BrokerServer(server.node, api, operator_socket_path=op).start()
        try:
            assert c.runtime_log() == ()
        finally:
            server2.shutdown()


def test_client_reports_missing_broker_as_transport_error(tmp_path: Path) -> None:
    with (
        BrokerClient(tmp_path / "nothing.sock", timeout=1) as c,
        pytest.raises(TransportError, match="cannot reach"),
    ):
        c.identity()


def test_client_is_thread_safe(broker: Any) -> None:
    _, api, _, _ = broker
    errors: list[BaseException] = []
    with BrokerClient(api) as c:

        def work(i: int) -> None:
            try:
                for _ in range(10):
                    c.read_pcrs(SEL)
                c.measure("config", {"sha256": f"{i:02x}" * 32})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert [r.recnum for r in c.runtime_log()] == [0, 1, 2, 3]


def test_refuses_to_replace_non_socket_file(tmp_path: Path) -> None:
    (tmp_path / "api.sock").write_text("important")
    (tmp_path / "state").mkdir()
    node = LocalNode.open(FakeTpm(), tmp_path / "state")
    with pytest.raises(TransportError, match="not a socket"):
        BrokerServer(node, tmp_path / "api.sock").start()
    assert (tmp_path / "api.sock").read_text() == "important"
    assert os.path.exists(tmp_path / "api.sock")


def test_a_full_socket_refuses_connections_with_one_warning_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_connections a connection is closed unanswered; the warning says how many were
    refused, once a minute (one line per refusal let a group member flood the log)."""
    node = LocalNode.open(FakeTpm(), tmp_path)
    api = tmp_path / "api.sock"
    server = BrokerServer(node, api, max_connections=1).start()
    held = socket.socket(socket.AF_UNIX)
    try:
        held.connect(str(api))
        caplog.set_level(logging.WARNING, logger="attest.node.broker.server")
        for _ in range(20):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(api))
                assert s.recv(1) == b""  # closed without an answer
        warnings = [
            r.getMessage() for r in caplog.records if "too many connections" in r.getMessage()
        ]
        assert len(warnings) == 1, warnings
        assert "(1 held): refused 1 since the last warning" in warnings[0]
        server._refused["api"] = (time.monotonic() - 61, 19)  # a minute later
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(api))
            assert s.recv(1) == b""
        warnings = [
            r.getMessage() for r in caplog.records if "too many connections" in r.getMessage()
        ]
        assert len(warnings) == 2 and "refused 20 since the last warning" in warnings[1]
    finally:
        held.close()
        server.shutdown()
        node.close()
