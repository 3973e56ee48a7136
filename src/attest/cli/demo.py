"""``attest demo``: the main job on embedded defaults -- a node and a verifier on this machine.

1. a software TPM (swtpm) is manufactured with EK certificates from a private CA;
2. the node starts as in production: ``attestd-tpm`` (the privileged broker owning the TPM,
   the runtime log and the audit log) and ``attestd`` (the unprivileged HTTP API);
3. the verifier enrolls the node: EK certificate chain against the CA, AK attributes, TPM2
   credential activation over the operator socket;
4. an operator login is recorded in the audit log;
5. the verifier challenges the node with a fresh nonce and verifies the evidence: quote,
   Merkle inclusion of its nonce, runtime log replayed into the runtime PCR, audit chain
   anchored in it;
6. the same genuine quote with relabelled PCR values is shown to be refused.
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
from typing import Any

from attest.cli._common import EXIT_OK, EXIT_VERIFY_FAILED, print_json
from attest.errors import TransportError, VerificationError
from attest.model import PcrSelection, PcrValues


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


def _demo(work: Path, args: argparse.Namespace) -> int:
    from cryptography import x509

    from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, free_port_pair, manufacture
    from attest.verifier.client import NodeClient
    from attest.verifier.contact import challenge, enroll

    say = (lambda *a: None) if args.json else print
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
                now = datetime.now(UTC)
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
                appraisal = challenge(client, enrollment, selection=args.pcrs, firmware=False)
                t_app = time.perf_counter() - t1
                q = appraisal.evidence.quote
                rt = appraisal.runtime
                kinds = [e.kind for e in rt.events] if rt else []
                batch = appraisal.evidence.evidence.batch_size
                say(
                    f"quote       {q.selection}, {q.signature_alg.name}/"
                    f"{q.signature_hash.bank_name}, batch of {batch}, "
                    f"resetCount {q.clock.reset_count}"
                )
                say(
                    f"runtime log {len(kinds)} events replay into PCR {enrollment.runtime_pcr}: "
                    f"{', '.join(kinds)}"
                )
                anchors = rt.audit_anchors if rt else ()
                audit_doc = operator.audit(0)
                from attest.audit import verify_audit_chain

                entries = verify_audit_chain(audit_doc["entries"], anchors)
                say(f"audit chain {len(entries)} entries verified against their runtime anchors")
                say(
                    f"verdict     VALID: node {enrollment.node_id} attested in "
                    f"{t_app * 1e3:.0f} ms (challenge, quote, Merkle proof, logs)"
                )
                refused = _relabel_attack(appraisal, enrollment)
                outcome = f"REFUSED ({refused})" if refused else "ACCEPTED -- this is a bug"
                say(f"attack      the same quote with its PCR values relabelled: {outcome}")
    if args.json:
        print_json(
            {
                "valid": True,
                "node_id": enrollment.node_id,
                "enrollment": enrollment.to_json(),
                "quote": q.to_json(),
                "runtime_events": kinds,
                "audit_entries": len(entries),
                "relabelled_quote_refused": refused,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return EXIT_OK if refused else EXIT_VERIFY_FAILED


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


def _relabel_attack(appraisal: Any, enrollment: Any) -> str | None:
    """The attack keylime and tpm2_checkquote accept: the same genuine quote, its PCR values
    relabelled to other indices (same order, so the digest still matches)."""
    from attest.quote import verify_quote

    ev = appraisal.evidence.evidence
    vq = appraisal.evidence.quote
    bank, values = next(iter(vq.pcrs.values.items()))
    shift = 24 - max(values) - 1 if max(values) < 23 else -min(values)
    relabelled = PcrValues({**vq.pcrs.values, bank: {i + shift: v for i, v in values.items()}})
    try:
        verify_quote(ev.attest, ev.signature, ak=enrollment.ak, nonce=vq.nonce, pcrs=relabelled)
    except VerificationError as exc:
        return f"{exc.check}: {exc}"
    return None
