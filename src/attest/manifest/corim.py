"""The blessed registry's reference values as a signed CoRIM (draft-ietf-rats-corim-11): a
COSE_Sign1 (``attest.cose``) over a CBOR CoRIM whose CoMIDs carry reference triples. Pure: a
verified registry, a key and the time in; bytes out. The reader is ``attest.manifest.corim_parse``.

What a CoRIM of registry #SEQ holds (the keys are the draft's CDDL; "vendor" is ``VENDOR``):

- the signed CoRIM (§4.2): protected header ``alg`` (ES256 -7 for a P-256 key, ES384 -35 for
  P-384), ``content-type`` "application/rim+cbor", ``kid``, ``CWT-Claims`` (iss = the signer
  name, sub = the CoRIM id, nbf = now, exp = the registry's expiry) and, saying the same, the
  legacy ``corim-meta`` (signer name, signature validity) that Veraison's tools read;
- the CoRIM map (§4.1): id ``attest-registry-SEQ``, profile ``PROFILE``, ``rim-validity`` not
  after the registry's expiry, the signer as manifest creator, one CoMID per release and one
  per platform reference (tag 506);
- a release's CoMID (tag id ``attest:release:VERSION``, tag version = the registry sequence;
  revoked releases are left out, embargoed ones are in: their digests are what they bless):
  - the image: environment class {vendor, model "os-image"}; measurements ``artifact``
    (version = the release version, svn = its release sequence, digests = [[1, sha256]]) and
    ``dm-verity`` (digests = [[alg, root hash]]);
  - per platform and boot variant of ``expected_pcrs``: environment class {vendor, model
    PLATFORM}; measurement ``tpm-pcrs:VARIANT`` with ``integrity-registers`` {PCR index:
    [[alg, value], ...]} (one entry per bank);
  - per blessed SEV-SNP launch (``snp``): the AMD SEV-SNP CoRIM profile's guest environment
    (class id ``SNP_VCEK_CLASS``, draft-deeglaze-amd-sev-snp-corim-profile) and its mkey 0
    with digests [[7, MEASUREMENT]]: one triple per launch, since the claims of one triple
    must all match and the launches are alternatives;
- a platform reference's CoMID (tag id ``attest:platform:ID``): environment class {vendor,
  model PLATFORM_ID}, measurement ``tpm-pcrs`` with its PCRs as integrity registers.

Hash algorithms are those of the IANA Named Information registry (sha-256 1, sha-384 7,
sha-512 8); SHA-1 and SM3, which it does not number, are written as text ("sha-1", "sm3-256"),
as the draft's ``digest`` allows (``alg: int / text``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest import cose
from attest.manifest.model import PlatformReference, Release, VerifiedRegistry
from attest.model import HashAlg, PcrValues

CONTENT_TYPE = "application/rim+cbor"  # draft-ietf-rats-corim-11 §4.2.1
# attest's own profile identifier (draft §4.1.4 allows a URI): names what the text mkeys below
# mean. The AMD SNP triples follow that vendor profile's conventions inside it.
PROFILE = "tag:attest-node-integrity.invalid,2026:corim-reference-values"
VENDOR = "attest"
TAG_UNSIGNED_CORIM = 501
TAG_COMID = 506
TAG_COSWID = 505
TAG_COTL = 508
TAG_URI = 32
TAG_EPOCH = 1
TAG_UUID = 37
TAG_OID = 111
TAG_BYTES = 560
HDR_CORIM_META = 8  # corim-meta (the draft's legacy alternative, still what Veraison reads)
HDR_CWT_CLAIMS = 15  # CWT-Claims (RFC 9597)
# draft-deeglaze-amd-sev-snp-corim-profile: the class of a guest whose report a VCEK signed,
# and the profile's own identifier (its editor's copy; draft-02 said 2024).
SNP_VCEK_CLASS = bytes.fromhex("d05e6d1b9f464ae2a610ce3e6ee7e153")
SNP_VLEK_CLASS = bytes.fromhex("89a7a1f0e7044faaacbd81c86df8a961")
SNP_PROFILES = ("tag:amd.com,2025:snp-corim-profile", "tag:amd.com,2024:snp-corim-profile")
SNP_MKEY_GUEST = 0
NI_SHA256, NI_SHA384, NI_SHA512 = 1, 7, 8  # IANA Named Information Hash Algorithm Registry
_NI_ID: dict[HashAlg, int | str] = {
    HashAlg.SHA1: "sha-1",
    HashAlg.SHA256: NI_SHA256,
    HashAlg.SHA384: NI_SHA384,
    HashAlg.SHA512: NI_SHA512,
    HashAlg.SM3_256: "sm3-256",
}
MKEY_ARTIFACT = "artifact"
MKEY_VERITY = "dm-verity"
MKEY_PCRS = "tpm-pcrs"
MODEL_IMAGE = "os-image"

# corim-map (§4.1), concise-mid-tag (§5.1), triples, environment, class, measurement keys
CORIM_ID, CORIM_TAGS, CORIM_PROFILE, CORIM_VALIDITY, CORIM_ENTITIES = 0, 1, 3, 4, 5
COMID_IDENTITY, COMID_ENTITIES, COMID_TRIPLES = 1, 2, 4
REFERENCE_TRIPLES = 0
ENV_CLASS, ENV_INSTANCE, ENV_GROUP = 0, 1, 2
CLASS_ID, CLASS_VENDOR, CLASS_MODEL, CLASS_LAYER, CLASS_INDEX = 0, 1, 2, 3, 4
MKEY, MVAL = 0, 1
MV_VERSION, MV_SVN, MV_DIGESTS, MV_RAW, MV_NAME, MV_REGISTERS = 0, 1, 2, 4, 11, 14
ROLE_MANIFEST_CREATOR, ROLE_TAG_CREATOR = 1, 0


def digest_alg_id(alg: HashAlg) -> int | str:
    """The ``digest`` algorithm of a PCR bank: Named Information number, or text."""
    return _NI_ID[alg]


def _digest(alg_id: int | str, value: bytes) -> list[Any]:
    return [alg_id, value]


def _verity_alg(name: str) -> int | str:
    try:
        return digest_alg_id(HashAlg.from_name(name))
    except (ValueError, KeyError):
        return name


def integrity_registers(pcrs: PcrValues) -> dict[int, list[list[Any]]]:
    """PCR values as ``integrity-registers``: {index: [[alg, value] per bank]}, banks in
    TPM_ALG_ID order so that equal values encode to equal bytes."""
    out: dict[int, list[list[Any]]] = {}
    for alg in sorted(pcrs.values):
        for index, value in sorted(pcrs.values[alg].items()):
            out.setdefault(index, []).append(_digest(digest_alg_id(alg), value))
    return dict(sorted(out.items()))


def _env(model: str) -> dict[int, Any]:
    return {ENV_CLASS: {CLASS_VENDOR: VENDOR, CLASS_MODEL: model}}


def _measurement(mkey: str | int, mval: Mapping[int, Any]) -> dict[int, Any]:
    return {MKEY: mkey, MVAL: dict(mval)}


def _release_triples(release: Release) -> list[list[Any]]:
    verity = release.verity
    image = [
        _env(MODEL_IMAGE),
        [
            _measurement(
                MKEY_ARTIFACT,
                {
                    MV_VERSION: {0: release.version},
                    MV_SVN: release.sequence,
                    MV_DIGESTS: [_digest(NI_SHA256, release.artifact_sha256)],
                },
            ),
            _measurement(
                MKEY_VERITY,
                {MV_DIGESTS: [_digest(_verity_alg(verity.hash_algorithm), verity.root_hash)]},
            ),
        ],
    ]
    triples = [image]
    for platform, variants in sorted(release.expected_pcrs.items()):
        for variant, pcrs in sorted(variants.items()):
            registers = {MV_REGISTERS: integrity_registers(pcrs)}
            triples.append([_env(platform), [_measurement(f"{MKEY_PCRS}:{variant}", registers)]])
    if release.snp is not None:
        snp_env = {ENV_CLASS: {CLASS_ID: cbor2.CBORTag(TAG_UUID, SNP_VCEK_CLASS)}}
        for launch in release.snp.launches:
            mval = {MV_DIGESTS: [_digest(NI_SHA384, launch.measurement)]}
            triples.append([snp_env, [_measurement(SNP_MKEY_GUEST, mval)]])
    return triples


def _entity(name: str, role: int) -> dict[int, Any]:
    return {0: name, 2: [role]}


def _comid(tag_id: str, version: int, signer: str, triples: list[list[Any]]) -> cbor2.CBORTag:
    comid = {
        COMID_IDENTITY: {0: tag_id, 1: version},
        COMID_ENTITIES: [_entity(signer, ROLE_TAG_CREATOR)],
        COMID_TRIPLES: {REFERENCE_TRIPLES: triples},
    }
    return cbor2.CBORTag(TAG_COMID, cbor2.dumps(comid, canonical=True))


def _platform_triples(ref: PlatformReference) -> list[list[Any]]:
    registers = {MV_REGISTERS: integrity_registers(ref.pcrs)}
    return [[_env(ref.platform_id), [_measurement(MKEY_PCRS, registers)]]]


def _time(t: datetime) -> cbor2.CBORTag:
    return cbor2.CBORTag(TAG_EPOCH, int(t.timestamp()))


def _validity(not_before: datetime, not_after: datetime) -> dict[int, Any]:
    return {0: _time(not_before), 1: _time(not_after)}


def corim_map(registry: VerifiedRegistry, *, signer: str, now: datetime) -> dict[int, Any]:
    """The unsigned CoRIM map (``corim-map``) of a verified registry's reference values."""
    snap = registry.snapshot
    tags = [
        _comid(f"attest:release:{r.version}", snap.sequence, signer, _release_triples(r))
        for r in sorted(snap.releases.values(), key=lambda r: r.sequence)
        if r.version not in snap.revocations  # a revoked release is no reference value
    ]
    tags += [
        _comid(f"attest:platform:{pid}", snap.sequence, signer, _platform_triples(s.reference))
        for pid, s in sorted(snap.platforms.items())
    ]
    if not tags:
        raise ValueError(
            f"registry #{snap.sequence} holds no unrevoked release and no platform reference"
        )
    return {
        CORIM_ID: f"attest-registry-{snap.sequence}",
        CORIM_TAGS: tags,
        CORIM_PROFILE: cbor2.CBORTag(TAG_URI, PROFILE),
        CORIM_VALIDITY: _validity(now, snap.expires),
        CORIM_ENTITIES: [_entity(signer, ROLE_MANIFEST_CREATOR)],
    }


def key_id(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The ``kid`` of an export key: SHA-256 of its uncompressed public point (for a P-256
    key, not attest's own key id, which hashes its JSON form; see ``Key.keyid``)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.sha256(point).digest()


def export_corim(
    registry: VerifiedRegistry,
    key: ec.EllipticCurvePrivateKey,
    *,
    signer: str,
    now: datetime,
) -> bytes:
    """The signed CoRIM (``#6.18(COSE-Sign1-corim)``) of a verified registry: ES256 for a
    P-256 key, ES384 for a P-384 key (ValueError for another). Valid from ``now`` to the
    registry's expiry."""
    if now >= registry.snapshot.expires:
        raise ValueError(f"registry #{registry.snapshot.sequence} has expired")
    alg = cose.alg_for_key(key)
    payload = cbor2.CBORTag(TAG_UNSIGNED_CORIM, corim_map(registry, signer=signer, now=now))
    expires = registry.snapshot.expires
    meta = {0: {0: signer}, 1: _validity(now, expires)}
    # Both metadata forms, saying the same (draft §4.2.1): iss = signer name, nbf/exp = validity
    claims: dict[int, str | int] = {1: signer, 2: f"attest-registry-{registry.snapshot.sequence}"}
    claims |= {4: int(expires.timestamp()), 5: int(now.timestamp())}
    protected = cose.encode_protected(
        {
            cose.HDR_ALG: alg.cose_id,
            cose.HDR_CONTENT_TYPE: CONTENT_TYPE,
            cose.HDR_KID: key_id(key),
            HDR_CORIM_META: cbor2.dumps(meta, canonical=True),
            HDR_CWT_CLAIMS: claims,
        }
    )
    return cose.sign1(cbor2.dumps(payload, canonical=True), key, protected=protected)
