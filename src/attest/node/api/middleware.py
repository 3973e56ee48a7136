"""Pure ASGI middleware: listener channel, per-client rate limit (the request body's limit is
``attest.serving.body.BodyLimit``)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from attest.serving.body import ASGIApp, Receive, Scope, Send, json_reply

# Which listener a request came in on: "public" (TCP, anyone), "mtls" (TCP, client certificate
# verified against the configured CA during the TLS handshake), "operator" (the local Unix
# socket, file-permission protected). Mutating endpoints accept only mtls and operator.
CHANNEL_KEY = "attest.channel"
TRUSTED_CHANNELS = frozenset({"mtls", "operator"})


class ChannelApp:
    """Marks every request with the listener it arrived on."""

    def __init__(self, app: ASGIApp, channel: str) -> None:
        self.app = app
        self.channel = channel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[CHANNEL_KEY] = self.channel
        await self.app(scope, receive, send)


class RateLimit:
    """Token bucket per client address; the operator socket is not limited. Memory is
    bounded: at most ``max_clients`` buckets, the least recently seen evicted first."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate: float,
        burst: int,
        max_clients: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(CHANNEL_KEY) == "operator":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client[0] if client else "?"
        now = self.clock()
        tokens, last = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[key] = (tokens, now)
            self.refused += 1
            retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
            await json_reply(
                send,
                429,
                {
                    "error": "RateLimited",
                    "check": None,
                    "detail": "too many requests from this address",
                },
                [(b"retry-after", str(retry).encode())],
            )
            return
        self.buckets[key] = (tokens - 1.0, now)
        while len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        await self.app(scope, receive, send)
