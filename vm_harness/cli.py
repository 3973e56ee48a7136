"""The harness CLI (a shell over build.py, run.py and scenarios.py).

python -m vm_harness build [--version V]
python -m vm_harness up [--name N]          boot, wait for attestd, print how to reach it
python -m vm_harness down [--name N]
python -m vm_harness scenario NAME [NAME ...]
python -m vm_harness scenarios              all of them, with a summary table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from . import run
from .build import NodeImage, build
from .harness import Harness
from .image import BuildError
from .orchestrator import bless_image
from .run import Vm, VmError
from .scenarios import SCENARIOS, import_profile, record_platform, run_scenarios

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _image(version: str) -> NodeImage:
    return build(version=version)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vm_harness")
    p.add_argument("--version", default="1.0.0", help="release version of the image")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or take from the cache) the node image")
    up = sub.add_parser("up", help="boot a node VM and leave it running")
    up.add_argument("--name", default="up")
    dn = sub.add_parser("down", help="stop a VM started by up")
    dn.add_argument("--name", default="up")
    sc = sub.add_parser("scenario", help="run scenarios by name (in order, on one shared node)")
    sc.add_argument("name", nargs="+", choices=sorted(SCENARIOS))
    sc_all = sub.add_parser("scenarios", help="run every scenario, with a summary table")
    sc_all.add_argument(
        "--list", action="store_true", help="list the scenarios (name and what it shows), run none"
    )
    sub.add_parser("predict", help="print the PCRs 4/9/11/12 predicted from the image's UKI")
    bl = sub.add_parser(
        "bless",
        help="bless the image into a registry draft with "
        "`attest manifest bless` (artifact, verity root hash, predicted PCRs)",
    )
    bl.add_argument("--registry", required=True, help="registry draft to edit")
    bl.add_argument("--commit", default="0" * 40, help="source commit of the release")
    sub.add_parser("profile", help="diagnostic boot: the guest's slowest imports of attestd")
    sub.add_parser(
        "record-platform",
        help="boot once and write the harness platform's PCR "
        "reference to firmware_manifests/platforms/",
    )
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            node = _image(args.version)
            print(f"{node.directory}/image.json")
            return EXIT_OK
        if args.cmd == "predict":
            print(json.dumps(_image(args.version).expected_pcrs, indent=2))
            return EXIT_OK
        if args.cmd == "down":
            stopped = run.down(args.name)
            print("stopped " + ", ".join(stopped) if stopped else f"no VM {args.name!r} running")
            return EXIT_OK
        if args.cmd == "up":
            return _up(args)
        if args.cmd == "bless":
            return _bless(args)
        if args.cmd == "profile":
            with Harness(_image(args.version)) as h:
                ready, lines = import_profile(h)
            print(f"ready {ready:.1f} s after QEMU start (a diagnostic boot: slower)")
            print("\n".join(lines))
            return EXIT_OK
        if args.cmd == "record-platform":
            path, pcrs = record_platform(_image(args.version))
            print(f"{path}: " + ", ".join(f"PCR {i} {v[:16]}…" for i, v in pcrs.items()))
            return EXIT_OK
        if args.cmd == "scenarios" and args.list:
            for name, fn in SCENARIOS.items():
                doc = (fn.__doc__ or "").strip().splitlines()
                print(f"{name:20} {doc[0] if doc else ''}")
            return EXIT_OK
        names = list(args.name) if args.cmd == "scenario" else list(SCENARIOS)
        return _scenarios(args.version, names)
    except (BuildError, VmError) as exc:
        print(f"vm_harness: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _up(args: argparse.Namespace) -> int:
    node = _image(args.version)
    vm = Vm(node, name=args.name)
    vm.prepare()
    vm.start()
    try:
        t = vm.wait_ready()
    except BaseException:
        vm.stop()
        raise
    # Leave QEMU and swtpm running (own sessions): forget them so that exit does not stop them.
    run._live.discard(vm)
    if vm.qmp is not None:
        vm.qmp.close()
    print(f"node {args.name} ({node.version}, {vm.accel}) up in {t:.1f} s")
    print(f"  attestd API     {vm.url}   (e.g. curl {vm.url}/v1/identity)")
    print(f"  serial log      {vm.serial_log}")
    print(f"  EK CA root      {vm.tpm_state().root_ca}")
    print(f"  stop it         python -m vm_harness down --name {args.name}")
    return EXIT_OK


def _scenarios(version: str, names: list[str]) -> int:
    t0 = time.monotonic()
    node = _image(version)
    rows = []
    with Harness(node) as h:
        for out in run_scenarios(h, names):
            mark = "PASS" if out.passed else "FAIL"
            print(f"[{mark}] {out.name} ({out.seconds:.1f} s): {out.detail}", flush=True)
            rows.append(out)
    print()
    print(f"{'scenario':<22} {'result':<6} {'seconds':>8}  detail")
    for o in rows:
        print(
            f"{o.name:<22} {'PASS' if o.passed else 'FAIL':<6} {o.seconds:>8.1f}  {o.detail[:90]}"
        )
    for o in rows:
        if o.data.get("boot"):
            print(f"\nboot timeline of {o.name} (seconds after QEMU start, as the host saw them):")
            for m in o.data["boot"]:
                print(f"  {m['host_s']:7.2f}  {m['event'][:110]}")
    passed = sum(o.passed for o in rows)
    print(f"{passed} passed, {len(rows) - passed} failed in {time.monotonic() - t0:.0f} s")
    return EXIT_OK if passed == len(rows) else EXIT_FAILED


def _bless(args: argparse.Namespace) -> int:
    return bless_image(_image(args.version), registry=args.registry, commit=args.commit)
