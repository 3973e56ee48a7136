"""dm-verity devices as the device-mapper reports them: table and status parsing, and the report.

Pure: text in, typed values out. The adapter that asks the kernel (``dmsetup``, sysfs, udev) is
``attest.node.verity_watch``.

Formats (Linux ``Documentation/admin-guide/device-mapper/verity.rst`` and
``drivers/md/dm-verity-target.c`` ``verity_status``):

- table (``dmsetup table``)::

    <start> <len> verity <version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
        <num_data_blocks> <hash_start_block> <algorithm> <root_digest> <salt|->
        [<#opt_params> <opt_params>...]

  The kernel prints devices as ``major:minor``, the digest and salt as lower-case hex, and the
  optional parameters it holds: one of ``ignore_corruption`` / ``restart_on_corruption`` /
  ``panic_on_corruption``; one of ``restart_on_error`` / ``panic_on_error`` (Linux 6.12+);
  ``ignore_zero_blocks``; ``check_at_most_once``; ``try_verify_in_tasklet``;
  ``use_fec_from_device <dev> fec_roots <n> fec_blocks <n> fec_start <n>``;
  ``root_hash_sig_key_desc <desc>``. Like the kernel (``verity_parse_opt_args``), option names
  are matched case-insensitively, a second corruption (or error) mode is a conflict, and an
  unknown option is refused: its arity is unknown, so the words after it cannot be trusted.
- status (``dmsetup status``): ``<start> <len> verity V|C`` — ``V`` no corruption seen so far,
  ``C`` a block failed verification — optionally followed by ``-`` or the number of blocks FEC
  corrected (newer kernels).

``V`` means only that no *read* block has failed yet: dm-verity checks blocks when they are
read (FACTS.md). Fail closed with ``restart_on_corruption`` / ``panic_on_corruption``.

Every parser here is bounded and raises only ``VerityFormatError``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from attest.errors import VerityFormatError

MAX_LINE = 4096  # a verity table with every option is well under 1 KiB
MAX_OPT_PARAMS = 64  # the kernel accepts at most 15 (DM_VERITY_OPTS_MAX); room for new ones
MAX_DIGEST = 64  # HASH_MAX_DIGESTSIZE
MAX_SALT = 256  # cryptsetup's limit
MIN_BLOCK = 512
MAX_BLOCK = 1 << 30  # the kernel: power of two, >= logical block size, <= INT_MAX
U64 = 1 << 64

UUID_PREFIX = "CRYPT-VERITY-"  # the dm uuid libcryptsetup gives verity devices

# Digest sizes of the kernel crypto names dm-verity is used with; others are checked for form.
DIGEST_SIZES = {
    "sha1": 20,
    "sha224": 28,
    "sha256": 32,
    "sha384": 48,
    "sha512": 64,
    "sm3": 32,
    "blake2b-256": 32,
    "blake2b-512": 64,
}

_UINT = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_ALG = re.compile(r"[A-Za-z0-9_()-]{1,64}")
_DEVNO = re.compile(r"([0-9]{1,10}):([0-9]{1,10})")


class CorruptionMode(enum.StrEnum):
    """What the kernel does when a block fails verification."""

    EIO = "eio"  # the default: the read fails with EIO, the system runs on
    IGNORE = "ignore"  # ignore_corruption: logged, the corrupted data is returned
    RESTART = "restart"  # restart_on_corruption
    PANIC = "panic"  # panic_on_corruption


class ErrorMode(enum.StrEnum):
    """What the kernel does on an I/O error from the data or hash device (Linux 6.12+)."""

    EIO = "eio"
    RESTART = "restart"  # restart_on_error
    PANIC = "panic"  # panic_on_error


class VerityStatus(enum.StrEnum):
    VERIFIED = "verified"  # "V": no block read so far failed verification
    CORRUPTED = "corrupted"  # "C"
    UNKNOWN = "unknown"  # the status could not be read


_CORRUPTION_OPTS = {
    "ignore_corruption": CorruptionMode.IGNORE,
    "restart_on_corruption": CorruptionMode.RESTART,
    "panic_on_corruption": CorruptionMode.PANIC,
}
_ERROR_OPTS = {"restart_on_error": ErrorMode.RESTART, "panic_on_error": ErrorMode.PANIC}
_FLAG_OPTS = ("ignore_zero_blocks", "check_at_most_once", "try_verify_in_tasklet")
_FEC_OPTS = ("use_fec_from_device", "fec_roots", "fec_blocks", "fec_start")
_SIG_OPT = "root_hash_sig_key_desc"


@dataclass(frozen=True, slots=True)
class VerityFec:
    """Forward error correction: ``use_fec_from_device`` and its parameters."""

    device: str
    roots: int | None
    blocks: int | None
    start: int | None


@dataclass(frozen=True, slots=True)
class VerityTable:
    """One ``verity`` target line. Devices are as the kernel prints them (``major:minor``)."""

    start: int  # sectors
    length: int  # sectors
    version: int  # hash format: 1 (salt first) or 0 (Chromium OS, salt last)
    data_device: str
    hash_device: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    hash_start_block: int
    algorithm: str
    root_digest: bytes
    salt: bytes
    corruption_mode: CorruptionMode = CorruptionMode.EIO
    error_mode: ErrorMode = ErrorMode.EIO
    ignore_zero_blocks: bool = False
    check_at_most_once: bool = False
    try_verify_in_tasklet: bool = False
    fec: VerityFec | None = None
    root_hash_sig_key_desc: str | None = None

    @property
    def data_devno(self) -> tuple[int, int] | None:
        return devno(self.data_device)

    @property
    def hash_devno(self) -> tuple[int, int] | None:
        return devno(self.hash_device)

    def options(self) -> list[str]:
        """The optional parameters in the order the kernel prints them."""
        opts: list[str] = []
        if self.corruption_mode is not CorruptionMode.EIO:
            opts += [k for k, v in _CORRUPTION_OPTS.items() if v is self.corruption_mode]
        if self.error_mode is not ErrorMode.EIO:
            opts += [k for k, v in _ERROR_OPTS.items() if v is self.error_mode]
        opts += [name for name in _FLAG_OPTS if getattr(self, name)]
        if self.fec is not None:
            opts += ["use_fec_from_device", self.fec.device]
            for name, value in (
                ("fec_roots", self.fec.roots),
                ("fec_blocks", self.fec.blocks),
                ("fec_start", self.fec.start),
            ):
                if value is not None:
                    opts += [name, str(value)]
        if self.root_hash_sig_key_desc is not None:
            opts += [_SIG_OPT, self.root_hash_sig_key_desc]
        return opts

    def to_line(self) -> str:
        """The table line as ``dmsetup table`` prints it (inverse of ``parse_verity_table``)."""
        words = [
            str(self.start),
            str(self.length),
            "verity",
            str(self.version),
            self.data_device,
            self.hash_device,
            str(self.data_block_size),
            str(self.hash_block_size),
            str(self.data_blocks),
            str(self.hash_start_block),
            self.algorithm,
            self.root_digest.hex(),
            self.salt.hex() or "-",
        ]
        opts = self.options()
        if opts:
            words += [str(len(opts)), *opts]
        return " ".join(words)

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "data_device": self.data_device,
            "hash_device": self.hash_device,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
            "hash_start_block": self.hash_start_block,
            "algorithm": self.algorithm,
            "root_hash": self.root_digest.hex(),
            "salt": self.salt.hex(),
            "corruption_mode": self.corruption_mode.value,
            "error_mode": self.error_mode.value,
            "options": self.options(),
        }


def devno(text: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``major:minor`` string, else None (a path, say)."""
    m = _DEVNO.fullmatch(text)
    return (int(m[1]), int(m[2])) if m else None


# --- parsing ---------------------------------------------------------------------------------


def _one_line(text: str, what: str) -> list[str]:
    if not isinstance(text, str):
        raise VerityFormatError(f"{what} must be text")
    if len(text) > MAX_LINE:
        raise VerityFormatError(f"{what} longer than {MAX_LINE} characters")
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) != 1:
        raise VerityFormatError(f"{what}: expected one target line, got {len(lines)}")
    line = lines[0]
    if any(not (" " <= c <= "~" or c == "\t") for c in line):
        raise VerityFormatError(f"{what}: not printable ASCII")
    return line.split()


def _uint(word: str, what: str, limit: int = U64) -> int:
    if not _UINT.fullmatch(word):
        raise VerityFormatError(f"{what}: {word[:40]!r} is not an unsigned decimal")
    value = int(word)
    if value >= limit:
        raise VerityFormatError(f"{what}: {value} out of range")
    return value


def _hex(word: str, what: str, max_bytes: int) -> bytes:
    if len(word) > 2 * max_bytes or not _HEX.fullmatch(word):
        raise VerityFormatError(f"{what}: not hex of 1..{max_bytes} bytes")
    return bytes.fromhex(word)


def _block_size(word: str, what: str) -> int:
    n = _uint(word, what)
    if n < MIN_BLOCK or n > MAX_BLOCK or n & (n - 1):
        raise VerityFormatError(f"{what}: {n} is not a power of two in {MIN_BLOCK}..{MAX_BLOCK}")
    return n


def _target(words: list[str], what: str) -> tuple[int, int, list[str]]:
    if len(words) < 3:
        raise VerityFormatError(f"{what}: expected '<start> <length> verity ...'")
    start = _uint(words[0], f"{what} start")
    length = _uint(words[1], f"{what} length")
    if words[2] != "verity":
        raise VerityFormatError(f"{what}: target is {words[2][:40]!r}, not 'verity'")
    return start, length, words[3:]


def parse_verity_table(text: str) -> VerityTable:
    """Parse one ``dmsetup table`` line of a verity target; raise ``VerityFormatError``."""
    start, length, args = _target(_one_line(text, "verity table"), "verity table")
    if len(args) < 10:
        raise VerityFormatError(f"verity table: {len(args)} arguments, at least 10 needed")
    version = _uint(args[0], "version")
    if version > 1:
        raise VerityFormatError(f"verity table: unknown hash format version {version}")
    data_device, hash_device = args[1], args[2]
    data_bs = _block_size(args[3], "data block size")
    hash_bs = _block_size(args[4], "hash block size")
    data_blocks = _uint(args[5], "data blocks")
    hash_start = _uint(args[6], "hash start block")
    algorithm = args[7]
    if not _ALG.fullmatch(algorithm):
        raise VerityFormatError(f"verity table: bad algorithm name {algorithm[:40]!r}")
    root = _hex(args[8], "root digest", MAX_DIGEST)
    expected = DIGEST_SIZES.get(algorithm.lower())
    if expected is not None and len(root) != expected:
        raise VerityFormatError(
            f"verity table: {algorithm} root digest is {len(root)} bytes, not {expected}"
        )
    if hash_bs < 2 * len(root):  # the kernel's "Digest size too big"
        raise VerityFormatError("verity table: hash block smaller than two digests")
    salt = b"" if args[9] == "-" else _hex(args[9], "salt", MAX_SALT)
    opts = _parse_options(args[10:])
    return VerityTable(
        start=start,
        length=length,
        version=version,
        data_device=data_device,
        hash_device=hash_device,
        data_block_size=data_bs,
        hash_block_size=hash_bs,
        data_blocks=data_blocks,
        hash_start_block=hash_start,
        algorithm=algorithm,
        root_digest=root,
        salt=salt,
        corruption_mode=opts.corruption_mode or CorruptionMode.EIO,
        error_mode=opts.error_mode or ErrorMode.EIO,
        ignore_zero_blocks="ignore_zero_blocks" in opts.flags,
        check_at_most_once="check_at_most_once" in opts.flags,
        try_verify_in_tasklet="try_verify_in_tasklet" in opts.flags,
        fec=_fec(opts.values),
        root_hash_sig_key_desc=opts.values.get(_SIG_OPT),
    )


@dataclass(slots=True)
class _Options:
    corruption_mode: CorruptionMode | None = None
    error_mode: ErrorMode | None = None
    flags: set[str] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)  # FEC and signature options


def _parse_options(words: Sequence[str]) -> _Options:
    out = _Options()
    if not words:
        return out
    count = _uint(words[0], "optional parameter count", MAX_OPT_PARAMS + 1)
    rest = words[1:]
    if len(rest) != count:
        raise VerityFormatError(
            f"verity table: {count} optional parameters announced, {len(rest)} present"
        )
    i = 0
    while i < len(rest):
        name = rest[i].lower()
        if name in _CORRUPTION_OPTS:
            if out.corruption_mode is not None:
                raise VerityFormatError("verity table: conflicting corruption modes")
            out.corruption_mode = _CORRUPTION_OPTS[name]
        elif name in _ERROR_OPTS:
            if out.error_mode is not None:
                raise VerityFormatError("verity table: conflicting error modes")
            out.error_mode = _ERROR_OPTS[name]
        elif name in _FLAG_OPTS:
            out.flags.add(name)
        elif name in _FEC_OPTS or name == _SIG_OPT:
            if name in out.values:
                raise VerityFormatError(f"verity table: {name} given twice")
            if i + 1 >= len(rest):
                raise VerityFormatError(f"verity table: {name} needs a value")
            i += 1
            out.values[name] = rest[i]
        else:
            raise VerityFormatError(f"verity table: unknown optional parameter {name[:40]!r}")
        i += 1
    return out


def _fec(values: dict[str, str]) -> VerityFec | None:
    if not any(k in values for k in _FEC_OPTS):
        return None
    if "use_fec_from_device" not in values:
        raise VerityFormatError("verity table: FEC parameters without use_fec_from_device")

    def num(name: str) -> int | None:
        return _uint(values[name], name) if name in values else None

    return VerityFec(
        device=values["use_fec_from_device"],
        roots=num("fec_roots"),
        blocks=num("fec_blocks"),
        start=num("fec_start"),
    )


def parse_verity_status(text: str) -> VerityStatus:
    """Parse one ``dmsetup status`` line of a verity target: ``V`` verified / ``C`` corrupted."""
    _, _, args = _target(_one_line(text, "verity status"), "verity status")
    if not 1 <= len(args) <= 2:
        raise VerityFormatError(f"verity status: {len(args)} fields after 'verity', want 1-2")
    if len(args) == 2 and args[1] != "-":
        _uint(args[1], "FEC corrected blocks")
    if args[0] == "V":
        return VerityStatus.VERIFIED
    if args[0] == "C":
        return VerityStatus.CORRUPTED
    raise VerityFormatError(f"verity status: {args[0][:40]!r} is neither V nor C")


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerityDevice:
    """An active dm device with a ``CRYPT-VERITY-`` uuid, as discovered.

    ``table`` is None and ``error`` says why when the table could not be read or parsed; such a
    device backs no command-line root hash.
    """

    name: str
    uuid: str
    devno: str | None  # the dm device itself, "major:minor"
    table: VerityTable | None
    status: VerityStatus
    error: str | None = None

    @property
    def root_digest(self) -> bytes | None:
        return self.table.root_digest if self.table is not None else None

    def to_json(self) -> dict[str, object]:
        t = self.table
        return {
            "name": self.name,
            "uuid": self.uuid,
            "devno": self.devno,
            "status": self.status.value,
            "root_hash": t.root_digest.hex() if t else None,
            "salt": t.salt.hex() if t else None,
            "algorithm": t.algorithm if t else None,
            "data_device": t.data_device if t else None,
            "hash_device": t.hash_device if t else None,
            "corruption_mode": t.corruption_mode.value if t else None,
            "table": t.to_json() if t else None,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class CmdlineRootHash:
    parameter: str  # roothash, usrhash, systemd.verity_root_hash, dm-mod.create, dm
    root_hash: bytes
    backed_by: tuple[str, ...]  # names of active devices whose table has this root digest


@dataclass(frozen=True, slots=True)
class VerityReport:
    devices: tuple[VerityDevice, ...]
    cmdline_root_hashes: tuple[CmdlineRootHash, ...]

    @property
    def cmdline_backed(self) -> bool:
        """Every root hash the command line names is backed by an active verity device with the
        same root digest. False when the command line names none: nothing is attested then."""
        return bool(self.cmdline_root_hashes) and all(h.backed_by for h in self.cmdline_root_hashes)

    @property
    def unbacked(self) -> tuple[CmdlineRootHash, ...]:
        return tuple(h for h in self.cmdline_root_hashes if not h.backed_by)

    @property
    def corrupted(self) -> bool:
        """Some device reported ``C``: a block failed verification since it was opened."""
        return any(d.status is VerityStatus.CORRUPTED for d in self.devices)

    def to_json(self) -> dict[str, object]:
        return {
            "devices": [d.to_json() for d in self.devices],
            "cmdline_root_hashes": [
                {
                    "parameter": h.parameter,
                    "root_hash": h.root_hash.hex(),
                    "backed_by": list(h.backed_by),
                }
                for h in self.cmdline_root_hashes
            ],
            "cmdline_backed": self.cmdline_backed,
            "corrupted": self.corrupted,
        }


def evaluate_verity(devices: Iterable[VerityDevice], *, cmdline: str) -> VerityReport:
    """Combine discovered devices with the root hashes the kernel command line names
    (``attest.eventlog.facts.verity_root_hashes``). A hash is backed by a device whose table was
    read and whose root digest is equal; the device's corruption status is reported separately
    (``VerityReport.corrupted``)."""
    # Here, not at the top: the module's types are on both daemons' start path (the broker
    # protocol), the firmware event log package behind this function is not.
    from attest.eventlog.facts import verity_root_hashes

    devs = tuple(devices)
    hashes = tuple(
        CmdlineRootHash(
            parameter=param,
            root_hash=h,
            backed_by=tuple(d.name for d in devs if d.root_digest == h),
        )
        for param, h in verity_root_hashes(cmdline)
    )
    return VerityReport(devices=devs, cmdline_root_hashes=hashes)
