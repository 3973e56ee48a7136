"""The vm tier: one node image built (cached in .work/vm) and one booted VM per session,
reused by the scenarios that do not need a fresh one. QEMU, swtpm and the build tools are
installed by the README's commands; without them the tier skips (fails under CI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import need_binaries
from vm_harness.build import BUILD_TOOLS, NodeImage, build
from vm_harness.harness import Harness


@pytest.fixture(scope="session")
def node_image() -> NodeImage:
    need_binaries("qemu-system-x86_64", "qemu-img", "qemu-io", "swtpm", "swtpm_setup", *BUILD_TOOLS)
    pytest.importorskip("qemu.qmp", reason="the PyPI package qemu.qmp (pyproject extra 'vm')")
    return build()


@pytest.fixture(scope="session")
def harness(node_image: NodeImage) -> Iterator[Harness]:
    with Harness(node_image) as h:
        yield h
