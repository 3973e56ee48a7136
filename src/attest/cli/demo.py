"""``attest demo``: the main job on embedded defaults -- a node and a verifier on this machine.

1. a software TPM (swtpm) is manufactured with EK certificates from a private CA;
2. the node starts as in production: ``attestd-tpm`` (the privileged broker owning the TPM,
   the runtime log and the audit log) and ``attestd`` (the unprivileged HTTP API);
3. the verifier enrolls the node: EK certificate chain against the CA, AK attributes, TPM2
   credential activation over the operator socket;
4. an operator login is recorded in the audit log;
5. the verifier appraises the node exactly as ``attest verify`` does: a fresh challenge
   (``attest.verifier.contact.gather``: nonce, evidence, the audit log over the operator
   socket) appraised by ``attest.appraisal.appraise_incremental`` -- quote, Merkle inclusion of
   its nonce, runtime log replayed into the runtime PCR, audit chain anchored in it -- and the
   result signed as an EAR (an ephemeral demo key) whose signature is checked;
6. the same genuine answer with its PCR values relabelled is appraised the same way, and
   refused.

No registry is given: releases, dm-verity root hashes and expected PCRs are not appraised (as
``attest verify`` without ``--trust-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attest.cli._common import EXIT_OK, EXIT_VERIFY_FAILED, print_json
from attest.errors import TransportError
from attest.model import PcrSelection, PcrValues

if TYPE_CHECKING:
    from attest.appraisal import AppraisalResult, Appraised
    from attest.enroll import Enrollment
    from attest.node.tpm.swtpm import SwtpmState
    from attest.verifier.client import NodeClient
    from attest.verifier.contact import Evidence


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a node (swtpm + attestd) and attest it end to end")
    p.add_argument(
        "--workdir",
        type=Path,
        help="where the demo TPM and node state live (reused; default: a temp dir)",
    )
    p.add_argument(
        "--pcrs",
        default="sha256:0-7",
        type=PcrSelection.parse,
        help="PCRs to quote besides the runtime PCR (default sha256:0-7)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="attest-demo-") as tmp:
            return _demo(Path(tmp), args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return _demo(args.workdir.resolve(), args)


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(
    what: str, ok: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise TransportError(f"{what} exited ({proc.returncode}): {' | '.join(tail)}")
        if ok():
            return
        time.sleep(0.05)
    raise TransportError(f"{what} did not become ready within {timeout:.0f} s (log: {log})")


@contextlib.contextmanager
def _node(work: Path, say: Any) -> Iterator[tuple[NodeClient, NodeClient, SwtpmState, Path]]:
    """The node as in production on a (manufactured once) swtpm: yields the API client, the
    operator-socket client, the swtpm state (its CA) and the broker's operator socket."""
    from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, free_port_pair, manufacture
    from attest.verifier.client import NodeClient

    t0 = time.perf_counter()
    tpm_dir = work / "tpm"
    if not (tpm_dir / "state" / "tpm2-00.permall").exists():
        say(f"manufacturing a software TPM in {tpm_dir} (EK certificates from a private CA) ...")
        manufacture(tpm_dir)
    state = SwtpmState(tpm_dir / "state", tpm_dir / "ca")
    run = work / "run"
    run.mkdir(exist_ok=True)
    node_state = work / "node"
    node_state.mkdir(mode=0o700, exist_ok=True)
    broker_sock, operator_sock, api_sock = run / "tpm.sock", run / "tpm-op.sock", run / "api.sock"
    port = free_port_pair()
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "ATTEST_TPM_BROKER_SOCKET": str(broker_sock),
        "ATTEST_API_PORT": str(port),
        "ATTEST_API_OPERATOR_SOCKET": str(api_sock),
        "ATTEST_TPM_STATE_DIR": str(node_state),
        "ATTEST_NODE_ID": "demo-node",
        "ATTEST_LOGS_FIRMWARE_LOG": str(work / "no-firmware-log"),
        "ATTEST_IMAGE_VERSION_FILE": str(work / "image-version"),
    }
    (work / "image-version").write_text("demo-1.0.0\n")
    with SwtpmProcess(state.state_dir) as sw:
        say(f"swtpm       127.0.0.1:{sw.port}")
        broker_cmd = [
            str(bindir / "attestd-tpm"),
            "--tcti",
            sw.tcti,
            "--socket",
            str(broker_sock),
            "--operator-socket",
            str(operator_sock),
            "--state-dir",
            str(node_state),
        ]
        with _process(broker_cmd, env, work / "attestd-tpm.log") as broker:
            _wait("attestd-tpm", broker_sock.exists, broker, work / "attestd-tpm.log")
            say(f"attestd-tpm privileged broker on {broker_sock}")
            with (
                _process([str(bindir / "attestd")], env, work / "attestd.log") as api,
                NodeClient(f"http://127.0.0.1:{port}") as client,
                NodeClient("http://operator", uds=str(api_sock)) as operator,
            ):
                _wait("attestd", client.ready, api, work / "attestd.log")
                say(
                    f"attestd     API on http://127.0.0.1:{port}, operator socket {api_sock}"
                    f" (up {time.perf_counter() - t0:.1f} s after start)"
                )
                yield client, operator, state, operator_sock


def _demo(work: Path, args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from attest.appraisal.claims import Verdict
    from attest.appraisal.ear import result_ear, verify_ear
    from attest.verifier.contact import enroll

    say = (lambda *a: None) if args.json else print
    t0 = time.perf_counter()
    with _node(work, say) as (client, operator, state, operator_sock):
        now = datetime.now(UTC)  # taken once, as attest verify does
        roots = [x509.load_pem_x509_certificate(state.root_ca.read_bytes())]
        inter = [x509.load_pem_x509_certificate(state.intermediate_ca.read_bytes())]
        enrollment = enroll(
            client, now=now, ek_roots=roots, ek_intermediates=inter, activator=operator
        )
        say(
            f"enrolled    {enrollment.node_id}: EK certificate "
            f"{enrollment.ek_certificate}; AK attributes ok; credential activation ok"
        )
        _record_login(operator_sock)
        say("audit       operator login recorded (pseudonymised, hash-chained, anchored)")
        t1 = time.perf_counter()
        ev, done = _appraise(client, operator, enrollment, args.pcrs, now)
        t_app = time.perf_counter() - t1
    result = done.result
    key = ec.generate_private_key(ec.SECP256R1())
    token = result_ear(result, key, now=now)
    claims = verify_ear(token, key.public_key())
    status = claims["submods"][result.node_id or "node"]["ear.status"]
    say(
        f"appraised   {result.node_id}: {result.verdict.value.upper()} in {t_app * 1e3:.0f} ms "
        f"(challenge, evidence and audit log, appraisal: the path of `attest verify`)"
    )
    for f in result.findings:
        say(f"  {f.check:<12} {f.tier.label:<10} {f.explanation}")
    for n in (*result.notes, "no registry: releases, dm-verity and expected PCRs not appraised"):
        say(f"  note: {n}")
    say(f"EAR         signed (ES256, an ephemeral demo key), signature verified: {status}")
    attack = _relabel_attack(ev, enrollment, now)
    refused = attack.verdict not in (Verdict.AFFIRMING, Verdict.WARNING)
    outcome = (
        f"REFUSED ({attack.status}: {attack.first_divergence})"
        if refused
        else f"{attack.verdict.value.upper()} -- this is a bug"
    )
    say(f"attack      the same quote with its PCR values relabelled: {outcome}")
    rt = done.memory.runtime
    kinds = [e.kind for e in rt.log.events] if rt is not None else []
    ok = result.verdict is Verdict.AFFIRMING and status == "affirming" and refused
    if args.json:
        print_json(
            {
                "valid": ok,
                "node_id": enrollment.node_id,
                "enrollment": enrollment.to_json(),
                "verdict": result.verdict.value,
                "result": result.to_json(),
                "ear": token,
                "runtime_events": kinds,
                "audit_entries": len(done.memory.audit),
                "relabelled_quote_refused": attack.first_divergence if refused else None,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return EXIT_OK if ok else EXIT_VERIFY_FAILED


def _appraise(
    client: NodeClient,
    operator: NodeClient,
    enrollment: Enrollment,
    pcrs: PcrSelection,
    now: datetime,
) -> tuple[Evidence, Appraised]:
    """One contact as ``attest verify`` makes it: a fresh challenge (the evidence with both
    logs, the audit log over the operator socket) appraised without a registry."""
    from attest.appraisal import appraise_incremental
    from attest.appraisal.memory import NodeMemory
    from attest.verifier.contact import gather, selection_for

    selection = selection_for(enrollment.runtime_pcr, pcrs)
    ev = gather(client, selection, operator=operator, identity=client.identity())
    done = appraise_incremental(
        ev.doc,
        memory=NodeMemory(),
        enrollment=enrollment,
        nonce=ev.nonce,
        selection=ev.selection,
        registry=None,
        platform_id=None,
        previous=None,
        tls_binding=ev.tls_binding,
        now=now,
        audit_entries=ev.audit_entries,
        identity=ev.identity,
    )
    return ev, done


def _record_login(operator_sock: Path) -> None:
    from attest.node.broker.client import BrokerClient

    with contextlib.closing(BrokerClient(str(operator_sock))) as broker:
        broker.audit_record(
            {
                "event": "login",
                "user": "demo-operator",
                "source": "127.0.0.1",
                "service": "sshd",
                "result": "success",
            }
        )


def _relabel_attack(ev: Evidence, enrollment: Enrollment, now: datetime) -> AppraisalResult:
    """The attack keylime and tpm2_checkquote accept: the same genuine answer, its PCR values
    relabelled to other indices (same order, so the quote's digest still matches), appraised
    as the genuine one was."""
    from attest.appraisal import appraise
    from attest.evidence import parse_evidence

    genuine = parse_evidence(ev.doc)
    bank, values = next(iter(genuine.pcrs.values.items()))
    shift = 24 - max(values) - 1 if max(values) < 23 else -min(values)
    relabelled = PcrValues({**genuine.pcrs.values, bank: {i + shift: v for i, v in values.items()}})
    return appraise(
        {**ev.doc, "pcrs": relabelled.to_json()},
        enrollment=enrollment,
        nonce=ev.nonce,
        selection=ev.selection,
        registry=None,
        platform_id=None,
        previous=None,
        tls_binding=ev.tls_binding,
        now=now,
        identity=ev.identity,
    )
