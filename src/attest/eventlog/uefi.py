"""Typed payloads of TCG PC Client firmware events, and their bounded decoders.

References: TCG PC Client Platform Firmware Profile (PFP) 1.05 §10 (event types and data
structures); UEFI 2.10 §3.1.3 (EFI_LOAD_OPTION), §10.3 (device path nodes), §32.4.1
(EFI_SIGNATURE_LIST); UEFI PI for firmware-volume device paths.

Every decoder takes the event data (``bytes``) and returns a frozen payload or raises
``PayloadError`` (an ``EventLogFormatError``). The parser catches ``PayloadError`` per event and
keeps the event with a ``MalformedPayload``: a firmware's odd payload must not hide the rest of
the log, and the replay does not depend on payloads.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform

from attest.errors import PayloadError

# --- event types (PFP 1.05 §10.4.1, Table 9 and Table 10) ------------------------------------

EV_PREBOOT_CERT = 0x00000000
EV_POST_CODE = 0x00000001
EV_UNUSED = 0x00000002
EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_ACTION = 0x00000005
EV_EVENT_TAG = 0x00000006
EV_S_CRTM_CONTENTS = 0x00000007
EV_S_CRTM_VERSION = 0x00000008
EV_CPU_MICROCODE = 0x00000009
EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
EV_TABLE_OF_DEVICES = 0x0000000B
EV_COMPACT_HASH = 0x0000000C
EV_IPL = 0x0000000D
EV_IPL_PARTITION_DATA = 0x0000000E
EV_NONHOST_CODE = 0x0000000F
EV_NONHOST_CONFIG = 0x00000010
EV_NONHOST_INFO = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
EV_POST_CODE2 = 0x00000013
EV_EFI_EVENT_BASE = 0x80000000
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
EV_EFI_GPT_EVENT = 0x80000006
EV_EFI_ACTION = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
EV_EFI_HANDOFF_TABLES = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
EV_EFI_HANDOFF_TABLES2 = 0x8000000B
EV_EFI_VARIABLE_BOOT2 = 0x8000000C
EV_EFI_GPT_EVENT2 = 0x8000000D
EV_EFI_HCRTM_EVENT = 0x80000010
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2
EV_EFI_SPDM_DEVICE_POLICY = 0x800000E3
EV_EFI_SPDM_DEVICE_AUTHORITY = 0x800000E4

EVENT_TYPE_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("EV_") and isinstance(value, int) and name != "EV_EFI_EVENT_BASE"
}


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"EV_UNKNOWN_0x{event_type:08x}")


# --- well-known GUIDs ------------------------------------------------------------------------

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_IMAGE_SECURITY_DATABASE = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_CERT_SHA256 = "c1c41626-504c-4092-aca9-41f936934328"
EFI_CERT_X509 = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"
EFI_CERT_SHA1 = "826ca512-cf10-4ac9-b187-be01496631bd"
EFI_CERT_RSA2048 = "3c5766e8-269c-4e34-aa14-ed776e85b3b6"
EFI_CERT_SHA384 = "ff3e5307-9fd0-48c9-85f1-8ad56c701e01"
EFI_CERT_SHA512 = "093e0fae-a6c4-4f50-9f1b-d41e2b89c19a"
EFI_CERT_X509_SHA256 = "3bd2a492-96c0-4079-b420-fcf98ef103ed"

SIGNATURE_TYPE_NAMES = {
    EFI_CERT_SHA256: "sha256",
    EFI_CERT_X509: "x509",
    EFI_CERT_SHA1: "sha1",
    EFI_CERT_RSA2048: "rsa2048",
    EFI_CERT_SHA384: "sha384",
    EFI_CERT_SHA512: "sha512",
    EFI_CERT_X509_SHA256: "x509-sha256",
}

# Linux EFI stub tagged events (linux/drivers/firmware/efi/libstub/efistub.h).
LINUX_INITRD_TAG = 0x8F3B22EC
LINUX_LOAD_OPTIONS_TAG = 0x8F3B22ED


# --- small bounded readers -------------------------------------------------------------------

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_HH = struct.Struct("<HH")
_HHH = struct.Struct("<HHH")
_II = struct.Struct("<II")
_IH = struct.Struct("<IH")
_IQQ = struct.Struct("<IQQ")
_QQQ = struct.Struct("<QQQ")
_QQQQ = struct.Struct("<QQQQ")


def _guid_bytes(text: str) -> bytes:
    a, b, c, d, e = text.split("-")
    return struct.pack("<IHH", int(a, 16), int(b, 16), int(c, 16)) + bytes.fromhex(d + e)


# Constant table of the GUIDs every log repeats (variable namespaces, signature types, the
# Microsoft signature owner): formatting one costs more than everything else in a small event.
_WELL_KNOWN_GUIDS: dict[bytes, str] = {
    _guid_bytes(g): g
    for g in (
        EFI_GLOBAL_VARIABLE,
        EFI_IMAGE_SECURITY_DATABASE,
        SHIM_LOCK_GUID,
        EFI_CERT_SHA256,
        EFI_CERT_X509,
        EFI_CERT_SHA1,
        "77fa9abd-0359-4d32-bd60-28f4e78f784b",  # Microsoft signature owner
    )
}


def guid_str(b: bytes) -> str:
    """EFI_GUID (mixed-endian, UEFI Appendix A) to its canonical text form."""
    known = _WELL_KNOWN_GUIDS.get(b)
    if known is not None:
        return known
    if len(b) != 16:
        raise PayloadError(f"GUID needs 16 bytes, got {len(b)}")
    # Byte-swap the three little-endian leading fields, then hex the 16 bytes in one call.
    h = _GUID_BE.pack(*_GUID_LE.unpack(b)).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_GUID_LE = struct.Struct("<IHH8s")
_GUID_BE = struct.Struct(">IHH8s")


def _need(data: bytes, off: int, n: int, what: str) -> None:
    if n < 0 or off + n > len(data):
        raise PayloadError(f"{what}: needs {n} bytes at offset {off}, have {len(data) - off}")


def _u16(data: bytes, off: int, what: str) -> int:
    _need(data, off, 2, what)
    v: int = _U16.unpack_from(data, off)[0]
    return v


def _u32(data: bytes, off: int, what: str) -> int:
    _need(data, off, 4, what)
    v: int = _U32.unpack_from(data, off)[0]
    return v


def _u64(data: bytes, off: int, what: str) -> int:
    _need(data, off, 8, what)
    v: int = _U64.unpack_from(data, off)[0]
    return v


# ``bytes.decode("utf-16-le")`` looks the codec up by name on every call (three times the cost
# of decoding a short string); the codec function itself does the same decoding.
_UTF16LE_DECODE = codecs.utf_16_le_decode


def _utf16le(b: bytes) -> str:
    """``b.decode("utf-16-le", errors="replace")``, without the codec lookup."""
    return _UTF16LE_DECODE(b, "replace", True)[0]


def utf16(b: bytes) -> str:
    """UTF-16LE text up to the first NUL character, never raising."""
    if len(b) % 2:
        b = b[:-1]
    s = _UTF16LE_DECODE(b, "replace", True)[0]
    nul = s.find("\x00")
    return s if nul < 0 else s[:nul]


def looks_utf16(b: bytes) -> bool:
    """True when the bytes are plausibly UTF-16LE text (ASCII range, every odd byte zero)."""
    if len(b) < 2 or len(b) % 2 or b[1]:
        return False  # the common ASCII case answers here without copying
    return not any(b[1::2]) and any(b[0::2])


def text_of(b: bytes) -> str:
    """Event text that may be ASCII/UTF-8 or UTF-16LE, with trailing NULs removed."""
    if looks_utf16(b):
        return utf16(b)
    return b.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


# --- payload types ---------------------------------------------------------------------------

_D = TypeVar("_D")


def _fast_init(cls: type[_D]) -> type[_D]:
    """Give a frozen, slotted dataclass an ``__init__`` that stores through its slot descriptors.

    The ``__init__`` dataclasses generates for a frozen class routes every field through
    ``object.__setattr__`` (an attribute lookup per field); calling the slot descriptor's
    ``__set__`` stores the same value directly and makes construction ~40% cheaper, which counts
    when a log decodes into thousands of payload objects. Same signature and defaults; the class
    stays frozen (``__setattr__`` still raises ``FrozenInstanceError``).
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    ns: dict[str, Any] = {}
    params: list[str] = []
    for f in fields:
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: _fast_init handles plain fields only")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    _set_{f.name}(self, {f.name})\n" for f in fields)
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", ns)  # field names only
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010 (mypy forbids assigning a method)
    return cls


@dataclass_transform(frozen_default=True)
def _payload(cls: type[_D]) -> type[_D]:
    """``@dataclass(frozen=True, slots=True)`` with ``_fast_init``'s ``__init__``: dataclasses is
    told not to generate its own (``init=False``), which would be replaced anyway -- one
    ``exec`` fewer per class at import, a process start of ``attest eventlog`` pays for 20."""
    return _fast_init(dataclass(frozen=True, slots=True, init=False)(cls))


@_payload
class RawPayload:
    """An event type this decoder does not know, or whose data has no structure: kept raw."""

    note: str


@_payload
class MalformedPayload:
    """The event data does not decode as its type says. The event still replays."""

    error: str


@_payload
class SpecIdEvent:
    """TCG_EfiSpecIdEvent (PFP §10.4.5.1), 'Spec ID Event03' (or the TPM 1.2 'Event00')."""

    signature: str
    platform_class: int
    spec_version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]  # (TPM_ALG_ID, digest size)
    vendor_info: bytes


@_payload
class StartupLocality:
    """'StartupLocality' EV_NO_ACTION (PFP §10.4.5.3): the locality TPM2_Startup came from."""

    locality: int


@_payload
class Sp800155Event:
    """'SP800-155 Event' reference-measurement pointer (PFP §10.4.5.2)."""

    signature: str
    platform_manufacturer_id: int
    reference_manifest_guid: str
    platform_manufacturer: str
    platform_model: str
    platform_version: str
    firmware_manufacturer: str
    firmware_manufacturer_id: int
    firmware_version: str


@_payload
class NoActionEvent:
    """Another EV_NO_ACTION: its 16-byte signature and body."""

    signature: str
    body: bytes


@_payload
class TextPayload:
    """A string event (EV_ACTION, EV_EFI_ACTION, EV_IPL, EV_S_CRTM_VERSION, POST code, ...)."""

    text: str
    encoding: str  # "ascii" or "utf-16le"


@_payload
class Separator:
    """EV_SEPARATOR (PFP §10.4.4): 0x00000000 normally, 0xFFFFFFFF (or 1) on an error path."""

    value: int
    error: bool


@_payload
class FirmwareBlob:
    """UEFI_PLATFORM_FIRMWARE_BLOB / BLOB2 (PFP §10.4.3)."""

    base: int
    length: int
    description: str | None = None


@_payload
class HandoffTables:
    """UEFI_HANDOFF_TABLE_POINTERS / 2: (vendor GUID, table address) pairs."""

    tables: tuple[tuple[str, int], ...]
    description: str | None = None


@_payload
class DevicePath:
    """An EFI device path: its text form and the file path nodes it names."""

    text: str
    file_path: str | None  # the concatenated MEDIA_FILEPATH nodes, e.g. \EFI\BOOT\BOOTX64.EFI


@_payload
class ImageLoad:
    """UEFI_IMAGE_LOAD_EVENT (PFP §10.4.3): image location, length and device path."""

    location: int
    length: int
    link_time_address: int
    device_path: DevicePath


@_payload
class SignatureData:
    """EFI_SIGNATURE_DATA, for a single authority (EV_EFI_VARIABLE_AUTHORITY)."""

    owner: str
    data: bytes


@_payload
class SignatureList:
    """EFI_SIGNATURE_LIST (UEFI §32.4.1)."""

    signature_type: str  # GUID
    type_name: str  # "x509", "sha256", ... or the GUID
    header: bytes
    # (owner GUID, signature data) pairs. Plain tuples: dbx holds hundreds of entries and a
    # dataclass per entry doubled the cost of decoding a log.
    signatures: tuple[tuple[str, bytes], ...]


@_payload
class LoadOption:
    """EFI_LOAD_OPTION (UEFI §3.1.3), the value of a Boot#### variable."""

    attributes: int
    description: str
    device_path: DevicePath
    optional_data: bytes

    @property
    def active(self) -> bool:
        return bool(self.attributes & 0x1)


VariableValue = (
    tuple[SignatureList, ...] | LoadOption | tuple[int, ...] | SignatureData | bool | None
)


@_payload
class VariableData:
    """UEFI_VARIABLE_DATA (PFP §10.4.2): the variable's GUID, name and data, decoded where we know
    the variable (Secure Boot databases, SecureBoot, BootOrder, Boot####)."""

    guid: str
    name: str
    data: bytes
    value: VariableValue = None


@_payload
class TaggedEvent:
    """TCG_PCClientTaggedEvent (PFP §10.4.2.1). ``description`` is set for the Linux EFI stub's
    tags, whose data is a description of what was measured (the measured bytes are not logged)."""

    tag_id: int
    data: bytes
    description: str | None = None


@_payload
class GptPartition:
    """One GPT partition entry (UEFI spec §5.3.3) of an EV_EFI_GPT_EVENT."""

    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int
    attributes: int
    name: str


@_payload
class GptEvent:
    """UEFI_GPT_DATA (PFP §10.4.3): the GPT header and the partitions in use."""

    disk_guid: str
    partitions: tuple[GptPartition, ...]


@_payload
class SpdmEvent:
    """EV_EFI_SPDM_*: the TCG_DEVICE_SECURITY_EVENT_DATA signature and body (kept raw)."""

    signature: str
    body: bytes


Payload = (
    RawPayload
    | MalformedPayload
    | SpecIdEvent
    | StartupLocality
    | Sp800155Event
    | NoActionEvent
    | TextPayload
    | Separator
    | FirmwareBlob
    | HandoffTables
    | ImageLoad
    | VariableData
    | TaggedEvent
    | GptEvent
    | SpdmEvent
)

# --- EV_NO_ACTION (PFP §10.4.5) --------------------------------------------------------------


def decode_spec_id(data: bytes) -> SpecIdEvent:
    """TCG_EfiSpecIDEventStruct. Digest sizes of the crypto-agile log come from here."""
    _need(data, 0, 24, "Spec ID event")
    signature = data[:16].rstrip(b"\x00").decode("ascii", errors="replace")
    platform_class = _u32(data, 16, "platformClass")
    minor, major, errata, uintn = data[20], data[21], data[22], data[23]
    off = 24
    algs: list[tuple[int, int]] = []
    if signature == "Spec ID Event03":
        count = _u32(data, off, "numberOfAlgorithms")
        off += 4
        _need(data, off, count * 4, "digestSizes")
        for _ in range(count):
            alg, size = struct.unpack_from("<HH", data, off)
            off += 4
            if size == 0 or size > 128:
                raise PayloadError(f"Spec ID event: algorithm 0x{alg:04x} has digest size {size}")
            algs.append((alg, size))
        if not algs:
            raise PayloadError("Spec ID event lists no algorithm")
    vendor: bytes = b""
    if off < len(data):
        vsize = data[off]
        _need(data, off + 1, vsize, "vendorInfo")
        vendor = data[off + 1 : off + 1 + vsize]
        off += 1 + vsize
    elif signature == "Spec ID Event03":
        raise PayloadError("Spec ID event: vendorInfoSize missing")
    return SpecIdEvent(
        signature, platform_class, (major, minor, errata), uintn, tuple(algs), vendor
    )


def _pstr(data: bytes, off: int, what: str) -> tuple[str, int]:
    _need(data, off, 1, what)
    n = data[off]
    _need(data, off + 1, n, what)
    return data[off + 1 : off + 1 + n].split(b"\x00", 1)[0].decode(
        "utf-8", errors="replace"
    ), off + 1 + n


def _decode_sp800_155(signature: str, body: bytes) -> Sp800155Event:
    man_id = _u32(body, 0, "PlatformManufacturerId")
    _need(body, 4, 16, "ReferenceManifestGuid")
    rim = guid_str(body[4:20])
    man, off = _pstr(body, 20, "PlatformManufacturerStr")
    model, off = _pstr(body, off, "PlatformModel")
    version, off = _pstr(body, off, "PlatformVersion")
    fw_man, off = _pstr(body, off, "FirmwareManufacturerStr")
    fw_id = _u32(body, off, "FirmwareManufacturerId")
    fw_version, off = _pstr(body, off + 4, "FirmwareVersion")
    return Sp800155Event(signature, man_id, rim, man, model, version, fw_man, fw_id, fw_version)


def decode_no_action(data: bytes) -> Payload:
    if len(data) < 16:
        return NoActionEvent("", data)
    sig = data[:16].rstrip(b"\x00").decode("ascii", errors="replace")
    if sig.startswith("Spec ID Event"):
        return decode_spec_id(data)
    if sig == "StartupLocality":
        _need(data, 16, 1, "StartupLocality")
        return StartupLocality(data[16])
    if sig.startswith("SP800-155 Event"):
        return _decode_sp800_155(sig, data[16:])
    return NoActionEvent(sig, data[16:])


# --- device paths (UEFI §10.3) ---------------------------------------------------------------

_MAX_DEVICE_PATH_NODES = 256


def _dp_node(t: int, s: int, body: bytes) -> str:
    n = len(body)
    if t == 1:  # hardware
        if s == 1 and n >= 2:
            return f"Pci({hex(body[1])},{hex(body[0])})"
        if s == 3 and n >= 20:
            mt, start, end = struct.unpack_from("<IQQ", body)
            return f"MemoryMapped(0x{mt:x},0x{start:x},0x{end:x})"
        if s == 4 and n >= 16:
            return f"VenHw({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 5 and n >= 4:
            return f"Ctrl(0x{_U32.unpack_from(body)[0]:x})"
    elif t == 2:  # ACPI
        if s == 1 and n >= 8:
            hid, uid = _II.unpack_from(body)
            if hid & 0xFFFF == 0x41D0:
                eisa = hid >> 16
                if eisa in (0x0A03, 0x0A08):
                    return f"PciRoot({hex(uid)})"
                return f"Acpi(PNP{eisa:04X},{hex(uid)})"
            return f"Acpi(0x{hid:08x},0x{uid:x})"
        if s == 3 and n >= 4:
            return f"AcpiAdr(0x{_U32.unpack_from(body)[0]:x})"
    elif t == 3:  # messaging
        if s == 1 and n >= 4:
            return f"Ata({body[0]},{body[1]},{_U16.unpack_from(body, 2)[0]})"
        if s == 2 and n >= 4:
            tgt, lun = _HH.unpack_from(body)
            return f"Scsi({hex(tgt)},{hex(lun)})"
        if s == 5 and n >= 2:
            return f"USB({hex(body[0])},{hex(body[1])})"
        if s == 0x0B and n >= 33:
            return f"MAC({body[:6].hex()},{hex(body[32])})"
        if s == 0x0C:
            return "IPv4()"
        if s == 0x0D:
            return "IPv6()"
        if s == 0x12 and n >= 6:
            hba, pm, lun = _HHH.unpack_from(body)
            return f"Sata({hex(hba)},{hex(pm)},{hex(lun)})"
        if s == 0x17 and n >= 12:
            nsid = _U32.unpack_from(body)[0]
            return f"NVMe(0x{nsid:x},{'-'.join(f'{x:02X}' for x in body[4:12])})"
        if s == 0x18:
            return f"Uri({body.decode('utf-8', errors='replace')})"
        if s == 0x0A and n >= 16:
            return f"VenMsg({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 0x1D and n >= 8:  # eMMC, SD, UFS, ... keep generic
            return f"Msg(0x{s:x},{body.hex()})"
    elif t == 4:  # media
        if s == 1 and n >= 38:
            part, start, size = _IQQ.unpack_from(body)
            sig, fmt, sigtype = body[20:36], body[36], body[37]
            if sigtype == 2:
                return f"HD({part},GPT,{guid_str(sig)},{hex(start)},{hex(size)})"
            if sigtype == 1:
                return f"HD({part},MBR,0x{_U32.unpack_from(sig)[0]:08x},0x{start:x},0x{size:x})"
            return f"HD({part},{fmt},{sigtype},0x{start:x},0x{size:x})"
        if s == 2 and n >= 20:
            entry, start, size = _IQQ.unpack_from(body)
            return f"CDROM(0x{entry:x},0x{start:x},0x{size:x})"
        if s == 3 and n >= 16:
            return f"VenMedia({guid_str(body[:16])}{',' + body[16:].hex() if n > 16 else ''})"
        if s == 4:
            return utf16(body)
        if s == 6 and n >= 16:
            return f"FvFile({guid_str(body[:16])})"
        if s == 7 and n >= 16:
            return f"Fv({guid_str(body[:16])})"
        if s == 8 and n >= 20:
            _, start, end = _IQQ.unpack_from(body)
            return f"Offset({hex(start)},{hex(end)})"
    elif t == 5 and s == 1 and n >= 4:
        dtype, flags = _HH.unpack_from(body)
        return f"BBS({hex(dtype)},{text_of(body[4:])},{hex(flags)})"
    return f"Path({t},{s},{body.hex()})"


def decode_device_path(data: bytes) -> DevicePath:
    """Render an EFI device path as text (UEFI §10.6 conventions), bounded by its length."""
    parts: list[str] = []
    files: list[str] = []
    off, end = 0, len(data)
    instance: list[str] = []
    nodes = 0
    while off < end:
        if off + 4 > end:
            raise PayloadError(f"device path: truncated node header at {off}")
        # EFI_DEVICE_PATH_PROTOCOL: Type (1), SubType (1), Length (2, little-endian).
        t = data[off]
        s = data[off + 1]
        length = data[off + 2] | data[off + 3] << 8
        if length < 4 or off + length > end:
            raise PayloadError(f"device path: node length {length} at {off} out of bounds")
        nodes += 1
        if nodes > _MAX_DEVICE_PATH_NODES:
            raise PayloadError("device path: too many nodes")
        body = data[off + 4 : off + length]
        off += length
        if t == 0x7F:
            parts.append("/".join(instance))
            instance = []
            if s == 0xFF:
                break
            continue
        if t == 4 and s == 4:  # MEDIA_FILEPATH, the most frequent node: no dispatch
            node = utf16(body)
            files.append(node)
        else:
            node = _dp_node(t, s, body)
        instance.append(node)
    if instance:
        parts.append("/".join(instance))
    file_path = None
    if files:
        file_path = "\\".join([f.strip("\\") for f in files])
        if files[0].startswith("\\"):
            file_path = "\\" + file_path
    return DevicePath(",".join([p for p in parts if p]), file_path)


# --- decoders by event type ------------------------------------------------------------------


def decode_text(data: bytes) -> TextPayload:
    if looks_utf16(data):
        return TextPayload(utf16(data), "utf-16le")
    return TextPayload(data.split(b"\x00", 1)[0].decode("utf-8", errors="replace"), "ascii")


def decode_separator(data: bytes) -> Separator:
    if len(data) != 4:
        raise PayloadError(f"separator data is {len(data)} bytes, not 4")
    v = _U32.unpack_from(data)[0]
    return Separator(v, v != 0)


def decode_blob(data: bytes) -> FirmwareBlob:
    _need(data, 0, 16, "UEFI_PLATFORM_FIRMWARE_BLOB")
    base, length = _QQ.unpack_from(data)
    return FirmwareBlob(base, length)


def decode_blob2(data: bytes) -> FirmwareBlob:
    _need(data, 0, 1, "UEFI_PLATFORM_FIRMWARE_BLOB2")
    n = data[0]
    _need(data, 1, n + 16, "UEFI_PLATFORM_FIRMWARE_BLOB2")
    desc = data[1 : 1 + n].split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    base, length = struct.unpack_from("<QQ", data, 1 + n)
    return FirmwareBlob(base, length, desc)


def _tables(data: bytes, off: int) -> tuple[tuple[str, int], ...]:
    count = _u64(data, off, "NumberOfTables")
    off += 8
    _need(data, off, count * 24, "TableEntry")
    return tuple(
        (guid_str(data[o : o + 16]), _U64.unpack_from(data, o + 16)[0])
        for o in range(off, off + count * 24, 24)
    )


def decode_handoff(data: bytes) -> HandoffTables:
    return HandoffTables(_tables(data, 0))


def decode_handoff2(data: bytes) -> HandoffTables:
    _need(data, 0, 1, "UEFI_HANDOFF_TABLE_POINTERS2")
    n = data[0]
    _need(data, 1, n, "TableDescription")
    desc = data[1 : 1 + n].split(b"\x00", 1)[0].decode("utf-8", errors="replace")
    return HandoffTables(_tables(data, 1 + n), desc)


def decode_post_code(data: bytes) -> TextPayload | FirmwareBlob:
    # PFP §10.4.1: EV_POST_CODE holds either an ASCII label ("POST CODE", "SMM CODE", "ACPI
    # DATA", "BIS CODE", "Embedded UEFI Driver") or a UEFI_PLATFORM_FIRMWARE_BLOB.
    if len(data) == 16 and not looks_utf16(data) and not data.isascii():
        return decode_blob(data)
    if len(data) == 16 and b"\x00" in data[:8]:
        return decode_blob(data)
    return decode_text(data)


def decode_post_code2(data: bytes) -> TextPayload | FirmwareBlob:
    try:
        return decode_blob2(data)
    except PayloadError:
        return decode_text(data)


def decode_crtm_version(data: bytes) -> TextPayload | RawPayload:
    if looks_utf16(data):
        return TextPayload(utf16(data), "utf-16le")
    if len(data) == 16:
        return RawPayload(f"GUID {guid_str(data)}")
    return decode_text(data)


def decode_crtm_contents(data: bytes) -> TextPayload | FirmwareBlob:
    if len(data) == 16:
        return decode_blob(data)
    try:
        return decode_blob2(data)
    except PayloadError:
        return decode_text(data)


def decode_image_load(data: bytes) -> ImageLoad:
    _need(data, 0, 32, "UEFI_IMAGE_LOAD_EVENT")
    loc, length, link, dp_len = _QQQQ.unpack_from(data)
    _need(data, 32, dp_len, "DevicePath")
    return ImageLoad(loc, length, link, decode_device_path(data[32 : 32 + dp_len]))


def decode_signature_lists(data: bytes) -> tuple[SignatureList, ...]:
    lists: list[SignatureList] = []
    off = 0
    while off < len(data):
        _need(data, off, 28, "EFI_SIGNATURE_LIST")
        stype = guid_str(data[off : off + 16])
        list_size, header_size, sig_size = struct.unpack_from("<III", data, off + 16)
        if list_size < 28 or off + list_size > len(data):
            raise PayloadError(f"EFI_SIGNATURE_LIST size {list_size} out of bounds")
        body_off = off + 28 + header_size
        body_len = list_size - 28 - header_size
        if header_size > list_size - 28 or sig_size < 16 or body_len % sig_size:
            raise PayloadError("EFI_SIGNATURE_LIST sizes inconsistent")
        # EFI_SIGNATURE_DATA: SignatureOwner (16) and SignatureData, split in C for the whole
        # body. Owners repeat (dbx: hundreds of entries of one owner): format each one once.
        entries = struct.iter_unpack(f"16s{sig_size - 16}s", data[body_off : body_off + body_len])
        owners: dict[bytes, str] = {}
        get, add = owners.get, owners.setdefault
        sigs = tuple([(get(raw) or add(raw, guid_str(raw)), sig) for raw, sig in entries])
        lists.append(
            SignatureList(
                stype,
                SIGNATURE_TYPE_NAMES.get(stype, stype),
                data[off + 28 : body_off],
                sigs,
            )
        )
        off += list_size
    return tuple(lists)


def decode_load_option(data: bytes) -> LoadOption:
    if len(data) >= 6:
        attrs, fp_len = _IH.unpack_from(data)
    else:  # the bounded readers name what is missing
        attrs = _u32(data, 0, "EFI_LOAD_OPTION.Attributes")
        fp_len = _u16(data, 4, "FilePathListLength")
    off = 6
    end = data.find(b"\x00\x00", off)
    while end >= 0 and (end - off) % 2:
        end = data.find(b"\x00\x00", end + 1)
    if end < 0:
        raise PayloadError("EFI_LOAD_OPTION.Description is not NUL-terminated")
    desc = _utf16le(data[off:end])
    off = end + 2
    _need(data, off, fp_len, "FilePathList")
    dp = decode_device_path(data[off : off + fp_len])
    return LoadOption(attrs, desc, dp, data[off + fp_len :])


_SB_DATABASES = frozenset({"db", "dbx", "dbt", "dbr"})
_SB_GLOBALS = frozenset({"PK", "KEK", "PKDefault", "KEKDefault", "dbDefault", "dbxDefault"})
_SHIM_LISTS = frozenset({"MokList", "MokListX", "MokListTrusted", "SbatLevel"})


# Boot#### / Driv#### (8 characters) and Driver###### (12): hexadecimal digits only.
_BOOT_OPTION_NAME = re.compile(r"(?:Boot|Driv)[0-9a-fA-F]{4}|Driver[0-9a-fA-F]{6}")


def _is_boot_option_name(name: str) -> bool:
    return _BOOT_OPTION_NAME.fullmatch(name) is not None


def decode_variable(data: bytes, event_type: int = EV_EFI_VARIABLE_DRIVER_CONFIG) -> VariableData:
    if len(data) < 32:
        raise PayloadError(f"UEFI_VARIABLE_DATA: {len(data)} bytes, header needs 32")
    guid = guid_str(data[:16])
    name_len, data_len = _QQ.unpack_from(data, 16)
    name_end = 32 + name_len * 2
    if name_end + data_len > len(data):
        raise PayloadError(
            f"UEFI_VARIABLE_DATA: name ({name_len}) and data ({data_len}) exceed {len(data)} bytes"
        )
    name = _utf16le(data[32:name_end]).split("\x00", 1)[0]
    vdata = data[name_end : name_end + data_len]
    value: VariableValue = None
    try:
        if event_type == EV_EFI_VARIABLE_AUTHORITY:
            if len(vdata) >= 16 and guid != SHIM_LOCK_GUID:
                value = SignatureData(guid_str(vdata[:16]), vdata[16:])
        elif guid == EFI_GLOBAL_VARIABLE and name in ("SecureBoot", "AuditMode", "DeployedMode"):
            value = bool(vdata[0]) if len(vdata) >= 1 else None
        elif (guid == EFI_GLOBAL_VARIABLE and name in _SB_GLOBALS) or (
            guid == EFI_IMAGE_SECURITY_DATABASE and name in _SB_DATABASES
        ):
            value = decode_signature_lists(vdata)
        elif guid == EFI_GLOBAL_VARIABLE and name in ("BootOrder", "DriverOrder"):
            if len(vdata) % 2:
                raise PayloadError(f"{name} has odd length {len(vdata)}")
            value = struct.unpack(f"<{len(vdata) // 2}H", vdata)
        elif guid == EFI_GLOBAL_VARIABLE and _is_boot_option_name(name):
            value = decode_load_option(vdata)
    except PayloadError:
        value = None  # the variable is still reported raw; facts treat value None as unknown
    return VariableData(guid, name, vdata, value)


def decode_tagged(data: bytes) -> TaggedEvent:
    tag, size = struct.unpack_from("<II", data) if len(data) >= 8 else (0, -1)
    if size < 0:
        raise PayloadError("tagged event shorter than its 8-byte header")
    _need(data, 8, size, "taggedEventData")
    body = data[8 : 8 + size]
    desc = None
    if tag in (LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG):
        desc = text_of(body)
    return TaggedEvent(tag, body, desc)


def decode_gpt(data: bytes) -> GptEvent:
    _need(data, 0, 92, "EFI_PARTITION_TABLE_HEADER")
    if data[:8] != b"EFI PART":
        raise PayloadError("GPT header signature is not 'EFI PART'")
    header_size = _u32(data, 12, "HeaderSize")
    if header_size < 92 or header_size > len(data):
        raise PayloadError(f"GPT HeaderSize {header_size} out of bounds")
    disk = guid_str(data[56:72])
    entry_size = _u32(data, 84, "SizeOfPartitionEntry")
    off = header_size
    count = _u64(data, off, "NumberOfPartitions")
    off += 8
    if entry_size < 128 and count:
        raise PayloadError(f"GPT SizeOfPartitionEntry {entry_size} < 128")
    _need(data, off, count * entry_size, "Partitions")
    parts = []
    # count == 0 allows any SizeOfPartitionEntry, 0 included: no range(..., 0) then.
    for o in range(off, off + count * entry_size, entry_size) if count else ():
        first, last, attrs = _QQQ.unpack_from(data, o + 32)
        parts.append(
            GptPartition(
                guid_str(data[o : o + 16]),
                guid_str(data[o + 16 : o + 32]),
                first,
                last,
                attrs,
                utf16(data[o + 56 : o + 128]),
            )
        )
    return GptEvent(disk, tuple(parts))


def decode_spdm(data: bytes) -> SpdmEvent:
    if len(data) < 16:
        raise PayloadError("SPDM event shorter than its signature")
    return SpdmEvent(data[:16].rstrip(b"\x00").decode("ascii", errors="replace"), data[16:])


def _variable_decoder(event_type: int) -> Callable[[bytes], Payload]:
    def dec(data: bytes) -> Payload:
        return decode_variable(data, event_type)

    return dec


def _raw(note: str) -> Callable[[bytes], Payload]:
    def dec(data: bytes) -> Payload:
        return RawPayload(note)

    return dec


DECODERS: dict[int, Callable[[bytes], Payload]] = {
    EV_NO_ACTION: decode_no_action,
    EV_SEPARATOR: decode_separator,
    EV_ACTION: decode_text,
    EV_EFI_ACTION: decode_text,
    EV_IPL: decode_text,
    EV_POST_CODE: decode_post_code,
    EV_POST_CODE2: decode_post_code2,
    EV_S_CRTM_VERSION: decode_crtm_version,
    EV_S_CRTM_CONTENTS: decode_crtm_contents,
    EV_EVENT_TAG: decode_tagged,
    EV_EFI_VARIABLE_DRIVER_CONFIG: _variable_decoder(EV_EFI_VARIABLE_DRIVER_CONFIG),
    EV_EFI_VARIABLE_BOOT: _variable_decoder(EV_EFI_VARIABLE_BOOT),
    EV_EFI_VARIABLE_BOOT2: _variable_decoder(EV_EFI_VARIABLE_BOOT2),
    EV_EFI_VARIABLE_AUTHORITY: _variable_decoder(EV_EFI_VARIABLE_AUTHORITY),
    EV_EFI_BOOT_SERVICES_APPLICATION: decode_image_load,
    EV_EFI_BOOT_SERVICES_DRIVER: decode_image_load,
    EV_EFI_RUNTIME_SERVICES_DRIVER: decode_image_load,
    EV_EFI_PLATFORM_FIRMWARE_BLOB: decode_blob,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2: decode_blob2,
    EV_EFI_HANDOFF_TABLES: decode_handoff,
    EV_EFI_HANDOFF_TABLES2: decode_handoff2,
    EV_EFI_GPT_EVENT: decode_gpt,
    EV_EFI_GPT_EVENT2: decode_gpt,
    EV_PLATFORM_CONFIG_FLAGS: _raw("platform configuration flags (platform-specific)"),
    EV_COMPACT_HASH: _raw("compact hash (platform-specific)"),
    EV_OMIT_BOOT_DEVICE_EVENTS: decode_text,
    EV_TABLE_OF_DEVICES: _raw("table of devices (platform-specific)"),
    EV_CPU_MICROCODE: decode_text,
    EV_NONHOST_CODE: _raw("non-host code"),
    EV_NONHOST_CONFIG: _raw("non-host configuration"),
    EV_NONHOST_INFO: _raw("non-host information"),
    EV_EFI_HCRTM_EVENT: decode_text,
    EV_EFI_SPDM_FIRMWARE_BLOB: decode_spdm,
    EV_EFI_SPDM_FIRMWARE_CONFIG: decode_spdm,
    EV_EFI_SPDM_DEVICE_POLICY: decode_spdm,
    EV_EFI_SPDM_DEVICE_AUTHORITY: decode_spdm,
}


def decode_payload(event_type: int, data: bytes) -> Payload:
    """Decode one event's data; a type we do not know is kept raw, a bad payload is reported."""
    dec = DECODERS.get(event_type)
    if dec is None:
        return RawPayload(f"unknown event type 0x{event_type:08x}")
    try:
        return dec(data)
    except PayloadError as exc:
        return MalformedPayload(str(exc))
