"""tpm2-tools file formats written from attest values, for tests and benchmarks: what
``tpm2_quote`` would have written for the same quote, so that attest, ``tpm2_checkquote`` and
keylime can be fed the same files. Product code never imports this module."""

from __future__ import annotations

from collections.abc import Mapping

from attest.model import HashAlg, PcrSelection


def tools_serialized_pcrs(
    selection: PcrSelection, values: Mapping[HashAlg, Mapping[int, bytes]], *, per_list: int = 8
) -> bytes:
    """The "serialized" PCR file of tpm2-tools 5 (``tpm2_quote -o``): the C structures in
    little-endian order, packed -- TPML_PCR_SELECTION (count, 16 x hash, sizeofSelect = 3,
    pcrSelect[4], 1 byte padding), a UINT32 count, then that many TPML_DIGEST of up to 8
    TPM2B_DIGEST (size, buffer[64]) holding the values in selection order. tpm2-tools fills
    each TPML_DIGEST (``per_list`` 8); fewer per list is a valid file tpm2-tools does not write.
    """
    head = len(selection.banks).to_bytes(4, "little")
    for k in range(16):
        if k < len(selection.banks):
            alg, idx = selection.banks[k]
            bitmap = bytearray(4)
            for i in idx:
                bitmap[i // 8] |= 1 << (i % 8)
            head += alg.to_bytes(2, "little") + bytes([3]) + bytes(bitmap) + b"\0"
        else:
            head += bytes(8)
    digests = [values[alg][i] for alg, idx in selection.banks for i in idx]
    lists = [digests[k : k + per_list] for k in range(0, len(digests), per_list)]
    body = len(lists).to_bytes(4, "little")
    for chunk in lists:
        body += len(chunk).to_bytes(4, "little")
        for j in range(8):
            d = chunk[j] if j < len(chunk) else b""
            body += len(d).to_bytes(2, "little") + d.ljust(64, b"\0")
    return head + body
