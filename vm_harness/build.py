"""Build a node image, step by step, each step cached under ``.work/vm/cache`` by the hash of
its inputs, with a progress line (and its time) per step.

Steps: kernel (Debian cloud kernel, unpacked) -> base root (debootstrap) -> wheels (attest +
dependencies, built on the host) -> root (venv + bytecode + node init, squashfs + dm-verity)
-> initramfs -> UKI (systemd-stub + objcopy, reproducible) -> ESP (FAT, mtools).
The result is a ``NodeImage`` (``image.json`` in its directory).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attest import uki

from . import REPO, WORK, prodnode
from . import image as im

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
BUSYBOX = Path("/bin/busybox")
VERITYSETUP = Path("/usr/sbin/veritysetup")
TPM2 = Path("/usr/bin/tpm2")  # tpm2-tools: the initramfs extends PCR 15 with it
BUILD_TOOLS = (
    "debootstrap",
    "mksquashfs",
    "veritysetup",
    "objcopy",
    "mkfs.vfat",
    "mcopy",
    "cpio",
    "busybox",
    "apt-get",
    "dpkg-deb",
    "chroot",
    "mkfs.ext4",
    "e2fsck",
    "debugfs",
)
FORMAT = 4  # bump to invalidate every cached step
PLATFORM_ID = "attest-vm-harness-q35"  # firmware_manifests/platforms/<id>.json
CMDLINE = "console=ttyS0 panic=-1 quiet"
OSREL = 'NAME="attest node"\nID=attest-node\nPRETTY_NAME="attest node"\n'


RELEASE_SEQUENCES = {"1.0.0": 1, "1.1.0": 2}  # the harness's releases, in order


def release_sequence(version: str) -> int:
    """The registry's release number of a harness release. Small: the upgrade gate counts a
    new TPM NV counter up to the installed sequence one increment at a time."""
    if version in RELEASE_SEQUENCES:
        return RELEASE_SEQUENCES[version]
    major, minor, patch = (int(x) for x in version.split("."))
    return major * 100 + minor * 10 + patch


def say(msg: str) -> None:
    print(f"[vm build] {msg}", file=sys.stderr, flush=True)


def _h(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(
            json.dumps(p, sort_keys=True, default=str).encode() if not isinstance(p, bytes) else p
        )
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_h(path: Path) -> str:
    return im.sha256_file(path)[:16]


def _tree_h(root: Path) -> str:
    """Every file of the tree that goes into the wheel: the package data too (the units,
    sysusers.d, tmpfiles.d, the EK roots), not only the Python sources."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if (
            not p.is_file()
            or p.suffix == ".pyc"
            or any(
                part in (".venv", ".work", "__pycache__", "tests", "bench")
                for part in p.relative_to(root).parts
            )
        ):
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


class Cache:
    KEEP = 3  # entries per step kept (the newest): other versions and recent source trees

    def __init__(self, root: Path) -> None:
        self.root = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)

    def prune(self) -> None:
        """Drop all but the newest KEEP entries of each step (the source tree changes often)."""
        by_step: dict[str, list[Path]] = {}
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith(".") and (d / "step.json").exists():
                by_step.setdefault(d.name.rsplit("-", 1)[0], []).append(d)
        for entries in by_step.values():
            entries.sort(key=lambda p: (p / "step.json").stat().st_mtime, reverse=True)
            for old in entries[self.KEEP :]:
                shutil.rmtree(old, ignore_errors=True)

    def step(
        self, name: str, key: str, make: Callable[[Path], dict[str, Any]]
    ) -> tuple[Path, dict[str, Any]]:
        out = self.root / f"{name}-{key}"
        meta_file = out / "step.json"
        if meta_file.exists():
            say(f"{name:<10} cached ({out.name})")
            return out, json.loads(meta_file.read_text())
        tmp = self.root / f".{name}-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        say(f"{name:<10} building ...")
        t0 = time.monotonic()
        meta = make(tmp)
        meta["seconds"] = round(time.monotonic() - t0, 1)
        (tmp / "step.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        say(f"{name:<10} done in {meta['seconds']:.1f} s ({out.name})")
        return out, meta


@dataclass(frozen=True, slots=True)
class NodeImage:
    """A built release: the ESP (with the UKI), the root with its verity tree, and what a
    verifier needs to know about it."""

    version: str
    directory: str
    esp: str
    uki: str
    root: str  # squashfs + hash tree at data_size
    root_sha256: str  # sha256 of the squashfs (what is blessed)
    root_size: int
    verity_root_hash: str
    verity_salt: str
    cmdline: str
    expected_pcrs: dict[str, dict[str, str]]  # {"sha256": {"4": hex, "9", "11", "12", "15"}}
    kernel_release: str
    build_seconds: float

    @classmethod
    def load(cls, path: Path) -> NodeImage:
        return cls(**json.loads(path.read_text()))


def check_tools() -> list[str]:
    return [t for t in BUILD_TOOLS if shutil.which(t) is None] + [
        str(p) for p in (STUB, BUSYBOX, VERITYSETUP, TPM2, im.TPM2_DLOPENED) if not p.exists()
    ]


def build(*, version: str = "1.0.0", work: Path = WORK, suite: str | None = None) -> NodeImage:
    """Build (or take from the cache) the node image of ``version``."""
    missing = check_tools()
    if missing:
        raise im.BuildError(f"missing build tools: {', '.join(missing)} (see docs/vm-harness.md)")
    t0 = time.monotonic()
    cache = Cache(work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / "build.log"
    log.write_text("")  # this build's tool output (the last build's only)
    suite = suite or im.host_codename()
    mirror = im.find_mirror(suite)

    kver_pkg = im.apt_candidate("linux-image-cloud-amd64")
    kdir, kmeta = cache.step("kernel", _h(FORMAT, kver_pkg), lambda d: _kernel(d))
    kernel_key = f"{kver_pkg}"

    base_key = _h(FORMAT, suite, mirror, im.GUEST_PACKAGES, im.ROOT_PRUNE)
    bdir, _ = cache.step("base", base_key, lambda d: _base(d, mirror, suite, log))

    # Dependencies (tpm2-pytss built from source, ~1 min) change with pyproject.toml only;
    # attest's own wheel with its source tree.
    deps_key = _h(FORMAT, _file_h(REPO / "pyproject.toml"), sys.version_info[:2])
    ddir, _ = cache.step("deps", deps_key, lambda d: _wheels(d, log, deps=True))
    src_key = _h(FORMAT, _tree_h(REPO / "src"), _file_h(REPO / "pyproject.toml"))
    wdir, _ = cache.step("attest", src_key, lambda d: _wheels(d, log, deps=False))

    shape = im.node_shape()
    root_key = _h(
        FORMAT,
        shape,
        _file_h(Path(prodnode.__file__)) if shape == "systemd" else "",
        base_key,
        deps_key,
        src_key,
        im.NODE_INIT,
        _file_h(BUSYBOX),
        version,
        im.SQUASHFS_OPTIONS,
        im.ROOT_RECIPE,
    )
    rdir, rmeta = cache.step(
        "root", root_key, lambda d: _root(d, bdir, (ddir, wdir), version, log, shape)
    )

    initrd_key = _h(
        FORMAT,
        im.ROOT_INIT[shape],
        kernel_key,
        im.INITRAMFS_INIT,
        im.INITRD_MODULES,
        im.INITRD_APPLETS,
        _file_h(BUSYBOX),
        _file_h(VERITYSETUP),
        _file_h(TPM2),
        _file_h(im.TPM2_DLOPENED),
    )
    idir, _ = cache.step("initramfs", initrd_key, lambda d: _initramfs(d, kdir, kmeta, log, shape))

    # The UKI is shared by both slots (the gate upgrades slots, not the ESP): nothing in it
    # names a release. The initramfs picks the slot and measures its root hash into PCR 15.
    cmdline = CMDLINE
    osrel = OSREL
    uki_key = _h(
        FORMAT,
        _file_h(STUB),
        kernel_key,
        initrd_key,
        cmdline,
        osrel,
        _file_h(Path(uki.__file__)),
        _file_h(Path(im.__file__)),
    )
    udir, umeta = cache.step("uki", uki_key, lambda d: _uki(d, kdir, kmeta, idir, cmdline, osrel))

    esp_key = _h(FORMAT, uki_key)
    edir, _ = cache.step("esp", esp_key, lambda d: _esp(d, udir))

    cache.prune()
    out = work / "images" / version
    out.mkdir(parents=True, exist_ok=True)
    node = NodeImage(
        version=version,
        directory=str(out),
        esp=str(edir / "esp.img"),
        uki=str(udir / "attest.efi"),
        root=str(rdir / "root.img"),
        root_sha256=rmeta["sha256"],
        root_size=rmeta["data_size"],
        verity_root_hash=rmeta["root_hash"],
        verity_salt=rmeta["salt"],
        cmdline=cmdline,
        expected_pcrs={
            "sha256": {
                **umeta["expected_pcrs"]["sha256"],
                str(im.VERITY_PCR): im.pcr15(rmeta["root_hash"]),
            }
        },
        kernel_release=kmeta["kver"],
        build_seconds=round(time.monotonic() - t0, 1),
    )
    (out / "image.json").write_text(json.dumps(asdict(node), indent=2))
    # The shape `attest manifest bless --expected-pcrs` reads: {platform: {variant: {bank: ...}}}
    (out / "expected-pcrs.json").write_text(
        json.dumps({PLATFORM_ID: {"uki": node.expected_pcrs}}, indent=2)
    )
    say(f"image {version}: {out}/image.json ({node.build_seconds:.1f} s)")
    return node


def _kernel(d: Path) -> dict[str, Any]:
    vmlinuz, mods, kver = im.fetch_kernel(d)
    im.module_closure(mods, kver, im.INITRD_MODULES)  # writes modules.dep once
    return {
        "vmlinuz": str(vmlinuz.relative_to(d)),
        "modules": str(mods.relative_to(d)),
        "kver": kver,
    }


def _base(d: Path, mirror: str, suite: str, log: Path) -> dict[str, Any]:
    im.debootstrap_base(d / "root", mirror=mirror, suite=suite, log=log)
    return {"mirror": mirror, "suite": suite}


def _wheels(d: Path, log: Path, *, deps: bool) -> dict[str, Any]:
    im.build_wheels(d, repo=REPO, log=log, deps=deps)
    return {"wheels": sorted(p.name for p in d.glob("*.whl"))}


def _root(
    d: Path, base: Path, wheels: tuple[Path, ...], version: str, log: Path, shape: str
) -> dict[str, Any]:
    tree = d / "tree"
    im.run(["cp", "-a", "--reflink=auto", str(base / "root"), str(tree)])
    im.install_root(tree, wheels=wheels, busybox=BUSYBOX, log=log, shape=shape)
    (tree / "etc/attest/image-version").write_text(version + "\n")
    img = d / "root.img"
    im.pack_squashfs(tree, img, log=log)
    shutil.rmtree(tree)
    sha = im.sha256_file(img)
    salt = hashlib.sha256(b"attest-vm-salt\0" + bytes.fromhex(sha)).hexdigest()
    v = im.add_verity(img, salt=salt, log=log)
    return {"sha256": sha, "data_size": v.data_size, "root_hash": v.root_hash, "salt": salt}


def _initramfs(d: Path, kdir: Path, kmeta: dict[str, Any], log: Path, shape: str) -> dict[str, Any]:
    out = im.build_initramfs(
        d / "initrd.img",
        mods=kdir / kmeta["modules"],
        kver=kmeta["kver"],
        busybox=BUSYBOX,
        veritysetup=VERITYSETUP,
        tpm2=TPM2,
        work=d,
        shape=shape,
    )
    shutil.rmtree(d / "initramfs")
    return {"sha256": im.sha256_file(out)}


def _uki(
    d: Path, kdir: Path, kmeta: dict[str, Any], idir: Path, cmdline: str, osrel: str
) -> dict[str, Any]:
    out = im.build_uki(
        d / "attest.efi",
        stub=STUB,
        linux=kdir / kmeta["vmlinuz"],
        initrd=idir / "initrd.img",
        cmdline=cmdline,
        osrel=osrel,
    )
    return {"sha256": im.sha256_file(out), "expected_pcrs": uki.predict_json(out.read_bytes())}


def _esp(d: Path, udir: Path) -> dict[str, Any]:
    im.build_esp(d / "esp.img", efi=udir / "attest.efi")
    return {}
