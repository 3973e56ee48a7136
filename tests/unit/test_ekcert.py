"""attest.ekcert: each deviation class real EK certificates carry is read, reported by name and
verified over the bytes as signed; forged, tampered, expired, wrong-root and wrong-key
certificates are refused; the reader lets only CertificateFormatError escape.

The certificates here are made in the test, with the deviation written into the to-be-signed
bytes *before* signing (as the vendors' CAs did), so each one is a genuine chain of its class.
``tests/unit/test_ekcert_corpus.py`` runs the same checks over real vendor certificates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.ekpki import (
    NOT_AFTER,
    NOT_BEFORE,
    NOW,
    Ca,
    Key,
    der_of,
    ek_builder,
    make_ca,
    odd_name_certificate,
)

from attest.ekcert import der
from attest.ekcert.der import Deviation, Tlv
from attest.ekcert.parse import ParsedCertificate, parse_bundle, parse_certificate, parse_input
from attest.ekcert.verify import verify_ek_chain
from attest.enroll import verify_ek_certificate
from attest.errors import CertificateError, CertificateFormatError
from attest.verifier.contact import load_ek_cas
from attest.verifier.ek_roots import bundled_ek_roots, load_ca_dirs, load_ca_tree


@pytest.fixture(scope="module")
def ek_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def pki() -> tuple[Ca, Ca]:
    root = make_ca("Vendor EK Root")
    return root, make_ca("Vendor EK Issuing CA 05", root, critical_policies=True)


def rebuild(node: Tlv, buf: bytes, edits: dict[int, bytes]) -> bytes:
    """``node`` re-encoded with the elements starting at the offsets in ``edits`` replaced."""
    if node.start in edits:
        return edits[node.start]
    if not node.constructed:
        return buf[node.start : node.end]
    body = b"".join(rebuild(c, buf, edits) for c in node.children)
    return der.header(node.ident, len(body)) + body


def sign_tbs(tbs: bytes, key: Key, alg: bytes) -> bytes:
    """A certificate over exactly ``tbs``, with the AlgorithmIdentifier encoding ``alg``."""
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        sig = key.sign(tbs, ec.ECDSA(hashes.SHA384()))
    bits = b"\x00" + sig
    return der.sequence(tbs, alg, der.header(b"\x03", len(bits)) + bits)


Edit = Callable[[Tlv, bytes], dict[int, bytes]]


def deviant(cert: x509.Certificate, issuer: Ca, edit: Edit, *, alg: bytes | None = None) -> bytes:
    """``cert`` with ``edit`` applied to its TBS, re-signed by ``issuer`` over the result."""
    buf = der_of(cert)
    outer = der.read(buf, [])
    tbs_node, alg_node, _ = outer.children
    tbs_buf = buf[tbs_node.start : tbs_node.end]
    tbs = der.read(tbs_buf, [])
    new_tbs = rebuild(tbs, tbs_buf, edit(tbs, tbs_buf))
    return sign_tbs(new_tbs, issuer.key, alg or buf[alg_node.start : alg_node.end])


def _extensions(tbs: Tlv) -> Tlv:
    return next(c for c in tbs.children if c.is_context(3)).children[0]


def _extension(tbs: Tlv, buf: bytes, oid: x509.ObjectIdentifier) -> Tlv:
    want = x509.ObjectIdentifier(oid.dotted_string)
    for ext in _extensions(tbs).children:
        node = ext.children[0]
        enc = buf[node.start : node.end]
        if enc == der_of_oid(want):
            return ext
    raise AssertionError(f"no extension {oid}")


def der_of_oid(oid: x509.ObjectIdentifier) -> bytes:
    """The DER encoding of an OBJECT IDENTIFIER (X.690 §8.19)."""
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return der.header(b"\x06", len(body)) + body


def _explicit_critical_false(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    ext = _extension(tbs, buf, x509.ExtensionOID.EXTENDED_KEY_USAGE)  # non-critical
    oid, value = ext.children
    return {
        ext.start: der.sequence(
            buf[oid.start : oid.end], b"\x01\x01\x00", buf[value.start : value.end]
        )
    }


def _explicit_ca_false(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    ext = _extension(tbs, buf, x509.ExtensionOID.BASIC_CONSTRAINTS)
    oid, crit, _ = ext.children
    value = der.sequence(b"\x01\x01\x00")  # BasicConstraints { cA FALSE } written out
    octets = der.header(b"\x04", len(value)) + value
    return {ext.start: der.sequence(buf[oid.start : oid.end], buf[crit.start : crit.end], octets)}


def _boolean_01(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    ext = _extension(tbs, buf, x509.ExtensionOID.KEY_USAGE)
    oid, _, value = ext.children
    return {
        ext.start: der.sequence(
            buf[oid.start : oid.end], b"\x01\x01\x01", buf[value.start : value.end]
        )
    }


def _non_minimal_length(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    serial = tbs.children[1]
    return {serial.start: b"\x02\x82\x00" + bytes([len(serial.content)]) + serial.content}


def _non_minimal_integer(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    serial = tbs.children[1]
    content = b"\x00\x00" + serial.content.lstrip(b"\x00") if serial.content[0] < 0x80 else b""
    content = content or b"\x00" + serial.content  # already 00-led: one more
    return {serial.start: der.header(b"\x02", len(content)) + content}


def _indefinite_extensions(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    seq = _extensions(tbs)
    body = b"".join(buf[c.start : c.end] for c in seq.children)
    return {seq.start: b"\x30\x80" + body + b"\x00\x00"}


def _unsorted_san_rdn(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
    ext = _extension(tbs, buf, x509.ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    oid, crit, value = ext.children
    inner = der.read(value.content, [])
    rdn = inner.children[0].children[0].children[0]  # GeneralNames/[4]/Name/RDN (a SET)
    members = [value.content[m.start : m.end] for m in rdn.children]
    assert members == sorted(members)
    new_rdn = der.header(b"\x31", sum(map(len, members))) + b"".join(reversed(members))
    new_value = rebuild(inner, value.content, {rdn.start: new_rdn})
    octets = der.header(b"\x04", len(new_value)) + new_value
    return {ext.start: der.sequence(buf[oid.start : oid.end], buf[crit.start : crit.end], octets)}


DEVIATIONS: dict[Deviation, Edit] = {
    Deviation.EXPLICIT_DEFAULT: _explicit_critical_false,
    Deviation.BOOLEAN_ENCODING: _boolean_01,
    Deviation.NON_MINIMAL_LENGTH: _non_minimal_length,
    Deviation.NON_MINIMAL_INTEGER: _non_minimal_integer,
    Deviation.INDEFINITE_LENGTH: _indefinite_extensions,
    Deviation.SET_ORDER: _unsorted_san_rdn,
}


def _kinds(cert: ParsedCertificate) -> set[Deviation]:
    return {t.deviation for t in cert.deviations}


@pytest.mark.parametrize("kind", list(DEVIATIONS), ids=lambda k: k.value)
def test_reads_verifies_and_names_each_ber_deviation(
    kind: Deviation, pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey
) -> None:
    root, inter = pki
    good = ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384())
    raw = deviant(good, inter, DEVIATIONS[kind])
    with pytest.raises(ValueError):  # the strict reader refuses it: this is the class
        x509.load_der_x509_certificate(raw).extensions  # noqa: B018 (parsed lazily)
    leaf = parse_certificate(raw)
    assert _kinds(leaf) == {kind}
    assert leaf.tbs != der_of(leaf.decoded)[4:]  # the signed bytes are the deviant ones
    v = verify_ek_certificate(raw, roots=[root.cert], intermediates=[inter.cert], now=NOW)
    assert [(t.deviation) for _, t in v.deviations] == [kind]
    assert (v.tpm_manufacturer, v.tpm_model, v.tpm_version) == (
        "id:4E544300",
        "NPCT75x",
        "id:00070002",
    )
    # The same bytes with one flipped bit in the signed part are refused.
    at = raw.index(leaf.tbs) + len(leaf.tbs) - 40
    bad = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
    with pytest.raises(CertificateError):
        verify_ek_certificate(bad, roots=[root.cert], intermediates=[inter.cert], now=NOW)


def test_explicit_ca_false_in_basic_constraints(
    pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey
) -> None:
    # Intel PTT EK certificates write basicConstraints { cA FALSE }.
    root, inter = pki
    good = ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384())
    raw = deviant(good, inter, _explicit_ca_false)
    v = verify_ek_certificate(raw, roots=[root.cert], intermediates=[inter.cert], now=NOW)
    assert [t.detail for _, t in v.deviations] == ["extension 2.5.29.19: cA FALSE"]


def test_strips_nv_padding_by_the_der_length(pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey) -> None:
    root, inter = pki
    good = der_of(ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384()))
    for fill, name in ((b"\xff", "0xFF"), (b"\x00", "0x00")):
        v = verify_ek_certificate(
            good + fill * 431, roots=[root.cert], intermediates=[inter.cert], now=NOW
        )
        assert v.certificate.der == good
        assert [(t.deviation, t.detail) for _, t in v.deviations] == [
            (Deviation.TRAILING_DATA, f"431 bytes of {name} fill")
        ]


def test_ecdsa_parameters_written_as_null(ek_key: rsa.RSAPrivateKey) -> None:
    # Intel's On-Die CA root writes NULL parameters in ecdsa-with-SHA384 (RFC 5758 forbids it).
    root = make_ca("ECDSA Root")
    good = ek_builder(root, ek_key.public_key()).sign(root.key, hashes.SHA384())
    alg = der.sequence(der_of_oid(x509.ObjectIdentifier("1.2.840.10045.4.3.3")), b"\x05\x00")

    def edit(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
        return {tbs.children[2].start: alg}

    raw = deviant(good, root, edit, alg=alg)
    v = verify_ek_certificate(raw, roots=[root.cert], now=NOW)
    assert {t.deviation for _, t in v.deviations} == {Deviation.ECDSA_PARAMETERS}


def test_multi_valued_rdn_roots_in_ber_order_load_and_chain(ek_key: rsa.RSAPrivateKey) -> None:
    # A Nuvoton-style root: one RDN {CN, O, C} not in DER order, in issuer and subject.
    root = make_ca("Nuvoton-like Root CA 2111", multi=True)

    def swap(tbs: Tlv, buf: bytes) -> dict[int, bytes]:
        edits = {}
        for name in (tbs.children[3], tbs.children[5]):  # issuer, subject
            rdn = name.children[0]
            members = [buf[m.start : m.end] for m in rdn.children]
            edits[rdn.start] = der.header(b"\x31", sum(map(len, members))) + b"".join(
                reversed(members)
            )
        return edits

    root_raw = deviant(root.cert, root, swap)
    with pytest.raises(ValueError):
        x509.load_der_x509_certificate(root_raw)
    anchor = parse_certificate(root_raw)
    assert anchor.self_issued and _kinds(anchor) == {Deviation.SET_ORDER}
    leaf = der_of(ek_builder(root, ek_key.public_key()).sign(root.key, hashes.SHA384()))
    v = verify_ek_certificate(leaf, roots=[anchor], now=NOW)
    assert v.chain[-1] == anchor


def test_critical_certificate_policies_on_an_intermediate_are_understood(
    pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey
) -> None:
    root, inter = pki
    assert inter.cert.extensions.get_extension_for_class(x509.CertificatePolicies).critical
    leaf = der_of(ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384()))
    verify_ek_certificate(leaf, roots=[root.cert], intermediates=[inter.cert], now=NOW)


def test_an_anchor_need_not_be_self_signed(pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey) -> None:
    # STMicro's and Infineon's published "roots" are issued by CAs they do not publish.
    _, inter = pki
    leaf = der_of(ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384()))
    v = verify_ek_certificate(leaf, roots=[inter.cert], now=NOW)
    assert len(v.chain) == 2


# --- refusals ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(pki: tuple[Ca, Ca], ek_key: rsa.RSAPrivateKey) -> bytes:
    _, inter = pki
    return der_of(ek_builder(inter, ek_key.public_key()).sign(inter.key, hashes.SHA384()))


def _reason(
    raw: bytes, roots: list[x509.Certificate], inters: list[x509.Certificate], now: datetime = NOW
) -> str:
    with pytest.raises(CertificateError) as info:
        verify_ek_certificate(raw, roots=roots, intermediates=inters, now=now)
    return info.value.reason


def test_refusals_name_their_check(
    pki: tuple[Ca, Ca], chain: bytes, ek_key: rsa.RSAPrivateKey
) -> None:
    root, inter = pki
    other = make_ca("Other Vendor Root")
    assert _reason(chain, [other.cert], [inter.cert]) == "no-path"
    assert _reason(chain, [root.cert], [inter.cert], NOT_AFTER + timedelta(seconds=1)) == "validity"
    assert (
        _reason(chain, [root.cert], [inter.cert], NOT_BEFORE - timedelta(seconds=1)) == "validity"
    )
    sig_at = len(chain) - 10
    bad = chain[:sig_at] + bytes([chain[sig_at] ^ 0x40]) + chain[sig_at + 1 :]
    assert _reason(bad, [root.cert], [inter.cert]) in ("signature", "format")
    # Same names, another key: a forged issuing CA and EK certificate.
    forger = make_ca("Vendor EK Issuing CA 05", make_ca("Vendor EK Root"))
    forged = der_of(ek_builder(forger, ek_key.public_key()).sign(forger.key, hashes.SHA384()))
    assert _reason(forged, [root.cert], [forger.cert, inter.cert]) in ("signature", "no-path")
    assert _reason(b"\x30\x03\x02\x01", [root.cert], []) == "format"


def test_refuses_a_weak_issuer_key_and_sha1(ek_key: rsa.RSAPrivateKey) -> None:
    small = make_ca("Small RSA Root", key=rsa.generate_private_key(65537, 1024))
    leaf = ek_builder(small, ek_key.public_key()).sign(small.key, hashes.SHA256())
    assert _reason(der_of(leaf), [small.cert], []) == "issuer-key"
    root = make_ca("SHA-1 Root", key=rsa.generate_private_key(65537, 2048))
    good = ek_builder(root, ek_key.public_key()).sign(root.key, hashes.SHA256())
    sha1_rsa = der.sequence(der_of_oid(x509.ObjectIdentifier("1.2.840.113549.1.1.5")), b"\x05\x00")
    buf = der_of(good)
    tbs_node = der.read(buf, []).children[0]
    tbs_buf = buf[tbs_node.start : tbs_node.end]
    tbs = der.read(tbs_buf, [])
    new_tbs = rebuild(tbs, tbs_buf, {tbs.children[2].start: sha1_rsa})
    assert isinstance(root.key, rsa.RSAPrivateKey)
    sig = b"\x00" + root.key.sign(new_tbs, padding.PKCS1v15(), hashes.SHA1())
    sha1 = der.sequence(new_tbs, sha1_rsa, der.header(b"\x03", len(sig)) + sig)
    assert _reason(sha1, [root.cert], []) == "signature-algorithm"


def test_refuses_mismatched_outer_and_signed_algorithms(pki: tuple[Ca, Ca], chain: bytes) -> None:
    root, inter = pki
    outer = der.read(chain, [])
    tbs, _, sig = outer.children
    other = der.sequence(der_of_oid(x509.ObjectIdentifier("1.2.840.10045.4.3.2")))
    swapped = der.sequence(chain[tbs.start : tbs.end], other, chain[sig.start : sig.end])
    assert _reason(swapped, [root.cert], [inter.cert]) == "signature-algorithm"


# --- CA files ------------------------------------------------------------------------------


def test_ca_files_load_one_by_one_pem_or_der(tmp_path: Path, pki: tuple[Ca, Ca]) -> None:
    root, inter = pki
    d = tmp_path / "cas"
    d.mkdir()
    (d / "root.cer").write_bytes(der_of(root.cert))  # DER, as vendors publish
    (d / "inter.pem").write_bytes(b"# a comment\n" + inter.cert.public_bytes(Encoding.PEM))
    (d / "broken.crt").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    (d / "notes.txt").write_text("ignored: not a certificate suffix")
    roots, inters = load_ek_cas([d])
    assert [c.subject for c in roots] == [root.cert.subject]
    assert [c.subject for c in inters] == [inter.cert.subject]
    store = load_ca_dirs(roots=[d])
    assert len(store.roots) == 2 and [e.path for e in store.errors] == [str(d / "broken.crt")]


def test_one_bad_certificate_in_a_bundle_costs_only_itself(
    tmp_path: Path, pki: tuple[Ca, Ca]
) -> None:
    root, inter = pki
    bad = b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "vendor-bundle.pem"
    bundle.write_bytes(
        root.cert.public_bytes(Encoding.PEM) + bad + inter.cert.public_bytes(Encoding.PEM)
    )
    store = load_ca_dirs(roots=[bundle])
    assert len(store.roots) == 2 and [e.error[:15] for e in store.errors] == ["PEM certificate"]


def test_named_ca_paths_fail_closed(tmp_path: Path) -> None:
    # A typo or a file with no usable root must not leave a verifier trusting nothing quietly.
    with pytest.raises(FileNotFoundError):
        load_ek_cas([tmp_path / "no-such-ca.pem"])
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertificateFormatError, match="no EK root loaded"):
        load_ek_cas([broken])


def test_store_tree_layout(tmp_path: Path, pki: tuple[Ca, Ca], chain: bytes) -> None:
    root, inter = pki
    (tmp_path / "vendor" / "roots").mkdir(parents=True)
    (tmp_path / "vendor" / "intermediates").mkdir()
    (tmp_path / "vendor" / "roots" / "r.der").write_bytes(der_of(root.cert))
    (tmp_path / "vendor" / "intermediates" / "i.pem").write_bytes(
        inter.cert.public_bytes(Encoding.PEM)
    )
    store = load_ca_tree(tmp_path)
    assert (len(store.roots), len(store.intermediates), store.errors) == (1, 1, ())
    v = verify_ek_chain(
        parse_certificate(chain), anchors=store.roots, intermediates=store.intermediates, now=NOW
    )
    assert v.chain[-1].subject == root.cert.subject


def test_parse_input_reads_pem_der_and_nv(chain: bytes) -> None:
    pem = x509.load_der_x509_certificate(chain).public_bytes(Encoding.PEM)
    assert parse_input(pem).der == parse_input(chain).der == parse_input(chain + b"\xff" * 8).der
    with pytest.raises(CertificateFormatError):
        parse_input(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")


# --- the reader under hostile input -----------------------------------------------------------


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=600))
def test_reader_lets_only_its_format_error_escape_on_random_bytes(data: bytes) -> None:
    for candidate in (data, b"\x30\x82" + data[:2] + data):
        with contextlib.suppress(CertificateFormatError):
            parse_bundle(candidate)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_certificates_parse_or_fail_cleanly_and_never_verify(
    chain: bytes, pki: tuple[Ca, Ca], data: st.DataObject
) -> None:
    root, inter = pki
    raw = bytearray(chain)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[at : at + data.draw(st.integers(1, 8))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    mutated = bytes(raw)
    try:
        cert = parse_certificate(mutated)
    except CertificateFormatError:
        return
    if (
        cert.tbs == parse_certificate(chain).tbs
        and cert.decoded.signature == x509.load_der_x509_certificate(chain).signature
    ):
        return  # the mutation only touched trailing bytes or re-encoded nothing signed
    with pytest.raises(CertificateError):
        verify_ek_chain(cert, anchors=[root.cert], intermediates=[inter.cert], now=NOW)


def test_the_bundled_store_loads_without_errors() -> None:
    store = bundled_ek_roots()
    assert store.errors == ()
    assert not set(store.roots) & set(store.intermediates)


def test_an_invalid_x509_version_is_the_documented_format_error(pki: tuple[Ca, Ca]) -> None:
    """Found by the hypothesis test above: cryptography's InvalidVersion escaped the reader."""
    raw = der_of(pki[0].cert)
    v3 = b"\xa0\x03\x02\x01\x02"  # [0] EXPLICIT INTEGER 2: an X.509 v3 certificate
    assert raw.count(v3) == 1
    with pytest.raises(CertificateFormatError, match="not an X.509 certificate"):
        parse_certificate(raw.replace(v3, b"\xa0\x03\x02\x01\x03"))


def test_a_name_attribute_of_the_wrong_string_type_is_a_format_error(
    ek_key: rsa.RSAPrivateKey,
) -> None:
    """A subject attribute encoded as a BIT STRING under an OID that is not x500UniqueIdentifier:
    cryptography raises TypeError reading the name. Found by bench/fuzz.py (1M inputs of the
    ekcert target, seed 12385504068704895216): it must be the one documented format error."""
    with pytest.raises(CertificateFormatError, match="not an X.509 certificate"):
        parse_certificate(odd_name_certificate(ek_key))
