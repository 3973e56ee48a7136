"""``attest manifest ...``: keys, trust roots, the blessed registry, signing and verification.

Documents are files. Editing commands (``bless``, ``revoke``, ``allow-rollback``, ``disclose``,
``fleet-complete``, ``platform-set``) rewrite a registry *draft*; editing a signed registry starts
the next draft (sequence + 1, signatures dropped). ``sign`` adds one signature. ``verify`` exits
0 only for a valid, fresh, threshold-signed document. ``export-corim`` / ``import-corim``
(``attest.cli._corim``) speak CoRIM. Reference: ``docs/manifest.md``.
"""

from __future__ import annotations

import argparse
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attest.cli import _corim, _snp_bless
from attest.cli._common import EXIT_OK, print_json
from attest.errors import ConfigError, ManifestFormatError
from attest.manifest import edit
from attest.manifest.canonical import canonicalize, parse_json
from attest.manifest.envelope import Key, PrivateKey, UnverifiedEnvelope, sign
from attest.manifest.evaluate import EmbargoState, embargo_state, evaluate_release
from attest.manifest.model import (
    MAC_NONE,
    ROLE_ROOT,
    ROLES,
    BlessedPolicies,
    RegistrySnapshot,
    Release,
    SignedPlatformReference,
    SnpLaunch,
    TrustRoot,
    format_time,
)
from attest.manifest.parse import (
    MAX_REGISTRY_BYTES,
    MAX_ROOT_BYTES,
    document_type,
    load_registry,
    load_root,
    parse_expected_pcrs,
    parse_platform_signed,
)
from attest.manifest.snp import describe_launch, release_host_data
from attest.manifest.trusted import TrustedState
from attest.manifest.verify import (
    check_expiry,
    verify_root_self_signed,
    verify_root_update,
    verify_snapshot,
)
from attest.node.config import load_settings, settings_digest
from attest.storage.files import atomic_write_bytes, read_bytes
from attest.storage.trusted_state import load_state, save_state
from attest.verity.hashtree import hash_image

MAX_KEY_FILE = 16 * 1024


# --- argument helpers --------------------------------------------------------------------


def _time(text: str, *, key: str) -> datetime:
    """ISO 8601; a time without a zone is taken as UTC."""
    try:
        t = datetime.fromisoformat(text)
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {text!r}", key=key) from None
    except OverflowError:  # year 1 at +01:00 is before datetime.min in UTC
        raise ConfigError(f"out of range in UTC: {text!r}", key=key) from None


def _now(args: argparse.Namespace) -> datetime:
    """The operation's one clock reading (or ``--now``)."""
    given = getattr(args, "now", None)
    t = _time(given, key="--now") if given else datetime.now(UTC)
    return t.replace(microsecond=0)


def _hex(text: str, *, key: str, size: int | None = None) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"not hex: {text[:40]!r}", key=key) from None
    if size is not None and len(raw) != size:
        raise ConfigError(f"expected {size} bytes, got {len(raw)}", key=key)
    return raw


def _policies(args: argparse.Namespace) -> BlessedPolicies | None:
    """``--policy-mac TYPE=SHA256`` (repeat) or ``--policy-mac none``, ``--config-digest
    SHA256`` (repeat): the runtime policy a release blesses (None when neither is given)."""
    mac: dict[str, bytes] | None = None
    items: list[str] = args.policy_mac or []
    if MAC_NONE in items:
        if len(items) > 1:
            raise ConfigError('"none" excludes any other MAC policy', key="--policy-mac")
        mac = {}
    for item in items:
        if item == MAC_NONE:
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected TYPE=SHA256HEX or none, got {item!r}", key="--policy-mac")
        if mac is not None and name in mac:
            raise ConfigError(f"MAC type {name!r} given twice", key="--policy-mac")
        mac = {**(mac or {}), name: _hex(value, key="--policy-mac", size=32)}
    config = [_hex(d, key="--config-digest", size=32) for d in args.config_digest or []]
    return edit.policies(mac=mac, config=config)


def _expires(args: argparse.Namespace, now: datetime, *, default_days: int) -> datetime:
    if getattr(args, "expires", None):
        return _time(args.expires, key="--expires")
    days = getattr(args, "expires_days", None)
    return now + timedelta(days=days if days is not None else default_days)


def _write_doc(path: str, env: UnverifiedEnvelope) -> None:
    atomic_write_bytes(path, env.to_bytes())


def _load_public_key(path: str) -> Key:
    data = read_bytes(path, max_size=MAX_KEY_FILE)
    if data.lstrip().startswith(b"{"):
        doc = parse_json(data, max_size=MAX_KEY_FILE)
        if isinstance(doc, dict) and "key" in doc:
            doc = doc["key"]
        return Key.from_json(doc, field=path)
    return Key.of_private(_load_private_key(path))


def _load_private_key(path: str) -> PrivateKey:
    data = read_bytes(path, max_size=MAX_KEY_FILE)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ManifestFormatError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ManifestFormatError(f"{path}: only Ed25519 and ECDSA P-256 keys are supported")


def _load_registry_file(path: str) -> tuple[UnverifiedEnvelope, RegistrySnapshot]:
    return load_registry(read_bytes(path, max_size=MAX_REGISTRY_BYTES))


def _save_registry(path: str, snapshot: RegistrySnapshot) -> None:
    _write_doc(path, UnverifiedEnvelope(snapshot.to_json(), ()))


def _edit(args: argparse.Namespace) -> tuple[RegistrySnapshot, datetime]:
    env, snap = _load_registry_file(args.registry)
    now = _now(args)
    draft = edit.next_draft(env, snap)
    if getattr(args, "expires", None) or getattr(args, "expires_days", None) is not None:
        draft = edit.checked(replace(draft, expires=_expires(args, now, default_days=0)))
    return draft, now


def _done(args: argparse.Namespace, snapshot: RegistrySnapshot, message: str) -> int:
    _save_registry(args.registry, snapshot)
    if getattr(args, "json", False):
        print_json({"registry": args.registry, "sequence": snapshot.sequence, "signed": False})
    else:
        print(f"{message}; {args.registry} is draft #{snapshot.sequence} (unsigned)")
    return EXIT_OK


# --- commands ----------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    private: PrivateKey
    if args.type == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    key = Key.of_private(private)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if args.test_only:
        pem = b"# TEST-ONLY KEY - NEVER USE IN PRODUCTION - PUBLISHED IN THE REPOSITORY\n" + pem
    pem_path, pub_path = f"{args.out}.pem", f"{args.out}.pub.json"
    for p in (pem_path, pub_path):
        if Path(p).exists() and not args.force:
            raise FileExistsError(17, "exists (use --force to overwrite)", p)
    Path(pem_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new key directory
    atomic_write_bytes(pem_path, pem, mode=0o600)
    atomic_write_bytes(pub_path, canonicalize({"keyid": key.keyid, "key": key.to_json()}))
    if args.json:
        print_json({"keyid": key.keyid, "private": pem_path, "public": pub_path})
    else:
        print(f"{key.keyid}  {key.keytype}  {pem_path}  {pub_path}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    now = _now(args)
    previous: TrustRoot | None = None
    if args.previous:
        _, previous = load_root(read_bytes(args.previous, max_size=MAX_ROOT_BYTES))
    role_keys: dict[str, list[Key]] = {}
    thresholds: dict[str, int] = {}
    for role in ROLES:
        paths = getattr(args, f"{role}_key") or []
        threshold = getattr(args, f"{role}_threshold")
        if paths:
            role_keys[role] = [_load_public_key(p) for p in paths]
        elif previous is not None:
            r = previous.role(role)
            role_keys[role] = [previous.keys[k] for k in r.keyids]
            threshold = threshold or r.threshold
        else:
            raise ConfigError("no keys given for the role", key=f"--{role}-key")
        thresholds[role] = threshold or 1
    version = previous.version + 1 if previous is not None else 1
    root = edit.new_root(
        version=version,
        expires=_expires(args, now, default_days=365),
        role_keys=role_keys,
        thresholds=thresholds,
    )
    _write_doc(args.out, UnverifiedEnvelope(root.to_json(), ()))
    print(
        f"root v{root.version} written to {args.out} (unsigned; needs {thresholds[ROLE_ROOT]} "
        f"root signature(s){' of the old and the new root role' if previous else ''})"
    )
    if args.registry_out:
        reg = edit.empty_registry(expires=_expires(args, now, default_days=365))
        _save_registry(args.registry_out, reg)
        print(f"empty registry draft #{reg.sequence} written to {args.registry_out}")
    return EXIT_OK


def cmd_bless(args: argparse.Namespace) -> int:
    draft, now = _edit(args)
    if args.embargo == bool(args.commit):
        raise ConfigError("give exactly one of --commit SHA or --embargo", key="--commit")
    salt = _hex(args.salt, key="--salt") if args.salt else secrets.token_bytes(32)
    digests = hash_image(args.image, salt=salt)
    if (
        args.expect_root_hash
        and _hex(args.expect_root_hash, key="--expect-root-hash") != digests.verity.root_hash
    ):
        raise ManifestFormatError(
            f"{args.image}: computed dm-verity root hash {digests.verity.root_hash.hex()} "
            f"differs from --expect-root-hash"
        )
    components = {}
    for item in args.boot_component or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected NAME=SHA256HEX, got {item!r}", key="--boot-component")
        components[name] = _hex(value, key="--boot-component", size=32)
    expected = {}
    if args.expected_pcrs:
        doc = parse_json(read_bytes(args.expected_pcrs, max_size=1 << 20), max_size=1 << 20)
        expected = parse_expected_pcrs(doc, field=args.expected_pcrs)
    snp = None
    launch = _snp_bless.snp_launch(args, root_hash=digests.verity.root_hash)
    policy = _snp_bless.snp_policy(args)
    if launch is None and policy is not None:
        raise ConfigError("an SNP policy needs an SNP launch (--snp-ovmf ...)", key="--snp-ovmf")
    if launch is not None:
        snp = edit.with_snp_launch(
            None,
            launch,
            policy=None if policy is None else policy[0],
            bind_host_data=None if policy is None else policy[1],
        )
    release = Release(
        version=args.version,
        sequence=args.sequence or edit.next_release_sequence(draft),
        artifact_sha256=digests.sha256,
        artifact_size=digests.size,
        verity=digests.verity,
        blessed_at=now,
        source_commit=_hex(args.commit, key="--commit") if args.commit else None,
        embargo=edit.embargo(args.quiet_days) if args.embargo else None,
        boot_components=components,
        expected_pcrs=expected,
        policies=_policies(args),
        snp=snp,
    )
    new = edit.bless(draft, release)
    return _done(
        args,
        new,
        f"blessed {args.version} sha256={digests.sha256.hex()} "
        f"verity={digests.verity.root_hash.hex()}" + _snp_line(new.releases[args.version], launch),
    )


def _snp_line(release: Release, launch: SnpLaunch | None) -> str:
    if launch is None or release.snp is None:
        return ""
    line = f" snp[{launch.slot}]={launch.measurement.hex()}"
    if release.snp.bind_host_data:
        line += f" host_data={release_host_data(release).hex()}"
    return line


def cmd_snp_launch(args: argparse.Namespace) -> int:
    draft, _ = _edit(args)
    rel = draft.releases.get(args.version)
    if rel is None:
        raise ManifestFormatError(f"no release {args.version} in the registry")
    launch = _snp_bless.snp_launch(args, root_hash=rel.verity.root_hash)
    if launch is None:  # argparse requires --snp-ovmf here
        raise ConfigError("give the launch to bless (--snp-ovmf ...)", key="--snp-ovmf")
    policy = _snp_bless.snp_policy(args)
    new = edit.add_snp_launch(
        draft,
        args.version,
        launch,
        policy=None if policy is None else policy[0],
        bind_host_data=None if policy is None else policy[1],
    )
    return _done(
        args,
        new,
        f"release {args.version} blesses SNP launch"
        + _snp_line(new.releases[args.version], launch),
    )


def cmd_snp_policy(args: argparse.Namespace) -> int:
    draft, _ = _edit(args)
    policy = _snp_bless.snp_policy(args)
    if policy is None:
        raise ConfigError(
            "give the policy (--snp-* flags; the policy is replaced whole: a flag left out "
            "takes its default)",
            key="--snp-min-tcb",
        )
    new = edit.set_snp_policy(draft, args.version, policy[0], bind_host_data=policy[1])
    return _done(args, new, f"release {args.version}'s SNP policy replaced")


def cmd_set_policies(args: argparse.Namespace) -> int:
    draft, _ = _edit(args)
    blessed = None if args.clear else _policies(args)
    if blessed is None and not args.clear:
        raise ConfigError(
            "give --policy-mac and/or --config-digest, or --clear", key="--policy-mac"
        )
    what = "no runtime policy" if blessed is None else _policies_line(blessed)
    return _done(
        args,
        edit.set_policies(draft, args.version, blessed),
        f"release {args.version} blesses {what}",
    )


def cmd_config_digest(args: argparse.Namespace) -> int:
    """The digest attestd measures (``config`` event) for this configuration: the very
    ``load_settings`` + ``settings_digest`` attestd runs, over the file and the ``ATTEST_*``
    environment given with ``--env`` (never this shell's own environment)."""
    environ: dict[str, str] = {}
    for item in args.env or []:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("ATTEST_"):
            raise ConfigError(f"expected ATTEST_NAME=VALUE, got {item[:60]!r}", key="--env")
        environ[name] = value
    digest = settings_digest(load_settings(args.config, environ=environ))
    if args.json:
        print_json({"config": args.config, "environment": sorted(environ), "sha256": digest})
    else:
        print(digest)
    return EXIT_OK


def _policies_line(p: BlessedPolicies) -> str:
    parts = []
    if p.mac is not None:
        parts.append(
            "MAC policy "
            + (", ".join(f"{k} {v.hex()}" for k, v in p.mac.items()) if p.mac else "none")
        )
    if p.config is not None:
        parts.append("config " + ", ".join(d.hex() for d in p.config))
    return "; ".join(parts)


def cmd_revoke(args: argparse.Namespace) -> int:
    draft, now = _edit(args)
    return _done(
        args,
        edit.revoke(draft, args.version, reason=args.reason, at=now),
        f"revoked {args.version}",
    )


def cmd_allow_rollback(args: argparse.Namespace) -> int:
    draft, _ = _edit(args)
    return _done(
        args,
        edit.allow_rollback(draft, args.from_version, args.to_version, reason=args.reason),
        f"rollback {args.from_version} -> {args.to_version} authorised",
    )


def cmd_disclose(args: argparse.Namespace) -> int:
    draft, now = _edit(args)
    return _done(
        args,
        edit.disclose(draft, args.version, commit=_hex(args.commit, key="--commit"), at=now),
        f"disclosed {args.version}",
    )


def cmd_fleet_complete(args: argparse.Namespace) -> int:
    draft, now = _edit(args)
    at = _time(args.at, key="--at") if args.at else now
    return _done(
        args,
        edit.fleet_complete(draft, args.version, at=at),
        f"embargo clock of {args.version} started at {format_time(at)}",
    )


def cmd_platform_set(args: argparse.Namespace) -> int:
    draft, _ = _edit(args)
    doc = parse_json(read_bytes(args.ref, max_size=1 << 20), max_size=1 << 20)
    if not isinstance(doc, dict):
        raise ManifestFormatError(f"{args.ref}: expected a platform reference object")
    doc = {"_type": "platform", "spec_version": "1", **doc}
    ref = parse_platform_signed(doc, field=args.ref)
    return _done(args, edit.set_platform(draft, ref), f"platform {ref.platform_id} set")


def cmd_sign(args: argparse.Namespace) -> int:
    data = read_bytes(args.document, max_size=MAX_REGISTRY_BYTES)
    kind = document_type(data)
    private = _load_private_key(args.key)
    key = Key.of_private(private)
    if args.platform:
        if kind != "registry":
            raise ConfigError(
                "--platform signs a platform reference inside a registry", key="--platform"
            )
        env, snap = load_registry(data)
        if env.signatures:
            raise ConfigError(
                "sign platform references before the registry itself (the "
                "registry signatures cover them)",
                key="--platform",
            )
        ref = snap.platforms.get(args.platform)
        if ref is None:
            raise ManifestFormatError(f"no platform reference {args.platform}")
        sig = sign(private, canonicalize(ref.reference.to_json()))
        new = edit.with_platform_signature(snap, args.platform, key.keyid, sig)
        _save_registry(args.document, new)
        print(f"signed platform {args.platform} with {key.keyid}")
        return EXIT_OK
    env = (load_root(data) if kind == "root" else load_registry(data))[0]
    new_env = env.with_signature(key.keyid, sign(private, env.signed_bytes))
    _write_doc(args.document, new_env)
    print(
        f"signed {kind} {args.document} with {key.keyid} ({len(new_env.signatures)} signature(s))"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    now = _now(args)
    out: dict[str, Any] = {"now": format_time(now)}
    root_bytes = read_bytes(args.root, max_size=MAX_ROOT_BYTES) if args.root else None
    reg_bytes = read_bytes(args.registry, max_size=MAX_REGISTRY_BYTES) if args.registry else None
    if args.state:
        state = load_state(args.state)
        if state is None:
            if root_bytes is None:
                raise ConfigError("empty state: give --root to bootstrap it", key="--root")
            state = TrustedState.bootstrap(root_bytes, now=now)
        elif root_bytes is not None:
            state = state.update_root(root_bytes)
        if reg_bytes is not None:
            state = state.update_registry(reg_bytes, now=now)
        registry = state.check_fresh(now=now) if state.floor_raw is not None else None
        root = state.root.root
        check_expiry(root.expires, now=now, what=f"root v{root.version}")
        save_state(args.state, state)
    else:
        if root_bytes is None:
            raise ConfigError("give --root (or --state)", key="--root")
        if args.trusted_root:
            trusted = verify_root_self_signed(
                read_bytes(args.trusted_root, max_size=MAX_ROOT_BYTES)
            )
            root = verify_root_update(trusted.root, root_bytes).root
        else:
            root = verify_root_self_signed(root_bytes).root
        check_expiry(root.expires, now=now, what=f"root v{root.version}")
        registry = verify_snapshot(root, reg_bytes, now=now) if reg_bytes is not None else None
    out["root"] = {"version": root.version, "expires": format_time(root.expires)}
    line = f"OK root v{root.version} (expires {format_time(root.expires)})"
    if registry is not None:
        snap = registry.snapshot
        out["registry"] = {
            "sequence": snap.sequence,
            "expires": format_time(snap.expires),
            "signers": sorted(registry.signers),
            "releases": sorted(snap.releases),
        }
        line += (
            f"; registry #{snap.sequence} (expires {format_time(snap.expires)}, "
            f"{len(registry.signers)} signer(s), {len(snap.releases)} release(s))"
        )
    if args.json:
        print_json(out | {"ok": True})
    else:
        print(line)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    now = _now(args)
    root = verify_root_self_signed(read_bytes(args.root, max_size=MAX_ROOT_BYTES), now=now).root
    registry = verify_snapshot(
        root, read_bytes(args.registry, max_size=MAX_REGISTRY_BYTES), now=now
    )
    sha = (
        _hex(args.artifact_sha256, key="--artifact-sha256", size=32)
        if args.artifact_sha256
        else None
    )
    vrh = _hex(args.verity_root_hash, key="--verity-root-hash") if args.verity_root_hash else None
    if sha is None and vrh is None:
        raise ConfigError(
            "give --artifact-sha256 and/or --verity-root-hash", key="--artifact-sha256"
        )
    decision = evaluate_release(registry, artifact_sha256=sha, verity_root_hash=vrh, now=now)
    if args.json:
        print_json(decision.to_json())
    else:
        print(f"{decision.status.value}: {'; '.join(decision.reasons)}")
    return EXIT_OK if decision.ok else 1


def _ago(t: datetime, now: datetime) -> str:
    days = (t - now).total_seconds() / 86400
    return f"in {days:.1f} days" if days >= 0 else f"{-days:.1f} days ago"


def cmd_show(args: argparse.Namespace) -> int:
    now = _now(args)
    data = read_bytes(args.document, max_size=MAX_REGISTRY_BYTES)
    kind = document_type(data)
    verified = "UNVERIFIED (use --root to verify)"
    if kind == "root":
        env, root = load_root(data)
        if args.json:
            print_json(env.to_json())
            return EXIT_OK
        print(
            f"trust root v{root.version}  expires {format_time(root.expires)} "
            f"({_ago(root.expires, now)})  signatures: {len(env.signatures)}"
        )
        for name in ROLES:
            role = root.role(name)
            print(f"  role {name}: threshold {role.threshold} of {len(role.keyids)}")
            for kid in role.keyids:
                signed = any(s.keyid == kid for s in env.signatures)
                print(f"    {kid}  {root.keys[kid].keytype}{'  (signed)' if signed else ''}")
        return EXIT_OK
    env, snap = load_registry(data)
    if args.root:
        root = verify_root_self_signed(read_bytes(args.root, max_size=MAX_ROOT_BYTES)).root
        verify_snapshot(root, data, now=now)
        verified = "verified, fresh"
    if args.json:
        print_json(env.to_json())
        return EXIT_OK
    print(
        f"registry #{snap.sequence}  expires {format_time(snap.expires)} "
        f"({_ago(snap.expires, now)})  signatures: {len(env.signatures)}  {verified}"
    )
    print("releases:")
    for rel in sorted(snap.releases.values(), key=lambda r: r.sequence):
        print(f"  {rel.version}  #{rel.sequence}  blessed {format_time(rel.blessed_at)}")
        print(f"      artifact sha256 {rel.artifact_sha256.hex()}  ({rel.artifact_size} bytes)")
        print(
            f"      verity root {rel.verity.root_hash.hex()}  salt {rel.verity.salt.hex()[:16]}"
            f"…  {rel.verity.data_blocks} x {rel.verity.data_block_size}"
        )
        if rel.version in snap.revocations:
            rev = snap.revocations[rel.version]
            print(f"      REVOKED {format_time(rev.revoked_at)}: {rev.reason}")
        state = embargo_state(rel, now=now)
        src = rel.source_commit.hex() if rel.source_commit else "(embargoed)"
        print(f"      source {src}")
        if rel.policies is not None:
            print(f"      policies: {_policies_line(rel.policies)}")
        if rel.snp is not None:
            _show_snp(rel)
        if rel.embargo is not None:
            e = rel.embargo
            clock = {
                EmbargoState.AWAITING_FLEET: "clock not started (waiting for the whole fleet)",
                EmbargoState.DISCLOSED: f"disclosed {_opt(e.disclosed_at)}",
            }.get(state)
            if clock is None and e.disclosure_due is not None:
                clock = (
                    f"fleet complete {_opt(e.fleet_complete_at)}; disclosure due "
                    f"{format_time(e.disclosure_due)} ({_ago(e.disclosure_due, now)})"
                )
                if state is EmbargoState.OVERDUE:
                    clock = "OVERDUE: " + clock
            print(f"      embargo ({e.quiet_period_days}-day quiet period): {clock}")
    lone = [v for v in snap.revocations if v not in snap.releases]
    for v in lone:
        rev = snap.revocations[v]
        print(f"  {v}  REVOKED {format_time(rev.revoked_at)}: {rev.reason}")
    print("rollback rules:" if snap.rollbacks else "rollback rules: none")
    for rb in snap.rollbacks:
        print(f"  {rb.from_version} -> {rb.to_version}: {rb.reason}")
    print("platforms:" if snap.platforms else "platforms: none")
    for pid, sref in snap.platforms.items():
        _show_platform(pid, sref)
    return EXIT_OK


def _show_snp(rel: Release) -> None:
    snp = rel.snp
    if snp is None:
        return
    for launch in snp.launches:
        print(f"      snp {describe_launch(launch)}")
    p = snp.policy
    floors = ", ".join(f"{prod} {tcb.as_dict()}" for prod, tcb in p.min_tcb.items()) or "none"
    bits = [f"vmpl {p.vmpl}", f"report v{p.min_report_version}+", f"smt {p.allow_smt}"]
    bits += [f"migration agent {p.allow_migration_agent}"]
    bits += [f"single socket {p.require_single_socket}", f"crl missing: {p.crl_missing.value}"]
    if p.allowed_chip_ids is not None:
        bits.append(f"{len(p.allowed_chip_ids)} allowed chip(s)")
    if snp.bind_host_data:
        bits.append(f"host_data {release_host_data(rel).hex()}")
    print(f"      snp policy: TCB floors {floors}; {'; '.join(bits)}")


def _opt(t: datetime | None) -> str:
    return "-" if t is None else format_time(t)


def _show_platform(pid: str, sref: SignedPlatformReference) -> None:
    ref = sref.reference
    banks = ", ".join(
        f"{alg.bank_name}:{','.join(str(i) for i in sorted(v))}"
        for alg, v in ref.pcrs.values.items()
    )
    tag = "  EXAMPLE - not a real reference" if ref.example else ""
    print(f"  {pid}{tag}: {ref.description}")
    print(f"      PCRs {banks}  signatures: {len(sref.signatures)}")


# --- registration ------------------------------------------------------------------------


def _policy_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--policy-mac",
        action="append",
        metavar="TYPE=SHA256|none",
        help="the MAC policy the release's nodes load (e.g. selinux=HEX, the sha256 "
        "of /sys/fs/selinux/policy), or none; repeat for other MAC types",
    )
    sp.add_argument(
        "--config-digest",
        action="append",
        metavar="SHA256",
        help="an attestd config digest the release allows (attest manifest config-digest); repeat",
    )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "manifest",
        help="trust root, blessed registry: create, sign, verify, show",
        description="Blessed manifests and the trust root. See docs/manifest.md.",
    )
    msub = p.add_subparsers(dest="manifest_command", metavar="SUBCOMMAND")
    msub.required = True

    def add(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = msub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    def reg(sp: argparse.ArgumentParser, *, clock: bool = True) -> None:
        sp.add_argument("--registry", required=True, help="registry draft file to edit")
        sp.add_argument("--expires", help="set the expiry (ISO 8601)")
        sp.add_argument("--expires-days", type=int, help="set the expiry to now + N days")
        if clock:
            sp.add_argument("--now", help="use this time instead of the clock (ISO 8601)")

    k = add("keygen", cmd_keygen, "generate a signing key (PEM) and its public key document")
    k.add_argument("--type", choices=("ed25519", "ecdsa-p256"), default="ed25519")
    k.add_argument("--out", required=True, help="path prefix: writes PREFIX.pem, PREFIX.pub.json")
    k.add_argument("--force", action="store_true")
    k.add_argument("--test-only", action="store_true", help="mark the PEM as a TEST-ONLY key")

    i = add("init", cmd_init, "create a new (unsigned) trust root, optionally an empty registry")
    i.add_argument("--out", required=True, help="root file to write")
    for role in ROLES:
        i.add_argument(
            f"--{role}-key",
            action="append",
            metavar="PUB",
            help=f"public key (.pub.json or .pem) of the {role} role; repeat",
        )
        i.add_argument(f"--{role}-threshold", type=int)
    i.add_argument("--previous", help="the current root: the new one is its rotation (v+1)")
    i.add_argument("--expires")
    i.add_argument("--expires-days", type=int)
    i.add_argument("--registry-out", help="also write an empty registry draft here")
    i.add_argument("--now")

    b = add("bless", cmd_bless, "bless an OS image: artifact sha256 + dm-verity root hash")
    b.add_argument("image")
    b.add_argument("--version", required=True)
    b.add_argument("--sequence", type=int, help="release number (default: highest + 1)")
    b.add_argument("--commit", help="source commit id (hex)")
    b.add_argument("--embargo", action="store_true", help="checksum-only blessing (embargo)")
    b.add_argument("--quiet-days", type=int, default=10, help="embargo quiet period (days)")
    b.add_argument("--salt", help="dm-verity salt (hex); default: 32 random bytes")
    b.add_argument("--expect-root-hash", help="refuse unless the computed root hash is this")
    b.add_argument("--boot-component", action="append", metavar="NAME=SHA256")
    b.add_argument(
        "--expected-pcrs", metavar="FILE", help="JSON {platform: {variant: {bank: {pcr: hex}}}}"
    )
    _policy_args(b)
    _snp_bless.add_launch_arguments(b, required=False)
    _snp_bless.add_policy_arguments(b)
    reg(b)

    sl = add(
        "snp-launch",
        cmd_snp_launch,
        "bless one more SEV-SNP launch (e.g. the other A/B slot) of a release; the --snp-* "
        "policy flags, when given, replace the release's SNP policy",
    )
    sl.add_argument("version")
    _snp_bless.add_launch_arguments(sl, required=True)
    _snp_bless.add_policy_arguments(sl)
    reg(sl)

    spp = add(
        "snp-policy",
        cmd_snp_policy,
        "replace the SEV-SNP policy of a release (its launches are kept); flags left out "
        "take their defaults",
    )
    spp.add_argument("--version", required=True, help="the release")
    _snp_bless.add_policy_arguments(spp)
    reg(spp)

    sp = add(
        "set-policies",
        cmd_set_policies,
        "bless the runtime policy (MAC policy, attestd config digests) of a release",
    )
    sp.add_argument("version")
    _policy_args(sp)
    sp.add_argument("--clear", action="store_true", help="stop blessing any runtime policy")
    reg(sp)

    cd = add(
        "config-digest",
        cmd_config_digest,
        "the config digest attestd measures for a configuration file (to bless it)",
    )
    cd.add_argument("config", nargs="?", help="attestd's TOML file (none: the defaults)")
    cd.add_argument(
        "--env",
        action="append",
        metavar="ATTEST_NAME=VALUE",
        help="an ATTEST_* variable of attestd's environment; repeat",
    )

    r = add("revoke", cmd_revoke, "revoke a release (it stops attesting as blessed)")
    r.add_argument("version")
    r.add_argument("--reason", required=True)
    reg(r)

    a = add("allow-rollback", cmd_allow_rollback, "authorise a rollback FROM -> TO")
    a.add_argument("from_version", metavar="FROM")
    a.add_argument("to_version", metavar="TO")
    a.add_argument("--reason", required=True)
    reg(a)

    d = add("disclose", cmd_disclose, "end an embargo: record the source commit")
    d.add_argument("version")
    d.add_argument("--commit", required=True)
    reg(d)

    f = add(
        "fleet-complete",
        cmd_fleet_complete,
        "start an embargo's quiet period: the whole fleet runs the release",
    )
    f.add_argument("version")
    f.add_argument("--at", help="when the fleet completed (default: now)")
    reg(f)

    ps = add("platform-set", cmd_platform_set, "add or replace a platform firmware reference")
    ps.add_argument("--ref", required=True, help="platform reference JSON")
    reg(ps)

    ex = add(
        "export-corim",
        _corim.cmd_export,
        "the blessed registry's reference values as a signed CoRIM (draft-ietf-rats-corim)",
    )
    _corim.export_arguments(ex)
    im = add(
        "import-corim",
        _corim.cmd_import,
        "read a published CoRIM into an unsigned platform reference (for platform-set)",
    )
    _corim.import_arguments(im)

    s = add("sign", cmd_sign, "add a signature to a root or registry (or a platform reference)")
    s.add_argument("document")
    s.add_argument("--key", required=True, help="PEM private key")
    s.add_argument("--platform", help="sign this platform reference inside the registry")

    v = add(
        "verify", cmd_verify, "exit 0 only for a valid, fresh, threshold-signed root (and registry)"
    )
    v.add_argument("--root", help="trust root file")
    v.add_argument("--registry", help="registry snapshot file")
    v.add_argument("--trusted-root", help="verify --root as a rotation of this trusted root")
    v.add_argument("--state", help="trusted-state directory: enforce rollback/freeze, persist")
    v.add_argument("--now")

    e = add("evaluate", cmd_evaluate, "is an image (sha256 / verity root hash) blessed?")
    e.add_argument("--root", required=True)
    e.add_argument("--registry", required=True)
    e.add_argument("--artifact-sha256")
    e.add_argument("--verity-root-hash")
    e.add_argument("--now")

    sh = add("show", cmd_show, "a readable view of a root or registry")
    sh.add_argument("document")
    sh.add_argument("--root", help="verify the registry against this root first")
    sh.add_argument("--now")
