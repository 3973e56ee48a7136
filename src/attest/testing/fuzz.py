"""A small mutation fuzzer for the bounded parsers of the pure core.

A ``Target`` names a parser, its seed corpus (small valid inputs) and the documented error(s)
it may raise. Called with any bytes, a target either returns or raises one of those errors;
anything else escaping (``IndexError``, ``struct.error``, ``RecursionError``, an unwrapped
``ValueError`` ...) is a ``Finding``.

The mutation engine is deterministic from a seed: ``Mutator(seed)`` yields the same inputs in
the same order, so a failing run is reproduced from the seed it printed. Each input is one to
four mutations of a seed (byte flips, random bytes, inserts, deletions, duplications, splices
with another seed, length-field bumps, truncations, interesting integers).

The registry of targets is in ``attest.testing.fuzz_targets``; the CI test
(``tests/unit/test_fuzz_ci.py``) runs it for a bounded time, ``bench/fuzz.py`` for ≥ 1M
inputs per target.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from attest.errors import AttestError

MAX_INPUT = 1 << 16  # mutated inputs are cut to this size (the parsers' limits are smaller)

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFF)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One parser under fuzz: ``call(data)`` returns or raises one of ``errors``."""

    name: str
    call: Callable[[bytes], object]
    seeds: tuple[bytes, ...]
    errors: tuple[type[AttestError], ...]


@dataclass(frozen=True)
class Finding:
    """An undocumented exception: which target, the input, and what escaped."""

    target: str
    data: bytes
    error: BaseException

    def describe(self) -> str:
        return (
            f"{self.target}: {type(self.error).__name__}: {str(self.error)[:200]} "
            f"on input ({len(self.data)} bytes) {self.data[:4096].hex()}"
        )


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    refused: int = 0  # inputs that raised the documented error
    finding_count: int = 0
    findings: list[Finding] = field(default_factory=list)  # the first few, kept

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0


class Mutator:
    """Deterministic mutations of a seed corpus."""

    def __init__(self, seed: int, corpus: Sequence[bytes]) -> None:
        if not corpus:
            raise ValueError("a fuzz target needs at least one seed input")
        self.rng = random.Random(seed)
        self.corpus = tuple(corpus)
        self._ops: tuple[Callable[[bytearray], None], ...] = (
            self._flip,
            self._set_byte,
            self._insert,
            self._delete,
            self._duplicate,
            self._splice,
            self._bump_length,
            self._truncate,
            self._interesting,
        )

    def next(self) -> bytes:
        buf = bytearray(self.rng.choice(self.corpus))
        for _ in range(self.rng.randint(1, 4)):
            self.rng.choice(self._ops)(buf)
        return bytes(buf[:MAX_INPUT])

    def _pos(self, buf: bytearray) -> int:
        return self.rng.randrange(len(buf)) if buf else 0

    def _flip(self, buf: bytearray) -> None:
        if buf:
            buf[self._pos(buf)] ^= 1 << self.rng.randrange(8)

    def _set_byte(self, buf: bytearray) -> None:
        if buf:
            buf[self._pos(buf)] = self.rng.randrange(256)

    def _insert(self, buf: bytearray) -> None:
        n = self.rng.choice((1, 1, 2, 4, 8, 64))
        at = self.rng.randint(0, len(buf))
        buf[at:at] = self.rng.randbytes(n)

    def _delete(self, buf: bytearray) -> None:
        if buf:
            at = self._pos(buf)
            del buf[at : at + self.rng.choice((1, 1, 2, 4, 16, 256))]

    def _duplicate(self, buf: bytearray) -> None:
        if buf:
            at = self._pos(buf)
            chunk = buf[at : at + self.rng.choice((1, 4, 16, 256))]
            to = self.rng.randint(0, len(buf))
            buf[to:to] = chunk

    def _splice(self, buf: bytearray) -> None:
        other = self.rng.choice(self.corpus)
        if other:
            start = self.rng.randrange(len(other))
            chunk = other[start : start + self.rng.randint(1, 256)]
            at = self.rng.randint(0, len(buf))
            buf[at : at + len(chunk) * self.rng.randint(0, 1)] = chunk

    def _bump_length(self, buf: bytearray) -> None:
        """Add a small delta to a 16- or 32-bit field (either endianness): length fields."""
        fmt = self.rng.choice((">H", "<H", ">I", "<I"))
        size = struct.calcsize(fmt)
        if len(buf) < size:
            return
        at = self.rng.randrange(len(buf) - size + 1)
        (value,) = struct.unpack_from(fmt, buf, at)
        delta = self.rng.choice((-2, -1, 1, 2, 8, 0x100, -0x100))
        struct.pack_into(fmt, buf, at, (value + delta) % (1 << (8 * size)))

    def _truncate(self, buf: bytearray) -> None:
        if buf:
            del buf[self._pos(buf) :]

    def _interesting(self, buf: bytearray) -> None:
        fmt = self.rng.choice(("B", ">H", "<H", ">I", "<I"))
        size = struct.calcsize(fmt)
        if len(buf) < size:
            return
        value = self.rng.choice(_INTERESTING) % (1 << (8 * size))
        struct.pack_into(fmt, buf, self.rng.randrange(len(buf) - size + 1), value)


def check_one(target: Target, data: bytes) -> Finding | bool:
    """Run ``target`` on ``data``: ``True`` if it refused with its documented error, ``False``
    if it returned, a ``Finding`` if anything else escaped."""
    try:
        target.call(data)
    except target.errors:
        return True
    except Exception as exc:  # RecursionError, MemoryError, struct.error ... all findings
        return Finding(target.name, data, exc)
    return False


def run_target(
    target: Target,
    seed: int,
    *,
    inputs: int | None = None,
    seconds: float | None = None,
    max_findings: int = 20,
) -> Result:
    """Fuzz ``target`` from ``seed`` for ``inputs`` inputs or ``seconds`` seconds (whichever
    is given; both: whichever ends first). The seeds themselves are run first."""
    if inputs is None and seconds is None:
        raise ValueError("give inputs= or seconds=")
    mutator = Mutator(seed, target.seeds)
    result = Result(target.name)
    start = time.perf_counter()
    deadline = None if seconds is None else start + seconds
    pending = list(target.seeds)
    while inputs is None or result.inputs < inputs:
        if deadline is not None and result.inputs % 64 == 0 and time.perf_counter() > deadline:
            break
        data = pending.pop() if pending else mutator.next()
        outcome = check_one(target, data)
        result.inputs += 1
        if isinstance(outcome, Finding):
            result.finding_count += 1
            if len(result.findings) < max_findings:
                result.findings.append(outcome)
        elif outcome:
            result.refused += 1
    result.seconds = time.perf_counter() - start
    return result
