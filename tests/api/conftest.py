"""The API tier: the real app, built by create_app with a fake TPM behind the node port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.node.api.app import create_app
from attest.node.api.middleware import ChannelApp
from attest.node.config import ApiSettings, Settings, TpmSettings
from attest.node.tpm.fake import FakeTpm


@pytest.fixture()
def fake_tpm() -> FakeTpm:
    return FakeTpm()


@pytest.fixture()
def node(fake_tpm: FakeTpm, tmp_path: Path) -> Iterator[Any]:
    from attest.node.broker.local import LocalNode

    (tmp_path / "state").mkdir()
    n = LocalNode.open(fake_tpm, tmp_path / "state", pcr=13)
    yield n
    n.close()


def make_settings(tmp_path: Path, **api: Any) -> Settings:
    return Settings(
        node_id="node-under-test",
        tpm=TpmSettings(state_dir=str(tmp_path / "state")),
        api=ApiSettings(**api),
    ).validate()


AppFactory = Callable[..., Any]

SEL = {"sha256": [0, 1, 2, 3, 4, 5, 6, 7]}


async def challenge(
    client: httpx.AsyncClient,
    nonce: bytes | None = None,
    pcrs: dict[str, list[int]] | None = None,
    **extra: Any,
) -> tuple[bytes, Any]:
    """``POST /v1/evidence`` with a fresh nonce (or ``nonce``) over ``pcrs`` (default SEL)."""
    nonce = nonce or os.urandom(32)
    r = await client.post("/v1/evidence", json={"nonce": nonce.hex(), "pcrs": pcrs or SEL, **extra})
    return nonce, r


@pytest.fixture()
def app_factory(node: Any, tmp_path: Path) -> AppFactory:
    def build(**kw: Any) -> Any:
        api = {k: kw.pop(k) for k in list(kw) if k in ApiSettings.__dataclass_fields__}
        return create_app(make_settings(tmp_path, **api), node=kw.pop("node", node), **kw)

    return build


@pytest.fixture()
async def client(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory()
    async with _running(app, "public") as c:
        yield c


@pytest.fixture()
async def operator_client(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    app = app_factory()
    async with _running(app, "operator") as c:
        yield c


class _running:
    """Run the app's lifespan and talk to it over an in-process transport."""

    def __init__(self, app: Any, channel: str) -> None:
        self.app = app
        self.channel = channel

    async def __aenter__(self) -> httpx.AsyncClient:
        from asgi_lifespan import LifespanManager  # type: ignore[import-not-found]

        self.lm = LifespanManager(self.app.fastapi)
        await self.lm.__aenter__()
        transport = httpx.ASGITransport(app=ChannelApp(self.app, self.channel))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://node")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.lm.__aexit__(*exc)
