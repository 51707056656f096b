"""TLS material for the ingress gateway: check a user's pair, make a self-signed one.

A pair is a PEM certificate (the leaf first, intermediates after it) and its
unencrypted PEM private key. The key is kept out of every `repr`, message and
description on purpose: it must never reach output, logs, diffs or JSON.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
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


def _load_key(key_pem: bytes, origin: str) -> PrivateKeyTypes:
    """A private key from PEM, or a clear error naming `origin` (never the key)."""
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise InvalidCertificateError(
            f"{origin} is encrypted with a passphrase",
            hint="give the key unencrypted (e.g. `openssl pkey -in KEY -out plain.key`)",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCertificateError(
            f"{origin} is not a PEM private key",
            hint="give a file with a '-----BEGIN ... PRIVATE KEY-----' block",
        ) from None


def _same_public_key(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return key.public_key().public_bytes(enc, der) == cert.public_key().public_bytes(enc, der)


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
    key = _load_key(key_pem, key_origin)
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
    if not _same_public_key(key, leaf):
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


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """A certificate for `key`, valid from a few minutes ago (small clock skew between
    hosts) until `not_after`, with a random serial; extensions are the caller's."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
    )


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
        _builder(name, name, key, now, now + timedelta(days=validity_days))
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


# -- a mesh's shared root of trust (Istio's plug-in CA) -------------------------------
#
# In a mesh of several clusters every istiod signs its workloads' certificates with an
# intermediate CA of its own, all issued by one root: Istio's plug-in CA, the Secret
# `istio-system/cacerts` with the keys below. The root's key stays with the user (it
# is never written to a cluster); each cluster holds only its intermediate's key.

ROOT_CERT, ROOT_KEY = "root-cert.pem", "root-key.pem"
CA_CERT, CA_KEY, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "cert-chain.pem"
CACERTS_KEYS = (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN)
MESH_CA_ORG = "kymamesh mesh CA"
ROOT_VALIDITY_DAYS = 3650
INTERMEDIATE_VALIDITY_DAYS = 730


@dataclass(frozen=True)
class RootCa:
    """A mesh's root CA: its certificate and (when the user has it at hand) its key."""

    cert: x509.Certificate
    key_pem: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"RootCa({_name(self.cert.subject)}, sha256 {self.fingerprint[:16]}…)"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class ClusterCa:
    """One cluster's plug-in CA: the four PEM values of Secret `cacerts`."""

    ca_cert_pem: bytes
    ca_key_pem: bytes = field(repr=False)
    cert_chain_pem: bytes
    root_cert_pem: bytes

    def __repr__(self) -> str:
        return f"ClusterCa({self.describe()})"

    @property
    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_cert_pem)

    @property
    def root(self) -> RootCa:
        return RootCa(x509.load_pem_x509_certificate(self.root_cert_pem))

    def values(self) -> dict[str, bytes]:
        return {
            CA_CERT: self.ca_cert_pem,
            CA_KEY: self.ca_key_pem,
            ROOT_CERT: self.root_cert_pem,
            CERT_CHAIN: self.cert_chain_pem,
        }

    def describe(self) -> str:
        """The public facts: the intermediate, its root, until when (never the key)."""
        cert = self.ca_cert
        return (
            f"intermediate CA {_name(cert.subject)} valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d} UTC, issued by root "
            f"{_name(self.root.cert.subject)} (sha256 {self.root.fingerprint[:16]}…)"
        )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def make_root_ca(
    name: str = "root", validity_days: int = ROOT_VALIDITY_DAYS, now: datetime | None = None
) -> tuple[bytes, bytes]:
    """A new root CA for a mesh: (certificate PEM, key PEM), EC P-256."""
    now = now or datetime.now(UTC)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, MESH_CA_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root CA"),
        ]
    )
    cert = (
        _builder(subject, subject, key, now, now + timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_cluster_ca(
    root: RootCa,
    cluster: str,
    validity_days: int = INTERMEDIATE_VALIDITY_DAYS,
    now: datetime | None = None,
) -> ClusterCa:
    """A new intermediate CA for one cluster, issued by `root` (whose key it needs)."""
    if root.key_pem is None:
        raise UsageError("the root CA's key is needed to issue a cluster's intermediate CA")
    now = now or datetime.now(UTC)
    root_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, MESH_CA_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} intermediate CA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, cluster),
        ]
    )
    not_after = min(now + timedelta(days=validity_days), root.cert.not_valid_after_utc)
    cert = (
        _builder(subject, root.cert.subject, key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"istiod.{cluster}.mesh.local")]),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    ca_pem = cert.public_bytes(serialization.Encoding.PEM)
    return ClusterCa(
        ca_cert_pem=ca_pem,
        ca_key_pem=_key_pem(key),
        cert_chain_pem=ca_pem + root.cert_pem,
        root_cert_pem=root.cert_pem,
    )


def _certs(pem: bytes, origin: str) -> list[x509.Certificate]:
    if b"PRIVATE KEY-----" in pem:
        raise InvalidCertificateError(
            f"{origin} contains a private key",
            hint="keep certificates and keys in separate files",
        )
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InvalidCertificateError(
            f"{origin} is not a PEM certificate",
            hint="give a file with '-----BEGIN CERTIFICATE-----' blocks",
        ) from None


def _check_key(cert: x509.Certificate, key_pem: bytes, cert_origin: str, key_origin: str) -> None:
    key = _load_key(key_pem, key_origin)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidCertificateError(
            f"{key_origin} is a {type(key).__name__}; Istio's CA takes RSA or ECDSA keys",
            hint="issue the CA for an RSA (2048 bits or more) or ECDSA key",
        )
    if not _same_public_key(key, cert):
        raise InvalidCertificateError(
            f"{key_origin} does not belong to {cert_origin} ({_name(cert.subject)}): their "
            "public keys differ",
            hint="give the key the certificate was issued for",
        )


def _check_ca_cert(cert: x509.Certificate, origin: str, now: datetime) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = basic.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidCertificateError(
            f"{origin} ({_name(cert.subject)}) is not a CA certificate (basicConstraints CA:TRUE)",
            hint="give a CA certificate; `kymamesh ca create --out DIR` makes a root CA",
        )
    if cert.not_valid_after_utc <= now:
        raise InvalidCertificateError(
            f"{origin} ({_name(cert.subject)}) expired on "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            hint="give a current CA (a new root means every cluster of the mesh needs it)",
        )
    if cert.not_valid_before_utc > now:
        raise InvalidCertificateError(
            f"{origin} ({_name(cert.subject)}) is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            hint="check the clock of the machine that issued it, or wait until then",
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_root(cert_pem: bytes, key_pem: bytes | None, origin: str, now: datetime) -> RootCa:
    """A root CA as given: one self-signed CA certificate, current, its key matching."""
    certs = _certs(cert_pem, f"{origin}/{ROOT_CERT}")
    if len(certs) != 1:
        raise InvalidCertificateError(
            f"{origin}/{ROOT_CERT} holds {len(certs)} certificates, not the root alone",
            hint="keep only the root CA certificate in it",
        )
    cert = certs[0]
    _check_ca_cert(cert, f"{origin}/{ROOT_CERT}", now)
    if cert.issuer != cert.subject or not _issued_by(cert, cert):
        raise InvalidCertificateError(
            f"{origin}/{ROOT_CERT} ({_name(cert.subject)}) is not self-signed (issued by "
            f"{_name(cert.issuer)})",
            hint="give the root of the chain, or your intermediate as ca-cert.pem, ca-key.pem, "
            "cert-chain.pem and root-cert.pem",
        )
    if key_pem is not None:
        _check_key(cert, key_pem, f"{origin}/{ROOT_CERT}", f"{origin}/{ROOT_KEY}")
    return RootCa(cert, key_pem)


def check_cluster_ca(ca: ClusterCa, origin: str, now: datetime) -> ClusterCa:
    """A plug-in CA as Istio takes it: ca-cert.pem a current CA issued (through
    cert-chain.pem) by root-cert.pem, ca-key.pem its key."""
    root = check_root(ca.root_cert_pem, None, origin, now)
    ca_cert = _certs(ca.ca_cert_pem, f"{origin}/{CA_CERT}")[0]
    _check_ca_cert(ca_cert, f"{origin}/{CA_CERT}", now)
    _check_key(ca_cert, ca.ca_key_pem, f"{origin}/{CA_CERT}", f"{origin}/{CA_KEY}")
    chain = _certs(ca.cert_chain_pem, f"{origin}/{CERT_CHAIN}")
    if chain[0].fingerprint(hashes.SHA256()) != ca_cert.fingerprint(hashes.SHA256()):
        raise InvalidCertificateError(
            f"{origin}/{CERT_CHAIN} does not start with ca-cert.pem ({_name(ca_cert.subject)})",
            hint="cert-chain.pem is ca-cert.pem, then each issuer up to the root",
        )
    if chain[-1].fingerprint(hashes.SHA256()) != root.cert.fingerprint(hashes.SHA256()):
        chain = [*chain, root.cert]
    for cert, issuer in itertools.pairwise(chain):
        _check_ca_cert(cert, f"{origin}/{CERT_CHAIN}", now)
        if not _issued_by(cert, issuer):
            raise InvalidCertificateError(
                f"{origin}: {_name(cert.subject)} is not issued by {_name(issuer.subject)} "
                f"(the next in {CERT_CHAIN}, or the root of {ROOT_CERT})",
                hint="cert-chain.pem must lead from ca-cert.pem to the root in root-cert.pem",
            )
    return ca


def read_cacerts(values: dict[str, bytes]) -> ClusterCa | None:
    """A plug-in CA from Secret `cacerts`' values; None when a key is missing."""
    if any(k not in values for k in CACERTS_KEYS):
        return None
    return ClusterCa(
        ca_cert_pem=values[CA_CERT],
        ca_key_pem=values[CA_KEY],
        cert_chain_pem=values[CERT_CHAIN],
        root_cert_pem=values[ROOT_CERT],
    )


def same_root(a: bytes, b: bytes) -> bool:
    """Whether two PEM root certificates are the same certificate."""
    try:
        return _chain_der(a)[:1] == _chain_der(b)[:1]
    except ValueError:
        return False
