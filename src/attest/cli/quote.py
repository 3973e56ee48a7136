"""``attest quote create`` and ``attest quote verify``.

File formats are those of tpm2-tools, so either side can be swapped: ``-m`` TPMS_ATTEST,
``-s`` TPMT_SIGNATURE, ``-o`` the PCR "values" file (digests concatenated in selection order),
the AK as PEM or TPM2B_PUBLIC. attest also reads and writes a labelled JSON PCR file
(``{"sha256": {"0": "<hex>", ...}}``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.cli._common import EXIT_OK, path_arg, pcr_selection_arg, print_json, read_file
from attest.errors import ConfigError, PcrSelectionError, QuoteFormatError
from attest.model import HashAlg, PcrSelection, PcrValues
from attest.tpmstruct import Alg, ObjectAttr, Public, parse_attest, parse_public, public_from_key


def register(sub: Any) -> None:
    p = sub.add_parser("quote", help="take and verify TPM quotes")
    qsub = p.add_subparsers(dest="cmd", metavar="SUBCOMMAND")
    qsub.required = True

    c = qsub.add_parser("create", help="take a quote over PCRs with a caller-supplied nonce")
    c.add_argument("--tcti", required=True, help="device:/dev/tpmrm0 or swtpm:host=H,port=P")
    c.add_argument("--nonce", required=True, help="qualifying data, hex (at most 64 bytes)")
    c.add_argument("--pcrs", required=True, type=pcr_selection_arg, help="e.g. sha256:0,1,2+sha1:7")
    c.add_argument(
        "--ak-type", default="ecc256", choices=["ecc256", "ecc384", "rsa2048", "rsa2048-pss"]
    )
    c.add_argument("-m", "--message", type=path_arg, help="write the TPMS_ATTEST here")
    c.add_argument("-s", "--signature", type=path_arg, help="write the TPMT_SIGNATURE here")
    c.add_argument(
        "-o",
        "--pcr-output",
        type=path_arg,
        help="write PCR values here (tpm2-tools values format; .json: labelled JSON)",
    )
    c.add_argument("--ak-public", type=path_arg, help="write the AK's TPM2B_PUBLIC here")
    c.add_argument("--ak-pem", type=path_arg, help="write the AK's public key (PEM) here")
    c.add_argument("--json", action="store_true", help="print everything as JSON on stdout")
    c.set_defaults(func=cmd_create)

    v = qsub.add_parser("verify", help="verify a quote; exit 0 and JSON when valid")
    v.add_argument("--ak", required=True, type=str, help="AK public key: PEM or TPM2B_PUBLIC")
    v.add_argument("--nonce", required=True, help="the qualifying data expected, hex")
    v.add_argument("--quote", "-m", required=True, type=str, help="TPMS_ATTEST file")
    v.add_argument("--signature", "-s", required=True, type=str, help="TPMT_SIGNATURE file")
    v.add_argument(
        "--pcrs",
        "-f",
        required=True,
        type=str,
        help="PCR values: a tpm2-tools serialized or values file, or JSON",
    )
    v.add_argument(
        "--pcr-list",
        type=pcr_selection_arg,
        help="the selection that was asked for; the quote must cover exactly it "
        "(also labels a tpm2-tools values file)",
    )
    v.add_argument(
        "--previous",
        type=str,
        help="JSON output of the previous verify of this TPM (clock/counter checks)",
    )
    v.add_argument("--allow-sha1", action="store_true", help="accept SHA-1 signatures")
    v.add_argument("--json", action="store_true", help="JSON on stdout (the default)")
    v.set_defaults(func=cmd_verify, logs_nothing=True)


def _nonce(text: str) -> bytes:
    """``--nonce``: a usage error (exit 2) when it is not hex or too long, as for ``ear`` and
    ``verify`` (it was a format error, exit 3, as if an input file had not parsed)."""
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{text[:20]!r} is not hex", key="--nonce") from None
    if len(value) > 64:
        raise ConfigError(
            f"{len(value)} bytes; TPM2B_DATA holds at most 64", key="--nonce"
        ) from None
    return value


def cmd_create(args: argparse.Namespace) -> int:
    from attest.node.tpm.esapi import AkSpec, EsapiTpm

    nonce = _nonce(args.nonce)
    with EsapiTpm(args.tcti, ak=AkSpec(args.ak_type)) as tpm:
        ak = tpm.ak_public()
        q = tpm.quote(args.pcrs, nonce)
    if args.message:
        args.message.write_bytes(q.attest)
    if args.signature:
        args.signature.write_bytes(q.signature)
    if args.pcr_output:
        if args.pcr_output.suffix == ".json":
            args.pcr_output.write_text(json.dumps(q.pcrs.to_json(), indent=2) + "\n")
        else:
            args.pcr_output.write_bytes(values_file(q.pcrs, args.pcrs))
    if args.ak_public:
        args.ak_public.write_bytes(ak.tpm2b())
    if args.ak_pem:
        from cryptography.hazmat.primitives import serialization

        args.ak_pem.write_bytes(
            ak.key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    if args.json or not any(
        (args.message, args.signature, args.pcr_output, args.ak_public, args.ak_pem)
    ):
        print_json(
            {
                "nonce": nonce.hex(),
                "pcr_selection": str(args.pcrs),
                "attest": q.attest.hex(),
                "signature": q.signature.hex(),
                "pcrs": q.pcrs.to_json(),
                "ak_public": ak.tpm2b().hex(),
                "ak_name": ak.name.hex(),
            }
        )
    return EXIT_OK


def values_file(pcrs: PcrValues, selection: PcrSelection) -> bytes:
    """tpm2-tools' "values" PCR file: the digests concatenated in selection order."""
    return b"".join(pcrs.get(alg, i) for alg, idx in selection.banks for i in idx)


def load_ak(path: str | os.PathLike[str]) -> Public:
    """An AK public key from PEM (SubjectPublicKeyInfo) or a TPM2B_PUBLIC / TPMT_PUBLIC.
    From PEM the TPM attributes and scheme are unknown (zero / NULL)."""
    data = read_file(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            ak = _public_from_pem(data)
        except ValueError as exc:
            raise QuoteFormatError(f"{path}: not a PEM public key: {exc}") from None
        if ak is None:
            raise QuoteFormatError(f"{path}: AK must be an RSA or ECC key")
        return ak
    return parse_public(data)


@functools.lru_cache(maxsize=64)
def _public_from_pem(data: bytes) -> Public | None:
    """The AK of a PEM file, None if it is neither RSA nor ECC (``ValueError``: no PEM public
    key). Memoised by the file's bytes, as ``parse_public`` is: a script that verifies many
    quotes of one AK decodes it once."""
    key = _load_pem_public_key(data)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return None
    # A PEM carries no TPM scheme: the signature's own scheme is checked against policy.
    return public_from_key(key, attributes=ObjectAttr(0), scheme=Alg.NULL, scheme_hash=None)


def _load_pem_public_key(data: bytes) -> object:
    """``serialization.load_pem_public_key``: in cryptography >= 47 that name is the Rust
    binding's function itself, which is called here directly because importing the
    ``serialization`` package (and the SSH key support it loads) costs ~5 ms of the ~100 ms of
    ``attest quote verify``; any other cryptography layout takes the public name."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        load = rust_openssl.keys.load_pem_public_key
    except (ImportError, AttributeError):  # pragma: no cover -- a cryptography that moved it
        from cryptography.hazmat.primitives.serialization import load_pem_public_key as load
    return load(data)


def load_pcrs(
    path: str | os.PathLike[str], *, attest: bytes, pcr_list: PcrSelection | None
) -> PcrValues:
    data = read_file(path)
    if data.lstrip().startswith(b"{"):
        try:
            return PcrValues.from_json(json.loads(data))
        except (ValueError, AttributeError, TypeError, RecursionError) as exc:
            raise QuoteFormatError(f"{path}: not a PCR JSON file: {exc}") from None
    from attest.tpmstruct import (
        is_tools_serialized_pcrs,
        read_tools_serialized_pcrs,
        read_tpml_digest_values,
    )

    if is_tools_serialized_pcrs(data):
        # Labelled by its own selection; verify_quote checks it against the signed one.
        return PcrValues(read_tools_serialized_pcrs(data)[1])
    # An unlabelled values file: label it with the selection asked for or, failing that, with
    # the selection the quote claims (verify_quote then checks the claim against the digest).
    selection = pcr_list or parse_attest(attest).pcr_select
    return PcrValues(read_tpml_digest_values(data, selection))


def cmd_verify(args: argparse.Namespace) -> int:
    from attest.quote import DEFAULT_POLICY, QuotePolicy, verify_quote
    from attest.tpmstruct import ClockInfo

    nonce = _nonce(args.nonce)  # a usage error before any file is read
    ak = load_ak(args.ak)
    attest = read_file(args.quote)
    signature = read_file(args.signature)
    pcrs = load_pcrs(args.pcrs, attest=attest, pcr_list=args.pcr_list)
    previous = None
    if args.previous:
        try:
            c = json.loads(read_file(args.previous).decode())["clock"]
            previous = ClockInfo(c["clock_ms"], c["reset_count"], c["restart_count"], c["safe"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise QuoteFormatError(f"{args.previous}: not a verify result: {exc}") from None
    policy = DEFAULT_POLICY
    if args.allow_sha1:
        policy = QuotePolicy(signature_hashes=policy.signature_hashes | {HashAlg.SHA1})
    vq = verify_quote(
        attest,
        signature,
        ak=ak,
        nonce=nonce,
        pcrs=pcrs,
        previous=previous,
        policy=policy,
    )
    if args.pcr_list is not None and vq.selection.as_dict() != args.pcr_list.as_dict():
        raise PcrSelectionError(f"the quote covers {vq.selection}, not {args.pcr_list} as asked")
    doc = vq.to_json()
    # A PEM AK has no TPM Name; a TPM2B_PUBLIC one does.
    doc["ak_name"] = None if ak.scheme == Alg.NULL and not ak.attributes else ak.name.hex()
    print_json(doc)
    return EXIT_OK
