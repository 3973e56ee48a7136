"""Strict, bounded readers: untrusted bytes → envelope + typed document, or ``ManifestFormatError``.

Nothing here checks signatures (see ``verify``); everything here checks shape: exact member sets,
types, lengths, hex case, time format, cross-references (role key ids exist, rollback rules name
known releases, embargo and source are consistent). Any input either parses or raises
``ManifestFormatError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from attest.errors import ManifestFormatError
from attest.manifest.canonical import parse_canonical
from attest.manifest.envelope import Key, UnverifiedEnvelope, parse_envelope, parse_hex
from attest.manifest.model import (
    MAC_NONE,
    ROLES,
    SPEC_VERSION,
    BlessedPolicies,
    Embargo,
    PlatformReference,
    RegistrySnapshot,
    Release,
    ReleaseSnp,
    Revocation,
    Role,
    RollbackAuthorisation,
    SecureBootExpectation,
    SignedPlatformReference,
    SnpLaunch,
    TrustRoot,
    VerityParams,
)
from attest.model import HashAlg, PcrValues
from attest.snp.policy import CrlMissing, SnpPolicy
from attest.snp.report import SUPPORTED_VERSIONS, Product, TcbVersion

MAX_ROOT_BYTES = 64 * 1024
MAX_REGISTRY_BYTES = 4 * 1024 * 1024
MAX_KEYS = 64
MAX_RELEASES = 1024
MAX_ENTRIES = 1024
MAX_PLATFORMS = 64
MAX_TEXT = 1024
MAX_COMPONENTS = 64
MAX_MAC_TYPES = 8
MAX_CONFIG_DIGESTS = 64
MAX_SNP_LAUNCHES = 64
MAX_SNP_VCPUS = 512
MAX_SNP_CHIP_IDS = 1024
MAX_SNP_VMPL = 3

_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_VERITY_HASHES = {"sha256": 32, "sha512": 64, "sha1": 20}
_MAC_RE = re.compile(r"[a-z][a-z0-9._-]{0,31}")  # selinux, apparmor, smack, ...

T = TypeVar("T")


def parse_time(value: object, *, field: str) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        raise ManifestFormatError(f"{field}: expected a UTC time like 2036-01-01T00:00:00Z")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise ManifestFormatError(f"{field}: not a valid date/time") from None


def _opt_time(value: object, *, field: str) -> datetime | None:
    return None if value is None else parse_time(value, field=field)


def _obj(
    value: object, *, field: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestFormatError(f"{field}: expected an object")
    keys = set(value)
    missing = required - keys
    if missing:
        raise ManifestFormatError(f"{field}: missing {', '.join(sorted(missing))}")
    extra = keys - required - optional
    if extra:
        shown = ", ".join(sorted(k[:40] for k in extra)[:3])
        raise ManifestFormatError(f"{field}: unknown member(s) {shown}")
    return value


def _int(value: object, *, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ManifestFormatError(f"{field}: expected an integer in {lo}..{hi}")
    return value


def _bool(value: object, *, field: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestFormatError(f"{field}: expected true or false")
    return value


def _text(value: object, *, field: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ManifestFormatError(f"{field}: expected a string of at most {limit} characters")
    return value


def is_name(text: str) -> bool:
    """A release version, slot, platform id, ...: 1-64 characters [A-Za-z0-9._+~-]."""
    return _NAME_RE.fullmatch(text) is not None


def _name(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ManifestFormatError(
            f"{field}: expected a name of 1-64 characters [A-Za-z0-9._+~-], not {str(value)[:40]!r}"
        )
    return value


def _map(
    value: object, *, field: str, limit: int, item: Callable[[str, Any, str], T]
) -> dict[str, T]:
    if not isinstance(value, dict):
        raise ManifestFormatError(f"{field}: expected an object")
    if len(value) > limit:
        raise ManifestFormatError(f"{field}: {len(value)} entries, limit {limit}")
    return {_name(k, field=f"{field} key"): item(k, v, f"{field}.{k}") for k, v in value.items()}


def _list(value: object, *, field: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestFormatError(f"{field}: expected an array")
    if len(value) > limit:
        raise ManifestFormatError(f"{field}: {len(value)} entries, limit {limit}")
    return value


def _type_header(signed: Mapping[str, Any], *, expected: str, field: str) -> None:
    if signed.get("_type") != expected:
        raise ManifestFormatError(
            f"{field}: _type is {str(signed.get('_type'))[:20]!r}, expected {expected!r}"
        )
    if signed.get("spec_version") != SPEC_VERSION:
        raise ManifestFormatError(f"{field}: unsupported spec_version")


def _same(model_json: Mapping[str, Any], signed: Mapping[str, Any], *, field: str) -> None:
    """The typed model must describe exactly the signed bytes (no lossy parse)."""
    if model_json != signed:
        raise ManifestFormatError(f"{field}: not in normal form (e.g. unsorted PCR indices)")


# --- trust root -----------------------------------------------------------------------------


def parse_root_signed(signed: Mapping[str, Any]) -> TrustRoot:
    f = "root"
    _type_header(signed, expected="root", field=f)
    doc = _obj(
        signed, field=f, required={"_type", "spec_version", "version", "expires", "keys", "roles"}
    )
    version = _int(doc["version"], field=f"{f}.version", lo=1, hi=2**31)
    expires = parse_time(doc["expires"], field=f"{f}.expires")
    raw_keys = doc["keys"]
    if not isinstance(raw_keys, dict) or len(raw_keys) > MAX_KEYS:
        raise ManifestFormatError(f"{f}.keys: expected an object of at most {MAX_KEYS} keys")
    keys: dict[str, Key] = {}
    for kid, kdoc in raw_keys.items():
        key = Key.from_json(kdoc, field=f"{f}.keys[{kid[:16]}]")
        if kid != key.keyid:
            raise ManifestFormatError(
                f"{f}.keys: key id {kid[:16]}... is not sha256 of its canonical key document"
            )
        keys[kid] = key
    raw_roles = _obj(doc["roles"], field=f"{f}.roles", required=set(ROLES))
    roles: dict[str, Role] = {}
    for name in ROLES:
        rdoc = _obj(raw_roles[name], field=f"{f}.roles.{name}", required={"keyids", "threshold"})
        ids = _list(rdoc["keyids"], field=f"{f}.roles.{name}.keyids", limit=MAX_KEYS)
        keyids = tuple(parse_hex(k, field=f"{f}.roles.{name}.keyids", size=32).hex() for k in ids)
        if len(set(keyids)) != len(keyids):
            raise ManifestFormatError(f"{f}.roles.{name}: a key id is listed twice")
        for k in keyids:
            if k not in keys:
                raise ManifestFormatError(f"{f}.roles.{name}: key id {k[:16]}... is not in keys")
        threshold = _int(
            rdoc["threshold"], field=f"{f}.roles.{name}.threshold", lo=1, hi=max(1, len(keyids))
        )
        if not keyids:
            raise ManifestFormatError(f"{f}.roles.{name}: no keys")
        roles[name] = Role(keyids, threshold)
    return TrustRoot(version=version, expires=expires, keys=keys, roles=roles)


def load_root(data: bytes) -> tuple[UnverifiedEnvelope, TrustRoot]:
    """Parse a root file: bounded, canonical, well-formed. Signatures are *not* checked."""
    env = parse_envelope(parse_canonical(data, max_size=MAX_ROOT_BYTES), field="root document")
    root = parse_root_signed(env.signed)
    _same(root.to_json(), env.signed, field="root")
    return env, root


# --- registry -------------------------------------------------------------------------------


def _pcr_values(value: object, *, field: str, max_index: int = 23) -> PcrValues:
    if not isinstance(value, dict) or len(value) > 8:
        raise ManifestFormatError(f"{field}: expected an object of PCR banks")
    out: dict[HashAlg, dict[int, bytes]] = {}
    for bank, pcrs in value.items():
        alg = _bank(bank, field=field)
        if not isinstance(pcrs, dict) or not pcrs or len(pcrs) > 24:
            raise ManifestFormatError(f"{field}.{bank}: expected an object of PCR values")
        out[alg] = {
            _pcr_index(i, field=f"{field}.{bank}", max_index=max_index): parse_hex(
                d, field=f"{field}.{bank}.{i}", size=alg.digest_size
            )
            for i, d in pcrs.items()
        }
    return PcrValues(out)


def _bank(bank: str, *, field: str) -> HashAlg:
    try:
        alg = HashAlg.from_name(bank)
    except ValueError:
        raise ManifestFormatError(f"{field}: unknown PCR bank {bank[:20]!r}") from None
    if alg.bank_name != bank:
        raise ManifestFormatError(f"{field}: write the bank as {alg.bank_name!r}")
    return alg


def _pcr_index(text: str, *, field: str, max_index: int) -> int:
    if not text.isascii() or not text.isdigit() or str(int(text)) != text:
        raise ManifestFormatError(f"{field}: PCR index {text[:8]!r} is not a decimal number")
    index = int(text)
    if index > max_index:
        raise ManifestFormatError(f"{field}: PCR index {index} out of range 0..{max_index}")
    return index


def _verity(value: object, *, field: str) -> VerityParams:
    doc = _obj(
        value,
        field=field,
        required={
            "root_hash",
            "salt",
            "hash_algorithm",
            "data_block_size",
            "hash_block_size",
            "data_blocks",
            "format",
        },
    )
    alg = doc["hash_algorithm"]
    if alg not in _VERITY_HASHES:
        raise ManifestFormatError(
            f"{field}.hash_algorithm: expected one of {', '.join(_VERITY_HASHES)}"
        )
    sizes = [512 << i for i in range(8)]  # 512 .. 65536, powers of two (veritysetup's range)
    dbs, hbs = doc["data_block_size"], doc["hash_block_size"]
    if dbs not in sizes or hbs not in sizes or isinstance(dbs, bool) or isinstance(hbs, bool):
        raise ManifestFormatError(f"{field}: block sizes must be powers of two in 512..65536")
    if doc["format"] != 1 or isinstance(doc["format"], bool):
        raise ManifestFormatError(f"{field}.format: only dm-verity format 1 is supported")
    return VerityParams(
        root_hash=parse_hex(doc["root_hash"], field=f"{field}.root_hash", size=_VERITY_HASHES[alg]),
        salt=parse_hex(doc["salt"], field=f"{field}.salt", max_size=256),
        hash_algorithm=alg,
        data_block_size=dbs,
        hash_block_size=hbs,
        data_blocks=_int(doc["data_blocks"], field=f"{field}.data_blocks", lo=1, hi=2**50),
        format=1,
    )


def _embargo(value: object, *, field: str) -> Embargo:
    doc = _obj(
        value, field=field, required={"quiet_period_days", "fleet_complete_at", "disclosed_at"}
    )
    return Embargo(
        quiet_period_days=_int(
            doc["quiet_period_days"], field=f"{field}.quiet_period_days", lo=0, hi=366
        ),
        fleet_complete_at=_opt_time(doc["fleet_complete_at"], field=f"{field}.fleet_complete_at"),
        disclosed_at=_opt_time(doc["disclosed_at"], field=f"{field}.disclosed_at"),
    )


def _commit(value: object, *, field: str) -> bytes:
    raw = parse_hex(value, field=field, max_size=32)
    if len(raw) not in (20, 32):
        raise ManifestFormatError(f"{field}: expected a git commit id (SHA-1 or SHA-256)")
    return raw


def parse_policies(value: object, *, field: str) -> BlessedPolicies:
    """``{"mac"?: {type: sha256} | "none", "config"?: [sha256, ...]}``, at least one member;
    config digests sorted and distinct (one spelling per document)."""
    doc = _obj(value, field=field, required=set(), optional=frozenset({"mac", "config"}))
    if not doc:
        raise ManifestFormatError(f"{field}: bless mac and/or config (or leave policies out)")
    mac: dict[str, bytes] | None = None
    if "mac" in doc:
        raw = doc["mac"]
        if raw == MAC_NONE:
            mac = {}
        elif not isinstance(raw, dict) or not 1 <= len(raw) <= MAX_MAC_TYPES:
            raise ManifestFormatError(
                f'{field}.mac: expected "none" or an object of 1-{MAX_MAC_TYPES} MAC type -> sha256'
            )
        else:
            mac = {}
            for k, v in raw.items():
                if not _MAC_RE.fullmatch(k) or k == MAC_NONE:
                    raise ManifestFormatError(
                        f"{field}.mac: {k[:40]!r} is not a MAC type name "
                        "([a-z][a-z0-9._-], at most 32)"
                    )
                mac[k] = parse_hex(v, field=f"{field}.mac.{k}", size=32)
    config: tuple[bytes, ...] | None = None
    if "config" in doc:
        items = _list(doc["config"], field=f"{field}.config", limit=MAX_CONFIG_DIGESTS)
        config = tuple(parse_hex(d, field=f"{field}.config", size=32) for d in items)
        if not config:
            raise ManifestFormatError(f"{field}.config: no digest (leave config out instead)")
        if list(config) != sorted(set(config)):
            raise ManifestFormatError(f"{field}.config: digests must be sorted and distinct")
    return BlessedPolicies(mac=mac, config=config)


def _opt_digest(value: object, *, field: str) -> bytes | None:
    return None if value is None else parse_hex(value, field=field, size=32)


def _snp_launch(value: object, *, field: str) -> SnpLaunch:
    doc = _obj(value, field=field, required={"slot", "measurement", "vcpus", "vcpu_type", "inputs"})
    inputs = _obj(
        doc["inputs"], field=f"{field}.inputs", required={"ovmf", "kernel", "initrd", "cmdline"}
    )
    launch = SnpLaunch(
        slot=_name(doc["slot"], field=f"{field}.slot"),
        measurement=parse_hex(doc["measurement"], field=f"{field}.measurement", size=48),
        vcpus=_int(doc["vcpus"], field=f"{field}.vcpus", lo=1, hi=MAX_SNP_VCPUS),
        vcpu_type=_name(doc["vcpu_type"], field=f"{field}.vcpu_type"),
        ovmf_sha256=parse_hex(inputs["ovmf"], field=f"{field}.inputs.ovmf", size=32),
        kernel_sha256=_opt_digest(inputs["kernel"], field=f"{field}.inputs.kernel"),
        initrd_sha256=_opt_digest(inputs["initrd"], field=f"{field}.inputs.initrd"),
        cmdline_sha256=_opt_digest(inputs["cmdline"], field=f"{field}.inputs.cmdline"),
    )
    if launch.kernel_sha256 is None and (launch.initrd_sha256 or launch.cmdline_sha256):
        raise ManifestFormatError(f"{field}.inputs: an initrd or cmdline needs a kernel")
    return launch


def _tcb_floor(product: Product, value: object, *, field: str) -> TcbVersion:
    parts = ("bootloader", "tee", "snp", "microcode")
    optional = frozenset({"fmc"}) if product.fmc_in_tcb else frozenset()
    doc = _obj(value, field=field, required=set(parts), optional=optional)
    spl = {k: _int(v, field=f"{field}.{k}", lo=0, hi=255) for k, v in doc.items()}
    return TcbVersion(**spl)


def _min_tcb(value: object, *, field: str) -> dict[Product, TcbVersion]:
    if not isinstance(value, dict) or len(value) > len(Product):
        raise ManifestFormatError(f"{field}: expected an object of SNP products")
    out: dict[Product, TcbVersion] = {}
    for name, floor in value.items():
        try:
            product = Product(name)
        except ValueError:
            known = ", ".join(p.value for p in Product)
            raise ManifestFormatError(
                f"{field}: {str(name)[:20]!r} is not one of {known}"
            ) from None
        out[product] = _tcb_floor(product, floor, field=f"{field}.{name}")
    return out


def parse_release_snp(value: object, *, field: str) -> ReleaseSnp:
    """``{"launches": [...], "policy": {...}}``: at least one launch, in normal form (sorted
    by slot, vCPU type, count; one launch each); every policy member present."""
    doc = _obj(value, field=field, required={"launches", "policy"})
    raw = _list(doc["launches"], field=f"{field}.launches", limit=MAX_SNP_LAUNCHES)
    launches = tuple(_snp_launch(v, field=f"{field}.launches[{i}]") for i, v in enumerate(raw))
    if not launches:
        raise ManifestFormatError(f"{field}.launches: no launch (leave snp out instead)")
    keys = [launch.key for launch in launches]
    if keys != sorted(set(keys)):
        raise ManifestFormatError(
            f"{field}.launches: sort by slot, vcpu_type, vcpus, one launch each"
        )
    policy, bind = parse_snp_policy(doc["policy"], field=f"{field}.policy")
    return ReleaseSnp(launches=launches, policy=policy, bind_host_data=bind)


def parse_snp_policy(value: object, *, field: str) -> tuple[SnpPolicy, bool]:
    """(policy, bind HOST_DATA) of a release's ``snp.policy`` or a platform's ``snp``: every
    member present; debug never allowed."""
    f = field
    pol = _obj(
        value,
        field=f,
        required={
            "min_tcb",
            "min_report_version",
            "allow_migration_agent",
            "allow_smt",
            "require_single_socket",
            "vmpl",
            "allowed_chip_ids",
            "crl_missing",
            "bind_host_data",
        },
    )
    chips: frozenset[bytes] | None = None
    if pol["allowed_chip_ids"] is not None:
        items = _list(
            pol["allowed_chip_ids"], field=f"{f}.allowed_chip_ids", limit=MAX_SNP_CHIP_IDS
        )
        ids = [parse_hex(c, field=f"{f}.allowed_chip_ids", size=64) for c in items]
        if not ids or ids != sorted(set(ids)):
            raise ManifestFormatError(
                f"{f}.allowed_chip_ids: one or more chip ids, sorted and distinct (or null)"
            )
        chips = frozenset(ids)
    if not isinstance(pol["crl_missing"], str) or pol["crl_missing"] not in {
        c.value for c in CrlMissing
    }:
        raise ManifestFormatError(f'{f}.crl_missing: expected "refuse" or "warn"')
    policy = SnpPolicy(
        min_tcb=_min_tcb(pol["min_tcb"], field=f"{f}.min_tcb"),
        min_report_version=_int(
            pol["min_report_version"],
            field=f"{f}.min_report_version",
            lo=min(SUPPORTED_VERSIONS),
            hi=max(SUPPORTED_VERSIONS),
        ),
        allow_debug=False,
        allow_migration_agent=_bool(
            pol["allow_migration_agent"], field=f"{f}.allow_migration_agent"
        ),
        allow_smt=_bool(pol["allow_smt"], field=f"{f}.allow_smt"),
        require_single_socket=_bool(
            pol["require_single_socket"], field=f"{f}.require_single_socket"
        ),
        vmpl=_int(pol["vmpl"], field=f"{f}.vmpl", lo=0, hi=MAX_SNP_VMPL),
        allowed_chip_ids=chips,
        crl_missing=CrlMissing(pol["crl_missing"]),
    )
    return policy, _bool(pol["bind_host_data"], field=f"{f}.bind_host_data")


def _release(version: str, value: object, field: str) -> Release:
    doc = _obj(
        value,
        field=field,
        required={
            "version",
            "sequence",
            "artifact",
            "verity",
            "blessed_at",
            "source",
            "embargo",
            "boot_components",
            "expected_pcrs",
        },
        optional=frozenset({"policies", "snp"}),
    )
    if doc["version"] != version:
        raise ManifestFormatError(f"{field}.version does not match its key")
    art = _obj(doc["artifact"], field=f"{field}.artifact", required={"sha256", "size"})
    source = doc["source"]
    commit = None
    if source is not None:
        commit = _commit(
            _obj(source, field=f"{field}.source", required={"commit"})["commit"],
            field=f"{field}.source.commit",
        )
    embargo = None if doc["embargo"] is None else _embargo(doc["embargo"], field=f"{field}.embargo")
    # The source rule: a release names its commit, unless it is under an undisclosed embargo.
    if embargo is None and commit is None:
        raise ManifestFormatError(f"{field}: needs source.commit or an embargo record")
    if embargo is not None and (embargo.disclosed_at is None) != (commit is None):
        raise ManifestFormatError(
            f"{field}: an embargoed release has a source commit exactly when it is disclosed"
        )
    verity = _verity(doc["verity"], field=f"{field}.verity")
    size = _int(art["size"], field=f"{field}.artifact.size", lo=1, hi=2**53 - 1)
    if verity.data_blocks * verity.data_block_size != size:
        raise ManifestFormatError(
            f"{field}: verity data_blocks x data_block_size must equal the artifact size"
        )
    components = _map(
        doc["boot_components"],
        field=f"{field}.boot_components",
        limit=MAX_COMPONENTS,
        item=lambda k, v, f: parse_hex(v, field=f, size=32),
    )
    expected = parse_expected_pcrs(doc["expected_pcrs"], field=f"{field}.expected_pcrs")
    policies = None
    if "policies" in doc:
        policies = parse_policies(doc["policies"], field=f"{field}.policies")
    snp = None if "snp" not in doc else parse_release_snp(doc["snp"], field=f"{field}.snp")
    return Release(
        version=version,
        sequence=_int(doc["sequence"], field=f"{field}.sequence", lo=1, hi=2**53 - 1),
        artifact_sha256=parse_hex(art["sha256"], field=f"{field}.artifact.sha256", size=32),
        artifact_size=size,
        verity=verity,
        blessed_at=parse_time(doc["blessed_at"], field=f"{field}.blessed_at"),
        source_commit=commit,
        embargo=embargo,
        boot_components=components,
        expected_pcrs=expected,
        policies=policies,
        snp=snp,
    )


def parse_expected_pcrs(value: object, *, field: str) -> dict[str, dict[str, PcrValues]]:
    """``{platform_id: {boot_variant: {bank: {pcr: hex}}}}``."""
    return _map(
        value,
        field=field,
        limit=MAX_PLATFORMS,
        item=lambda k, v, f: _map(
            v, field=f, limit=16, item=lambda k2, v2, f2: _pcr_values(v2, field=f2)
        ),
    )


def _revocation(version: str, value: object, field: str) -> Revocation:
    doc = _obj(value, field=field, required={"artifact_sha256", "reason", "revoked_at"})
    return Revocation(
        version=version,
        artifact_sha256=parse_hex(
            doc["artifact_sha256"], field=f"{field}.artifact_sha256", size=32
        ),
        reason=_text(doc["reason"], field=f"{field}.reason"),
        revoked_at=parse_time(doc["revoked_at"], field=f"{field}.revoked_at"),
    )


def parse_platform_signed(signed: Mapping[str, Any], *, field: str) -> PlatformReference:
    _type_header(signed, expected="platform", field=field)
    doc = _obj(
        signed,
        field=field,
        required={
            "_type",
            "spec_version",
            "platform_id",
            "description",
            "example",
            "pcrs",
            "event_digests",
            "secure_boot",
        },
        optional=frozenset({"snp"}),
    )
    snp, bind = (
        (None, False) if "snp" not in doc else parse_snp_policy(doc["snp"], field=f"{field}.snp")
    )
    event_digests: dict[str, dict[int, tuple[bytes, ...]]] = {}
    raw_ev = doc["event_digests"]
    if not isinstance(raw_ev, dict) or len(raw_ev) > 8:
        raise ManifestFormatError(f"{field}.event_digests: expected an object of PCR banks")
    for bank, per in raw_ev.items():
        alg = _bank(bank, field=f"{field}.event_digests")
        if not isinstance(per, dict):
            raise ManifestFormatError(f"{field}.event_digests.{bank}: expected an object")
        event_digests[bank] = {
            _pcr_index(i, field=f"{field}.event_digests.{bank}", max_index=7): tuple(
                parse_hex(d, field=f"{field}.event_digests.{bank}.{i}", size=alg.digest_size)
                for d in _list(ds, field=f"{field}.event_digests.{bank}.{i}", limit=MAX_ENTRIES)
            )
            for i, ds in per.items()
        }
    sb = None
    if doc["secure_boot"] is not None:
        sbd = _obj(
            doc["secure_boot"], field=f"{field}.secure_boot", required={"enabled", "variables"}
        )
        sb = SecureBootExpectation(
            enabled=_bool(sbd["enabled"], field=f"{field}.secure_boot.enabled"),
            variables=_map(
                sbd["variables"],
                field=f"{field}.secure_boot.variables",
                limit=16,
                item=lambda k, v, f: parse_hex(v, field=f, size=32),
            ),
        )
    return PlatformReference(
        platform_id=_name(doc["platform_id"], field=f"{field}.platform_id"),
        description=_text(doc["description"], field=f"{field}.description"),
        pcrs=_pcr_values(doc["pcrs"], field=f"{field}.pcrs", max_index=7),
        event_digests=event_digests,
        secure_boot=sb,
        example=_bool(doc["example"], field=f"{field}.example"),
        snp=snp,
        snp_bind_host_data=bind,
    )


def _platform(platform_id: str, value: object, field: str) -> SignedPlatformReference:
    env = parse_envelope(value, field=field)
    ref = parse_platform_signed(env.signed, field=f"{field}.signed")
    if ref.platform_id != platform_id:
        raise ManifestFormatError(f"{field}: platform_id does not match its key")
    _same(ref.to_json(), env.signed, field=field)
    return SignedPlatformReference(ref, env.signatures)


def parse_registry_signed(signed: Mapping[str, Any]) -> RegistrySnapshot:
    f = "registry"
    _type_header(signed, expected="registry", field=f)
    doc = _obj(
        signed,
        field=f,
        required={
            "_type",
            "spec_version",
            "sequence",
            "expires",
            "releases",
            "revoked",
            "rollbacks",
            "platforms",
        },
    )
    releases = _map(doc["releases"], field=f"{f}.releases", limit=MAX_RELEASES, item=_release)
    seen_seq: dict[int, str] = {}
    seen_art: dict[bytes, str] = {}
    for v, r in releases.items():
        if r.sequence in seen_seq:
            raise ManifestFormatError(
                f"{f}.releases: {v} and {seen_seq[r.sequence]} share sequence {r.sequence}"
            )
        if r.artifact_sha256 in seen_art:
            raise ManifestFormatError(
                f"{f}.releases: {v} and {seen_art[r.artifact_sha256]} share an artifact"
            )
        seen_seq[r.sequence] = v
        seen_art[r.artifact_sha256] = v
    revoked = _map(doc["revoked"], field=f"{f}.revoked", limit=MAX_ENTRIES, item=_revocation)
    for v, rev in revoked.items():
        if v in releases and releases[v].artifact_sha256 != rev.artifact_sha256:
            raise ManifestFormatError(f"{f}.revoked.{v}: artifact does not match the release")
    rollbacks = []
    pairs = set()
    for i, item in enumerate(_list(doc["rollbacks"], field=f"{f}.rollbacks", limit=MAX_ENTRIES)):
        where = f"{f}.rollbacks[{i}]"
        rd = _obj(item, field=where, required={"from", "to", "reason"})
        rb = RollbackAuthorisation(
            from_version=_name(rd["from"], field=f"{where}.from"),
            to_version=_name(rd["to"], field=f"{where}.to"),
            reason=_text(rd["reason"], field=f"{where}.reason"),
        )
        for v in (rb.from_version, rb.to_version):
            if v not in releases:
                raise ManifestFormatError(f"{where}: {v} is not a release in this registry")
        if releases[rb.to_version].sequence >= releases[rb.from_version].sequence:
            raise ManifestFormatError(
                f"{where}: {rb.to_version} is not older than "
                f"{rb.from_version}; no authorisation is needed"
            )
        if (rb.from_version, rb.to_version) in pairs:
            raise ManifestFormatError(f"{where}: duplicate rollback rule")
        pairs.add((rb.from_version, rb.to_version))
        rollbacks.append(rb)
    platforms = _map(doc["platforms"], field=f"{f}.platforms", limit=MAX_PLATFORMS, item=_platform)
    return RegistrySnapshot(
        sequence=_int(doc["sequence"], field=f"{f}.sequence", lo=1, hi=2**53 - 1),
        expires=parse_time(doc["expires"], field=f"{f}.expires"),
        releases=releases,
        revocations=revoked,
        rollbacks=tuple(rollbacks),
        platforms=platforms,
    )


def load_registry(data: bytes) -> tuple[UnverifiedEnvelope, RegistrySnapshot]:
    """Parse a registry file: bounded, canonical, well-formed. Signatures are *not* checked."""
    env = parse_envelope(
        parse_canonical(data, max_size=MAX_REGISTRY_BYTES), field="registry document"
    )
    snap = parse_registry_signed(env.signed)
    _same(snap.to_json(), env.signed, field="registry")
    return env, snap


def document_type(data: bytes) -> str:
    """``root`` or ``registry`` (for the CLI's ``show`` / ``sign``), without other checks."""
    env = parse_envelope(parse_canonical(data, max_size=MAX_REGISTRY_BYTES))
    kind = env.signed.get("_type")
    if kind not in ("root", "registry"):
        raise ManifestFormatError(f"unknown document _type {str(kind)[:20]!r}")
    return str(kind)
