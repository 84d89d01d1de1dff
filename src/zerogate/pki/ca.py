"""Certificate authority: keys, CA, server and device certificates, CA pins.

Everything here is pure: PEM bytes in, PEM bytes out, no network or file I/O.
Keys are EC P-256 and signatures ECDSA with SHA-256.

A *pin* identifies a trust anchor: ``sha256/`` followed by the unpadded
base64url SHA-256 of the CA certificate's SubjectPublicKeyInfo (DER). Pinning
the public key rather than the certificate lets the CA be re-issued with the
same key without invalidating install strings that are already out there.

Errors (all raised by this module)::

    PKIError(Exception)      bad input: unparsable PEM, key/cert mismatch, empty names...
    ├── InvalidCSR           a device CSR that cannot be trusted (bad PEM, bad signature,
    │                        weak or unsupported key)
    └── InvalidPin           a pin that is not of the form sha256/<43 base64url chars>

Size: about 500 lines, kept whole on purpose: issuing, checking and pinning share
the key loading and name helpers, and one reading of this module is one review
of the deployment's trust root.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateInfo",
    "InvalidCSR",
    "InvalidPin",
    "PKIError",
    "ca_pin",
    "certificate_info",
    "create_ca",
    "create_csr",
    "generate_private_key",
    "is_issued_by",
    "issue_server_certificate",
    "parse_pin",
    "pin_matches",
    "sign_device_csr",
]

PIN_PREFIX = "sha256/"
PIN_EXAMPLE = "sha256/" + "A" * 43
# Certificates start a little in the past so that a peer whose clock lags a
# few minutes does not reject a certificate issued a moment ago.
_BACKDATE = dt.timedelta(minutes=5)
_MIN_RSA_BITS = 2048


class PKIError(Exception):
    """A PKI operation got input it cannot work with."""


class InvalidCSR(PKIError):
    """A certificate signing request was rejected."""


class InvalidPin(PKIError):
    """A CA pin string is malformed."""


@dataclass(frozen=True)
class CertificateInfo:
    """The facts about a certificate that the rest of zerogate looks at."""

    common_name: str | None
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    san_names: tuple[str, ...]
    organizational_unit: str | None = None
    issuer_common_name: str | None = None

    @property
    def subject_cn(self) -> str | None:
        return self.common_name

    @property
    def role(self) -> str | None:
        """Device role, carried in the subject OU of device certificates."""
        return self.organizational_unit


# --------------------------------------------------------------------------- keys


def generate_private_key() -> bytes:
    """A new EC P-256 private key as unencrypted PKCS8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_to_pem(key)


def _key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_signing_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"cannot read private key PEM: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"expected an EC private key, got {type(key).__name__}")
    return key


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PKIError(f"cannot read certificate PEM: {exc}") from exc


def _load_ca(ca_key_pem: bytes, ca_cert_pem: bytes) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _load_signing_key(ca_key_pem)
    cert = _load_cert(ca_cert_pem)
    if cert.public_key() != key.public_key():
        raise PKIError("the CA private key does not belong to the CA certificate")
    if not _is_ca(cert):
        raise PKIError("the issuing certificate is not a CA certificate")
    return key, cert


def _name(common_name: str, organizational_unit: str | None = None) -> x509.Name:
    try:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organizational_unit is not None:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit))
        return x509.Name(attrs)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"invalid certificate subject: {exc}") from exc


def _new_serial() -> int:
    # 127 random bits with the top bit set: positive, fixed length, fits in
    # 16 DER octets and is far beyond guessing.
    return secrets.randbits(127) | (1 << 126)


def _validity(valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    if valid_days < 1:
        raise PKIError(f"valid_days must be at least 1, got {valid_days}")
    now = dt.datetime.now(dt.UTC)
    return now - _BACKDATE, now + dt.timedelta(days=valid_days)


# --------------------------------------------------------------------------- CA


def create_ca(common_name: str, valid_days: int = 3650) -> tuple[bytes, bytes]:
    """Create a self-signed CA; returns ``(ca_key_pem, ca_cert_pem)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    not_before, not_after = _validity(valid_days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_new_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_to_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def _leaf_builder(
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey,
    serial: int,
    valid_days: int,
    eku: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    not_before, not_after = _validity(valid_days)
    # Never outlive the CA: a chain is only as valid as its shortest link.
    not_after = min(not_after, ca_cert.not_valid_after_utc)
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        ca_public = ca_cert.public_key()
        assert isinstance(ca_public, ec.EllipticCurvePublicKey)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _general_name(name: str) -> x509.GeneralName:
    text = name.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or not re.fullmatch(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", text):
        raise PKIError(
            f"{name!r} is neither an IP address nor a DNS name "
            "(use the ASCII/punycode form for international names)"
        )
    return x509.DNSName(text.lower())


def issue_server_certificate(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    names: Sequence[str],
    valid_days: int = 825,
) -> tuple[bytes, bytes]:
    """Issue a TLS server certificate for ``names`` with a freshly generated key.

    Each name becomes a subjectAltName: IP literals as IPAddress, the rest as
    DNSName. Returns ``(key_pem, cert_pem)``.
    """
    if isinstance(names, str):
        raise PKIError("names must be a sequence of names, not a single string")
    if not names:
        raise PKIError("a server certificate needs at least one DNS name or IP address")
    ca_key, ca_cert = _load_ca(ca_key_pem, ca_cert_pem)
    sans = [_general_name(n) for n in names]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(names[0].strip().strip("[]")[:64])
    cert = (
        _leaf_builder(
            ca_cert,
            subject,
            key.public_key(),
            _new_serial(),
            valid_days,
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _key_to_pem(key), cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- devices


def create_csr(key_pem: bytes, common_name: str) -> bytes:
    """A PEM certificate signing request for ``key_pem`` (EC or Ed25519)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"cannot read private key PEM: {exc}") from exc
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        csr = builder.sign(key, None)
    elif isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        csr = builder.sign(key, hashes.SHA256())
    else:
        raise PKIError(f"unsupported key type for a CSR: {type(key).__name__}")
    return csr.public_bytes(serialization.Encoding.PEM)


def _check_device_key(
    key: object,
) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidCSR(f"EC keys must use curve P-256, not {key.curve.name}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidCSR(f"RSA key of {key.key_size} bits is too weak (minimum {_MIN_RSA_BITS})")
        return key
    raise InvalidCSR(f"unsupported key type {type(key).__name__}; use EC P-256 or Ed25519")


def sign_device_csr(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    csr_pem: bytes,
    *,
    common_name: str,
    role: str,
    valid_days: int = 365,
) -> tuple[bytes, int]:
    """Sign a device's CSR; returns ``(cert_pem, serial)``.

    Only the CSR's public key is used. The subject (CN=common_name, OU=role) is
    decided by the CA, never copied from the request, so a device cannot ask
    for someone else's identity.
    """
    for label, value in (("common_name", common_name), ("role", role)):
        if not value.strip() or len(value) > 64:
            raise PKIError(f"invalid certificate subject: {label} must be 1-64 characters")
    ca_key, ca_cert = _load_ca(ca_key_pem, ca_cert_pem)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidCSR(f"cannot read certificate signing request PEM: {exc}") from exc
    try:
        public = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise InvalidCSR(f"unsupported key in certificate signing request: {exc}") from exc
    public = _check_device_key(public)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError, InvalidSignature, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidCSR(f"cannot check the CSR signature: {exc}") from exc
    if not signature_ok:
        raise InvalidCSR("the CSR signature does not verify (request damaged or forged)")
    serial = _new_serial()
    cert = (
        _leaf_builder(
            ca_cert,
            _name(common_name, role),
            public,
            serial,
            valid_days,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), serial


def is_issued_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """True if ``cert_pem`` is directly signed by ``ca_cert_pem`` and currently valid.

    Only the signature and validity period are checked; revocation is the
    controller's business.
    """
    cert = _load_cert(cert_pem)
    ca = _load_cert(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


# --------------------------------------------------------------------------- pins


def ca_pin(cert_pem: bytes) -> str:
    """``sha256/<base64url SHA-256 of the certificate's SubjectPublicKeyInfo>``."""
    cert = _load_cert(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki).digest()
    return PIN_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def parse_pin(text: str) -> str:
    """Validate a pin and return it in canonical form.

    Accepts the canonical form plus what people paste by accident: surrounding
    whitespace, an upper-case prefix, trailing ``=`` padding, or standard
    base64 (``+/``) instead of base64url.
    """
    raw = text.strip()
    if raw[: len(PIN_PREFIX)].lower() != PIN_PREFIX:
        raise InvalidPin(_pin_message(text, "it must start with sha256/"))
    body = raw[len(PIN_PREFIX) :].rstrip("=").replace("+", "-").replace("/", "_")
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", body):
        raise InvalidPin(_pin_message(text, "expected 43 base64url characters after sha256/"))
    try:
        digest = base64.urlsafe_b64decode(body + "=")
    except (binascii.Error, ValueError) as exc:
        raise InvalidPin(_pin_message(text, "the part after sha256/ is not base64url")) from exc
    if len(digest) != 32:  # pragma: no cover - 43 chars always decode to 32 bytes
        raise InvalidPin(_pin_message(text, "expected a 32-byte SHA-256 digest"))
    canonical = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    if canonical != body:
        # The last character carries 2 unused bits; refuse non-canonical spellings
        # so two strings never name the same pin.
        raise InvalidPin(_pin_message(text, "the last character is not canonical base64url"))
    return PIN_PREFIX + canonical


def _pin_message(text: str, why: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"invalid CA pin {shown!r}: {why} (expected the form {PIN_EXAMPLE})"


def pin_matches(cert_pem: bytes, pin: str) -> bool:
    """Constant-time check that ``cert_pem``'s public key has the given pin."""
    try:
        expected = parse_pin(pin)
        actual = ca_pin(cert_pem)
    except PKIError:
        return False
    return hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii"))


# --------------------------------------------------------------------------- info


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _first_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    """Summarise a PEM certificate."""
    cert = _load_cert(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n.value) for n in san if isinstance(n, x509.DNSName | x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    return CertificateInfo(
        common_name=_first_attr(cert.subject, NameOID.COMMON_NAME),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=_is_ca(cert),
        san_names=names,
        organizational_unit=_first_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        issuer_common_name=_first_attr(cert.issuer, NameOID.COMMON_NAME),
    )
