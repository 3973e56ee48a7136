"""The node image's parts: guest kernel, root file system (squashfs + dm-verity), initramfs,
unified kernel image and EFI system partition. Each function writes into a fresh output
directory given by the caller (``build.py`` caches them by the hash of their inputs).

Everything comes from the machine's own Debian sources (``apt-get download`` + ``dpkg -x``,
debootstrap from the mirror found in the apt configuration) and PyPI (wheels built on the host).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from attest import uki

from . import prodnode

SUITE_DEFAULT = "bookworm"
EPOCH = 0  # every timestamp in the image (reproducible builds)

# Debian packages of the guest root, beyond debootstrap's minbase.
GUEST_PACKAGES = (
    "python3",
    "python3-venv",
    "dmsetup",
    "libudev1",
    "libtss2-esys-3.0.2-0",
    "libtss2-tctildr0",
    "libtss2-rc0",
    "libtss2-mu0",
    "libtss2-sys1",
    "libtss2-fapi1",
    "libtss2-tcti-device0",
    # The production shape (docs/install.md): systemd as PID 1, udev for /dev/tpmrm0's group
    # (tpm-udev: root:tss 0660) and the slot disks' names and owners.
    "systemd",
    "systemd-sysv",
    "udev",
    "tpm-udev",
)
# Paths dropped from the root before packing (docs, locales, man pages, caches).
ROOT_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/zoneinfo",
    "usr/share/common-licenses",
    "var/log",
)
# Kernel modules the initramfs loads (with their dependencies).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "dm-verity", "squashfs")
INITRD_APPLETS = (
    "sh",
    "mount",
    "modprobe",
    "insmod",
    "cat",
    "sleep",
    "ip",
    "mkdir",
    "switch_root",
    "poweroff",
    "echo",
    "sed",
    "grep",
    "mv",
    "rm",
    "sync",
    "printf",
    "sha256sum",
)
TPM2_DLOPENED = Path("/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0")

# How the node runs attest: "systemd" (production: systemd as PID 1, the shipped units as
# their own users, installed as docs/install.md says; vm_harness/prodnode.py) or "script" (the
# earlier development shape: a shell PID 1 starting attestd as root with the TPM in-process).
NODE_SHAPES = ("systemd", "script")
NODE_SHAPE_ENV = "ATTEST_VM_NODE_SHAPE"


def node_shape() -> str:
    """The node shape the harness builds: $ATTEST_VM_NODE_SHAPE, default "systemd"."""
    shape = os.environ.get(NODE_SHAPE_ENV, "systemd")
    if shape not in NODE_SHAPES:
        raise BuildError(f"{NODE_SHAPE_ENV}={shape!r}: one of {', '.join(NODE_SHAPES)}")
    return shape


GUEST_API_PORT = 7443
GUEST_MTLS_PORT = 7444  # the mutual-TLS listener: POST/GET /v1/upgrades (harness client cert)
STATE_MOUNT = "var/lib/attest-state"  # where the initramfs moves the state disk in the root
ROOT_RECIPE = 3  # bump when install_root/pack_squashfs change (part of the root step's key)
# zstd level 6: packs ~4x faster than the default 15 on two cores, a few % larger, and
# decompresses as fast.
SQUASHFS_OPTIONS = ("-comp", "zstd", "-Xcompression-level", "6", "-b", "131072")


class BuildError(RuntimeError):
    """A build step failed; the message names the step and the tool's last lines."""


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    input: bytes | None = None,
) -> str:
    """Run a tool; raise ``BuildError`` with its last lines on failure."""
    argv = [str(c) for c in cmd]
    proc = subprocess.run(argv, cwd=cwd, env=env, input=input, capture_output=True)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{out}{err}\n")
    if proc.returncode != 0:
        tail = " | ".join((err or out).strip().splitlines()[-4:])
        raise BuildError(f"{argv[0]} failed ({proc.returncode}): {tail}")
    return out


# --- Debian sources ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AptSource:
    uri: str
    suite: str


def host_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or SUITE_DEFAULT
    except OSError:
        pass
    return SUITE_DEFAULT


def parse_sources_list(text: str) -> list[AptSource]:
    """One-line ``deb URI SUITE COMPONENTS`` entries (options in brackets are skipped)."""
    out = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4 and words[0] == "deb":
            out.append(AptSource(words[1], words[2]))
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """deb822 ``.sources`` stanzas (Types, URIs, Suites); disabled stanzas are skipped."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append(AptSource(uri, suite))
    return out


def find_mirror(suite: str | None = None, *, etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror the machine's apt uses for ``suite`` (default: the host's codename),
    from ``sources.list`` and ``sources.list.d/*.list|*.sources``. Never a hard-coded host."""
    suite = suite or host_codename()
    sources: list[AptSource] = []
    files = [etc / "sources.list"]
    d = etc / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        sources += parse_deb822(text) if f.suffix == ".sources" else parse_sources_list(text)
    for s in sources:
        if s.suite == suite:
            return s.uri
    raise BuildError(f"no apt source for suite {suite!r} in {etc} (sources.list, sources.list.d)")


def apt_download(packages: Iterable[str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.deb"))
    run(["apt-get", "download", *packages], cwd=dest)
    return sorted(set(dest.glob("*.deb")) - before)


def apt_candidate(package: str) -> str:
    out = run(["apt-cache", "policy", package])
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise BuildError(f"apt knows no candidate for {package} (apt-get update?)")
    return m.group(1)


def deb_depends(deb: Path) -> list[str]:
    out = run(["dpkg-deb", "-f", str(deb), "Depends"])
    return [d.strip().split(" ")[0] for d in out.split(",") if d.strip()]


# --- kernel -----------------------------------------------------------------------------------


def fetch_kernel(out: Path, *, meta: str = "linux-image-cloud-amd64") -> tuple[Path, Path, str]:
    """Download Debian's cloud kernel (the meta package's dependency), unpack it without
    installing. Returns (vmlinuz, modules dir, kernel release)."""
    debs = out / "debs"
    [meta_deb] = apt_download([meta], debs)
    image_pkg = next(d for d in deb_depends(meta_deb) if d.startswith("linux-image-"))
    [deb] = apt_download([image_pkg], debs)
    tree = out / "tree"
    run(["dpkg-deb", "-x", str(deb), str(tree)])
    vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
    kver = vmlinuz.name.removeprefix("vmlinuz-")
    mods = tree / "lib" / "modules" / kver
    shutil.rmtree(debs)
    return vmlinuz, mods, kver


def module_closure(mods: Path, kver: str, names: Iterable[str]) -> list[str]:
    """Relative paths of the named modules and their dependencies, dependencies first
    (``busybox depmod`` writes modules.dep: the host has no kmod)."""
    if not (mods / "modules.dep").exists():
        run(["busybox", "depmod", "-b", str(mods.parents[2]), kver])
    deps: dict[str, list[str]] = {}
    for line in (mods / "modules.dep").read_text().splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod.strip()] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("_", "-"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in deps.get(path, []):
            visit(d)
        order.append(path)

    for n in names:
        key = n.replace("_", "-")
        if key not in by_name:
            continue  # built in
        visit(by_name[key])
    return order


# --- root file system -------------------------------------------------------------------------


def debootstrap_base(root: Path, *, mirror: str, suite: str, log: Path) -> None:
    """debootstrap --variant=minbase plus the guest packages, straight from the mirror."""
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(GUEST_PACKAGES)}",
            "--components=main",
            suite,
            str(root),
            mirror,
        ],
        log=log,
    )
    for p in ROOT_PRUNE:
        shutil.rmtree(root / p, ignore_errors=True)


WHEEL_PREFIX = "attest_node_integrity-"  # the distribution attest-node-integrity's wheels


def build_wheels(out: Path, *, repo: Path, log: Path, deps: bool) -> None:
    """attest's dependencies (``deps``) or attest itself as wheels, built on the host
    (tpm2-pytss from source against libtss2-dev: the guest has the same Debian release and
    libraries)."""
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            *(() if deps else ("--no-deps",)),
            "--wheel-dir",
            str(out),
            f"{repo}[node]",  # the node's dependencies: the [node] extra
        ],
        log=log,
    )
    for whl in out.glob(f"{WHEEL_PREFIX}*.whl"):
        if deps:
            whl.unlink()
    if not deps:
        for whl in out.glob("*.whl"):
            if not whl.name.startswith(WHEEL_PREFIX):
                whl.unlink()


NODE_INIT = """#!/bin/sh
# attest node: the root's first process after switch_root (PID 1). Starts attestd as the
# node's service and powers the node off if it ever exits (fail closed).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
up() { read t _ < /proc/uptime; echo "attest-node: t=$t $*" > /dev/console; }
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=0700 tmpfs /var/lib/attest
mount -t tmpfs tmpfs /tmp
mkdir -p /run/attest /run/attestd  # attestd-tpm's and attestd's runtime directories
hostname attest-node
# The state disk (mounted by the initramfs): the slot pointer, trust root, upload spool, TLS.
st=/var/lib/attest-state/attest
slot=$(sed -n 's/^ "booted": "\\([ab]\\)",$/\\1/p' $st/slots/boot.json)
echo "$slot" > /run/attest/slot
for b in /sys/block/vd*; do
  case "$(cat $b/serial 2>/dev/null)" in
    slot-a) export ATTEST_UPGRADE_SLOT_A_DEVICE=/dev/${b##*/} ;;
    slot-b) export ATTEST_UPGRADE_SLOT_B_DEVICE=/dev/${b##*/} ;;
  esac
done
mkdir -p $st/spool $st/trust
export ATTEST_UPGRADE_SLOTS_DIR=$st/slots ATTEST_UPGRADE_SPOOL_DIR=$st/spool \\
       ATTEST_REGISTRY_TRUST_DIR=$st/trust
if [ -f $st/tls/node.pem ]; then
  export ATTEST_API_CLIENT_CA=$st/tls/client-ca.pem ATTEST_API_MTLS_CERT=$st/tls/node.pem \\
         ATTEST_API_MTLS_KEY=$st/tls/node.key ATTEST_API_MTLS_PORT={mtls_port}
fi
up "root mounted (slot $slot), starting attestd"
export ATTEST_TPM_TCTI=device:/dev/tpmrm0 ATTEST_API_HOST=0.0.0.0 \\
       ATTEST_API_PORT={port} ATTEST_NODE_ID=vm-node PYTHONDONTWRITEBYTECODE=1
if grep -q attest.importtime /proc/cmdline; then
  # Diagnostic boots only (the command line is measured: such a node never attests as the
  # release): profile every import and print the 40 slowest (cumulative) to the console.
  PYTHONPROFILEIMPORTTIME=1 /opt/attest/bin/attestd {daemon_args} \
    > /dev/console 2> /run/attest/importtime.log &
  pid=$!
  ( sleep 60; echo "attest-node: import profile (us, cumulative)" > /dev/console
    /usr/local/bin/busybox grep "import time:" /run/attest/importtime.log \
      | /usr/local/bin/busybox sort -t"|" -k2 -n -r | /usr/local/bin/busybox head -45 \
      > /dev/console ) &
else
  /opt/attest/bin/attestd {daemon_args} > /dev/console 2>&1 &
  pid=$!
fi
while :; do
  wait $pid
  rc=$?
  kill -0 $pid 2>/dev/null || break
done
up "attestd exited ($rc): powering off"
/usr/local/bin/busybox poweroff -f
"""


def install_root(
    root: Path,
    *,
    wheels: Sequence[Path],
    busybox: Path,
    log: Path,
    daemon_args: str = "",
    shape: str = "systemd",
) -> None:
    """Install attest into a venv in the root (pip in a chroot, from host-built wheels only:
    docs/install.md step 3 without a network), compile bytecode that needs no mtime check, and
    add the node's init: systemd with the shipped units (``prodnode``), or the script init."""
    wdir = root / "tmp" / "wheels"
    for w in wheels:
        shutil.copytree(w, wdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.json"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    run(["chroot", str(root), "python3", "-m", "venv", "/opt/attest"], env=env, log=log)
    run(
        [
            "chroot",
            str(root),
            "/opt/attest/bin/pip",
            "install",
            "-q",
            "--no-index",
            "--no-compile",
            "--find-links",
            "/tmp/wheels",
            "attest-node-integrity[node]",  # the distribution's name (docs/install.md)
        ],
        env=env,
        log=log,
    )
    shutil.rmtree(wdir)
    run(
        ["chroot", str(root), "/opt/attest/bin/pip", "uninstall", "-q", "-y", "pip"],
        env=env,
        log=log,
    )
    # Unchecked-hash pycs: valid whatever the file times are (squashfs is packed with every
    # time set to EPOCH) and never rewritten on a read-only root.
    run(
        [
            "chroot",
            str(root),
            "python3",
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            "/opt/attest/lib",
            "/usr/lib/python3.11",
            "/usr/lib/python3/dist-packages",
        ],
        env=env,
        log=log,
    )
    (root / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "usr/local/bin/busybox")
    (root / "var/lib/attest").mkdir(parents=True, exist_ok=True)
    (root / STATE_MOUNT).mkdir(parents=True, exist_ok=True)
    (root / "etc/attest").mkdir(parents=True, exist_ok=True)
    if shape == "systemd":
        prodnode.install_production(
            root,
            port=GUEST_API_PORT,
            mtls_port=GUEST_MTLS_PORT,
            chroot=lambda argv: run(["chroot", str(root), *argv], env=env, log=log),
            host=lambda argv: run(argv, log=log),
        )
        shutil.rmtree(root / "root/.cache", ignore_errors=True)
        return
    init = root / "usr/sbin/attest-node-init"
    init.write_text(
        NODE_INIT.replace("{port}", str(GUEST_API_PORT))
        .replace("{mtls_port}", str(GUEST_MTLS_PORT))
        .replace("{daemon_args}", daemon_args)
    )
    init.chmod(0o755)
    (root / "var/lib/attest").mkdir(parents=True, exist_ok=True)
    (root / STATE_MOUNT).mkdir(parents=True, exist_ok=True)
    (root / "etc/attest").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "root/.cache", ignore_errors=True)


def pack_squashfs(root: Path, out: Path, *, log: Path) -> None:
    """squashfs-zstd, reproducible (fixed times, root-owned), padded to 4 KiB blocks."""
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    run(
        [
            "mksquashfs",
            str(root),
            str(out),
            *SQUASHFS_OPTIONS,
            "-noappend",
            "-all-root",
            "-no-progress",
            "-quiet",
            "-mkfs-time",
            str(EPOCH),
            "-all-time",
            str(EPOCH),
            "-no-xattrs",
        ],
        env=env,
        log=log,
    )
    size = out.stat().st_size
    pad = (-size) % 4096
    if pad:
        with out.open("ab") as fh:
            fh.write(bytes(pad))


@dataclass(frozen=True, slots=True)
class VerityImage:
    path: Path
    data_size: int  # the hash tree starts here (--hash-offset)
    root_hash: str
    salt: str


def add_verity(image: Path, *, salt: str, log: Path) -> VerityImage:
    """Append a dm-verity hash tree to ``image`` (format 1, sha256, 4 KiB blocks, no
    superblock: the layout the upgrade gate writes to a slot,
    ``attest.node.upgrade.slots.seal_slot``)."""
    data_size = image.stat().st_size
    out = run(
        [
            "veritysetup",
            "format",
            str(image),
            str(image),
            f"--hash-offset={data_size}",
            "--no-superblock",
            f"--salt={salt}",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            "--hash=sha256",
        ],
        log=log,
    )
    m = re.search(r"Root hash:\s*([0-9a-f]{64})", out)
    if not m:
        raise BuildError(f"veritysetup printed no root hash: {out[-200:]}")
    return VerityImage(image, data_size, m.group(1), salt)


# --- initramfs --------------------------------------------------------------------------------

# A/B slot chooser of the initramfs: ``attest.node.upgrade.slots.SlotStore.boot`` (verify=False:
# dm-verity
# checks the bytes as they are read) in busybox sh over the pointer slots.py writes (its shape is
# a contract: slots.py's module docstring). Sourced by /init; tests/vm/test_loader.py runs it
# against slots.py. ``choose FILE`` sets ``slot``, ``reason`` and the slot's parameters
# (``roothash salt size blocks alg dbs hbs version``) and records the boot in FILE (atomically:
# temp file, sync, rename, sync); it returns 1 with ``why`` set when the pointer is unusable.
LOADER_CHOOSER = r"""
ptr_get() {  # FILE KEY: a top-level member's value, quotes removed
  sed -n "s/^ \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$1"
}
slot_get() {  # FILE SLOT KEY: a member of the slot's entry or of its verity parameters
  q='"\{0,1\}'  # an optional quote
  sed -n "/^  \"$2\": {\$/,/^  }/s/^    \{0,1\}\"$3\": $q\([^\",]*\)$q,\{0,1\}\$/\1/p" "$1"
}
slot_null() { grep -q "^  \"$2\": null,\{0,1\}\$" "$1"; }
is_num() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
is_hex() { case "$1" in ''|*[!0-9a-f]*) return 1 ;; esac; }
ptr_set() {  # FILE KEY JSON ...: rewrite top-level members and generation + 1, atomically
  f=$1; shift
  : > "$f.loader.sed"
  while [ $# -gt 1 ]; do
    echo "s/^\( \"$1\": \)[^,]*\(,\{0,1\}\)\$/\1$2\2/" >> "$f.loader.sed"; shift 2
  done
  echo "s/^\( \"generation\": \)[0-9]*/\1$((gen + 1))/" >> "$f.loader.sed"
  sed -f "$f.loader.sed" "$f" > "$f.loader.tmp" && sync && mv "$f.loader.tmp" "$f" && sync \
    || { why="cannot record the boot in $f"; return 1; }
  rm -f "$f.loader.sed"
}
slot_params() {  # FILE SLOT: the slot's verity parameters, checked
  roothash=$(slot_get "$1" "$2" root_hash); salt=$(slot_get "$1" "$2" salt)
  size=$(slot_get "$1" "$2" size); blocks=$(slot_get "$1" "$2" data_blocks)
  alg=$(slot_get "$1" "$2" hash_algorithm); dbs=$(slot_get "$1" "$2" data_block_size)
  hbs=$(slot_get "$1" "$2" hash_block_size); version=$(slot_get "$1" "$2" version)
  [ "$(slot_get "$1" "$2" format)" = 1 ] || { why="slot $2: verity format is not 1"; return 1; }
  is_hex "$roothash" && [ ${#roothash} -eq 64 ] || { why="slot $2: bad root hash"; return 1; }
  is_hex "$salt" || [ "$salt" = "" ] || { why="slot $2: bad salt"; return 1; }
  [ "$alg" = sha256 ] || { why="slot $2: hash $alg (only sha256 is measured)"; return 1; }
  is_num "$size" && is_num "$blocks" && is_num "$dbs" && is_num "$hbs" \
    || { why="slot $2: bad sizes"; return 1; }
  [ $((blocks * dbs)) -eq "$size" ] || { why="slot $2: size is not data_blocks x block"; return 1; }
}
choose() {  # FILE
  slot=; why=
  choose_ "$1" || { slot=; return 1; }
}
choose_() {
  p=$1
  [ -f "$p" ] || { why="no boot pointer $p"; return 1; }
  [ "$(ptr_get "$p" format)" = 1 ] || { why="boot pointer $p: not format 1"; return 1; }
  active=$(ptr_get "$p" active); pending=$(ptr_get "$p" pending)
  booted=$(ptr_get "$p" booted); tries=$(ptr_get "$p" tries); gen=$(ptr_get "$p" generation)
  case "$active" in a|b) ;; *) why="boot pointer: active slot '$active'"; return 1 ;; esac
  case "$pending" in a|b|null) ;; *) why="boot pointer: pending slot '$pending'"; return 1 ;; esac
  case "$booted" in a|b|null) ;; *) why="boot pointer: booted slot '$booted'"; return 1 ;; esac
  is_num "$tries" && is_num "$gen" || { why="boot pointer: tries/generation"; return 1; }
  [ "$pending" != "$active" ] || { why="boot pointer: pending = active"; return 1; }
  fell_back=
  if [ "$pending" != null ]; then
    if [ "$tries" -gt 0 ] && ! slot_null "$p" "$pending"; then
      slot=$pending
      slot_params "$p" "$slot" || return 1
      ptr_set "$p" tries $((tries - 1)) booted "\"$slot\"" || return 1
      reason="trying staged slot $slot ($version), $((tries - 1)) tries left"
      return 0
    fi
    if [ "$tries" -le 0 ]; then fell_back="staged slot $pending was not confirmed"
    else fell_back="staged slot $pending does not verify"; fi
  fi
  if ! slot_null "$p" "$active"; then
    slot=$active
    slot_params "$p" "$slot" || return 1
    if [ -n "$fell_back" ]; then
      ptr_set "$p" pending null tries 0 booted "\"$slot\"" || return 1
    elif [ "$booted" != "$slot" ]; then
      ptr_set "$p" booted "\"$slot\"" || return 1
    fi
    reason=${fell_back:-"active slot $slot ($version)"}
    return 0
  fi
  [ "$active" = a ] && slot=b || slot=a
  slot_null "$p" "$slot" && { why="no slot to boot in $p"; return 1; }
  slot_params "$p" "$slot" || return 1
  ptr_set "$p" active "\"$slot\"" pending null tries 0 booted "\"$slot\"" || return 1
  reason="active slot $active does not verify"
}
"""

# The bytes measured into PCR 15 before switch_root: one TPM2_PCR_Extend of the sha256 bank
# with SHA-256(ASCII "attest-verity-root:" + the chosen slot's root hash, 64 lower-case hex
# digits). ``pcr15`` predicts the PCR from a root hash.
VERITY_PCR = 15
VERITY_EVENT_PREFIX = b"attest-verity-root:"

INITRAMFS_INIT = r"""#!/bin/sh
# attest initramfs: choose the boot slot (A/B pointer on the state disk), measure its dm-verity
# root hash into PCR 15, open it fail-closed and switch to it. Nothing from a slot runs before
# the measurement; anything unreadable powers the node off.
export PATH=/bin:/sbin:/usr/sbin:/usr/bin DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { read t _ < /proc/uptime; echo "attest-init: t=$t $*" > /dev/console; }
die() { up "FAIL-CLOSED: $*"; sleep 1; poweroff -f; exit 1; }
{chooser}
disk() {  # the virtio disk whose serial is $1 (waits up to 10 s for it to appear)
  i=0
  while [ $i -lt 100 ]; do
    for b in /sys/block/vd*; do
      [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && { echo /dev/${b##*/}; return 0; }
    done
    sleep 0.1; i=$((i+1))
  done
  return 1
}
up "initramfs"
for m in {modules}; do modprobe "$m" || die "module $m"; done
state=$(disk state) || die "no state disk"
mkdir -p /state
mount -t ext4 -o rw,nosuid,nodev,noexec "$state" /state || die "mount the state disk $state"
choose /state/attest/slots/boot.json || die "$why"
up "slot $slot: $reason"
dev=$(disk slot-$slot) || die "no disk for slot $slot"
event=$(printf 'attest-verity-root:%s' "$roothash" | sha256sum) && event=${event%% *}
TPM2TOOLS_TCTI=device:/dev/tpmrm0 tpm2 pcrextend "15:sha256=$event" \
  || die "could not measure the root hash into PCR 15"
# --panic-on-corruption: a block that does not match the tree stops the node (panic=-1 and
# QEMU's -no-reboot end it) instead of being read past or retried.
veritysetup open "$dev" root "$dev" "$roothash" --no-superblock --format=1 --hash="$alg" \
  --data-block-size="$dbs" --hash-block-size="$hbs" --data-blocks="$blocks" --salt="$salt" \
  --hash-offset="$size" --panic-on-corruption || die "veritysetup open $dev"
up "verity root open: $dev slot $slot roothash $roothash (PCR 15 extended)"
mkdir -p /newroot
mount -t squashfs -o ro /dev/mapper/root /newroot || die "mount the verity root"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
up "switch_root"
mount --move /state /newroot/{state_mount} || die "move the state disk into the root"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot {init}
""".replace("{chooser}", LOADER_CHOOSER.strip()).replace("{state_mount}", STATE_MOUNT)
# The root's first process, by node shape (systemd-sysv's /sbin/init is systemd).
ROOT_INIT = {"systemd": "/sbin/init", "script": "/usr/sbin/attest-node-init"}


def pcr15(root_hash: str) -> str:
    """PCR 15 (sha256) after the initramfs measured the slot with this root hash (hex)."""
    event = hashlib.sha256(VERITY_EVENT_PREFIX + root_hash.encode()).digest()
    return hashlib.sha256(bytes(32) + event).hexdigest()


def _copy_with_libs(binary: Path, dest_root: Path) -> None:
    """Copy a dynamically linked host binary and the libraries ldd names."""
    target = dest_root / binary.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, target)
    out = run(["ldd", str(binary)])
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if not m:
            continue
        lib = Path(m.group(1))
        real = lib.resolve()
        t = dest_root / lib.relative_to("/")
        t.parent.mkdir(parents=True, exist_ok=True)
        if not t.exists():
            shutil.copy2(real, t)


def build_initramfs(
    out: Path,
    *,
    mods: Path,
    kver: str,
    busybox: Path,
    veritysetup: Path,
    tpm2: Path,
    work: Path,
    shape: str = "systemd",
) -> Path:
    """A reproducible newc cpio (sorted names, every time EPOCH, root-owned), gzip -n."""
    tree = work / "initramfs"
    if tree.exists():
        shutil.rmtree(tree)
    for d in (
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "newroot",
        "state",
        "lib",
        "lib64",
        "usr",
        "run",
    ):
        (tree / d).mkdir(parents=True)
    shutil.copy2(busybox, tree / "bin/busybox")
    for applet in INITRD_APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    _copy_with_libs(veritysetup, tree)
    # tpm2-tools (PCR 15) and the TCTI its loader dlopens (ldd does not name it; its own
    # libraries, libtss2-mu and libc, are tpm2's too).
    _copy_with_libs(tpm2, tree)
    shutil.copy2(TPM2_DLOPENED.resolve(), tree / "lib/x86_64-linux-gnu" / TPM2_DLOPENED.name)
    modroot = tree / "lib/modules" / kver
    for rel in module_closure(mods, kver, INITRD_MODULES):
        t = modroot / rel
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mods / rel, t)
    run(["busybox", "depmod", "-b", str(tree), kver])
    init = tree / "init"
    init.write_text(
        INITRAMFS_INIT.replace("{modules}", " ".join(INITRD_MODULES)).replace(
            "{init}", ROOT_INIT[shape]
        )
    )
    init.chmod(0o755)
    return pack_cpio(tree, out)


def pack_cpio(tree: Path, out: Path) -> Path:
    paths = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    for p in [tree, *(tree / q for q in paths)]:
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    data = run_bytes(
        ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
        cwd=tree,
        input="\n".join([".", *paths]).encode() + b"\n",
    )
    with (
        out.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=EPOCH, filename="", compresslevel=6) as gz,
    ):
        gz.write(data)
    return out


def run_bytes(cmd: Sequence[str], *, cwd: Path, input: bytes) -> bytes:
    proc = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True)
    if proc.returncode != 0:
        raise BuildError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return proc.stdout


# --- unified kernel image + ESP ---------------------------------------------------------------


def build_uki(
    out: Path, *, stub: Path, linux: Path, initrd: Path, cmdline: str, osrel: str
) -> Path:
    """objcopy the sections onto systemd-stub at page-aligned addresses past the stub, then
    zero the PE timestamp (objcopy stamps the current time): byte-for-byte reproducible."""
    work = out.parent
    parts = {".osrel": osrel.encode(), ".cmdline": cmdline.encode()}
    files = {}
    for name, data in parts.items():
        f = work / f"uki{name}"
        f.write_bytes(data)
        files[name] = f
    files[".linux"] = linux
    files[".initrd"] = initrd
    pe = uki.parse_pe(stub.read_bytes())
    align = 0x1000
    addr = pe.image_base + ((pe.end_of_image + align - 1) // align) * align
    args = ["objcopy"]
    for name in (".osrel", ".cmdline", ".linux", ".initrd"):
        size = files[name].stat().st_size
        args += [
            "--add-section",
            f"{name}={files[name]}",
            "--change-section-vma",
            f"{name}={addr:#x}",
            "--set-section-flags",
            f"{name}=data,readonly",
        ]
        addr += ((size + align - 1) // align) * align
    tmp = work / "uki.tmp"
    run([*args, str(stub), str(tmp)])
    out.write_bytes(uki.with_timestamp(tmp.read_bytes(), EPOCH))
    tmp.unlink()
    for name in (".osrel", ".cmdline"):
        files[name].unlink()
    return out


def build_esp(out: Path, *, efi: Path, size_mib: int = 64) -> Path:
    """A FAT ESP image with the UKI at the removable-media path EFI/BOOT/BOOTX64.EFI."""
    with out.open("wb") as fh:
        fh.truncate(size_mib << 20)
    run(["mkfs.vfat", "-F", "32", "-n", "ESP", "-i", "a77e5701", str(out)])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(EPOCH)}
    run(["mmd", "-i", str(out), "::EFI", "::EFI/BOOT"], env=env)
    run(["mcopy", "-i", str(out), str(efi), "::EFI/BOOT/BOOTX64.EFI"], env=env)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- the state disk ---------------------------------------------------------------------------


def build_state_disk(out: Path, *, files: dict[str, tuple[bytes, int]], size_mib: int) -> Path:
    """The node's writable state disk: ext4 (built into the cloud kernel), populated from
    ``files`` (path in the disk -> (bytes, mode)) with ``mkfs.ext4 -d``, every file root-owned.
    The disk image is sparse: its size costs nothing until the guest writes."""
    tree = out.parent / (out.name + ".tree")
    shutil.rmtree(tree, ignore_errors=True)
    for rel, (data, mode) in files.items():
        f = tree / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        f.chmod(mode)
    tree.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "attest-state",
            "-E",
            "root_owner=0:0",
            "-d",
            str(tree),
            str(out),
            f"{size_mib}M",
        ]
    )
    shutil.rmtree(tree)
    return out


def read_state_file(disk: Path, rel: str) -> bytes | None:
    """A file of the state disk as the guest would see it after a crash: a sparse copy of the
    disk, its ext4 journal replayed (``e2fsck -E journal_only``), the file read with
    ``debugfs``. Works while the guest runs (a crash-consistent view). None: no such file."""
    with tempfile.TemporaryDirectory(prefix="attest-state-") as d:
        copy = Path(d) / "state.img"
        run(["cp", "--sparse=always", str(disk), str(copy)])
        subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(copy)], capture_output=True)
        proc = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(copy)], capture_output=True)
        if proc.returncode != 0 or b"File not found" in proc.stderr:
            return None
        return proc.stdout
