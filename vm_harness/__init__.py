"""vm_harness: the full attest stack in QEMU -- OVMF measured boot into a unified kernel image,
a swtpm per VM, a dm-verity squashfs root with attestd as the node's service.

``python -m vm_harness build|up|down|scenario NAME|scenarios`` (see docs/vm-harness.md).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".work" / "vm"
