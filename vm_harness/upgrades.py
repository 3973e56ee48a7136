"""The harness as the node's upgrade operator: the node's real upgrade path over its
mutual-TLS listener (client certificate from the harness's private CA, ``trust.tls_files``).

``upload`` streams ``POST /v1/upgrades`` (``len‖snapshot‖len‖hash tree (none)‖image``, the
image being the release's squashfs: the first ``root_size`` bytes of the built slot image);
``status`` and ``confirm`` are ``GET /v1/upgrades`` and ``POST /v1/upgrades/confirm``.
``written`` reads how many bytes the guest wrote to a disk so far (QMP ``query-blockstats``):
the harness sees a slot write happen without touching the disk.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx

from .build import NodeImage
from .run import Vm
from .trust import tls_files

MEDIA_TYPE = "application/vnd.attest.upgrade"
UPLOAD_TIMEOUT = 900.0  # ~75 MB through slirp + TLS + the gate's hashing, under TCG
CHUNK = 1 << 20
SLOT_DRIVES = {"a": "slota", "b": "slotb"}  # run.py's -drive ids


def _client(vm: Vm, timeout: float) -> httpx.Client:
    tls = tls_files(vm.work)
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
    return httpx.Client(base_url=vm.mtls_url, verify=ctx, timeout=timeout)


def _body(image: NodeImage, snapshot: bytes) -> Iterator[bytes]:
    yield len(snapshot).to_bytes(8, "big") + snapshot + (0).to_bytes(8, "big")
    left = image.root_size
    with open(image.root, "rb") as f:
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{image.root} is shorter than {image.root_size} bytes")
            left -= len(chunk)
            yield chunk


def upload(
    vm: Vm,
    image: NodeImage,
    snapshot: bytes,
    *,
    version: str | None = None,
    timeout: float = UPLOAD_TIMEOUT,
) -> tuple[int, dict[str, Any]]:
    """Offer ``image`` with ``snapshot``: (HTTP status, answer)."""
    size = 16 + len(snapshot) + image.root_size
    params = {"version": version} if version else None
    with _client(vm, timeout) as c:
        r = c.post(
            "/v1/upgrades",
            params=params,
            content=_body(image, snapshot),
            headers={"Content-Type": MEDIA_TYPE, "Content-Length": str(size)},
        )
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": r.text[:300]}
    return r.status_code, doc


def _operator(vm: Vm, method: str, path: str, timeout: float) -> httpx.Response:
    """``GET /v1/upgrades`` / ``POST /v1/upgrades/confirm`` on the node's mutual-TLS listener;
    where attestd answers 501 (attestd-tpm keeps them on its root-only operator socket), the
    same through the test image's operator relay (``prodnode.OPERATOR_RELAY``: `attest upgrade
    status|confirm --broker-socket`, as an operator on the node runs them), same client cert."""
    with _client(vm, timeout) as c:
        r = c.request(method, path)
    if r.status_code != 501 or not vm.operator_port:
        return r
    with _client(vm, timeout) as c:
        return c.request(method, f"https://127.0.0.1:{vm.operator_port}{path}")


def status(vm: Vm) -> dict[str, Any]:
    r = _operator(vm, "GET", "/v1/upgrades", 120.0)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def confirm(vm: Vm) -> tuple[int, dict[str, Any]]:
    r = _operator(vm, "POST", "/v1/upgrades/confirm", 300.0)
    return r.status_code, r.json()


def written(vm: Vm, slot: str) -> int:
    """Bytes the guest has written to slot ``slot``'s disk since QEMU started."""
    assert vm.qmp is not None
    for dev in vm.qmp.cmd("query-blockstats"):
        if dev.get("device") == SLOT_DRIVES[slot]:
            return int(dev["stats"]["wr_bytes"])
    raise KeyError(f"no drive {SLOT_DRIVES[slot]} in query-blockstats")


def power_cycle(vm: Vm) -> float:
    """Power cut (QMP ``quit``) and power on with the same disks, VARS and TPM state;
    seconds from QEMU start to attestd ready."""
    vm.quit()
    vm.stop()
    vm.start()
    return vm.wait_ready()
