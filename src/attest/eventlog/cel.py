"""Runtime measurement logs: TCG Canonical Event Log (CEL) JSON, systemd's tpm2-measure.log,
and the Linux IMA binary log. Pure: text or bytes in, typed records out.

CEL: TCG Canonical Event Log Format 1.0, §5 (record: recnum, pcr, digests, content_type,
content) in its JSON encoding (§6.2). systemd writes the same records as JSON-SEQ (RFC 7464:
each record starts with 0x1E and ends with a newline) to ``/run/log/systemd/tpm2-measure.log``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attest.errors import EventLogFormatError, ReplayError
from attest.model import HashAlg, PcrValues, extend

RS = "\x1e"
MAX_RECORDS = 1_000_000


@dataclass(frozen=True, slots=True)
class CelRecord:
    recnum: int
    pcr: int
    digests: Mapping[HashAlg, bytes]
    content_type: str
    content: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "recnum": self.recnum,
            "pcr": self.pcr,
            "digests": [
                {"hashAlg": a.bank_name, "digest": d.hex()} for a, d in self.digests.items()
            ],
            "content_type": self.content_type,
            "content": dict(self.content),
        }


def new_record(
    recnum: int,
    pcr: int,
    measured: bytes,
    *,
    content_type: str,
    content: Mapping[str, Any],
    banks: Sequence[HashAlg] = (HashAlg.SHA256,),
) -> CelRecord:
    """A record for ``measured`` bytes: the digest in each bank is the hash of those bytes,
    which is what the caller extends into ``pcr``."""
    if not 0 <= pcr < 24:
        raise ValueError(f"PCR {pcr} out of range")
    return CelRecord(
        recnum, pcr, {a: a.digest(measured) for a in banks}, content_type, dict(content)
    )


def dumps_cel(records: Iterable[CelRecord]) -> str:
    """CEL-JSON: a JSON array of records."""
    return json.dumps([r.to_json() for r in records], sort_keys=True, indent=1) + "\n"


def dumps_cel_record(record: CelRecord) -> str:
    """One JSON-SEQ line (RFC 7464), for append-only logs (the daemon's, systemd's)."""
    return RS + json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n"


def _record(doc: Any, default_recnum: int) -> CelRecord:
    if not isinstance(doc, dict):
        raise EventLogFormatError("CEL record is not an object")
    try:
        pcr = doc["pcr"]
        recnum = doc.get("recnum", default_recnum)
        if not isinstance(pcr, int) or isinstance(pcr, bool) or not 0 <= pcr < 24:
            raise EventLogFormatError(f"CEL record {recnum}: PCR {pcr!r} out of range")
        if not isinstance(recnum, int) or isinstance(recnum, bool):
            raise EventLogFormatError(f"CEL record: recnum {recnum!r} is not an integer")
        digests: dict[HashAlg, bytes] = {}
        raw = doc["digests"]
        if not isinstance(raw, list) or not raw:
            raise EventLogFormatError(f"CEL record {recnum}: digests must be a non-empty list")
        for d in raw:
            if not isinstance(d, dict):
                raise EventLogFormatError(f"CEL record {recnum}: digest is not an object")
            alg = HashAlg.from_name(str(d["hashAlg"]))
            value = bytes.fromhex(str(d["digest"]))
            if len(value) != alg.digest_size or alg in digests:
                raise EventLogFormatError(f"CEL record {recnum}: bad {alg.bank_name} digest")
            digests[alg] = value
        ctype = doc.get("content_type", "")
        content = doc.get("content", {})
        if not isinstance(ctype, str) or not isinstance(content, dict):
            raise EventLogFormatError(f"CEL record {recnum}: bad content")
    except (KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, EventLogFormatError):
            raise
        raise EventLogFormatError(f"CEL record: {exc!r}") from None
    return CelRecord(recnum, pcr, digests, ctype, content)


def loads_cel(text: str | bytes) -> tuple[CelRecord, ...]:
    """Read CEL-JSON (an array), JSON-SEQ (systemd's tpm2-measure.log) or JSON lines."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EventLogFormatError(f"CEL log is not UTF-8: {exc.reason}") from None
    stripped = text.strip()
    docs: list[Any] = []
    try:
        if stripped.startswith("["):
            parsed = json.loads(stripped)
            if not isinstance(parsed, list):
                raise EventLogFormatError("CEL-JSON is not an array")
            docs = parsed
        else:
            for chunk in stripped.replace(RS, "\n").split("\n"):
                if chunk.strip():
                    docs.append(json.loads(chunk))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EventLogFormatError(f"CEL log is not JSON: {str(exc)[:200]}") from None
    if len(docs) > MAX_RECORDS:
        raise EventLogFormatError("CEL log has too many records")
    return tuple(_record(d, i) for i, d in enumerate(docs))


def read_systemd_measure_log(text: str | bytes) -> tuple[CelRecord, ...]:
    """systemd's userspace measurement log (``/run/log/systemd/tpm2-measure.log``)."""
    return loads_cel(text)


def replay_cel(
    records: Iterable[CelRecord], alg: HashAlg, *, initial: Mapping[int, bytes] | None = None
) -> dict[int, bytes]:
    """PCR values per PCR after extending every record's ``alg`` digest."""
    values: dict[int, bytes] = dict(initial or {})
    for r in records:
        d = r.digests.get(alg)
        if d is None:
            raise EventLogFormatError(f"CEL record {r.recnum} has no {alg.bank_name} digest")
        values[r.pcr] = extend(alg, values.get(r.pcr, bytes(alg.digest_size)), d)
    return values


def verify_cel(
    records: Sequence[CelRecord], quoted: PcrValues, *, pcrs: Iterable[int]
) -> tuple[CelRecord, ...]:
    """Return the records if they replay into the quoted values of ``pcrs`` (in every bank
    both have), else raise ``ReplayError``. The PCRs must hold nothing but these records."""
    wanted = set(pcrs)
    bad: list[tuple[str, int]] = []
    checked = False
    for alg, values in quoted.values.items():
        alg = HashAlg(alg)
        if not all(alg in r.digests for r in records if r.pcr in wanted):
            continue
        got = replay_cel((r for r in records if r.pcr in wanted), alg)
        for pcr in sorted(wanted):
            if pcr in values:
                checked = True
                if got.get(pcr, bytes(alg.digest_size)) != values[pcr]:
                    bad.append((alg.bank_name, pcr))
    if bad or not checked:
        raise ReplayError(
            "runtime log does not replay into the quoted PCRs "
            + (", ".join(f"{b}:{p}" for b, p in bad) or "(no common bank / PCR)"),
            invalid_pcrs=bad,
        )
    return tuple(r for r in records if r.pcr in wanted)


# --- Linux IMA binary log (security/integrity/ima/ima_fs.c ima_measurements_show) -----------


@dataclass(frozen=True, slots=True)
class ImaEntry:
    pcr: int
    template_hash: bytes  # SHA1 of the template data (all zero: a violation)
    template_name: str
    template_data: bytes
    file_digest: str | None  # "sha256:<hex>" (ima-ng/ima-sig) or sha1 hex (ima)
    path: str | None

    @property
    def violation(self) -> bool:
        return not any(self.template_hash)


_IMA_HDR = struct.Struct("<I20sI")


def _ima_fields(data: bytes) -> list[bytes]:
    fields: list[bytes] = []
    off = 0
    while off < len(data):
        if off + 4 > len(data):
            raise EventLogFormatError("IMA template field length truncated")
        (n,) = struct.unpack_from("<I", data, off)
        if off + 4 + n > len(data):
            raise EventLogFormatError("IMA template field overruns the template data")
        fields.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    return fields


def parse_ima_log(data: bytes) -> tuple[ImaEntry, ...]:
    """Parse ``binary_runtime_measurements`` (little-endian, SHA1 template hashes)."""
    entries: list[ImaEntry] = []
    off = 0
    n = len(data)
    while off < n:
        if len(entries) >= MAX_RECORDS:
            raise EventLogFormatError("IMA log has too many entries")
        if off + 28 > n:
            raise EventLogFormatError(f"IMA entry {len(entries)}: truncated header")
        pcr, thash, name_len = _IMA_HDR.unpack_from(data, off)
        off += 28
        if pcr >= 24 or name_len == 0 or name_len > 255 or off + name_len > n:
            raise EventLogFormatError(f"IMA entry {len(entries)}: bad PCR or template name")
        name = data[off : off + name_len].decode("ascii", errors="replace")
        off += name_len
        if name == "ima":
            # Old fixed template: 20-byte digest, u32 name length, name (no total length).
            if off + 24 > n:
                raise EventLogFormatError(f"IMA entry {len(entries)}: truncated 'ima' template")
            (flen,) = struct.unpack_from("<I", data, off + 20)
            if flen > 255 or off + 24 + flen > n:
                raise EventLogFormatError(f"IMA entry {len(entries)}: bad file name length")
            tdata = data[off : off + 24 + flen]
            digest = tdata[:20].hex()
            path = tdata[24:].decode("utf-8", errors="replace")
            off += 24 + flen
        else:
            if off + 4 > n:
                raise EventLogFormatError(f"IMA entry {len(entries)}: truncated template length")
            (tlen,) = struct.unpack_from("<I", data, off)
            off += 4
            if off + tlen > n:
                raise EventLogFormatError(f"IMA entry {len(entries)}: template data overruns")
            tdata = data[off : off + tlen]
            off += tlen
            fields = _ima_fields(tdata)
            digest = None
            path = None
            if len(fields) >= 2 and name in (
                "ima-ng",
                "ima-sig",
                "ima-ngv2",
                "ima-sigv2",
                "ima-buf",
                "ima-modsig",
            ):
                d = fields[0]
                sep = d.find(b"\x00")
                if sep > 0:
                    algo = d[:sep].decode("ascii", errors="replace").rstrip(":")
                    digest = f"{algo}:{d[sep + 1 :].hex()}"
                path = fields[1].rstrip(b"\x00").decode("utf-8", errors="replace")
        entries.append(ImaEntry(pcr, thash, name, tdata, digest, path))
    return tuple(entries)


def replay_ima(entries: Iterable[ImaEntry], alg: HashAlg = HashAlg.SHA1) -> dict[int, bytes]:
    """Replay IMA entries into ``alg``. SHA1 extends the logged template hash; other banks
    extend the hash of the template data (Linux >= 5.11, ima_calc_field_array_hash). A
    violation extends all-ones (ima_add_violation)."""
    values: dict[int, bytes] = {}
    size = alg.digest_size
    for e in entries:
        if e.violation:
            d = b"\xff" * size
        elif alg is HashAlg.SHA1:
            d = e.template_hash
        elif e.template_name == "ima":
            # digest, then the file name NUL-padded to IMA_EVENT_NAME_LEN_MAX + 1 bytes
            d = alg.digest(e.template_data[:20] + e.template_data[24:].ljust(256, b"\x00"))
        else:
            d = alg.digest(e.template_data)
        values[e.pcr] = extend(alg, values.get(e.pcr, bytes(size)), d)
    return values
