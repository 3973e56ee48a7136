"""The fleet service's verifier key: it signs an EAR (``attest.appraisal.ear``, ES256) for every
appraisal, and its public half is served as a JWK set so relying parties verify offline (an
adapter: it reads and writes the key file).

    signer = load_or_create_key("attest-fleet-ear.pem")   # 0600, created on first start
    token = signer.sign(ear_claims({...}, now=now, nonce=nonce))
    verify_ear(token, jwk_public_key(signer.jwk))         # what a relying party does

Several workers of one fleet share the key file (give them the same path); the key id
(``kid``, in every EAR header) is the key's RFC 7638 thumbprint. The key is never logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attest.appraisal.ear import public_jwk, sign_cwt, sign_ear, verify_ear
from attest.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_KEY_FILE = 16 << 10


class EarSigner:
    """Signs EAR claims with one P-256 key; ``jwk`` is its public half (with ``kid``)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("the EAR key must be an EC P-256 private key")
        self._key = key
        self.jwk = public_jwk(key)
        self.kid = self.jwk["kid"]

    def sign(self, claims: Mapping[str, Any]) -> str:
        return sign_ear(claims, self._key, kid=self.kid)

    def as_cwt(self, jwt: str) -> bytes:
        """A stored EAR (JWT) re-serialised as a CWT: its claims, as signed (the same ``iat``
        and ``exp``), in a COSE_Sign1 signed now with the same key. The JWT is verified first
        (``SignatureError`` if another key signed it), so that nothing but what this key
        signed is ever re-signed."""
        claims = verify_ear(jwt, self._key.public_key())
        return sign_cwt(claims, self._key, kid=self.kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.jwk)]}

    def __repr__(self) -> str:  # never the private key
        return f"EarSigner(kid={self.kid!r})"


def load_or_create_key(path: str | os.PathLike[str]) -> EarSigner:
    """The signer of the PEM key at ``path``; a new P-256 key is generated there (mode 0600,
    created exclusively: two workers starting at once end up with the same key) when the file
    does not exist. A key file readable by group or others is refused."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _load(p)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the EAR key {p}: {exc.strerror}", key="--ear-key"
        ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        p.unlink(missing_ok=True)
        raise
    signer = EarSigner(key)
    logger.warning("generated a new verifier (EAR) key", extra={"path": str(p), "kid": signer.kid})
    return signer


def _load(p: Path) -> EarSigner:
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        f = os.fdopen(fd, "rb")
    except OSError as exc:  # e.g. a directory: named by its path, not the descriptor's number
        with contextlib.suppress(OSError):
            os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(p)) from None
    with f:
        st = os.fstat(f.fileno())
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the EAR key {p} is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it",
                key="--ear-key",
            )
        data = f.read(MAX_KEY_FILE + 1)
    if not data.strip():
        # An empty file: another worker created it and is still writing.
        import time

        for _ in range(50):
            time.sleep(0.1)
            data = p.read_bytes()[: MAX_KEY_FILE + 1]
            if data.strip():
                break
    if len(data) > MAX_KEY_FILE:
        raise ConfigError(f"the EAR key {p} is over {MAX_KEY_FILE} bytes", key="--ear-key")
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"the EAR key {p} is not an unencrypted PEM private key", key="--ear-key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"the EAR key {p} is not an EC P-256 key", key="--ear-key")
    return EarSigner(key)
