"""Facts a policy needs, read only from verified events whose data is authentic.

``facts(verified) -> BootFacts``. An event contributes only if it is in the ``VerifiedEventLog``
(its PCR replayed into the quoted value) and, where its payload is read, its digest matched its
data (``DigestStatus.DATA`` or a quirk-allowed form): the event type and data are not covered by
the digest otherwise, so they could be relabelled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attest.eventlog.parse import Event
from attest.eventlog.quirks import QUIRKS, AppliedQuirk, Quirk, QuirkKind, allowed
from attest.eventlog.replay import VerifiedEventLog
from attest.eventlog.uefi import (
    EFI_GLOBAL_VARIABLE,
    EFI_IMAGE_SECURITY_DATABASE,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_EVENT_TAG,
    EV_IPL,
    LINUX_INITRD_TAG,
    LINUX_LOAD_OPTIONS_TAG,
    ImageLoad,
    SignatureList,
    TaggedEvent,
    VariableData,
    text_of,
)
from attest.model import HashAlg

SECURE_BOOT_VARIABLES = ("PK", "KEK", "db", "dbx")
VERITY_PARAMS = ("roothash", "systemd.verity_root_hash", "usrhash", "systemd.verity_usr_hash")


@dataclass(frozen=True, slots=True)
class BootApplication:
    """An EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4: the Authenticode digest per bank."""

    event: int
    path: str | None
    device_path: str
    digests: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class KernelCommandLine:
    """A kernel command line measured by a boot loader or the EFI stub."""

    event: int
    pcr: int
    source: str  # "grub", "systemd-boot", "systemd-stub", "boot-loader"
    text: str


@dataclass(frozen=True, slots=True)
class MeasuredDigest:
    """A measurement whose bytes are not in the log (Linux EFI stub LoadOptions, initrd)."""

    event: int
    pcr: int
    source: str
    digests: Mapping[int, bytes]


@dataclass(frozen=True, slots=True)
class VerityRootHash:
    """A dm-verity root hash named on a measured kernel command line."""

    event: int  # the event holding the command line
    parameter: str  # roothash, usrhash, dm-mod.create, dm, ...
    root_hash: bytes


@dataclass(frozen=True, slots=True)
class SecureBootVariable:
    """A measured Secure Boot variable (SecureBoot, PK, KEK, db, dbx, ...)."""

    name: str
    event: int
    digests: Mapping[int, bytes]  # the measured digests (of UEFI_VARIABLE_DATA), per bank
    data_sha256: bytes  # sha256 of the variable's value
    entries: int  # signatures in its signature lists (0 when empty or not decoded)


@dataclass(frozen=True, slots=True)
class BootFacts:
    """What a replayed log says about the boot; ``against_quote`` tells whether the replay was
    checked against a TPM quote or only against the log's own values."""

    against_quote: bool
    secure_boot: bool | None
    secure_boot_variables: tuple[SecureBootVariable, ...]
    authorities: tuple[tuple[int, str, bytes], ...]  # (event, variable name, sha256 of data)
    boot_applications: tuple[BootApplication, ...]
    kernel_cmdlines: tuple[KernelCommandLine, ...]
    load_options: tuple[MeasuredDigest, ...]
    initrds: tuple[MeasuredDigest, ...]
    verity_root_hashes: tuple[VerityRootHash, ...]
    quirks: tuple[AppliedQuirk, ...]
    untrusted_events: tuple[int, ...]
    anomalies: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        def dig(d: Mapping[int, bytes]) -> dict[str, str]:
            return {_bank(a): v.hex() for a, v in d.items()}

        return {
            "verified_against_quote": self.against_quote,
            "note": (
                "verified against quoted PCRs"
                if self.against_quote
                else "UNVERIFIED: replayed against the log's own PCR values, not a TPM quote"
            ),
            "secure_boot": self.secure_boot,
            "secure_boot_variables": {
                v.name: {
                    "event": v.event,
                    "digests": dig(v.digests),
                    "data_sha256": v.data_sha256.hex(),
                    "entries": v.entries,
                }
                for v in self.secure_boot_variables
            },
            "authorities": [
                {"event": i, "name": n, "data_sha256": h.hex()} for i, n, h in self.authorities
            ],
            "boot_applications": [
                {
                    "event": a.event,
                    "path": a.path,
                    "device_path": a.device_path,
                    "digests": dig(a.digests),
                }
                for a in self.boot_applications
            ],
            "kernel_cmdlines": [
                {"event": c.event, "pcr": c.pcr, "source": c.source, "cmdline": c.text}
                for c in self.kernel_cmdlines
            ],
            "load_options_digests": [
                {"event": m.event, "pcr": m.pcr, "source": m.source, "digests": dig(m.digests)}
                for m in self.load_options
            ],
            "initrd_digests": [
                {"event": m.event, "pcr": m.pcr, "source": m.source, "digests": dig(m.digests)}
                for m in self.initrds
            ],
            "verity_root_hashes": [
                {"event": v.event, "parameter": v.parameter, "root_hash": v.root_hash.hex()}
                for v in self.verity_root_hashes
            ],
            "quirks": [q.to_json() for q in self.quirks],
            "untrusted_events": list(self.untrusted_events),
            "anomalies": list(self.anomalies),
        }


def _bank(alg: int) -> str:
    try:
        return HashAlg(alg).bank_name
    except ValueError:
        return f"0x{alg:04x}"


def load_options_digest(cmdline: str, alg: HashAlg = HashAlg.SHA256) -> bytes:
    """The PCR 9 digest the Linux EFI stub measures for a command line: the UTF-16LE
    LoadOptions with a terminating NUL (as OVMF and systemd-boot pass them)."""
    return alg.digest((cmdline + "\x00").encode("utf-16-le"))


# --- kernel command lines and dm-verity ------------------------------------------------------


def split_cmdline(cmdline: str) -> list[str]:
    """Split like the kernel (lib/cmdline.c next_arg): whitespace separates, double quotes group
    and are removed."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
            continue
        if ch.isspace() and not quoted:
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def _hex(value: str) -> bytes | None:
    v = value.strip().lower()
    if len(v) < 32 or len(v) % 2 or any(c not in "0123456789abcdef" for c in v):
        return None
    return bytes.fromhex(v)


def verity_root_hashes(cmdline: str) -> list[tuple[str, bytes]]:
    """dm-verity root hashes a kernel command line names: ``roothash=``,
    ``systemd.verity_root_hash=``, ``usrhash=``, ``systemd.verity_usr_hash=``, a verity table in
    ``dm-mod.create=`` (the root digest is the 9th argument after ``verity``, Linux
    Documentation/admin-guide/device-mapper/verity.rst) and ``root_hexdigest=`` in ``dm=``."""
    out: list[tuple[str, bytes]] = []
    for arg in split_cmdline(cmdline):
        key, sep, value = arg.partition("=")
        if not sep:
            continue
        if key in VERITY_PARAMS:
            h = _hex(value)
            if h is not None:
                out.append((key, h))
        elif key == "dm-mod.create":
            for dev in value.split(";"):
                for table in dev.split(",")[4:]:
                    words = table.split()
                    if "verity" in words:
                        i = words.index("verity")
                        if len(words) > i + 9:
                            h = _hex(words[i + 9])
                            if h is not None:
                                out.append((key, h))
        elif key == "dm":
            for word in value.replace(",", " ").split():
                k, s, v = word.partition("=")
                if s and k == "root_hexdigest":
                    h = _hex(v)
                    if h is not None:
                        out.append((key, h))
    return out


def _cmdline_of(e: Event) -> tuple[str, str] | None:
    """(source, command line) of an EV_IPL that is a kernel command line, else None."""
    text = text_of(e.data)
    if e.pcr == 8:
        for prefix, src in (("kernel_cmdline: ", "grub"), ("grub_kernel_cmdline ", "grub")):
            if text.startswith(prefix):
                return src, text[len(prefix) :]
        utf16_le = e.data[1:2] == b"\x00"
        if "=" in text and utf16_le and not text.startswith(("grub_cmd", "module_cmdline")):
            return "systemd-boot", text  # UTF-16 options measured by systemd-boot into PCR 8
        return None
    if e.pcr == 12 and e.data[1:2] == b"\x00":
        return "systemd-stub", text  # systemd-stub measures the UTF-16 command line (PCR 12)
    return None


# --- the facts -------------------------------------------------------------------------------


def facts(verified: VerifiedEventLog, *, quirks: Sequence[Quirk] = QUIRKS) -> BootFacts:
    trusted = verified.trusted_payload
    applied: list[AppliedQuirk] = list(verified.quirks)
    secure_boot: bool | None = None
    sb_vars: dict[str, SecureBootVariable] = {}
    authorities: list[tuple[int, str, bytes]] = []
    apps: list[BootApplication] = []
    cmdlines: list[KernelCommandLine] = []
    load_options: list[MeasuredDigest] = []
    initrds: list[MeasuredDigest] = []
    verity: list[VerityRootHash] = []
    for e in verified.events:
        p = e.payload
        t = e.type
        if t == EV_EFI_VARIABLE_DRIVER_CONFIG and e.pcr == 7 and isinstance(p, VariableData):
            if not trusted(e):
                continue
            if p.guid == EFI_GLOBAL_VARIABLE and p.name == "SecureBoot":
                if len(p.data) == 0:
                    q = allowed(quirks, "secureboot-empty-variable")
                    if q is not None and q.kind is QuirkKind.FACTS:
                        secure_boot = False
                        applied.append(AppliedQuirk(q.name, q.version, q.kind, events=(e.index,)))
                else:
                    secure_boot = p.data[0] == 1
            elif p.name in SECURE_BOOT_VARIABLES and p.guid in (
                EFI_GLOBAL_VARIABLE,
                EFI_IMAGE_SECURITY_DATABASE,
            ):
                entries = sum(
                    len(sl.signatures)
                    for sl in (p.value if isinstance(p.value, tuple) else ())
                    if isinstance(sl, SignatureList)
                )
                sb_vars[p.name] = SecureBootVariable(
                    p.name, e.index, dict(e.digests), hashlib.sha256(p.data).digest(), entries
                )
        elif t == EV_EFI_VARIABLE_AUTHORITY and isinstance(p, VariableData) and trusted(e):
            authorities.append((e.index, p.name, hashlib.sha256(p.data).digest()))
        elif t == EV_EFI_BOOT_SERVICES_APPLICATION and e.pcr == 4 and isinstance(p, ImageLoad):
            # The digest is the Authenticode hash of the image (PFP §10.4.3); the device path is
            # informational (not covered by the digest) and reported as such.
            apps.append(
                BootApplication(
                    e.index, p.device_path.file_path, p.device_path.text, dict(e.digests)
                )
            )
        elif t == EV_IPL and trusted(e):
            found = _cmdline_of(e)
            if found is not None:
                cmdlines.append(KernelCommandLine(e.index, e.pcr, found[0], found[1]))
                verity.extend(
                    VerityRootHash(e.index, k, h) for k, h in verity_root_hashes(found[1])
                )
        elif t == EV_EVENT_TAG and isinstance(p, TaggedEvent) and e.pcr == 9:
            if p.tag_id == LINUX_LOAD_OPTIONS_TAG:
                load_options.append(
                    MeasuredDigest(e.index, e.pcr, "linux-efi-stub", dict(e.digests))
                )
            elif p.tag_id == LINUX_INITRD_TAG:
                initrds.append(MeasuredDigest(e.index, e.pcr, "linux-efi-stub", dict(e.digests)))
        elif t == EV_IPL and e.pcr == 9:
            # GRUB measures every file it reads into PCR 9; the digest is the file's hash.
            name = text_of(e.data)
            base = name.rsplit("/", 1)[-1]
            if base.startswith(("initrd", "initramfs")):
                initrds.append(MeasuredDigest(e.index, e.pcr, f"grub:{name}", dict(e.digests)))
    return BootFacts(
        verified.against_quote,
        secure_boot,
        tuple(sb_vars[n] for n in SECURE_BOOT_VARIABLES if n in sb_vars),
        tuple(authorities),
        tuple(apps),
        tuple(cmdlines),
        tuple(load_options),
        tuple(initrds),
        tuple(verity),
        tuple(applied),
        verified.untrusted_events,
        verified.anomalies,
    )
