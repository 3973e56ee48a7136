"""TPM-aware batching of challenges (the daemon's throughput under a slow TPM).

A hardware TPM signs a few quotes per second. While a quote is in flight, new challenges wait;
when the TPM is free, every waiting challenge for the same PCR selection is answered by ONE
quote whose qualifying data is the Merkle root over their leaves (``attest.merkle``). A lone
challenge finds the TPM free and is quoted at once: batching adds no latency, it only shares
the quotes that would otherwise queue. The TPM sees one command at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from attest.errors import Overloaded, TpmError
from attest.merkle import MerkleTree
from attest.model import PcrSelection
from attest.node.tpm.port import RawQuote

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchResult:
    quote: RawQuote
    size: int
    index: int
    proof: tuple[bytes, ...]


@dataclass(slots=True)
class _Waiting:
    leaf: bytes
    future: asyncio.Future[BatchResult]


class QuoteBatcher:
    """Serialises quotes through one worker; with ``batching`` on, shares each quote among all
    challenges of the same selection that waited for it."""

    def __init__(
        self,
        quote: Callable[[PcrSelection, bytes], RawQuote],
        *,
        batching: bool = True,
        max_batch: int = 4096,
        max_waiting: int = 20000,
    ) -> None:
        self._quote = quote
        self.batching = batching
        self.max_batch = max_batch if batching else 1
        self.max_waiting = max_waiting
        self._waiting: dict[PcrSelection, list[_Waiting]] = {}
        self._count = 0
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self.quotes = 0
        self.challenges = 0

    @property
    def waiting(self) -> int:
        return self._count

    async def submit(self, selection: PcrSelection, leaf: bytes) -> BatchResult:
        if self._count >= self.max_waiting:
            raise Overloaded(f"{self._count} challenges are waiting for the TPM; retry shortly")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._run(), name="quote-batcher")
        item = _Waiting(leaf, loop.create_future())
        self._waiting.setdefault(selection, []).append(item)
        self._count += 1
        self.challenges += 1
        assert self._wake is not None
        self._wake.set()
        return await item.future

    def _take(self) -> tuple[PcrSelection, list[_Waiting]] | None:
        if not self._waiting:
            return None
        # Oldest selection first: dicts keep insertion order, and a drained selection is
        # removed, so a busy selection cannot starve another.
        selection = next(iter(self._waiting))
        queue = self._waiting[selection]
        batch, rest = queue[: self.max_batch], queue[self.max_batch :]
        if rest:
            del self._waiting[selection]
            self._waiting[selection] = rest  # to the back of the line
        else:
            del self._waiting[selection]
        self._count -= len(batch)
        return selection, batch

    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            taken = self._take()
            if taken is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            selection, batch = taken
            batch = [w for w in batch if not w.future.cancelled()]
            if not batch:
                continue
            tree = MerkleTree.build([w.leaf for w in batch])
            try:
                quote = await loop.run_in_executor(None, self._quote, selection, tree.root)
            except Exception as exc:  # handed to every waiting challenge, not swallowed
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.quotes += 1
            proofs = tree.proofs() if len(batch) > 1 else [()]
            for i, w in enumerate(batch):
                if not w.future.done():
                    w.future.set_result(BatchResult(quote, len(batch), i, proofs[i]))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for queue in self._waiting.values():
            for w in queue:
                if not w.future.done():
                    w.future.set_exception(TpmError("the daemon is shutting down"))
        self._waiting.clear()
        self._count = 0
