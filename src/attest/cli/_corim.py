"""``attest manifest export-corim`` and ``import-corim``: the blessed registry's reference values
as a signed CoRIM (``attest.manifest.corim``), and a published CoRIM read into an *unsigned*
platform reference (``attest.manifest.corim_parse``) that ``platform-set`` puts in a registry
draft and the platform role then signs. Reference: docs/manifest.md ("CoRIM").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest.cli._common import EXIT_OK, parse_now, print_json
from attest.cli._registry import add_registry_arguments, load_registry
from attest.cli.ear import public_keys
from attest.errors import ConfigError, SignatureError
from attest.manifest.corim import VENDOR, export_corim, key_id
from attest.manifest.corim_parse import (
    MAX_CORIM_BYTES,
    UnverifiedCorim,
    check_validity,
    parse_corim,
    platform_reference,
    snp_measurements,
)
from attest.manifest.model import format_time
from attest.storage.files import atomic_write_bytes, read_bytes

MAX_KEY_FILE = 16 * 1024


def export_arguments(sp: argparse.ArgumentParser) -> None:
    add_registry_arguments(sp, trust_dir_help="trusted manifest state (attest manifest verify)")
    sp.add_argument(
        "--key",
        required=True,
        type=Path,
        help="PEM EC private key that signs the CoRIM: P-256 (ES256) or P-384 (ES384)",
    )
    sp.add_argument("--out", required=True, type=Path, help="the signed CoRIM (CBOR) to write")
    sp.add_argument(
        "--signer", default=VENDOR, help="signer name in corim-meta and the CoRIM's entities"
    )
    sp.add_argument("--now", help="use this time instead of the clock (ISO 8601 with a zone)")


def import_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("corim", type=Path, help="a CoRIM (CBOR: tag 501, or signed: tag 18)")
    sp.add_argument("--platform-id", required=True, help="the platform reference's id")
    sp.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the unsigned platform reference JSON to write (attest manifest platform-set --ref)",
    )
    sp.add_argument(
        "--key",
        type=Path,
        help="the CoRIM signer's public key (PEM, certificate, JWK or JWK set; P-256): the "
        "CoRIM must be signed by it. Without it a signature is not checked",
    )
    sp.add_argument("--select", help="a text the chosen reference value's description contains")
    sp.add_argument("--description", help="the platform reference's description")
    sp.add_argument("--now", help="use this time instead of the clock (ISO 8601 with a zone)")


def _private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_bytes(str(path), max_size=MAX_KEY_FILE)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key", key="--key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1 | ec.SECP384R1
    ):
        raise ConfigError(f"{path}: not an EC P-256 or P-384 key (ES256, ES384)", key="--key")
    return key


def cmd_export(args: argparse.Namespace) -> int:
    now = parse_now(args.now)
    registry = load_registry(args, now)
    if registry is None:
        raise ConfigError("give --trust-dir, or --root and --snapshot", key="--trust-dir")
    key = _private_key(args.key)
    try:
        data = export_corim(registry, key, signer=args.signer, now=now)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--snapshot") from None
    atomic_write_bytes(str(args.out), data)
    snap = registry.snapshot
    out = {
        "corim": str(args.out),
        "bytes": len(data),
        "registry": snap.sequence,
        "releases": sorted(snap.releases),
        "platforms": sorted(snap.platforms),
        "kid": key_id(key).hex(),
        "not_after": format_time(snap.expires),
    }
    if args.json:
        print_json(out)
    else:
        print(
            f"wrote {args.out}: CoRIM attest-registry-{snap.sequence} ({len(snap.releases)} "
            f"release(s), {len(snap.platforms)} platform reference(s)), valid until "
            f"{format_time(snap.expires)}, signed by kid {key_id(key).hex()}"
        )
    return EXIT_OK


def _parse(path: Path, key_path: Path | None) -> UnverifiedCorim:
    data = read_bytes(str(path), max_size=MAX_CORIM_BYTES)
    if key_path is None:
        return parse_corim(data)
    last: SignatureError | None = None
    for _, key in public_keys(key_path):
        try:
            return parse_corim(data, public_key=key)
        except SignatureError as exc:
            last = exc
    assert last is not None  # public_keys returns at least one key
    raise last


def cmd_import(args: argparse.Namespace) -> int:
    now = parse_now(args.now)
    corim = _parse(args.corim, args.key)
    check_validity(corim, now=now)
    got = platform_reference(
        corim, platform_id=args.platform_id, description=args.description, select=args.select
    )
    ref = got.reference
    doc = ref.to_json()
    atomic_write_bytes(str(args.out), _json_bytes(doc))
    snp = snp_measurements(corim)
    out: dict[str, Any] = {
        "reference": str(args.out),
        "platform_id": ref.platform_id,
        "corim_id": corim.corim_id,
        "profile": corim.profile,
        "signed": corim.signed,
        "signature_checked": corim.signature_checked,
        "signer": corim.signer,
        "source": got.source.describe(),
        "pcrs": doc["pcrs"],
        "left_out": list(got.left_out),
        "skipped": list(corim.skipped),
        "snp_measurements": [d.hex() for _, d in snp],
        "trusted": False,
    }
    if args.json:
        print_json(out)
        return EXIT_OK
    sig = (
        "signature verified"
        if corim.signature_checked
        else ("signature NOT checked (no --key)" if corim.signed else "unsigned")
    )
    banks = ", ".join(f"{b}:{','.join(sorted(v, key=int))}" for b, v in doc["pcrs"].items())
    print(f"read CoRIM {corim.corim_id} ({sig}); from {got.source.describe()}")
    print(f"wrote {args.out}: platform {ref.platform_id}, PCRs {banks}")
    for note in got.left_out:
        print(f"  left out: {note}")
    if snp:
        print(
            f"  {len(snp)} SEV-SNP launch measurement(s) found: attest blesses those per "
            "release (attest manifest snp-launch), not in a platform reference"
        )
    print(
        "not trusted yet: attest manifest platform-set --registry DRAFT --ref "
        f"{args.out}, then sign --platform {ref.platform_id} by the platform role's threshold"
    )
    return EXIT_OK


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
