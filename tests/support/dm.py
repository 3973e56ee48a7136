"""Fakes of the kernel's device-mapper as the dm-verity discovery adapter sees it: a sysfs tree
with dm block devices and a ``dmsetup`` that answers from dicts."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = "81e204e0910e063a25034a14e47abaf029f172a39686392e98951d9b15f04fb1"
SALT = "5eed00000000000000000000000000000000000000000000000000000000cafe"
USR = "bb" * 32
ROOT_UUID = "CRYPT-VERITY-6f1c2b7e0a4d4c559f0e2d7f0b8a1c33-root"
USR_UUID = "CRYPT-VERITY-0d3e5b1a9c774e2f8a6b4c3d2e1f0a9b-usr"
LUKS_UUID = "CRYPT-LUKS2-1b2c3d4e5f60718293a4b5c6d7e8f901-home"


def table(root: str, opts: str = "") -> str:
    return f"0 2048 verity 1 7:0 7:1 4096 4096 256 1 sha256 {root} {SALT}{opts}\n"


def make_dm(sysfs: Path, sys_name: str, *, uuid: str | None, name: str, dev: str) -> None:
    """A dm block device as the kernel shows it: /sys/class/block/dm-N -> devices/.../dm-N."""
    real = sysfs / "devices" / "virtual" / "block" / sys_name
    (real / "dm").mkdir(parents=True)
    (real / "dm" / "name").write_text(name + "\n")
    if uuid is not None:
        (real / "dm" / "uuid").write_text(uuid + "\n")
    (real / "dev").write_text(dev + "\n")
    link = sysfs / "class" / "block" / sys_name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real)


@dataclass
class FakeDmsetup:
    """Answers ``dmsetup table|status -u UUID`` from dicts; records every call."""

    tables: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert kwargs["timeout"] > 0 and kwargs["text"] and kwargs["capture_output"]
        with self.lock:
            self.calls.append(list(args))
        prog, command, flag, uuid = args
        assert (prog, flag) == ("dmsetup", "-u")
        source = self.tables if command == "table" else self.statuses
        if uuid not in source:
            return subprocess.CompletedProcess(
                list(args),
                1,
                "",
                "device-mapper: table ioctl on  failed: No such device "
                "or address\nCommand failed.\n",
            )
        return subprocess.CompletedProcess(list(args), 0, source[uuid], "")
