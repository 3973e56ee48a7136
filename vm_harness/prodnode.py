"""The node image's production shape: systemd as PID 1, attest installed from the wheel the way
docs/install.md says (``attest node install``, ``systemd-sysusers``, ``systemd-tmpfiles``,
``systemctl enable``), ``attestd-tpm`` and ``attestd`` run from the shipped units as their own
users. What is particular to this VM is written by the image builder as files of its own, never
as edits of the shipped units:

- ``/etc/fstab``: the root is a read-only dm-verity squashfs, so ``/var/lib/attest`` (the
  units' ``StateDirectory=`` parent), ``/tmp`` and ``/var/tmp`` (``PrivateTmp=``) are tmpfs;
  the upgrade gate's ``slots``, ``trust`` and ``spool`` are bind mounts of the state disk
  (which the initramfs mounts at ``/var/lib/attest-state``). ``systemd-tmpfiles`` gives them
  the owners and modes of ``attest.tmpfiles`` at boot, as on any node.
- ``attest-vm-boot.service`` (oneshot, root, before attestd): the booted A/B slot (the
  boot pointer's ``booted``) into ``/run/attest-boot/slot`` for attestd's ``image.slot_file``,
  and the mutual-TLS key from the state disk into attestd's ``/var/lib/attest/api``. The
  broker needs neither and starts beside it (it waits only for ``/dev/tpmrm0``).
- drop-ins: attestd-tpm gets the A/B slot block devices (``--slot-device``, by their virtio
  serial names under ``/dev/disk/by-id``; ``DeviceAllow=block-virtblk``) without waiting for
  them (it opens a slot only to stage an upgrade, long after udev named the disks), and both
  units power the node off when systemd gives up restarting them (``StartLimitAction=``: fail
  closed, as the script init did when attestd exited).
- a udev rule giving the slot disks to ``attest-tpm``; ``/etc/attest/attestd.toml`` (the
  public listener on 0.0.0.0:7443, the mutual-TLS listener, the node id ``vm-node``).
- journald forwards to the console (the harness reads milestones there); units a node that
  only attests does not need are masked (gettys, logind, timers), and so is
  ``systemd-pcrphase`` (see ``MASKED``).
- test image only: ``attest-vm-debug.service`` (``DEBUG_AGENT``), started only by a boot whose
  measured command line carries ``attest.vmdebug=1`` (such a boot never attests as the
  release: PCR 9 differs), answers the privilege-split scenario on a forwarded port.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

GUEST_DEBUG_PORT = 7450
SLOT_SERIALS = {"a": "slot-a", "b": "slot-b"}
STATE = "/var/lib/attest-state/attest"  # the state disk's attest/ (image.STATE_MOUNT)
SLOT_FILE = "/run/attest-boot/slot"
DEBUG_CMDLINE = "attest.vmdebug=1"

# Units masked in the image. Gettys, logind, utmp, the timers and the random seed: a node
# that only attests has no logins and a read-only root. systemd-pcrphase*: with systemd-stub
# 252, PID 1's pcrphase units extend PCR 11 with boot phases ("sysinit", "ready", ...) at
# times that race attestd's first quote; the image's initramfs is not systemd, so the phases
# would name only part of the boot anyway. Masked, PCR 11 holds exactly the UKI's sections
# (uki.predict, equal to `systemd-measure calculate` without --phase): the release's PCR 11
# is the stub's measurement of the UKI, the runtime is measured into PCR 13 by attestd-tpm.
MASKED = (
    "getty.target",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-firstboot.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-random-seed.service",
    "systemd-journal-flush.service",
    "systemd-journal-catalog-update.service",
    "systemd-hwdb-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-tmpfiles-clean.timer",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase-initrd.service",
    "systemd-user-sessions.service",
    "kmod-static-nodes.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
)
# Generators masked (/etc/systemd/system-generators/NAME -> /dev/null): each is a process PID 1
# runs at every boot and daemon-reload (~0.5 s each under TCG); only fstab's is needed here.
MASKED_GENERATORS = (
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-veritysetup-generator",
)

FSTAB = f"""# attest VM image (vm_harness/prodnode.py): the root is a read-only dm-verity squashfs
tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/lib/attest tmpfs mode=0755,nosuid,nodev,noexec 0 0
{STATE}/slots /var/lib/attest/slots none bind 0 0
{STATE}/trust /var/lib/attest/trust none bind 0 0
{STATE}/spool /var/lib/attest/spool none bind 0 0
"""

# The A/B slot disks (virtio-blk serials slot-a, slot-b) belong to the broker, which writes
# the inactive one (docs/upgrade.md).
UDEV_SLOTS = """# attest VM image: the A/B slot disks belong to attestd-tpm (the upgrade gate)
SUBSYSTEM=="block", KERNEL=="vd*[!0-9]", ATTR{serial}=="slot-[ab]", OWNER="attest-tpm", \
GROUP="attest", MODE="0600"
"""
JOURNALD = """# attest VM image: the harness reads the node's story on the serial console
[Journal]
Storage=volatile
ForwardToConsole=yes
MaxLevelConsole=info
"""

SAY = """#!/bin/sh
# attest VM image: one milestone line, to the journal, which forwards it to the console (the
# harness times these; a unit's DevicePolicy= keeps even its "+" commands off /dev/console)
read t _ < /proc/uptime
echo "attest-node: t=$t $*"
"""

VM_BOOT = f"""#!/bin/sh
# attest VM image: what the script init did before starting attestd, for the shipped units.
set -eu
st={STATE}
slot=$(sed -n 's/^ "booted": "\\([ab]\\)",$/\\1/p' $st/slots/boot.json)
mkdir -p {Path(SLOT_FILE).parent}
echo "$slot" > {SLOT_FILE}
# attestd's mutual-TLS key, readable by attestd only (its StateDirectory=, docs/install.md 5.)
install -d -o attest -g attest -m 0700 /var/lib/attest/api
install -o attest -g attest -m 0600 $st/tls/node.key /var/lib/attest/api/node.key
/usr/sbin/attest-vm-say "root mounted (slot $slot), systemd starting attestd-tpm and attestd"
"""

VM_BOOT_UNIT = """[Unit]
Description=attest VM image: the booted slot and attestd's TLS key from the state disk
After=local-fs.target systemd-tmpfiles-setup.service
Before=attestd.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/attest-vm-boot
"""

# Both units: power the node off when systemd gives up restarting (fail closed). Not
# FailureAction=: systemd 252 takes it on every failure, also one Restart= is about to undo
# (seen here: a killed attestd-tpm powered the node off instead of being restarted).
FAIL_CLOSED = """[Unit]
StartLimitIntervalSec=300
StartLimitBurst=4
StartLimitAction=poweroff-force
"""


def broker_dropin(unit_text: str) -> str:
    """attestd-tpm's VM drop-in: the shipped ``ExecStart=`` with the slot devices added. No
    ordering on the devices' units or on ``attest-vm-boot``: the broker opens a slot device only
    when it stages an upgrade, and reads nothing ``attest-vm-boot`` writes."""
    m = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit_text, flags=re.M | re.S)
    if not m:
        raise ValueError("attestd-tpm.service has no ExecStart=")
    exec_start = m.group(1).rstrip()
    devs = " ".join(
        f"--slot-device {s}=/dev/disk/by-id/virtio-{serial}" for s, serial in SLOT_SERIALS.items()
    )
    return f"""# attest VM image: the A/B slots are block devices (virtio serials slot-a, slot-b)
[Service]
ExecStart=
ExecStart={exec_start} \\
    {devs}
DeviceAllow=block-virtblk rw
ExecStartPost=-+/usr/sbin/attest-vm-say "attestd-tpm ready (user attest-tpm)"
"""


ATTESTD_DROPIN = """# attest VM image: a console milestone once attestd is ready
[Unit]
Requires=attest-vm-boot.service
After=attest-vm-boot.service

[Service]
ExecStartPost=-+/usr/sbin/attest-vm-say "attestd ready (user attest)"
"""


def attestd_toml(*, port: int, mtls_port: int) -> str:
    """/etc/attest/attestd.toml of the VM (docs/install.md step 5)."""
    return f"""# attest VM image (vm_harness/prodnode.py); every other key: attestd.toml.example
node_id = "vm-node"

[api]
host = "0.0.0.0"
port = {port}
client_ca = "{STATE}/tls/client-ca.pem"
mtls_port = {mtls_port}
mtls_cert = "{STATE}/tls/node.pem"
mtls_key = "/var/lib/attest/api/node.key"

[image]
slot_file = "{SLOT_FILE}"
"""


DEBUG_UNIT = f"""[Unit]
Description=attest VM harness debug agent (test image only; boots with {DEBUG_CMDLINE})
ConditionKernelCommandLine={DEBUG_CMDLINE}
After=attestd.service

[Service]
ExecStart=/usr/bin/python3 -I /usr/sbin/attest-vm-debug
"""

# The privilege-split scenario's window into the guest, in the test image only and only in a
# boot whose measured command line says attest.vmdebug=1. Fixed questions (no command
# execution): the daemons' credentials and devices, `systemd-analyze security`, and one
# action, SIGKILL to attestd-tpm (systemd must bring it back).
DEBUG_AGENT = f'''"""attest VM harness debug agent: test image only (vm_harness/prodnode.py)."""
import json
import os
import re
import subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

UNITS = ("attestd.service", "attestd-tpm.service")


def show(unit, prop):
    out = subprocess.run(["systemctl", "show", "-p", prop, "--value", unit],
                         capture_output=True, text=True)
    return out.stdout.strip()


def process(pid):
    doc = {{"pid": pid}}
    try:
        for line in open(f"/proc/{{pid}}/status"):
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs",
                       "Seccomp"):
                doc[key] = value.split()
        doc["tpm_visible"] = os.path.exists(f"/proc/{{pid}}/root/dev/tpmrm0")
        fds = []
        for fd in os.listdir(f"/proc/{{pid}}/fd"):
            try:
                fds.append(os.readlink(f"/proc/{{pid}}/fd/{{fd}}"))
            except OSError:
                pass
        doc["tpm_fds"] = sorted(f for f in fds if f.startswith("/dev/tpm"))
    except OSError as exc:
        doc["error"] = str(exc)
    return doc


def facts():
    out = {{}}
    for unit in UNITS:
        pid = int(show(unit, "MainPID") or 0)
        out[unit] = {{
            "active": show(unit, "ActiveState"),
            "restarts": int(show(unit, "NRestarts") or 0),
            "user": show(unit, "User"),
            "process": process(pid) if pid else None,
        }}
    out["pid1"] = open("/proc/1/comm").read().strip()
    return out


def security():
    out = {{}}
    for unit in UNITS:
        p = subprocess.run(["systemd-analyze", "security", "--no-pager", unit],
                           capture_output=True, text=True)
        m = re.search(r"Overall exposure level for \\S+: ([0-9.]+)", p.stdout)
        out[unit] = {{"exposure": float(m.group(1)) if m else None,
                     "tail": (p.stdout + p.stderr).strip().splitlines()[-1:]}}
    return out


class Handler(BaseHTTPRequestHandler):
    def reply(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/facts":
            return self.reply(facts())
        if self.path == "/security":
            return self.reply(security())
        self.send_error(404)

    def do_POST(self):
        if self.path == "/kill-broker":
            p = subprocess.run(["systemctl", "kill", "--signal=SIGKILL", "attestd-tpm.service"],
                               capture_output=True, text=True)
            return self.reply({{"rc": p.returncode, "stderr": p.stderr}})
        self.send_error(404)


HTTPServer(("0.0.0.0", {GUEST_DEBUG_PORT}), Handler).serve_forever()
'''


GUEST_OPERATOR_PORT = 7451
OPERATOR_UNIT = """[Unit]
Description=attest VM harness: the operator's upgrade status/confirm (test image only)
After=attestd-tpm.service

[Service]
ExecStart=/usr/bin/python3 -I /usr/sbin/attest-vm-operator
"""

# The harness as the node's operator. With attestd-tpm, `GET /v1/upgrades` and `POST
# /v1/upgrades/confirm` are root's, on the broker's operator socket (attestd answers 501), where
# an operator runs `attest upgrade status|confirm --broker-socket ...` on the node. The guest
# has no shell: this relay runs exactly those two commands for a client with a certificate of
# the harness CA (the node's api.client_ca), over TLS with the node's certificate.
OPERATOR_RELAY = f'''"""attest VM harness operator relay: test image only (prodnode.py)."""
import json
import ssl
import subprocess
from http.server import BaseHTTPRequestHandler, HTTPServer

TLS = "{STATE}/tls"
ATTEST = ["/opt/attest/bin/attest", "upgrade"]
SOCK = ["--broker-socket", "/run/attest/tpm-operator.sock", "--json"]


def attest(command):
    p = subprocess.run(ATTEST + [command] + SOCK, capture_output=True, text=True)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = {{"error": (p.stderr or p.stdout).strip()[-400:]}}
    return p.returncode, doc


class Handler(BaseHTTPRequestHandler):
    def reply(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/v1/upgrades":
            return self.send_error(404)
        rc, doc = attest("status")
        self.reply(200 if rc == 0 else 503, doc)

    def do_POST(self):
        if self.path != "/v1/upgrades/confirm":
            return self.send_error(404)
        rc, doc = attest("confirm")
        if rc != 0:
            return self.reply(409, doc)
        rc, doc = attest("status")
        self.reply(200 if rc == 0 else 503, doc)


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{{TLS}}/node.pem", f"{{TLS}}/node.key")
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(f"{{TLS}}/client-ca.pem")
server = HTTPServer(("0.0.0.0", {GUEST_OPERATOR_PORT}), Handler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
'''


def install_production(
    root: Path,
    *,
    port: int,
    mtls_port: int,
    chroot: Callable[[list[str]], object],
    host: Callable[[list[str]], object],
) -> None:
    """docs/install.md steps 4-6 in the image root, then the VM's own files (module
    docstring). ``chroot(argv)`` runs a command in the root; ``host(argv)`` runs the host's
    systemd tools, which take ``--root`` (no /proc in the chroot; the same systemd 252)."""
    chroot(["/opt/attest/bin/attest", "node", "install"])  # 4. units, sysusers, tmpfiles, config
    host(["systemd-sysusers", f"--root={root}", "attest.conf"])
    host(["systemd-tmpfiles", f"--root={root}", "--create", "attest.conf"])
    # 6. `systemctl enable --now`: enabled here, started by the boot.
    host(["systemctl", f"--root={root}", "enable", "attestd-tpm.service", "attestd.service"])
    etc = root / "etc"
    (etc / "attest/attestd.toml").write_text(attestd_toml(port=port, mtls_port=mtls_port))  # 5.
    (etc / "fstab").write_text(FSTAB)
    (etc / "hostname").write_text("attest-node\n")
    (etc / "machine-id").write_text("")  # a transient id per boot (read-only root)
    (etc / "udev/rules.d").mkdir(parents=True, exist_ok=True)
    (etc / "udev/rules.d/60-attest-slots.rules").write_text(UDEV_SLOTS)
    (etc / "systemd/journald.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/journald.conf.d/attest-vm.conf").write_text(JOURNALD)
    system = etc / "systemd/system"
    for unit in MASKED:
        link = system / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    generators = etc / "systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in MASKED_GENERATORS:
        (generators / name).symlink_to("/dev/null")
    default = system / "default.target"
    if default.is_symlink() or default.exists():
        default.unlink()
    default.symlink_to("/lib/systemd/system/multi-user.target")
    shipped = (root / "usr/lib/systemd/system/attestd-tpm.service").read_text()
    for unit, text in (
        ("attestd-tpm.service", broker_dropin(shipped) + "\n" + FAIL_CLOSED),
        ("attestd.service", ATTESTD_DROPIN + "\n" + FAIL_CLOSED),
    ):
        d = system / f"{unit}.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / "attest-vm.conf").write_text(text)
    (system / "attest-vm-boot.service").write_text(VM_BOOT_UNIT)
    (system / "attest-vm-debug.service").write_text(DEBUG_UNIT)
    (system / "attest-vm-operator.service").write_text(OPERATOR_UNIT)
    wants = system / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("attest-vm-boot.service", "attest-vm-debug.service", "attest-vm-operator.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{unit}")
    sbin = root / "usr/sbin"
    for name, text in (
        ("attest-vm-say", SAY),
        ("attest-vm-boot", VM_BOOT),
        ("attest-vm-debug", DEBUG_AGENT),
        ("attest-vm-operator", OPERATOR_RELAY),
    ):
        (sbin / name).write_text(text)
        (sbin / name).chmod(0o755)
