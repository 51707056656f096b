"""TLS material for the ingress gateway: check a user's pair, make a self-signed one.

A pair is a PEM certificate (the leaf first, intermediates after it) and its
unencrypted PEM private key. The key is kept out of every `repr`, message and
description on purpose: it must never reach output, logs, diffs or JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kymamesh.errors import PreconditionError, UsageError

SELF_SIGNED_ORG = "kymamesh self-signed"
MIN_RSA_BITS = 2048  # Envoy refuses smaller RSA keys

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)


class InvalidCertificateError(PreconditionError):
    """A certificate or key given by the user cannot be used; nothing was written (exit 3)."""

    code = "invalid-certificate"


def check_domain(domain: str) -> str:
    """The domain in canonical form (lower case, no trailing dot), or a usage error."""
    canonical = domain.strip().lower().rstrip(".")
    if canonical.startswith("*."):
        raise UsageError(
            f"the domain '{domain}' must not start with '*.'",
            hint="give the bare domain (e.g. example.com); the certificate covers *.DOMAIN",
        )
    if not _DOMAIN.match(canonical):
        raise UsageError(
            f"'{domain}' is not a DNS domain name",
            hint="give a name with at least two labels, e.g. local.kyma.dev",
        )
    return canonical


@dataclass(frozen=True)
class CertificateInfo:
    """What can be said about a certificate without showing any secret."""

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the leaf, hex
    self_issued: bool
    chain_length: int = 1

    def covers(self, domain: str) -> bool:
        """True when a subjectAltName is exactly `*.<domain>` (what the Gateway serves)."""
        return f"*.{domain}" in self.dns_names

    def expires_within(self, days: float, now: datetime) -> bool:
        return self.not_after <= now + timedelta(days=days)

    def days_left(self, now: datetime) -> int:
        return (self.not_after - now).days

    def short(self) -> str:
        kind = "self-signed certificate" if self.self_issued else "certificate"
        return f"{kind} for {', '.join(self.dns_names) or self.subject}"

    def view(self) -> dict[str, object]:
        """The public facts, as a map (for diffs)."""
        return {
            "subject": self.subject,
            "dnsNames": list(self.dns_names),
            "issuer": self.issuer,
            "notAfter": f"{self.not_after:%Y-%m-%d %H:%M} UTC",
            "sha256": self.fingerprint,
        }

    def describe(self) -> str:
        names = ", ".join(self.dns_names) or "no DNS names"
        kind = "self-signed " if self.self_issued else ""
        return (
            f"{kind}certificate {self.subject} for {names}, issued by {self.issuer}, "
            f"valid until {self.not_after:%Y-%m-%d %H:%M} UTC, sha256 {self.fingerprint[:16]}…"
        )


@dataclass(frozen=True)
class TlsPair:
    """A certificate chain and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    info: CertificateInfo

    def __repr__(self) -> str:  # never the key, not even by accident
        return f"TlsPair({self.info.describe()})"

    def same_as(self, other: TlsPair) -> bool:
        """Same chain and same key, whatever the PEM formatting."""
        return _chain_der(self.cert_pem) == _chain_der(other.cert_pem) and _key_der(
            self.key_pem
        ) == _key_der(other.key_pem)


def _chain_der(pem: bytes) -> list[bytes]:
    return [
        c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem)
    ]


def _key_der(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        return f"CN={common[0].value!s}"
    return name.rfc4514_string() or "(empty name)"


def describe_certificate(cert: x509.Certificate, chain_length: int = 1) -> CertificateInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(str(n).lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    return CertificateInfo(
        subject=_name(cert.subject),
        issuer=_name(cert.issuer),
        dns_names=dns,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        self_issued=cert.issuer == cert.subject,
        chain_length=chain_length,
    )


def parse_pair(
    cert_pem: bytes,
    key_pem: bytes,
    cert_origin: str = "the certificate",
    key_origin: str = "the key",
) -> TlsPair:
    """Parse a PEM pair and check that the key belongs to the certificate."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise InvalidCertificateError(
            f"{cert_origin} is not a PEM certificate",
            hint="give a file with '-----BEGIN CERTIFICATE-----' blocks, "
            "the server certificate first",
        ) from None
    if b"PRIVATE KEY-----" in cert_pem:
        raise InvalidCertificateError(
            f"{cert_origin} contains a private key",
            hint="give the certificate and the key as two separate files",
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise InvalidCertificateError(
            f"{key_origin} is encrypted with a passphrase",
            hint="give the key unencrypted (e.g. `openssl pkey -in KEY -out plain.key`)",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCertificateError(
            f"{key_origin} is not a PEM private key",
            hint="give a file with a '-----BEGIN ... PRIVATE KEY-----' block",
        ) from None
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        raise InvalidCertificateError(
            f"{key_origin} is a {type(key).__name__}, which a TLS server cannot use",
            hint="use an RSA (2048 bits or more) or ECDSA key",
        )
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise InvalidCertificateError(
            f"{key_origin} is an RSA key of {key.key_size} bits; "
            f"Envoy needs at least {MIN_RSA_BITS}",
            hint="issue the certificate for a 2048-bit (or larger) RSA key or an ECDSA key",
        )
    leaf = chain[0]
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if key.public_key().public_bytes(enc, der) != leaf.public_key().public_bytes(enc, der):
        info = describe_certificate(leaf, len(chain))
        raise InvalidCertificateError(
            f"{key_origin} does not belong to {cert_origin} ({info.subject}): "
            "their public keys differ",
            hint="give the key the certificate was issued for; the first certificate in the file "
            "must be the server certificate",
        )
    return TlsPair(cert_pem=cert_pem, key_pem=key_pem, info=describe_certificate(leaf, len(chain)))


def load_pair(cert_file: str | Path, key_file: str | Path) -> TlsPair:
    """Read and parse a user's certificate and key files."""
    cert_pem = _read(Path(cert_file), "certificate")
    key_pem = _read(Path(key_file), "key")
    return parse_pair(cert_pem, key_pem, f"the certificate {cert_file}", f"the key {key_file}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidCertificateError(
            f"cannot read the {what} file {path}: {exc.strerror or exc}",
            hint="check the path given to --tls-cert/--tls-key and its permissions",
        ) from None


def check_usable(pair: TlsPair, domain: str, now: datetime, renew_before_days: float) -> list[str]:
    """Refuse a certificate the gateway cannot serve; return warnings for one that is usable.

    Expired, not yet valid or not covering `*.<domain>`: refused. Expiring within
    `renew_before_days`: accepted with a warning, because it still works today and
    kymamesh never swaps a user's certificate for a self-signed one.
    """
    info = pair.info
    if info.not_after <= now:
        raise InvalidCertificateError(
            f"the certificate {info.subject} expired on {info.not_after:%Y-%m-%d %H:%M} UTC",
            hint="give a current certificate, or leave out --tls-cert/--tls-key "
            "for a self-signed one",
        )
    if info.not_before > now:
        raise InvalidCertificateError(
            f"the certificate {info.subject} is not valid before "
            f"{info.not_before:%Y-%m-%d %H:%M} UTC",
            hint="check the clock of the machine that issued it, or wait until then",
        )
    if not info.covers(domain):
        names = ", ".join(info.dns_names) or "none"
        raise InvalidCertificateError(
            f"the certificate {info.subject} does not cover *.{domain} "
            f"(its DNS subjectAltNames: {names})",
            hint=f"give a certificate with the subjectAltName *.{domain}, or pass the --domain "
            "it was issued for",
        )
    if info.expires_within(renew_before_days, now):
        return [
            f"the given certificate {info.subject} expires on {info.not_after:%Y-%m-%d} "
            f"(in {info.days_left(now)} days): it is installed, but renew it and re-run with "
            "the new --tls-cert/--tls-key soon"
        ]
    return []


def self_signed(domain: str, validity_days: int, now: datetime | None = None) -> TlsPair:
    """A new EC P-256 key and a self-signed certificate for `*.<domain>` and `<domain>`."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + timedelta(days=validity_days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsPair(cert_pem=cert_pem, key_pem=key_pem, info=describe_certificate(cert))
