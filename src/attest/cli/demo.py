"""``attest demo``: the mission on embedded defaults -- a node and a verifier on this machine,
every line a real check through the path of ``attest verify``.

1. a small release image is built and its artifact sha256 and dm-verity root hash computed by
   ``attest.verity.hashtree``; it is blessed as release 1.0.0 in a registry signed with the
   TEST keys of ``firmware_manifests/test`` and verified under its TEST root
   (``attest.cli._demo_release``);
2. a software TPM (swtpm) is manufactured with EK certificates from a private CA, and the node
   starts as in production: ``attestd-tpm`` (the privileged broker owning the TPM, the runtime
   and audit logs, the upgrade gate) and ``attestd`` (the unprivileged HTTP API);
3. the verifier enrolls the node: EK certificate chain, AK attributes, TPM2 credential
   activation over the operator socket; an operator login is recorded in the audit log;
4. the node runs the release: there is no device-mapper here, so the demo plays the node's
   kernel and records the ``verity-device`` event attestd-tpm's udev watcher would record, through
   attestd-tpm's operator socket;
5. the verifier appraises the node as ``attest verify`` does, with the registry and the
   default rules except one, said in the result: the platform is waived (a software TPM has
   no firmware to compare with a platform reference): a fresh
   challenge (``attest.verifier.contact.gather``) appraised by
   ``attest.appraisal.appraise_incremental``: AFFIRMING *as release 1.0.0*, signed as an EAR
   whose signature is checked; the same answer with its PCR values relabelled is refused;
6. an image nobody blessed is offered to the node's upgrade gate: refused with its reason code,
   the slot pointer unchanged;
7. the runtime PCR is extended behind attestd-tpm's back, straight on the swtpm: the node
   still serves its evidence and the verifier says contraindicated, naming the PCR.

Exit 0 only when every step came out so.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attest.cli._common import EXIT_OK, EXIT_VERIFY_FAILED, pcr_selection_arg, print_json
from attest.cli._demo_release import (
    TEST_TRUST,
    VERSION,
    DemoRelease,
    build_release,
    extend_behind_broker,
    offer_unblessed,
)
from attest.errors import TransportError
from attest.model import PcrSelection, PcrValues

if TYPE_CHECKING:
    from attest.appraisal import AppraisalResult, Appraised
    from attest.appraisal.rules import VerifierRules
    from attest.enroll import Enrollment
    from attest.manifest.model import VerifiedRegistry
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
        type=pcr_selection_arg,
        help="PCRs to quote besides the runtime PCR (default sha256:0-7)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="after the mission, boot the node again (a fresh TPM reset, release 1.0.0 "
        "running) and keep it up until Ctrl-C / SIGTERM, printing how to verify it",
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


@dataclass(frozen=True, slots=True)
class DemoNode:
    """The demo's node, running (also the node the doc examples run against:
    ``tests/swtpm/test_doc_examples.py``)."""

    client: NodeClient  # the public API
    operator: NodeClient  # attestd's operator socket
    state: SwtpmState  # the swtpm (its EK CA)
    swtpm_port: int
    api_socket: Path
    broker_operator: Path  # attestd-tpm's operator socket
    url: str  # the public API's base URL
    broker_socket: Path  # attestd-tpm's socket (attestd's)
    spool_dir: Path  # the upgrade gate's spool directory (attestd-tpm's --spool-dir)


def _gate_dirs(work: Path) -> tuple[list[str], dict[str, str]]:
    """The upgrade gate's slots, trust root (the TEST root) and spool: attestd-tpm's options
    and attestd's environment."""
    gate = work / "gate"
    slots, trust, spool = gate / "slots", gate / "trust", gate / "spool"
    for d in (slots, trust, spool):
        d.mkdir(parents=True, exist_ok=True)
    spool.chmod(0o2770)  # set-group-id: uploads get the directory's group
    shutil.copyfile(TEST_TRUST / "root.json", trust / "root.json")
    args = ["--slots-dir", str(slots), "--slot-capacity", str(1 << 20)]
    args += ["--trust-dir", str(trust), "--spool-dir", str(spool)]
    return args, {"ATTEST_UPGRADE_SPOOL_DIR": str(spool)}


def _shown(path: Path) -> str:
    """``path`` as the demo prints it: relative to the working directory when it lies below
    it (``./run demo`` prints ``.work/demo/...``), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def demo_node(work: Path, say: Any) -> Iterator[DemoNode]:
    """The node as in production on a (manufactured once, in ``work/tpm``) swtpm, its upgrade
    gate on, its state in ``work``; ``say`` reports each process as it comes up."""
    from attest.node.tpm.swtpm import SwtpmProcess, SwtpmState, free_port_pair, manufacture
    from attest.verifier.client import NodeClient

    t0 = time.perf_counter()
    tpm_dir = work / "tpm"
    if not (tpm_dir / "state" / "tpm2-00.permall").exists():
        say(
            f"manufacturing a software TPM in {_shown(tpm_dir)} (EK certificates from a private "
            "CA) ..."
        )
        manufacture(tpm_dir)
    state = SwtpmState(tpm_dir / "state", tpm_dir / "ca")
    run = work / "run"
    run.mkdir(exist_ok=True)
    node_state = work / "node"
    node_state.mkdir(mode=0o700, exist_ok=True)
    broker_sock, operator_sock, api_sock = run / "tpm.sock", run / "tpm-op.sock", run / "api.sock"
    port = free_port_pair()
    bindir = Path(sys.executable).parent
    gate_args, gate_env = _gate_dirs(work)
    env = {
        **gate_env,
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
            # Not this machine's firmware log (it would not replay into the swtpm's PCRs);
            # no device-mapper here: the demo plays the kernel below.
            "--firmware-log",
            str(work / "no-firmware-log"),
            "--watch-verity",
            "off",
            *gate_args,
        ]
        with _process(broker_cmd, env, work / "attestd-tpm.log") as broker:
            _wait("attestd-tpm", broker_sock.exists, broker, work / "attestd-tpm.log")
            say(
                f"attestd-tpm privileged broker on {_shown(broker_sock)}, upgrade gate on "
                "(TEST root)"
            )
            with (
                _process([str(bindir / "attestd")], env, work / "attestd.log") as api,
                NodeClient(f"http://127.0.0.1:{port}") as client,
                NodeClient("http://operator", uds=str(api_sock)) as operator,
            ):
                _wait("attestd", client.ready, api, work / "attestd.log")
                say(
                    f"attestd     API on http://127.0.0.1:{port}, operator socket "
                    f"{_shown(api_sock)}"
                    f" (up {time.perf_counter() - t0:.1f} s after start)"
                )
                yield DemoNode(
                    client,
                    operator,
                    state,
                    sw.port,
                    api_sock,
                    operator_sock,
                    f"http://127.0.0.1:{port}",
                    broker_sock,
                    Path(gate_env["ATTEST_UPGRADE_SPOOL_DIR"]),
                )


@dataclass
class _Outcome:
    """What each step of the demo found (``--json`` and the exit code)."""

    release: str | None = None  # the version the affirming appraisal identified
    verdict: str = ""  # Verdict.value of the affirming appraisal
    result: dict[str, Any] = field(default_factory=dict)
    ear: str = ""
    ear_status: str = ""  # its EAR's ear.status (a Tier label)
    relabel: str | None = None  # the refusal of the relabelled quote
    upgrade: dict[str, Any] = field(default_factory=dict)
    tamper: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> bool:
        from attest.appraisal.claims import Tier, Verdict  # loaded by now: the demo appraised

        return (
            self.verdict == Verdict.AFFIRMING.value
            and self.ear_status == Tier.AFFIRMING.label
            and self.release == VERSION
            and self.relabel is not None
            and self.upgrade.get("refused") is True
            and self.upgrade.get("pointer_unchanged") is True
            and self.tamper.get("verdict") == Verdict.CONTRAINDICATED.value
            and bool(self.tamper.get("names_runtime_pcr"))
        )


def _demo(work: Path, args: argparse.Namespace) -> int:
    from cryptography import x509

    from attest.verifier.contact import enroll

    say = (lambda *a: None) if args.json else print
    t0 = time.perf_counter()
    rel = build_release(work / "release", now=datetime.now(UTC))
    say(
        f"release     {rel.version}: {_shown(rel.image)} ({rel.digests.size // 1024} KiB), "
        f"artifact sha256 "
        f"{rel.digests.sha256.hex()[:16]}..., dm-verity root hash "
        f"{rel.digests.verity.root_hash.hex()[:16]}... (attest.verity.hashtree)"
    )
    say(
        f"registry    #{rel.registry.snapshot.sequence} blesses {rel.version}: signed by the TEST "
        f"releases keys (2 of 3) under the TEST root of the repository's "
        f"{TEST_TRUST.parent.name}/{TEST_TRUST.name} -- TEST keys, never production"
    )
    out = _Outcome()
    with demo_node(work, say) as node:
        now = datetime.now(UTC)  # taken once, as attest verify does (after the TPM's CA exists)
        roots = [x509.load_pem_x509_certificate(node.state.root_ca.read_bytes())]
        inter = [x509.load_pem_x509_certificate(node.state.intermediate_ca.read_bytes())]
        enrollment = enroll(
            node.client, now=now, ek_roots=roots, ek_intermediates=inter, activator=node.operator
        )
        say(
            f"enrolled    {enrollment.node_id}: EK certificate "
            f"{enrollment.ek_certificate}; AK attributes ok; credential activation ok"
        )
        _record_login(node.broker_operator)
        say("audit       operator login recorded (pseudonymised, hash-chained, anchored)")
        _play_kernel(node, rel, say)
        _attest(node, enrollment, rel, args.pcrs, now, out, say)
        _upgrade(node, rel, out, say)
        _tamper(node, enrollment, rel, args.pcrs, out, say)
    ok = out.ok()
    say(f"mission     {'every step came out as it must' if ok else 'FAILED (see above)'}")
    doc: dict[str, Any] = {}
    if args.json:
        doc = {
            "valid": ok,
            "node_id": enrollment.node_id,
            "enrollment": enrollment.to_json(),
            "release": out.release,
            "verdict": out.verdict,
            "result": out.result,
            "ear": out.ear,
            "relabelled_quote_refused": out.relabel,
            "upgrade": out.upgrade,
            "tamper": out.tamper,
            "test_keys": str(TEST_TRUST),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    if not (args.keep and ok):
        if args.json:
            print_json(doc)
        return EXIT_OK if ok else EXIT_VERIFY_FAILED
    with demo_node(work, say) as node:  # swtpm started again: a TPM reset, a fresh boot
        _play_kernel(node, rel, say)
        keep = _kept(work, node)
        if args.json:
            print_json({**doc, "keep": keep})
        else:
            _say_kept(keep, say)
        sys.stdout.flush()
        _wait_for_stop()
    say("stopped     attestd, attestd-tpm and the swtpm")
    return EXIT_OK


def _kept(work: Path, node: DemoNode) -> dict[str, Any]:
    """How to reach the kept node: its URL, sockets, EK CA, the demo's registry and rules,
    and an ``attest verify`` / ``attest fleet add`` command line that appraise it."""
    policy = work / "verifier-policy.json"
    policy.write_text(json.dumps(_demo_rules().to_json()) + "\n")
    ca = [str(node.state.root_ca), str(node.state.intermediate_ca)]
    url = node.client.base_url
    verify = ["attest", "verify", url, "--state", str(work / "verifier")]
    verify += [a for c in ca for a in ("--ek-ca", c)]
    verify += ["--operator-socket", str(node.api_socket), "--policy", str(policy)]
    verify += ["--root", str(TEST_TRUST / "root.json")]
    verify += ["--snapshot", str(work / "release" / "registry.json")]
    fleet = ["attest", "fleet", "add", url, "--db", f"sqlite:///{work / 'fleet.db'}"]
    fleet += [a for c in ca for a in ("--ek-roots", c)]
    fleet += ["--operator-socket", str(node.api_socket), "--policy", str(policy)]
    return {
        "url": url,
        "operator_socket": str(node.api_socket),
        "broker_operator_socket": str(node.broker_operator),
        "ek_ca": ca,
        "registry": str(work / "release" / "registry.json"),
        "trust_root": str(TEST_TRUST / "root.json"),
        "policy": str(policy),
        "pid": os.getpid(),
        "verify": verify,
        "fleet_add": fleet,
        "workdir": str(work),
    }


def _say_kept(keep: dict[str, Any], say: Any) -> None:
    say(
        f"kept        the node booted again (TPM reset) running release 1.0.0 at {keep['url']}; "
        f"it stays up until Ctrl-C (or kill {keep['pid']})"
    )
    say("  appraise it: " + shlex.join(keep["verify"]))
    say("  or add it to a fleet: " + shlex.join(keep["fleet_add"]))


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM; the context managers then stop the node."""
    stop = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _play_kernel(node: DemoNode, rel: DemoRelease, say: Any) -> None:
    """On a real node attestd-tpm's udev watcher records the dm-verity device the kernel set up
    (``attest.node.verity_watch``); here the demo plays the kernel and records the same
    ``verity-device`` event through attestd-tpm's operator socket."""
    from attest.node.broker.client import BrokerClient

    root = rel.digests.verity.root_hash.hex()
    with contextlib.closing(BrokerClient(str(node.broker_operator))) as broker:
        rec = broker.measure(
            "verity-device", {"name": "root", "root_hash": root, "status": "verified"}
        )
    say(
        f"node kernel no device-mapper here: the demo plays the node's kernel and records the "
        f"verity-device event attestd-tpm's udev watcher would (root, {root[:16]}..., runtime log "
        f"record {rec.recnum}) through attestd-tpm's operator socket"
    )


def _attest(
    node: DemoNode,
    enrollment: Enrollment,
    rel: DemoRelease,
    pcrs: PcrSelection,
    now: datetime,
    out: _Outcome,
    say: Any,
) -> None:
    """The appraisal of ``attest verify`` with the registry, its EAR, and the relabel attack."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from attest.appraisal.claims import Verdict
    from attest.appraisal.ear import result_ear, verify_ear

    t1 = time.perf_counter()
    ev, done = _appraise(node, enrollment, pcrs, now, rel.registry)
    t_app = time.perf_counter() - t1
    result = done.result
    key = ec.generate_private_key(ec.SECP256R1())
    out.ear = result_ear(result, key, now=now)
    claims = verify_ear(out.ear, key.public_key())
    out.ear_status = claims["submods"][result.node_id or "node"]["ear.status"]
    out.verdict, out.result = result.verdict.value, result.to_json()
    say(
        f"appraised   {result.node_id}: {result.verdict.value.upper()} in {t_app * 1e3:.0f} ms "
        f"(challenge, evidence and audit log, appraisal with the registry: the path of "
        f"`attest verify`)"
    )
    for f in result.findings:
        say(f"  {f.check:<12} {f.tier.label:<10} {f.explanation}")
    for n in result.notes:
        say(f"  note: {n}")
    decided = result.release
    if result.verdict is Verdict.AFFIRMING and decided is not None and decided.ok:
        out.release = decided.release.version if decided.release is not None else None
    say(
        f"RELEASE     {result.verdict.value.upper()} as release {out.release} "
        f"(its dm-verity root hash, from the quoted runtime log, is blessed in registry "
        f"#{rel.registry.snapshot.sequence})"
        if out.release is not None
        else f"RELEASE     not identified: {result.first_divergence} -- this is a bug"
    )
    say(f"EAR         signed (ES256, an ephemeral demo key), signature verified: {out.ear_status}")
    attack = _relabel_attack(ev, enrollment, now, rel.registry)
    refused = attack.verdict not in (Verdict.AFFIRMING, Verdict.WARNING)
    out.relabel = attack.first_divergence if refused else None
    say(
        "attack      the same quote with its PCR values relabelled: "
        + (
            f"REFUSED ({attack.status}: {attack.first_divergence})"
            if refused
            else f"{attack.verdict.value.upper()} -- this is a bug"
        )
    )


def _upgrade(node: DemoNode, rel: DemoRelease, out: _Outcome, say: Any) -> None:
    """An image nobody blessed, offered to the node's upgrade gate."""
    offer = offer_unblessed(rel, node.api_socket, node.broker_operator)
    out.upgrade = {
        "refused": offer.refused,
        "status": offer.status,
        "check": offer.check,
        "detail": offer.detail,
        "pointer_unchanged": offer.pointer_unchanged,
        "active": offer.pointer_after.get("active"),
    }
    outcome = (
        f"REFUSED {offer.check} ({offer.detail})"
        if offer.refused
        else f"HTTP {offer.status} -- this is a bug"
    )
    pointer = "unchanged" if offer.pointer_unchanged else "CHANGED -- this is a bug"
    say(
        f"upgrade     {rel.stray.name}, blessed by nobody, offered to the node's upgrade gate "
        f"(POST /v1/upgrades, operator socket): {outcome}; slot pointer {pointer} "
        f"(active slot {offer.pointer_after.get('active')})"
    )


def _tamper(
    node: DemoNode,
    enrollment: Enrollment,
    rel: DemoRelease,
    pcrs: PcrSelection,
    out: _Outcome,
    say: Any,
) -> None:
    """The runtime PCR extended behind attestd-tpm's back, then a fresh appraisal: the node
    still answers, and the verifier names the PCR whose log no longer replays."""
    from attest.appraisal.claims import Tier

    pcr = enrollment.runtime_pcr
    extend_behind_broker(node.swtpm_port, pcr, hashlib.sha256(b"attest demo: malware").digest())
    _, done = _appraise(node, enrollment, pcrs, datetime.now(UTC), rel.registry)
    result = done.result
    bad = [f for f in result.findings if f.tier is Tier.CONTRAINDICATED]
    runtime = next((f.explanation for f in bad if f.check == "runtime-log"), "")
    out.tamper = {
        "pcr": pcr,
        "verdict": result.verdict.value,
        "reason": runtime or result.first_divergence,
        "contraindicated": {f.check: f.explanation for f in bad},
        "names_runtime_pcr": f"PCR {pcr}" in runtime,
    }
    say(
        f"tamper      PCR {pcr} extended behind attestd-tpm's back (TPM2_PCR_Extend straight to "
        f"the swtpm); the node still serves its evidence: {result.verdict.value.upper()}"
    )
    for f in bad:
        say(f"  {f.check:<12} {f.tier.label:<10} {f.explanation}")


def _demo_rules() -> VerifierRules:
    """The verifier's rules in the demo: the defaults, except that the platform is waived --
    the demo's software TPM has no firmware, so PCRs 0-7 have no signed platform reference to
    equal. The result and the EAR say so (policy ``attest/custom@...``, ``waive_platform``)."""
    from attest.appraisal.rules import VerifierRules

    return VerifierRules(waive_platform=True)


def _appraise(
    node: DemoNode,
    enrollment: Enrollment,
    pcrs: PcrSelection,
    now: datetime,
    registry: VerifiedRegistry,
) -> tuple[Evidence, Appraised]:
    """One contact as ``attest verify`` makes it: a fresh challenge (the evidence with both
    logs, the audit log over the operator socket) appraised with the registry."""
    from attest.verifier.contact import appraise_evidence, gather, selection_for

    selection = selection_for(enrollment.runtime_pcr, pcrs)
    ev = gather(node.client, selection, operator=node.operator, identity=node.client.identity())
    done = appraise_evidence(
        ev,
        enrollment=enrollment,
        registry=registry,
        platform_id=None,
        previous=None,
        now=now,
        rules=_demo_rules(),
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


def _relabel_attack(
    ev: Evidence, enrollment: Enrollment, now: datetime, registry: VerifiedRegistry
) -> AppraisalResult:
    """The attack keylime and tpm2_checkquote accept: the same genuine answer, its PCR values
    relabelled to other indices (same order, so the quote's digest still matches), appraised
    as the genuine one was."""
    from attest.evidence import parse_evidence
    from attest.verifier.contact import appraise_evidence

    genuine = parse_evidence(ev.doc)
    bank, values = next(iter(genuine.pcrs.values.items()))
    shift = 24 - max(values) - 1 if max(values) < 23 else -min(values)
    relabelled = PcrValues({**genuine.pcrs.values, bank: {i + shift: v for i, v in values.items()}})
    attack = replace(ev, doc={**ev.doc, "pcrs": relabelled.to_json()}, audit_entries=None)
    return appraise_evidence(
        attack,
        enrollment=enrollment,
        registry=registry,
        platform_id=None,
        previous=None,
        now=now,
        rules=_demo_rules(),
    ).result
