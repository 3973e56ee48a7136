"""EK CA certificates on disk (an adapter): files and directories of PEM or DER certificates,
read one file at a time so that one unreadable file costs that file only (its error is listed,
the rest load), and the vendor CA store shipped with attest (``bundled_ek_roots``).

Three ways to say which certificates are trusted:

- ``load_ek_cas(paths)`` (``attest verify --ek-ca``, ``attest fleet --ek-roots``): files or
  directories holding roots and intermediates together; the self-issued ones are roots;
- ``load_ca_dirs(roots=..., intermediates=...)`` (``attest ek verify --roots/--intermediates``):
  every certificate under ``roots`` is a trust anchor, self-signed or not;
- ``load_ca_tree(dir)``: the store layout, ``<vendor>/roots/*`` and ``<vendor>/intermediates/*``
  (the bundled store, ``docs/ek-certificates.md``).

Files are read by suffix: ``.pem``, ``.crt``, ``.cer``, ``.der`` (PEM or DER, whatever the
suffix says). Parsing is ``attest.ekcert.parse.parse_bundle``: vendor CA files with BER
deviations load.
"""

from __future__ import annotations

import errno
import importlib.resources
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

from attest.ekcert.parse import ParsedCertificate, parse_bundle_lenient
from attest.errors import CertificateFormatError

logger = logging.getLogger(__name__)

CA_SUFFIXES = (".pem", ".crt", ".cer", ".der")
MAX_CA_FILE_BYTES = 1024 * 1024
#: The bundled store, as package data (``src/attest/data/ek_roots``).
BUNDLED_PACKAGE = "attest"
BUNDLED_DIR = "data/ek_roots"


@dataclass(frozen=True, slots=True)
class LoadError:
    """A file that did not load, and why."""

    path: str
    error: str


@dataclass(frozen=True, slots=True)
class CaStore:
    """Trust anchors, untrusted intermediates, and the files that did not load."""

    roots: tuple[ParsedCertificate, ...] = ()
    intermediates: tuple[ParsedCertificate, ...] = ()
    errors: tuple[LoadError, ...] = field(default=())

    def merged(self, other: CaStore) -> CaStore:
        roots = _unique((*self.roots, *other.roots))
        return CaStore(
            roots,
            tuple(
                c for c in _unique((*self.intermediates, *other.intermediates)) if c not in roots
            ),
            (*self.errors, *other.errors),
        )


def _unique(certs: Iterable[ParsedCertificate]) -> tuple[ParsedCertificate, ...]:
    seen: dict[bytes, ParsedCertificate] = {}
    for c in certs:
        seen.setdefault(c.sha256, c)
    return tuple(seen.values())


def _files(entry: Traversable) -> list[Traversable]:
    if entry.is_dir():
        return sorted(
            (f for f in entry.iterdir() if f.is_file() and f.name.lower().endswith(CA_SUFFIXES)),
            key=lambda f: f.name,
        )
    return [entry]


def _read(entry: Traversable, errors: list[LoadError]) -> list[ParsedCertificate]:
    where = str(entry)
    try:
        with entry.open("rb") as f:
            data = f.read(MAX_CA_FILE_BYTES + 1)
        if len(data) > MAX_CA_FILE_BYTES:
            raise CertificateFormatError(f"larger than {MAX_CA_FILE_BYTES} bytes")
        with warnings.catch_warnings():
            # Google's vTPM CAs have CNs longer than X.520's 64: tolerated, and not a warning
            # on every command that loads the bundled store.
            warnings.filterwarnings("ignore", "Attribute's length must be", UserWarning)
            certs, problems = parse_bundle_lenient(data)
    except (OSError, CertificateFormatError) as exc:
        certs, problems = [], [str(exc)]
    for problem in problems:
        errors.append(LoadError(where, problem))
        logger.warning("EK CA certificate not loaded", extra={"path": where, "error": problem})
    return certs


def _read_all(entries: Iterable[Traversable], errors: list[LoadError]) -> list[ParsedCertificate]:
    """Certificates from files and directories. A path that was named but does not exist is an
    error (``FileNotFoundError``): a typo must not quietly leave a verifier without roots."""
    out: list[ParsedCertificate] = []
    for entry in entries:
        if not entry.is_file() and not entry.is_dir():
            if isinstance(entry, Path):  # say why: a symlink loop, a device, a FIFO
                entry.stat()  # OSError with its own reason (ENOENT, ELOOP, EACCES)
                raise OSError(errno.EINVAL, "not a file or a directory", str(entry))
            raise FileNotFoundError(2, "No such file or directory", str(entry))
        for f in _files(entry):
            out.extend(_read(f, errors))
    return out


def _paths(paths: Sequence[str | os.PathLike[str]]) -> list[Traversable]:
    return [Path(p) for p in paths]


def load_ek_cas_store(paths: Sequence[str | os.PathLike[str]]) -> CaStore:
    """Roots and intermediates together: the self-issued certificates are the roots. Files that
    do not load are listed; if paths were named and no root loaded while some file failed,
    ``CertificateFormatError`` (never a store that silently trusts nothing)."""
    errors: list[LoadError] = []
    certs = _unique(_read_all(_paths(paths), errors))
    if errors and not any(c.self_issued for c in certs):
        raise CertificateFormatError(
            "no EK root loaded: " + "; ".join(f"{e.path}: {e.error}" for e in errors)
        )
    return CaStore(
        tuple(c for c in certs if c.self_issued),
        tuple(c for c in certs if not c.self_issued),
        tuple(errors),
    )


def load_ca_dirs(
    *,
    roots: Sequence[str | os.PathLike[str]],
    intermediates: Sequence[str | os.PathLike[str]] = (),
) -> CaStore:
    """Every certificate under ``roots`` is a trust anchor; ``intermediates`` only help."""
    errors: list[LoadError] = []
    anchors = _unique(_read_all(_paths(roots), errors))
    helpers = tuple(
        c for c in _unique(_read_all(_paths(intermediates), errors)) if c not in anchors
    )
    return CaStore(anchors, helpers, tuple(errors))


def load_ca_tree(directory: Traversable) -> CaStore:
    """A store laid out as ``<vendor>/roots/*`` and ``<vendor>/intermediates/*``."""
    errors: list[LoadError] = []
    roots: list[ParsedCertificate] = []
    inter: list[ParsedCertificate] = []
    if not directory.is_dir():
        return CaStore(errors=(LoadError(str(directory), "not a directory"),))
    for vendor in sorted((v for v in directory.iterdir() if v.is_dir()), key=lambda v: v.name):
        for role, into in (("roots", roots), ("intermediates", inter)):
            sub = vendor / role
            if sub.is_dir():
                into.extend(_read_all([sub], errors))
    anchors = _unique(roots)
    return CaStore(anchors, tuple(c for c in _unique(inter) if c not in anchors), tuple(errors))


def bundled_ek_roots() -> CaStore:
    """The TPM vendors' and cloud vTPMs' EK CAs shipped with attest (package data; see
    ``src/attest/data/ek_roots/PROVENANCE.md``): the default EK roots of ``attest verify``,
    ``attest fleet`` and ``attest ek verify`` (``verifier_ek_roots``)."""
    return load_ca_tree(importlib.resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_DIR))


#: Among ``--ek-ca``/``--ek-roots`` paths: the bundled store too (a private CA beside it).
BUNDLED_WORD = "bundled"


@dataclass(frozen=True, slots=True)
class EkRoots:
    """The EK CAs a verifier trusts, and what an auditor is told about them."""

    store: CaStore
    source: str  # "bundled vendor EK CA store (… roots, … intermediates)", or the paths given

    @property
    def roots(self) -> list[ParsedCertificate]:
        return list(self.store.roots)

    @property
    def intermediates(self) -> list[ParsedCertificate]:
        return list(self.store.intermediates)


def _counted(store: CaStore) -> str:
    return f"{len(store.roots)} roots, {len(store.intermediates)} intermediates"


def verifier_ek_roots(paths: Sequence[str | os.PathLike[str]]) -> EkRoots:
    """The EK roots of ``attest verify --ek-ca`` / ``attest fleet --ek-roots``: none named,
    the bundled store; paths named, those alone (``load_ek_cas_store``: the self-issued are
    roots), the bundled store replaced -- unless the word ``bundled`` is among them, which adds
    the bundled store (a private CA beside the vendors')."""
    named = [p for p in paths if os.fspath(p) != BUNDLED_WORD]
    with_bundle = not paths or len(named) < len(paths)
    parts: list[str] = []
    store = CaStore()
    if with_bundle:
        store = bundled_ek_roots()
        parts.append(f"bundled vendor EK CA store ({_counted(store)})")
    if named:
        given = load_ek_cas_store(named)
        parts.append(f"{', '.join(os.fspath(p) for p in named)} ({_counted(given)})")
        store = store.merged(given)
    return EkRoots(store, " + ".join(parts))
