"""Daemon configuration: one typed ``Settings`` object from a TOML file and ``ATTEST_``
environment variables, validated once at start-up. A bad value fails with its key's name.

Environment variables override the file: ``ATTEST_<SECTION>_<KEY>``, e.g. ``ATTEST_API_PORT=7443``
or ``ATTEST_TPM_TCTI=swtpm:host=127.0.0.1,port=2321``. See docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attest.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # attestd's TOML file: a few KiB; /dev/zero is refused, not read


@dataclass(frozen=True, slots=True)
class TpmSettings:
    broker_socket: str = "/run/attest/tpm.sock"
    # When set, attestd runs the node services in-process over this TCTI instead of talking to
    # attestd-tpm: for development and demos only (the API process then holds the TPM).
    tcti: str = ""
    ak_type: str = "ecc256"
    runtime_pcr: int = 13
    state_dir: str = "/var/lib/attest"


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 7443
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""  # enables the mutual-TLS listener for mutating endpoints
    mtls_port: int = 7444
    # The mutual-TLS listener's own certificate and key (default: tls_cert/tls_key). With
    # these alone the public listener stays plain HTTP (evidence is signed by the TPM).
    mtls_cert: str = ""
    mtls_key: str = ""
    # attestd's own RuntimeDirectory= (attestd.service): /run/attest is attestd-tpm's.
    operator_socket: str = "/run/attestd/api.sock"
    max_request_bytes: int = 65536
    max_upload_bytes: int = 8 << 30  # POST /v1/upgrades, streamed to disk
    rate_per_second: float = 200.0  # per client address
    rate_burst: int = 400
    # Reverse proxies (IP addresses or CIDR networks, comma-separated) whose X-Forwarded-For
    # and X-Forwarded-Proto the public listener believes: the rate limit then counts the
    # forwarded client. Empty (the default): forwarded headers are ignored, so that no local
    # process can pick the address it is counted under.
    trusted_proxies: str = ""
    batching: bool = True
    max_batch: int = 4096
    max_waiting: int = 20000


@dataclass(frozen=True, slots=True)
class LogSettings:
    # Development mode only (tpm.tcti: the node services run in-process). With attestd-tpm,
    # attestd reads neither file: the broker reads its own --firmware-log / --cmdline.
    firmware_log: str = "/sys/kernel/security/tpm0/binary_bios_measurements"
    max_firmware_log_bytes: int = 4 << 20
    # The kernel command line, sent with evidence: the Linux EFI stub measures only its digest
    # (PCR 9), so a verifier needs the text to explain a change (it checks it against PCR 9).
    cmdline: str = "/proc/cmdline"


@dataclass(frozen=True, slots=True)
class ImageSettings:
    version_file: str = "/etc/attest/image-version"
    slot_file: str = "/run/attest/slot"


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    # The node's locally trusted blessed registry (trust root + snapshot,
    # attest.storage.trusted_state)
    # used by the self-appraisal in /v1/status and by the upgrade gate.
    trust_dir: str = "/var/lib/attest/trust"


@dataclass(frozen=True, slots=True)
class UpgradeSettings:
    # POST /v1/upgrades (docs/upgrade.md). attestd streams uploads into spool_dir; with the
    # broker (production) attestd-tpm opens them there and runs the gate (its --spool-dir
    # must name the same directory; docs/daemon-hardening.md has the layout). The other keys
    # are for the in-process gate of development mode (tpm.tcti): attestd-tpm takes them as
    # its own options (--slots-dir, --slot-device, --nv-index; trust dir: registry.trust_dir).
    enabled: bool = True
    spool_dir: str = "/var/lib/attest/spool"
    slots_dir: str = "/var/lib/attest/slots"
    slot_a_device: str = ""  # a block device instead of slots_dir/slot-a.img
    slot_b_device: str = ""
    slot_capacity: int = 4 << 30  # size of a file slot
    nv_index: int = 0x01000A77


@dataclass(frozen=True, slots=True)
class SnpSettings:
    # In an SEV-SNP guest: answer each challenge with an SEV-SNP report too (the evidence's
    # ``snp`` member; docs/snp.md, "Guest evidence"). attestd-tpm asks the AMD-SP for it
    # (its --snp-guest names the interface); in development mode (tpm.tcti) attestd does,
    # through ``device`` (configfs[:ROOT], sev-guest[:DEVICE] or fake:DIR).
    enabled: bool = False
    device: str = "configfs"
    # An SEV-SNP guest without a (v)TPM (docs/snp.md, "A guest without a vTPM"): evidence is
    # the report alone (``attest.evidence.snp_only_members``), through an attestd-tpm that runs
    # with --no-tpm. Implies ``enabled``; needs ``node_id`` (there is no AK to name the node).
    only: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    node_id: str = ""
    tpm: TpmSettings = field(default_factory=TpmSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    upgrade: UpgradeSettings = field(default_factory=UpgradeSettings)
    snp: SnpSettings = field(default_factory=SnpSettings)

    def validate(self) -> Settings:
        if self.snp.only and not self.snp.enabled:  # [snp] only implies [snp] enabled
            return dataclasses.replace(
                self, snp=dataclasses.replace(self.snp, enabled=True)
            ).validate()
        if self.snp.only and self.tpm.tcti:
            raise ConfigError(
                "an SEV-SNP guest without a TPM has no TCTI (tpm.tcti is set): run attestd-tpm "
                "--no-tpm",
                key="snp.only",
            )
        if self.snp.only and not self.node_id:
            raise ConfigError(
                "an SEV-SNP guest without a TPM has no AK to name it: set node_id",
                key="node_id",
            )
        if not 0 <= self.tpm.runtime_pcr <= 15:
            # 16 and 23 are resettable from locality 0, 17-22 are DRTM: a runtime log in
            # them could be reset and replayed (docs/runtime-log.md).
            raise ConfigError("must be a non-resettable PCR, 0..15", key="tpm.runtime_pcr")
        if self.tpm.ak_type not in ("ecc256", "ecc384", "rsa2048", "rsa2048-pss"):
            raise ConfigError(f"unknown AK type {self.tpm.ak_type!r}", key="tpm.ak_type")
        try:
            ipaddress.ip_address(self.api.host)
        except ValueError:
            raise ConfigError(f"{self.api.host!r} is not an IP address", key="api.host") from None
        for key, port in (("api.port", self.api.port), ("api.mtls_port", self.api.mtls_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{port} is not a TCP port", key=key)
        if bool(self.api.tls_cert) != bool(self.api.tls_key):
            raise ConfigError("tls_cert and tls_key go together", key="api.tls_cert")
        if bool(self.api.mtls_cert) != bool(self.api.mtls_key):
            raise ConfigError("mtls_cert and mtls_key go together", key="api.mtls_cert")
        if self.api.client_ca and not (self.api.tls_cert or self.api.mtls_cert):
            raise ConfigError(
                "mutual TLS needs tls_cert and tls_key (or mtls_cert and mtls_key)",
                key="api.client_ca",
            )
        if not 1024 <= self.api.max_request_bytes <= 1 << 30:
            raise ConfigError("must be 1 KiB..1 GiB", key="api.max_request_bytes")
        if self.api.rate_per_second <= 0 or self.api.rate_burst < 1:
            raise ConfigError("must be positive", key="api.rate_per_second")
        for proxy in self.trusted_proxy_list():
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{proxy!r} is not an IP address or network", key="api.trusted_proxies"
                ) from None
        if not 1 <= self.api.max_batch <= 1 << 16:
            raise ConfigError("must be 1..65536", key="api.max_batch")
        if not 0x01000000 <= self.upgrade.nv_index <= 0x013FFFFF:
            raise ConfigError(
                "must be an owner NV index, 0x01000000..0x013fffff", key="upgrade.nv_index"
            )
        if self.upgrade.slot_capacity < 4096:
            raise ConfigError("must be at least 4096 bytes", key="upgrade.slot_capacity")
        if not os.path.isabs(self.upgrade.spool_dir):
            raise ConfigError("must be an absolute path", key="upgrade.spool_dir")
        if len(self.node_id) > 128:
            raise ConfigError("at most 128 characters", key="node_id")
        return self

    def trusted_proxy_list(self) -> list[str]:
        return [p.strip() for p in self.api.trusted_proxies.split(",") if p.strip()]


_SECTIONS = {
    "tpm": TpmSettings,
    "api": ApiSettings,
    "logs": LogSettings,
    "image": ImageSettings,
    "registry": RegistrySettings,
    "upgrade": UpgradeSettings,
    "snp": SnpSettings,
}


def _coerce(value: Any, to: type, key: str) -> Any:
    if to is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{value!r} is not a boolean", key=key)
    if to is int:
        if isinstance(value, bool):
            raise ConfigError(f"{value!r} is not an integer", key=key)
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
        try:  # 0x... in the environment (TOML has hex integers of its own)
            return int(value, 0) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{value!r} is not an integer", key=key) from None
    if to is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{value!r} is not a number", key=key) from None
    if not isinstance(value, str):
        raise ConfigError(f"{value!r} is not a string", key=key)
    return value


def _field_types(cls: type) -> dict[str, type]:
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: hints[str(f.type)] for f in dataclasses.fields(cls)}


DEFAULT_CONFIG = "/etc/attest/attestd.toml"

# ATTEST_* variables that belong to other programs (the verifier CLI, the fleet, the VM
# harness) and so are not attestd's to refuse; every other ATTEST_* variable must be a setting.
_OTHER_PROGRAMS = ("ATTEST_FLEET_", "ATTEST_VERIFIER_", "ATTEST_VM_")


def config_path(explicit: str | None, env: Mapping[str, str]) -> str | None:
    """The configuration file attestd reads: ``--config``, else ``ATTEST_CONFIG``, else
    ``/etc/attest/attestd.toml`` when it exists (packages install it), else none (defaults)."""
    if explicit:
        return explicit
    if env.get("ATTEST_CONFIG"):
        return env["ATTEST_CONFIG"]
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def _check_environment(env: Mapping[str, str]) -> None:
    """Refuse an ``ATTEST_*`` variable that names no setting (a typo must not be ignored)."""
    known = {"ATTEST_CONFIG", "ATTEST_NODE_ID"}
    for name, cls in _SECTIONS.items():
        known |= {f"ATTEST_{name.upper()}_{k.upper()}" for k in _field_types(cls)}
    for var in sorted(env):
        if var.startswith("ATTEST_") and var not in known and not var.startswith(_OTHER_PROGRAMS):
            raise ConfigError("unknown environment variable (no such setting)", key=var)


def load_settings(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any), apply ``ATTEST_*`` overrides, validate. An unknown TOML
    key or ``ATTEST_*`` variable is refused with its name."""
    env = os.environ if environ is None else environ
    _check_environment(env)
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="config") from None
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes", key="config")
        try:
            doc = tomllib.loads(data.decode())
        # TOMLDecodeError, UnicodeDecodeError, an integer over Python's digit limit are
        # ValueErrors; deeply nested arrays or tables exhaust the parser's recursion.
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", key="config") from None
    unknown = set(doc) - set(_SECTIONS) - {"node_id"}
    if unknown:
        raise ConfigError("unknown setting", key=sorted(unknown)[0])
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        raw = doc.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError("must be a table", key=name)
        types = _field_types(cls)
        bad = set(raw) - set(types)
        if bad:
            raise ConfigError("unknown setting", key=f"{name}.{sorted(bad)[0]}")
        values = {k: _coerce(v, types[k], f"{name}.{k}") for k, v in raw.items()}
        for k, t in types.items():
            env_key = f"ATTEST_{name.upper()}_{k.upper()}"
            if env_key in env:
                values[k] = _coerce(env[env_key], t, f"{name}.{k}")
        sections[name] = cls(**values)
    node_id = _coerce(env.get("ATTEST_NODE_ID", doc.get("node_id", "")), str, "node_id")
    return Settings(node_id=node_id, **sections).validate()


def settings_digest(settings: Settings) -> str:
    """The digest of the loaded configuration, recorded in the runtime log (``config`` event)
    by attestd and computed by ``attest manifest config-digest`` for a release to bless: sha256
    of its JSON with sorted keys and no white space (docs/configuration.md)."""
    doc = json.dumps(dataclasses.asdict(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()
