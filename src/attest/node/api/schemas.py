"""Request and response bodies of the attestd API (also what /openapi.json publishes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

HEX_NONCE = r"^(?:[0-9a-fA-F]{2}){8,64}$"  # 8..64 bytes: a TPM2B_DATA holds at most 64
PcrIndex = Annotated[int, Field(ge=0, le=23, strict=True)]  # strict: true is not PCR 1


class LogRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: int = Field(
        0, ge=0, le=1 << 40, strict=True, description="firmware: byte offset; runtime: recnum"
    )


Bank = Literal["sha1", "sha256", "sha384", "sha512"]


def _all_sha256() -> dict[Bank, list[int]]:  # the default selection
    return {"sha256": list(range(24))}


class EvidenceRequest(BaseModel):
    """RFC 9684-style challenge: a fresh nonce, the PCRs to quote, the logs to include."""

    model_config = ConfigDict(extra="forbid")
    nonce: str = Field(pattern=HEX_NONCE, description="hex, 8..64 bytes, fresh per challenge")
    pcrs: dict[Bank, Annotated[list[PcrIndex], Field(min_length=1, max_length=24)]] = Field(
        default_factory=_all_sha256,
        description="PCR indices per bank (0..23)",
        max_length=4,
    )
    logs: dict[Literal["firmware", "runtime"], LogRequest] = Field(
        default_factory=dict, description="logs to include, each from a starting index"
    )


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id_object: str = Field(max_length=2048, description="base64 TPM2B_ID_OBJECT contents")
    encrypted_secret: str = Field(max_length=2048, description="base64 encrypted seed")


class ActivateResponse(BaseModel):
    secret: str = Field(description="base64 of the secret the credential released")


class QuoteBody(BaseModel):
    attest: str = Field(description="base64 TPMS_ATTEST")
    signature: str = Field(description="base64 TPMT_SIGNATURE")


class BatchBody(BaseModel):
    size: int
    index: int
    proof: list[str] = Field(description="hex hashes, RFC 9162 inclusion path, bottom-up")
    tls_binding: str | None = Field(description="hex sha256 of the node TLS key's SPKI")


class AkBody(BaseModel):
    public: str = Field(description="base64 TPM2B_PUBLIC")
    name: str = Field(description="hex TPM Name")


class FirmwareLogBody(BaseModel):
    start: int
    total: int
    data: str = Field(description="base64 bytes of binary_bios_measurements from start")


class RuntimeLogBody(BaseModel):
    pcr: int
    start: int
    records: list[dict[str, object]] = Field(description="TCG CEL JSON records")


class ImageBody(BaseModel):
    version: str | None
    slot: str | None


class SnpBody(BaseModel):
    report: str = Field(description="base64 SEV-SNP ATTESTATION_REPORT")
    certs: str | None = Field(description="base64 certificate table (configfs-TSM auxblob)")
    tls_spki: str | None = Field(description="base64 DER of the TLS key REPORT_DATA binds")


class EvidenceResponse(BaseModel):
    version: int
    node_id: str
    quote: QuoteBody
    pcrs: dict[str, dict[str, str]]
    batch: BatchBody
    ak: AkBody
    firmware_log: FirmwareLogBody | None
    runtime_log: RuntimeLogBody | None
    verity: dict[str, object] | None
    boot: dict[str, str | None] = Field(description="the kernel command line (text)")
    image: ImageBody
    time: str
    snp: SnpBody | None = Field(
        default=None, description="SEV-SNP guests only (docs/snp.md, 'Guest evidence')"
    )


def evidence_ok() -> dict[str, object]:
    """The OpenAPI 200 answer of ``POST /v1/evidence``: the document (``application/json``),
    or by ``Accept`` the same document as a CMW record (RFC 9999; docs/cmw.md)."""
    record = {
        "type": "array",
        "description": 'a CMW record: ["application/vnd.attest.evidence+json", the '
        "document's JSON in unpadded base64url, 4 (evidence)]",
        "minItems": 3,
        "maxItems": 3,
        "prefixItems": [
            {"const": "application/vnd.attest.evidence+json"},
            {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
            {"const": 4},
        ],
    }
    return {
        "model": EvidenceResponse,
        "description": "the evidence document; with Accept: application/cmw+json or "
        "application/cmw+cbor, the same document as a RATS CMW record (RFC 9999)",
        "content": {
            "application/cmw+json": {"schema": record},
            "application/cmw+cbor": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "the CMW record in CBOR: [the media type (text), the "
                    "document's JSON (bstr), 4]",
                }
            },
        },
    }


class Error(BaseModel):
    """Every error answer of attestd, whatever its status (docs/api.md)."""

    error: str = Field(
        description="the error's class: QuoteFormatError, UpgradeRefused, RequestValidationError, "
        "RateLimited, NotFound, ..."
    )
    check: str | None = Field(description="the failed check or reason code; null when none")
    detail: str = Field(
        description="what went wrong, in at most 300 printable ASCII characters; never an echo "
        "of the request"
    )


# What each error status means on attestd (docs/api.md), for the OpenAPI document.
ERROR_STATUSES: dict[int, str] = {
    400: "malformed request: a bad nonce or PCR selection, a PCR bank not active, a log offset "
    "past the end, a malformed upload (a registry push: check snapshot-malformed)",
    403: "a mutating endpoint on the public listener: it needs mutual TLS or the operator socket",
    408: "a registry push did not arrive within its time limit (check: upload-timeout)",
    409: "refused by a decision (the upgrade gate or its trust refresh: check is its reason code)",
    413: "request body over api.max_request_bytes (an upload: over api.max_upload_bytes)",
    422: "the request breaks the schema (check: request-schema)",
    429: "rate limited on a TCP listener (Retry-After)",
    501: "the upgrade gate runs in attestd-tpm: use its operator socket",
    503: "the TPM or attestd-tpm is unavailable, or the quote queue is full (Retry-After)",
    507: "the node's state file system cannot take the write (an upload: its spool is full, "
    "read-only or not writable; attestd's log names the reason)",
}
# Every request may be refused before any route sees it: its body too large, its address
# over the rate limit.
ALWAYS = (413, 429)


def error_responses(*statuses: int, plain: bool = False) -> dict[int | str, dict[str, object]]:
    """An operation's OpenAPI ``responses`` for errors: ``statuses`` and ``ALWAYS``, each with
    the ``Error`` schema, and ``default`` (any other error status, e.g. 500 or 507: the same
    shape). ``plain``: the route's own answer is not JSON (``/metrics``), its errors are: the
    schema is named by reference (FastAPI would file a model under the route's media type)."""

    def one(description: str) -> dict[str, object]:
        if plain:
            schema = {"$ref": "#/components/schemas/Error"}
            return {"description": description, "content": {"application/json": {"schema": schema}}}
        return {"model": Error, "description": description}

    out: dict[int | str, dict[str, object]] = {
        s: one(ERROR_STATUSES[s]) for s in sorted({*statuses, *ALWAYS})
    }
    out["default"] = one("any other error, in the same shape")
    return out
