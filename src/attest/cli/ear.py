"""``attest ear``: verify an attestation result (EAR, draft-ietf-rats-ear) signed by a verifier:
ours (``attest verify --ear-key``, the fleet's ``/v1/nodes/{id}/ear``) or another's (Veraison,
Trustee), as a JWT or a CWT.

    attest ear verify TOKEN --key JWKS|PEM [--nonce HEX] [--now ISO] [--json]

TOKEN is a file (``-``: standard input) holding the token, or the JWT itself. The signature
must be ES256 by one of the keys (a PEM public key, a JWK or a JWK set such as the fleet's
``/v1/jwks``); the token must not be past its ``exp`` nor issued after ``--now``; with
``--nonce`` its ``eat_nonce`` must be that nonce. Exit codes as ``attest verify``: 0 every
submodule affirming, 10 warning, 11 contraindicated, 12 none (could not appraise); 1 a check
failed (signature, time, nonce), 3 the token does not parse.
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest.appraisal.ear import (
    EAR_PROFILE,
    MAX_TOKEN,
    TRUSTEE_PROFILE,
    jwk_public_key,
    token_format,
    token_kid,
    verify_token,
)
from attest.cli._common import EXIT_OK, parse_now, print_json
from attest.errors import ConfigError, EvidenceFormatError, SignatureError

EXIT_CODES = {"affirming": EXIT_OK, "warning": 10, "contraindicated": 11, "none": 12}
_WORST = ("none", "contraindicated", "warning", "affirming")  # first found wins
MAX_KEYS = 32
MAX_KEY_FILE = 256 << 10


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ear", help="verify signed attestation results (EAR: JWT or CWT)"
    )
    cmds = p.add_subparsers(dest="ear_cmd", metavar="COMMAND")
    cmds.required = True
    v = cmds.add_parser(
        "verify",
        help="verify one EAR: signature (ES256), exp/iat, nonce; print each submodule's status",
    )
    v.add_argument("token", help="file holding the EAR (JWT or CWT; '-': stdin), or the JWT")
    v.add_argument(
        "--key",
        required=True,
        type=Path,
        help="the verifier's public key: PEM, a JWK, or a JWK set (e.g. the fleet's /v1/jwks)",
    )
    v.add_argument("--nonce", help="the challenge nonce (hex) the EAR must carry as eat_nonce")
    v.add_argument("--now", help="check exp and iat at this time (ISO 8601 with a zone)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    token = _token(args.token)
    keys = public_keys(args.key)
    nonce = _nonce(args.nonce)
    now = parse_now(args.now)
    kid = token_kid(token)
    chosen = [k for k_id, k in keys if kid is not None and k_id == kid] or [k for _, k in keys]
    claims: dict[str, Any] | None = None
    fmt = token_format(token)
    for i, key in enumerate(chosen):
        try:
            fmt, claims = verify_token(
                token,
                key,
                now=now,
                nonce=nonce,
                low_s=False,  # other verifiers' libraries do not normalise S (noted below)
                profiles=(EAR_PROFILE, TRUSTEE_PROFILE),
            )
            break
        except SignatureError as exc:
            if i == len(chosen) - 1 or "does not verify" not in str(exc):
                raise
    assert claims is not None
    statuses = {name: sm["ear.status"] for name, sm in claims["submods"].items()}
    worst = next(s for s in _WORST if s in statuses.values())
    notes = _notes(claims)
    if args.json:
        print_json(
            {
                "verified": True,
                "format": fmt,
                "kid": kid,
                "status": worst,
                "submods": statuses,
                "claims": claims,
                "notes": notes,
            }
        )
    else:
        _print(fmt, kid, claims, notes)
    return EXIT_CODES[worst]


def _print(fmt: str, kid: str | None, claims: dict[str, Any], notes: list[str]) -> None:
    vid = claims.get("ear.verifier-id") or {}
    print(f"EAR verified ({fmt.upper()}, ES256{f', kid {kid}' if kid else ''})")
    print(f"  profile:  {claims['eat_profile']}")
    print(f"  verifier: {vid.get('developer', '?')} ({vid.get('build', '?')})")
    print(f"  issued:   {_when(claims['iat'])}")
    if "exp" in claims:
        print(f"  expires:  {_when(claims['exp'])}")
    if "eat_nonce" in claims:
        print(f"  nonce:    {claims['eat_nonce']}")
    for name, sm in sorted(claims["submods"].items()):
        vector = sm.get("ear.trustworthiness-vector") or {}
        tv = " ".join(f"{k}={v}" for k, v in sorted(vector.items()))
        policy = sm.get("ear.appraisal-policy-id")
        print(f"  submod {name}: {sm['ear.status']}")
        if policy:
            print(f"    policy: {policy}")
        if tv:
            print(f"    trustworthiness: {tv}")
    for note in notes:
        print(f"  note: {note}")


def _when(t: int) -> str:
    try:
        return f"{datetime.fromtimestamp(t, UTC).isoformat()} ({t})"
    except (OverflowError, OSError, ValueError):
        return str(t)


def _notes(claims: dict[str, Any]) -> list[str]:
    notes = []
    if claims["eat_profile"] != EAR_PROFILE:
        notes.append(f"profile {claims['eat_profile']} (another verifier's dialect)")
    if "exp" not in claims:
        notes.append("the EAR carries no exp: its age is for the relying party to judge")
    return notes


def _token(arg: str) -> str | bytes:
    if arg == "-":
        data = sys.stdin.buffer.read(MAX_TOKEN + 1)
    else:
        path = Path(arg)
        if _JWT_SHAPE.fullmatch(arg) and not _is_file(path):
            return arg  # the JWT itself
        try:
            f = path.open("rb")
        except FileNotFoundError:  # the argument is either: say so for both
            raise FileNotFoundError(
                errno.ENOENT, "no such file, and not a JWT (three base64url parts and dots)", arg
            ) from None
        with f:
            data = f.read(MAX_TOKEN + 1)
    if len(data) > MAX_TOKEN:
        raise EvidenceFormatError("the EAR is over 1 MiB")
    if token_format(data) == "jwt":
        return data.decode("ascii").strip()
    return data


_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long to be a file: a token
        return False


def public_keys(path: Path) -> list[tuple[str | None, ec.EllipticCurvePublicKey]]:
    """(kid, key) of a PEM public key (or certificate), a JWK or a JWK set."""
    with path.open("rb") as f:
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(f"{path}: over {MAX_KEY_FILE} bytes", key="--key")
    if data.lstrip().startswith(b"{"):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
            raise ConfigError(f"{path}: not JSON (a JWK or a JWK set)", key="--key") from None
        jwks = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(jwks, list) or not jwks or len(jwks) > MAX_KEYS:
            raise ConfigError(f"{path}: a JWK set of 1 to {MAX_KEYS} keys", key="--key")
        out: list[tuple[str | None, ec.EllipticCurvePublicKey]] = []
        for jwk in jwks:
            try:
                out.append((jwk.get("kid"), jwk_public_key(jwk)))
            except (EvidenceFormatError, AttributeError) as exc:
                raise ConfigError(f"{path}: {exc}", key="--key") from None
        return out
    try:
        if b"CERTIFICATE" in data:
            from cryptography import x509

            key: Any = x509.load_pem_x509_certificate(data).public_key()
        elif b"PRIVATE KEY" in data:  # the signer's own key file (attest verify --ear-key)
            key = serialization.load_pem_private_key(data, None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{path}: not a PEM public key, certificate, JWK or JWK set", key="--key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path}: not an EC P-256 key (ES256)", key="--key")
    return [(None, key)]


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{text[:32]!r} is not hex", key="--nonce") from None
