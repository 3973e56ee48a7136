"""The upgrade gate tests' world: three real images blessed in TEST-signed snapshots, a
node (``LocalNode`` over a fake TPM) with its gate, and the gate's HTTP API in-process."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.support.upgrade import (
    NOW,
    Image,
    make_image,
    new_node,
    offer,
    signed,
    snapshot,
)

from attest.errors import UpgradeRefused
from attest.runtime import check_records


def tree_state(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.v1 = make_image(tmp, "1.0.0", 1)
        self.v2 = make_image(tmp, "2.0.0", 2, blocks=80)
        self.v3 = make_image(tmp, "3.0.0", 3, blocks=96)
        self.node = new_node(tmp / "node")
        self.gate, self.local = self.node.open()
        self._snaps: dict[tuple[int, str], bytes] = {}

    def snap(self, seq: int = 10, **kw: object) -> bytes:
        """The signed snapshot (cached: ECDSA signatures differ on every signing, and the same
        sequence with other bytes is a freeze attack)."""
        key = (seq, repr(sorted(kw.items())))
        if key not in self._snaps:
            self._snaps[key] = signed(
                snapshot(
                    seq,
                    [self.v1.release, self.v2.release, self.v3.release],
                    **kw,  # type: ignore[arg-type]
                )
            )
        return self._snaps[key]

    def install(self, image: Image, snap: bytes) -> None:
        self.gate.stage(offer(image, snap), now=NOW)
        self.gate.slots.boot()
        self.gate.confirm()

    def refused(self, off: object, code: str) -> UpgradeRefused:
        before = (tree_state(self.node.slots_dir), tree_state(self.node.trust_dir))
        with pytest.raises(UpgradeRefused) as info:
            self.gate.stage(off, now=NOW)  # type: ignore[arg-type]
        assert info.value.reason == code, str(info.value)
        # nothing written: slots, pointer, trust state
        assert (tree_state(self.node.slots_dir), tree_state(self.node.trust_dir)) == before
        # recorded: runtime log (content-authentic records) and audit log, with the reason
        events = check_records(self.local.runtime_log(), pcr=self.local.runtime.pcr)
        last = [e for e in events if e.kind == "upgrade-decision"][-1]
        assert last.content["accepted"] is False and last.content["reason"] == code
        entry = self.local.audit_log()[-1]
        assert entry["service"] == f"upgrade.{code}" and entry["result"] == "denied"
        assert last.content["audit_seq"] == entry["seq"]
        return info.value


def upload_body(snap: bytes, image: bytes, tree: bytes = b"") -> bytes:
    return len(snap).to_bytes(8, "big") + snap + len(tree).to_bytes(8, "big") + tree + image


def gate_app(w: World, channel: str, *, max_upload: int = 8 << 20) -> object:
    from attest.node.api.app import create_app
    from attest.node.api.middleware import ChannelApp
    from attest.node.api.upgrades import add_upgrade_routes
    from attest.node.config import ApiSettings, Settings

    settings = Settings(api=ApiSettings())  # the default 64 KiB limit for other requests
    outer = create_app(
        settings,
        node=w.local,
        clock=lambda: NOW,
        extra_routes=lambda app, ctx: add_upgrade_routes(
            app, ctx, lambda: w.gate, upload_dir=w.tmp / "uploads", max_upload=max_upload
        ),
    )
    return ChannelApp(outer, channel)


def gate_client(w: World, channel: str, *, max_upload: int = 8 << 20) -> object:
    import httpx

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gate_app(w, channel, max_upload=max_upload)),  # type: ignore[arg-type]
        base_url="http://node",
    )


def corrupt(src: Image, dst: Path, block: int) -> Path:
    data = bytearray(src.path.read_bytes())
    data[block * 4096 + 17] ^= 0x40
    dst.write_bytes(data)
    return dst
