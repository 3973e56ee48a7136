"""A throwaway PostgreSQL cluster for the fleet tier's tests and the fleet benchmarks (never used
by the service itself).

Debian's server binaries (``/usr/lib/postgresql/<v>/bin``: initdb, pg_ctl) start a cluster in
a temporary directory on a free port of 127.0.0.1, tuned for speed, not durability (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off). PostgreSQL refuses to run as root: under
root the cluster runs as the system user ``attest-test``, created with ``useradd`` when
missing. ``PgCluster.create`` raises ``PgUnavailable`` (with the reason) when the binaries or
psycopg are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_USER = "attest-test"


class PgUnavailable(RuntimeError):
    """The PostgreSQL server binaries or psycopg are missing."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    return Path(found[-1]).parent if found else None


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
        )
    return ["runuser", "-u", PG_USER, "--"]


@dataclass
class PgServer:
    dsn_base: str

    def new_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn_base + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{self.dsn_base}/{name}"


@dataclass
class PgCluster:
    """A PostgreSQL cluster in a temporary directory, on a free port: started, stopped and
    started again on demand (``pg_ctl``)."""

    bindir: Path
    prefix: list[str]
    work: Path
    port: int

    @classmethod
    def create(cls) -> PgCluster:
        bindir = pg_bindir()
        if bindir is None:
            raise PgUnavailable(
                "PostgreSQL server binaries missing (/usr/lib/postgresql/*/bin; "
                "apt package postgresql)"
            )
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise PgUnavailable("psycopg (the fleet extra) is not installed") from exc
        prefix = _as_user()
        work = Path(tempfile.mkdtemp(prefix="attest-pg-"))
        os.chmod(work, 0o755)
        if prefix:
            shutil.chown(work, PG_USER)
        c = cls(bindir, prefix, work, free_port())
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(c.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        return c

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def dsn_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.work} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._ctl("-o", opts, "-l", str(self.work / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A cluster of its own, started; stopped and removed on exit."""
    c = PgCluster.create()
    c.start()
    try:
        yield c
    finally:
        c.remove()
