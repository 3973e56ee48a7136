"""uvicorn's HTTP/1.1 protocol with the bounds it lacks before a request reaches the app.

uvicorn's httptools protocol keeps every header it is sent (a client streaming headers without
end grows the server's memory until it dies) and arms no timer until a first response (a
client that connects and sends nothing, or one header byte a second, holds its connection and
buffers for ever). ``attest.serving.guarded.GuardedHttpToolsProtocol`` adds, per request:

- a head limit: the request line and headers together at most ``MAX_HEAD`` bytes, else 431;
- a head deadline: the whole head within ``HEAD_DEADLINE`` seconds of the connection opening
  (or of the request's first byte on a kept-alive connection), else 408 and the connection is
  closed (the time a body may take is the app's: its size-limit middleware);
- a malformed request answered in the APIs' error shape ``{error, check, detail}`` (uvicorn
  answers it in plain text).

``protocol()`` is what a shell gives uvicorn as ``http=``: this class where httptools is
installed (the ``[node]`` and ``[verifier]`` extras require it), else uvicorn's h11 protocol,
whose parser bounds the head itself (16 KiB) but which has no head deadline.

``attest.serving.body.BodyLimit`` (pure ASGI) bounds what comes after the head: the body's size
(413) and the time it may take to arrive (408).
"""

from __future__ import annotations

import asyncio


def protocol() -> type[asyncio.Protocol] | str:
    """What a shell gives uvicorn as ``http=``."""
    try:
        from attest.serving.guarded import GuardedHttpToolsProtocol
    except ImportError:  # no httptools (installed without its extras): uvicorn's h11
        return "h11"
    return GuardedHttpToolsProtocol
