"""Tests for the certificate authority (zerogate.pki.ca)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from zerogate.pki.ca import (
    InvalidCSR,
    InvalidPin,
    PKIError,
    ca_pin,
    certificate_info,
    create_ca,
    create_csr,
    generate_private_key,
    is_issued_by,
    issue_server_certificate,
    parse_pin,
    pin_matches,
    sign_device_csr,
)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("zerogate test CA")


def _pem(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_generate_private_key_is_unencrypted_pkcs8_p256() -> None:
    pem = generate_private_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert generate_private_key() != pem


def test_create_ca_extensions(ca: tuple[bytes, bytes]) -> None:
    key_pem, cert_pem = ca
    cert = x509.load_pem_x509_certificate(cert_pem)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    info = certificate_info(cert_pem)
    assert info.is_ca and info.common_name == "zerogate test CA"
    assert info.not_after - info.not_before > dt.timedelta(days=3649)


def test_create_ca_rejects_bad_input() -> None:
    with pytest.raises(PKIError, match="valid_days"):
        create_ca("x", valid_days=0)
    with pytest.raises(PKIError, match="subject"):
        create_ca("")


def test_server_certificate_sans_and_chain(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    key_pem, cert_pem = issue_server_certificate(
        ca_key, ca_cert, ["controller.example.test", "127.0.0.1", "[::1]"]
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["controller.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert cert.public_key() == key.public_key()
    assert key_pem != ca_key
    info = certificate_info(cert_pem)
    assert info.san_names == ("controller.example.test", "127.0.0.1", "::1")
    assert not info.is_ca
    assert info.issuer_common_name == "zerogate test CA"
    assert is_issued_by(cert_pem, ca_cert)


def test_server_certificate_never_outlives_ca() -> None:
    ca_key, ca_cert = create_ca("short CA", valid_days=10)
    _, cert_pem = issue_server_certificate(ca_key, ca_cert, ["a.test"], valid_days=825)
    assert certificate_info(cert_pem).not_after <= certificate_info(ca_cert).not_after


def test_server_certificate_errors(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(PKIError, match="at least one"):
        issue_server_certificate(ca_key, ca_cert, [])
    with pytest.raises(PKIError, match="sequence"):
        issue_server_certificate(ca_key, ca_cert, "a.test")
    with pytest.raises(PKIError, match="neither an IP address nor a DNS name"):
        issue_server_certificate(ca_key, ca_cert, ["bad name!"])
    with pytest.raises(PKIError, match="does not belong"):
        issue_server_certificate(generate_private_key(), ca_cert, ["a.test"])
    with pytest.raises(PKIError, match="private key PEM"):
        issue_server_certificate(b"garbage", ca_cert, ["a.test"])
    with pytest.raises(PKIError, match="certificate PEM"):
        issue_server_certificate(ca_key, b"garbage", ["a.test"])
    with pytest.raises(PKIError, match="EC private key"):
        issue_server_certificate(_pem(ed25519.Ed25519PrivateKey.generate()), ca_cert, ["a"])
    # A leaf certificate cannot act as a CA.
    leaf_key, leaf_cert = issue_server_certificate(ca_key, ca_cert, ["a.test"])
    with pytest.raises(PKIError, match="not a CA"):
        issue_server_certificate(leaf_key, leaf_cert, ["b.test"])


def test_device_csr_roundtrip_subject_set_by_ca(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    csr = create_csr(generate_private_key(), "admin")  # the device asks to be "admin"
    cert_pem, serial = sign_device_csr(ca_key, ca_cert, csr, common_name="connector-7", role="connector")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.serial_number == serial
    assert 2**100 < serial < 2**128
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "connector-7"
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "connector"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert))
    info = certificate_info(cert_pem)
    assert info.subject_cn == "connector-7" and info.role == "connector"
    assert info.serial == serial and info.san_names == ()
    _, serial2 = sign_device_csr(ca_key, ca_cert, csr, common_name="c", role="connector")
    assert serial2 != serial


@pytest.mark.parametrize(
    "key",
    [
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ed25519", "rsa2048"],
)
def test_device_csr_accepts_ed25519_and_strong_rsa(ca: tuple[bytes, bytes], key: object) -> None:
    ca_key, ca_cert = ca
    csr = create_csr(_pem(key), "dev")
    cert_pem, _ = sign_device_csr(ca_key, ca_cert, csr, common_name="dev", role="client")
    assert is_issued_by(cert_pem, ca_cert)


def test_device_csr_rejects_weak_and_odd_keys(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    weak_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidCSR, match="too weak"):
        sign_device_csr(ca_key, ca_cert, create_csr(_pem(weak_rsa), "x"), common_name="x", role="r")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(InvalidCSR, match="P-256"):
        sign_device_csr(ca_key, ca_cert, create_csr(_pem(p384), "x"), common_name="x", role="r")


def test_device_csr_rejects_garbage_and_forgery(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(InvalidCSR, match="cannot read"):
        sign_device_csr(ca_key, ca_cert, b"not a csr", common_name="x", role="r")
    # Sign a CSR with one key but carry another key's public key: the signature fails.
    good = x509.load_pem_x509_csr(create_csr(generate_private_key(), "x"))
    other = x509.load_pem_x509_csr(create_csr(generate_private_key(), "x"))
    tbs = good.tbs_certrequest_bytes
    spki_good = good.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_other = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(spki_good) == len(spki_other) and spki_good in tbs
    der = good.public_bytes(serialization.Encoding.DER).replace(spki_good, spki_other)
    forged = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(der)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(InvalidCSR, match="signature"):
        sign_device_csr(ca_key, ca_cert, forged, common_name="x", role="r")


def test_create_csr_errors() -> None:
    with pytest.raises(PKIError, match="private key PEM"):
        create_csr(b"nope", "x")


def test_is_issued_by_rejects_other_ca(ca: tuple[bytes, bytes]) -> None:
    other_key, other_cert = create_ca("other")
    _, cert_pem = issue_server_certificate(other_key, other_cert, ["a.test"])
    assert not is_issued_by(cert_pem, ca[1])


def test_pin_format_and_matching(ca: tuple[bytes, bytes]) -> None:
    _, ca_cert = ca
    pin = ca_pin(ca_cert)
    assert pin.startswith("sha256/") and len(pin) == len("sha256/") + 43
    assert "=" not in pin and "+" not in pin
    assert parse_pin(pin) == pin
    assert pin_matches(ca_cert, pin)
    assert not pin_matches(create_ca("other")[1], pin)
    assert not pin_matches(ca_cert, "garbage")
    assert not pin_matches(b"not a cert", pin)
    # Re-issuing the CA certificate with the same key keeps the pin.
    assert ca_pin(ca_cert) == pin


def test_pin_is_spki_hash(ca: tuple[bytes, bytes]) -> None:
    import hashlib

    cert = x509.load_pem_x509_certificate(ca[1])
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode()
    assert ca_pin(ca[1]) == "sha256/" + digest


def test_parse_pin_normalises_sloppy_input(ca: tuple[bytes, bytes]) -> None:
    pin = ca_pin(ca[1])
    body = pin.removeprefix("sha256/")
    std = body.replace("-", "+").replace("_", "/")
    assert parse_pin(f"  SHA256/{std}=  \n") == pin


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "must start with sha256/"),
        ("sha1/" + "A" * 43, "must start with sha256/"),
        ("sha256/" + "A" * 42, "43 base64url"),
        ("sha256/" + "A" * 44, "43 base64url"),
        ("sha256/" + "A" * 42 + "!", "43 base64url"),
        ("sha256/" + "A" * 42 + "B", "not canonical"),
    ],
)
def test_parse_pin_errors_show_expected_form(text: str, why: str) -> None:
    with pytest.raises(InvalidPin, match=why) as info:
        parse_pin(text)
    assert "expected the form sha256/" in str(info.value)
    assert isinstance(info.value, PKIError)


def test_certificate_info_errors() -> None:
    with pytest.raises(PKIError):
        certificate_info(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_sign_device_csr_rejects_bad_subject_and_validity(ca: tuple[bytes, bytes]) -> None:
    ca_key, ca_cert = ca
    csr = create_csr(generate_private_key(), "x")
    with pytest.raises(PKIError, match="subject"):
        sign_device_csr(ca_key, ca_cert, csr, common_name="x", role="")
    with pytest.raises(PKIError, match="subject"):
        sign_device_csr(ca_key, ca_cert, csr, common_name="x" * 65, role="client")
    with pytest.raises(PKIError, match="valid_days"):
        sign_device_csr(ca_key, ca_cert, csr, common_name="x", role="client", valid_days=0)
