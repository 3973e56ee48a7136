"""Put the node's system files in their places (an adapter: files): the units of ``attestd``
and ``attestd-tpm``, the sysusers.d and tmpfiles.d files, and ``/etc/attest/attestd.toml``
from the annotated example -- the data of ``attest.node.packaging``. ``attest node install``
and ``attest node uninstall`` are the shell (docs/install.md).

The vendor places of systemd (``/usr/lib/systemd/system``, ``/usr/lib/sysusers.d``,
``/usr/lib/tmpfiles.d``): an administrator's changes go in ``/etc`` (``systemctl edit``
drop-ins, ``/etc/tmpfiles.d``), which an upgrade's install never touches. The units'
``ExecStart=`` names the daemons of this installation (``bindir``: where the running Python
installed its scripts, e.g. ``/opt/attest/bin``). The configuration is written only when absent:
a re-install or upgrade keeps the operator's. Uninstall removes the files install writes, but
the configuration and the node's state (``/var/lib/attest``: its logs, audit key, trust root).
"""

from __future__ import annotations

import enum
import os
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from attest.errors import ConfigError
from attest.storage.files import atomic_write_bytes

CONFIG = "etc/attest/attestd.toml"
# (packaged file, place under the prefix, executable named in its ExecStart=)
_FILES: tuple[tuple[str, str, str | None], ...] = (
    ("attestd-tpm.service", "usr/lib/systemd/system/attestd-tpm.service", "attestd-tpm"),
    ("attestd.service", "usr/lib/systemd/system/attestd.service", "attestd"),
    ("attest.sysusers", "usr/lib/sysusers.d/attest.conf", None),
    ("attest.tmpfiles", "usr/lib/tmpfiles.d/attest.conf", None),
    ("attest.udev", "usr/lib/udev/rules.d/60-attest.rules", None),
    ("attestd.toml.example", CONFIG, None),
)
_PACKAGED_BINDIR = "/usr/bin/"


class Action(enum.Enum):
    INSTALLED = "installed"  # new
    REPLACED = "replaced"  # was there with other content
    UNCHANGED = "unchanged"  # was there with this content
    KEPT = "kept"  # the operator's configuration: never overwritten nor removed
    REMOVED = "removed"
    ABSENT = "absent"  # nothing to remove


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    path: Path
    note: str = ""

    def line(self, *, dry_run: bool) -> str:
        verb = f"would be {self.action.value}" if dry_run else self.action.value
        return f"{verb}: {self.path}" + (f" ({self.note})" if self.note else "")


def default_bindir() -> Path:
    """Where this Python installation puts its scripts (attest, attestd, attestd-tpm)."""
    return Path(sysconfig.get_path("scripts"))


def packaged(name: str) -> bytes:
    """A file of ``attest.node.packaging`` as shipped."""
    return (resources.files("attest.node.packaging") / name).read_bytes()


def unit_text(name: str, bindir: Path) -> bytes:
    """A packaged unit with ``ExecStart=`` pointing at ``bindir``'s daemon."""
    text = packaged(name).decode()
    old = f"ExecStart={_PACKAGED_BINDIR}"
    if text.count(old) != 1:
        raise RuntimeError(f"{name}: expected one {old}")  # a packaging bug, caught by tests
    return text.replace(old, f"ExecStart={bindir}/").encode()


def _contents(bindir: Path) -> list[tuple[str, bytes]]:
    out = []
    for name, place, daemon in _FILES:
        if daemon is None:
            out.append((place, packaged(name)))
            continue
        exe = bindir / daemon
        if not os.access(exe, os.X_OK):
            raise ConfigError(
                f"{exe} is not an executable: name the directory of attestd and "
                "attestd-tpm (the bin/ of the environment attest is installed in)",
                key="bindir",
            )
        out.append((place, unit_text(name, bindir)))
    return out


def install(prefix: Path, *, bindir: Path, dry_run: bool = False) -> list[Step]:
    """Write the files under ``prefix`` (``/`` on a node); the steps taken, or with
    ``dry_run`` the steps that would be."""
    if not bindir.is_absolute():
        raise ConfigError(f"{bindir} is not an absolute path", key="bindir")
    steps = []
    for place, data in _contents(bindir):
        target = prefix / place
        try:
            old: bytes | None = target.read_bytes()
        except FileNotFoundError:
            old = None
        if place == CONFIG and old is not None:
            steps.append(Step(Action.KEPT, target, "exists; the example is not installed over it"))
            continue
        if old == data:
            steps.append(Step(Action.UNCHANGED, target))
            continue
        if not dry_run:
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            atomic_write_bytes(target, data, mode=0o644)
        action = Action.INSTALLED if old is None else Action.REPLACED
        note = f"ExecStart {bindir}" if place.endswith(".service") else ""
        steps.append(Step(action, target, note))
    return steps


def uninstall(prefix: Path, *, dry_run: bool = False) -> list[Step]:
    """Remove what ``install`` writes under ``prefix``, except the configuration."""
    steps = []
    for _, place, _ in _FILES:
        target = prefix / place
        if place == CONFIG:
            if target.exists():
                steps.append(Step(Action.KEPT, target, "the operator's; remove it by hand"))
            continue
        if not target.exists():
            steps.append(Step(Action.ABSENT, target))
            continue
        if not dry_run:
            target.unlink()
        steps.append(Step(Action.REMOVED, target))
    return steps
