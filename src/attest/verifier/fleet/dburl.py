"""The fleet's ``--db`` value, checked before anything is opened (an adapter's front door).

Accepted: ``sqlite:///relative/path`` and ``sqlite:////absolute/path`` (SQLAlchemy's
spelling), a bare file path, and ``postgresql://...`` / ``postgres://...`` (a libpq URI).
Anything else that looks like a URL (``foo://bar``, ``sqlite://host/x``, ``mysql://...``) is a
``ConfigError`` naming the option, never a file of that name nor a connection attempt: a typo
must not create ``foo:/bar`` in the working directory or pass for an unreachable server.

A PostgreSQL URI is parsed as libpq parses it (``psycopg.conninfo``) and its ports are checked,
so a malformed one is a usage error rather than "the database is unreachable".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from attest.errors import ConfigError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_POSTGRES = ("postgresql://", "postgres://")
_SQLITE = "sqlite:///"
ACCEPTED = "sqlite:///PATH, a file path, or postgresql://..."


@dataclass(frozen=True, slots=True)
class DbUrl:
    kind: Literal["sqlite", "postgresql"]
    target: str  # the SQLite file path, or the PostgreSQL URI as given


def parse_db_url(url: str, *, key: str = "db") -> DbUrl:
    """The back end and its target, or ``ConfigError(key=key)`` saying what is wrong."""
    shown = url if len(url) <= 80 else url[:77] + "..."
    if not url.strip():
        raise ConfigError(f"empty database URL ({ACCEPTED})", key=key)
    if "\x00" in url:
        raise ConfigError("a NUL byte in the database URL", key=key)
    if url.lower().startswith(_POSTGRES):
        _check_postgres(url, key=key)
        return DbUrl("postgresql", url)
    if url.lower().startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path:
            raise ConfigError(f"{shown!r} names no file ({ACCEPTED})", key=key)
        return DbUrl("sqlite", path)
    m = _SCHEME.match(url)
    if m is not None and (url[m.end() :].startswith("//") or m.group(1).lower() == "sqlite"):
        raise ConfigError(
            f"{shown!r}: unknown database URL scheme {m.group(1)!r} ({ACCEPTED})", key=key
        )
    return DbUrl("sqlite", url)


def _check_postgres(url: str, *, key: str) -> None:
    try:
        import psycopg  # the optional "fleet" extra
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ConfigError(
            "a postgresql:// database needs psycopg (pip install 'attest[fleet]')", key=key
        ) from None
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        # libpq quotes the offending part, which may hold the password: not repeated.
        detail = re.sub(r'"[^"]*"', '"…"', " ".join(str(exc).split()))[:200]
        raise ConfigError(f"not a PostgreSQL URI: {detail}", key=key) from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{port[:16]!r} is not a TCP port (1-65535)", key=key)
