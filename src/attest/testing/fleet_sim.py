"""Many simulated nodes behind one lightweight HTTP/1.1 server (for the benchmark, tests and
demos; never used by the service itself).

Node ``i`` answers at ``/n/{i}/v1/evidence`` and ``/n/{i}/v1/identity`` -- and, on a port of
its own (``listen``), at ``/v1/evidence`` and ``/v1/identity``, the origin URL that ``POST
/v1/nodes`` accepts -- with the node API's
documents (``attest.node.api.app``): a fresh quote by its own ``FakeTpm`` (a real ECDSA P-256 AK,
derived from ``seed`` and ``i``) over the caller's nonce (a batch of one: the quote signs the
Merkle leaf of the challenge), its PCRs, its firmware event log (when one is given: the same
log for every node, its events extended into each TPM at boot) from the byte offset asked for,
and its runtime log from the record asked for (an offset past the end is HTTP 400, as attestd
answers). Controls: ``set_image`` (measure a dm-verity device into the runtime PCR, as attestd
does at boot), ``measure`` (any runtime event), ``tamper`` (extend the runtime PCR behind the
log's back), ``reboot`` (TPM reset: PCRs cleared, firmware log measured again, a fresh runtime
log), ``rotate_log`` (the runtime log restarted without a TPM reset), ``down`` (close
connections without answering), ``vouch`` (a host node vouches for a guest's vTPM: a ``vtpm``
runtime event, as ``attest vtpm record`` makes; docs/host-guest.md), ``record_chip`` (a host
records its SEV-SNP chip id: an ``snp-host`` runtime event, as attestd-tpm ``--snp-host`` does
at start; ``measure``, the operator's, refuses that kind and ``vtpm`` as the broker does), and
``snp_only`` (node ``i`` becomes an SEV-SNP guest without a vTPM: it answers with its report
alone, ``attest.evidence.snp_only_members``, REPORT_DATA binding the nonce and no AK; its
identity names no AK or EK). Each node presents an EK
public key (a P-256 key with an EK's attributes, no certificate) in ``/v1/identity``, so that
a guest enrolled over the API has the ``ek_sha256`` a host vouches for. Every evidence
request is counted, and timed when ``record_times`` is set; ``log_bytes`` counts the log bytes
served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from attest.enroll import Enrollment
from attest.eventlog.cel import CelRecord
from attest.eventlog.parse import parse_event_log
from attest.evidence import (
    b64,
    challenge_members,
    firmware_log_member,
    quote_members,
    runtime_log_member,
    snp_member,
    snp_only_members,
)
from attest.manifest.model import PlatformReference
from attest.merkle import challenge_leaf, leaf_hash
from attest.model import HashAlg, PcrSelection
from attest.node.snp_guest import SnpGuest
from attest.node.tpm.fake import FakeTpm
from attest.runtime import KIND_SNP_HOST, KIND_VERITY_DEVICE, KIND_VTPM, new_runtime_record
from attest.snp.reportdata import encode_report_data
from attest.tpmstruct import Alg, ObjectAttr, Public, public_from_key

# An EK's attributes (TCG EK Credential Profile, template L-2 without authPolicy): a restricted
# decryption key that never leaves the TPM.
EK_ATTRS = (
    ObjectAttr.FIXED_TPM
    | ObjectAttr.FIXED_PARENT
    | ObjectAttr.SENSITIVE_DATA_ORIGIN
    | ObjectAttr.ADMIN_WITH_POLICY
    | ObjectAttr.RESTRICTED
    | ObjectAttr.DECRYPT
)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

BANKS = (HashAlg.SHA256,)
MAX_BODY = 65536


@dataclass
class SimNode:
    index: int
    tpm: FakeTpm
    runtime_pcr: int
    records: list[CelRecord] = field(default_factory=list)
    records_json: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    requests: int = 0
    times: list[float] = field(default_factory=list)
    ak_json: dict[str, str] = field(default_factory=dict)
    seed: str = ""
    _ek: Public | None = None
    # An SEV-SNP guest (attest.node.snp_guest.SnpGuest, e.g. FakeSnpGuest): its answers carry
    # an ``snp`` member bound to the nonce and the AK, as attestd's with ``[snp] enabled``.
    snp: SnpGuest | None = None
    # False: the guest has no vTPM (``SimFleet.snp_only``): its TPM is never used, and it
    # answers with its SEV-SNP report alone.
    vtpm: bool = True

    @property
    def ek(self) -> Public:
        """The node's EK public area (derived from its seed on first use)."""
        if self._ek is None:
            scalar = (
                int.from_bytes(hashlib.sha256(f"{self.seed}/ek".encode()).digest(), "big")
                % _P256_ORDER
            )
            key = ec.derive_private_key(scalar or 1, ec.SECP256R1()).public_key()
            self._ek = public_from_key(key, attributes=EK_ATTRS, scheme=Alg.NULL, scheme_hash=None)
        return self._ek

    @property
    def ek_sha256(self) -> bytes:
        """What a verifier enrolls (``Enrollment.ek_sha256``) and a host vouches for."""
        return hashlib.sha256(self.ek.raw).digest()

    @property
    def node_id(self) -> str:
        return f"sim-{self.index}"

    def measure(self, kind: str, content: dict[str, Any]) -> None:
        rec = new_runtime_record(
            len(self.records), kind, content, pcr=self.runtime_pcr, banks=BANKS
        )
        self.tpm.extend(self.runtime_pcr, dict(rec.digests))
        self.records.append(rec)
        self.records_json.append(rec.to_json())


class SimFleet:
    def __init__(
        self,
        count: int,
        *,
        seed: str = "attest-sim",
        runtime_pcr: int = 13,
        verity_root_hash: bytes | None = None,
        record_times: bool = False,
        clock: Callable[[], float] = time.time,
        firmware_log: bytes | None = None,
    ) -> None:
        self.runtime_pcr = runtime_pcr
        self.record_times = record_times
        self.clock = clock
        self.firmware_log = firmware_log
        self.log_bytes = 0
        # The firmware log's measurements (EV_NO_ACTION is never extended), and its base64 for
        # the common answers (the whole log; nothing new).
        self._fw_extends: list[tuple[int, bytes]] = []
        self._fw_b64 = {0: b64(firmware_log or b""), len(firmware_log or b""): ""}
        if firmware_log is not None:
            self._fw_extends = [
                (e.pcr, e.digests[HashAlg.SHA256])
                for e in parse_event_log(firmware_log).events
                if e.type != 0x3 and HashAlg.SHA256 in e.digests
            ]
        self._verity_root_hash = verity_root_hash
        self._own: list[asyncio.Server] = []  # one node each (``listen``)
        self._handlers: set[asyncio.Task[None]] = set()  # open connections (``stop`` ends them)
        self.nodes: list[SimNode] = []
        for i in range(count):
            tpm = FakeTpm(banks=BANKS, seed=f"{seed}/{i}".encode())
            ak = tpm.ak_public()
            node = SimNode(
                i,
                tpm,
                runtime_pcr,
                ak_json={"public": b64(ak.tpm2b()), "name": ak.name.hex()},
                seed=f"{seed}/{i}",
            )
            self.nodes.append(node)
            self._boot(node)

    def platform_reference(self, platform_id: str) -> PlatformReference:
        """The simulated platform's firmware reference, as governance would sign it: PCRs 0-7
        of a node booted with this fleet's firmware log (all zero without one: no firmware
        measured anything)."""
        tpm = FakeTpm(banks=BANKS, seed=b"attest-sim/platform")
        for pcr, digest in self._fw_extends:
            tpm.extend(pcr, {HashAlg.SHA256: digest})
        pcrs = tpm.read_pcrs(PcrSelection.of({HashAlg.SHA256: range(8)}))
        what = "its firmware event log" if self.firmware_log else "no firmware: PCRs 0-7 zero"
        return PlatformReference(platform_id, f"attest fleet simulator ({what})", pcrs)

    def _boot(self, node: SimNode) -> None:
        for pcr, digest in self._fw_extends:
            node.tpm.extend(pcr, {HashAlg.SHA256: digest})
        if self._verity_root_hash is not None:
            self.set_image(node.index, self._verity_root_hash)
        self._selections: dict[str, PcrSelection] = {}
        self.server: asyncio.Server | None = None

    # --- controls ---------------------------------------------------------------------------

    def set_image(self, i: int, verity_root_hash: bytes, name: str = "root") -> None:
        self.nodes[i].measure(
            KIND_VERITY_DEVICE, {"name": name, "root_hash": verity_root_hash.hex()}
        )

    def measure(self, i: int, kind: str, content: dict[str, Any]) -> None:
        """An operator's measurement (the broker's ``measure``): never a vTPM vouching or the
        host's SEV-SNP chip, which only the host itself records (``vouch``, ``record_chip``)."""
        if kind in (KIND_VTPM, KIND_SNP_HOST):
            raise ValueError(f"{kind} events are recorded by the host itself, not on request")
        self.nodes[i].measure(kind, content)

    def vouch(self, host: int, guest_id: str, ek_sha256: bytes) -> None:
        """Node ``host`` vouches for a guest's vTPM (a ``vtpm`` runtime event)."""
        self.nodes[host].measure(KIND_VTPM, {"guest_id": guest_id, "ek_sha256": ek_sha256.hex()})

    def record_chip(self, host: int, chip_id: bytes) -> None:
        """Node ``host`` records its SEV-SNP chip id (an ``snp-host`` runtime event, as
        attestd-tpm ``--snp-host`` reads it from the AMD-SP at start)."""
        self.nodes[host].measure(KIND_SNP_HOST, {"chip_id": chip_id.hex()})

    def snp_only(self, i: int, guest: SnpGuest) -> None:
        """Node ``i`` is an SEV-SNP guest without a vTPM, its reports from ``guest``."""
        self.nodes[i].snp = guest
        self.nodes[i].vtpm = False

    def tamper(self, i: int) -> None:
        self.nodes[i].tpm.extend(self.runtime_pcr, {HashAlg.SHA256: os.urandom(32)})

    def reboot(self, i: int) -> None:
        """A TPM reset: PCRs cleared, the firmware measured again, a fresh runtime log."""
        node = self.nodes[i]
        node.tpm.reset()
        node.records.clear()
        node.records_json.clear()
        self._boot(node)

    def rotate_log(self, i: int) -> None:
        """The runtime log starts afresh while the runtime PCR keeps its value (no reset)."""
        self.nodes[i].records.clear()
        self.nodes[i].records_json.clear()

    def enrollment(self, i: int, *, now: datetime | None = None, ek: bool = False) -> Enrollment:
        """The enrollment record a verifier would make (trust in the AK out of band: the
        simulated EKs have no certificate); ``ek``: with the EK's sha256 (a pair's guest)."""
        ak = self.nodes[i].tpm.ak_public()
        return Enrollment(
            node_id=self.nodes[i].node_id,
            ak_public=ak.tpm2b(),
            ak_name=ak.name,
            ek_sha256=self.nodes[i].ek_sha256 if ek else None,
            ek_certificate=None,
            activated=False,
            runtime_pcr=self.runtime_pcr,
            enrolled_at=(now or datetime.now(UTC)).isoformat(),
        )

    # --- the documents ----------------------------------------------------------------------

    def identity(self, node: SimNode) -> dict[str, Any]:
        if not node.vtpm:  # no TPM: no AK, no EK
            return {"node_id": node.node_id, "tls_binding": None, "version": "sim"}
        ek = node.ek
        return {
            "node_id": node.node_id,
            "ak": node.ak_json,
            "ek": {"public": b64(ek.tpm2b()), "name": ek.name.hex()},
            "ek_certificates": {},
            "banks": [b.bank_name for b in BANKS],
            "runtime_pcr": self.runtime_pcr,
            "tls_binding": None,
            "version": "sim",
        }

    def _snp_only_evidence(self, node: SimNode, nonce: bytes) -> dict[str, Any]:
        """The answer of a guest without a vTPM: its SEV-SNP report, bound to the nonce only
        (no TLS key: the simulator serves plain HTTP; no AK)."""
        if node.snp is None:
            raise ValueError("this node has neither a vTPM nor an SEV-SNP guest")
        got = node.snp.get_report(encode_report_data(nonce=nonce, tls_spki=None, vtpm_ak=None))
        return snp_only_members(
            node_id=node.node_id,
            snp=snp_member(got.report, got.certs, None),
            cmdline=None,
            image_version=None,
            image_slot=None,
            time=datetime.fromtimestamp(self.clock(), UTC),
        )

    def evidence(self, node: SimNode, req: dict[str, Any]) -> dict[str, Any]:
        nonce = bytes.fromhex(req["nonce"])
        if not node.vtpm:
            return self._snp_only_evidence(node, nonce)
        key = json.dumps(req["pcrs"], sort_keys=True)
        sel = self._selections.get(key)
        if sel is None:
            sel = PcrSelection.of({HashAlg.from_name(b): idx for b, idx in req["pcrs"].items()})
            self._selections[key] = sel
        # A batch of one: the Merkle root of a single leaf is the leaf's hash.
        quote = node.tpm.quote(sel, leaf_hash(challenge_leaf(nonce, b"")))
        logs = req.get("logs") or {}
        runtime = None
        if "runtime" in logs:
            start = int(logs["runtime"].get("start", 0))
            if not 0 <= start <= len(node.records_json):
                raise ValueError(f"runtime log start {start} is past its end")
            runtime = runtime_log_member(self.runtime_pcr, start, node.records_json[start:])
        firmware = None
        if "firmware" in logs and self.firmware_log is not None:
            start = int(logs["firmware"].get("start", 0))
            total = len(self.firmware_log)
            if not 0 <= start <= total:
                raise ValueError(f"firmware log start {start} is past its end ({total})")
            firmware = firmware_log_member(
                self.firmware_log, start, encoded=self._fw_b64.get(start)
            )
            self.log_bytes += total - start
        doc = {
            **challenge_members(
                batch_size=1,
                batch_index=0,
                proof=(),
                tls_binding=b"",
                firmware_log=firmware,
                runtime_log=runtime,
            ),
            **quote_members(
                node_id=node.node_id,
                attest=quote.attest,
                signature=quote.signature,
                pcrs=quote.pcrs,
                ak=node.tpm.ak_public(),
                verity=None,
                cmdline=None,
                image_version=None,
                image_slot=None,
                time=datetime.fromtimestamp(self.clock(), UTC),
            ),
        }
        if node.snp is not None:
            ak = node.tpm.ak_public().tpm2b()
            got = node.snp.get_report(encode_report_data(nonce=nonce, tls_spki=None, vtpm_ak=ak))
            doc["snp"] = snp_member(got.report, got.certs, None)
        return doc

    # --- the HTTP server --------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(
            self._conn, host, port, backlog=4096, limit=MAX_BODY
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def listen(self, i: int, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve node ``i`` alone on a port of its own, at the root: its URL is an origin,
        ``http://host:port`` (what ``POST /v1/nodes`` accepts). Returns the port."""
        prefix = f"/n/{i}"

        async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._conn(reader, writer, prefix)

        server = await asyncio.start_server(conn, host, port, limit=MAX_BODY)
        self._own.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, then end the open connections' handlers (a server's ``close`` leaves
        them running until 3.12): none is left to be collected after the loop is gone."""
        for server in [s for s in (self.server, *self._own) if s is not None]:
            server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for server in [s for s in (self.server, *self._own) if s is not None]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    def url(self, port: int, i: int, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{port}/n/{i}"

    async def _conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, prefix: str = ""
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if length > MAX_BODY:
                    return
                body = await reader.readexactly(length) if length else b""
                status, doc = self._route(method, prefix + path.decode(), body)
                if status == 0:  # the node is down: drop the connection unanswered
                    return
                out = json.dumps(doc, separators=(",", ":")).encode()
                writer.write(
                    b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (status, len(out), out)
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            ValueError,
            asyncio.CancelledError,
        ):
            pass  # the client went away, or the server is stopping
        finally:
            self._handlers.discard(task)
            writer.close()

    def _route(self, method: bytes, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = path.split("/")  # "", "n", i, "v1", endpoint
        if len(parts) < 5 or parts[1] != "n" or not parts[2].isdigit():
            return 404, {"detail": "no such path"}
        i = int(parts[2])
        if i >= len(self.nodes):
            return 404, {"detail": "no such node"}
        node = self.nodes[i]
        if node.down:
            return 0, {}
        tail = "/".join(parts[3:])
        if tail == "v1/evidence" and method == b"POST":
            node.requests += 1
            if self.record_times:
                node.times.append(self.clock())
            try:
                return 200, self.evidence(node, json.loads(body))
            except (ValueError, KeyError, TypeError) as exc:
                return 400, {"detail": str(exc)}
        if tail == "v1/identity":
            return 200, self.identity(node)
        if tail == "readyz":
            return 200, {"ready": True}
        return 404, {"detail": "no such endpoint"}
