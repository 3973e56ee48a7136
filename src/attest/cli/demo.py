"""``attest demo``: the main job on embedded defaults.

Today: manufacture a software TPM (swtpm, EK certificates from a private CA), create the AK,
take a quote over a fresh nonce, verify it in pure Python, and show that a relabelled copy of
the same genuine quote is refused.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from attest.cli import EXIT_OK, EXIT_VERIFY_FAILED, print_json
from attest.errors import VerificationError
from attest.model import PcrSelection, PcrValues


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the swtpm demo: quote over a fresh nonce and verify it")
    p.add_argument("--workdir", type=Path,
                   help="where the demo TPM lives (reused when present; default: a temp dir)")
    p.add_argument("--ak-type", default="ecc256",
                   choices=["ecc256", "ecc384", "rsa2048", "rsa2048-pss"])  # fmt: skip
    p.add_argument("--pcrs", default="sha256:0-7", type=PcrSelection.parse,
                   help="PCRs to quote (default sha256:0-7)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="attest-demo-") as tmp:
            return _demo(Path(tmp), args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    return _demo(args.workdir, args)


def _demo(work: Path, args: argparse.Namespace) -> int:
    from attest.quote import verify_quote
    from attest.swtpm import SwtpmProcess, manufacture
    from attest.tpm.esapi import AkSpec, EsapiTpm

    say = (lambda *a: None) if args.json else print
    t0 = time.perf_counter()
    if not (work / "state" / "tpm2-00.permall").exists():
        say(f"manufacturing a software TPM in {work} (EK certificates from a private CA) ...")
        manufacture(work)
    with SwtpmProcess(work / "state") as sw, EsapiTpm(sw.tcti, ak=AkSpec(args.ak_type)) as tpm:
        say(f"swtpm     listening on 127.0.0.1:{sw.port}")
        ak = tpm.ak_public()
        say(f"AK        {args.ak_type}, restricted signing key, name {ak.name.hex()[:24]}...")
        nonce = os.urandom(32)
        say(f"nonce     {nonce.hex()}")
        q = tpm.quote(args.pcrs, nonce)
        t1 = time.perf_counter()
        vq = verify_quote(q.attest, q.signature, ak=ak, nonce=nonce, pcrs=q.pcrs)
        t_verify = time.perf_counter() - t1
        say(f"quote     {vq.selection}, {len(q.attest)}-byte TPMS_ATTEST, "
            f"{vq.signature_alg.name}/{vq.signature_hash.bank_name} signature")  # fmt: skip
        say(f"clock     {vq.clock.clock} ms, resetCount {vq.clock.reset_count}, "
            f"restartCount {vq.clock.restart_count}, safe {vq.clock.safe}")  # fmt: skip
        say(f"verdict   VALID: signature, TPM-generated, nonce, PCR selection, PCR digest "
            f"and clock checks passed in {t_verify * 1e3:.2f} ms")  # fmt: skip
        # The attack keylime and tpm2_checkquote accept: the same genuine quote, its PCR
        # values relabelled to other indices (same order, so the digest still matches).
        bank, values = next(iter(q.pcrs.values.items()))
        offset = 24 - max(values) - 1 if max(values) < 23 else -min(values)
        shifted = {i + offset: v for i, v in values.items()} if offset else {}
        relabelled = PcrValues({**q.pcrs.values, bank: shifted})
        try:
            verify_quote(q.attest, q.signature, ak=ak, nonce=nonce, pcrs=relabelled)
            refused = None
        except VerificationError as exc:
            refused = f"{exc.check}: {exc}"
        outcome = f"REFUSED ({refused})" if refused else "ACCEPTED -- this is a bug"
        say(f"attack    the same quote with its PCR values relabelled: {outcome}")
    if args.json:
        doc = vq.to_json()
        doc["relabelled_quote_refused"] = refused
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        print_json(doc)
    return EXIT_OK if refused else EXIT_VERIFY_FAILED
