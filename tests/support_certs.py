"""Certificates for tests: pairs with chosen names, dates and keys, and a check that no
piece of a private key shows up in some output."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.now(UTC)


def make_pair(
    names: list[str],
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key: object | None = None,
    issuer_cn: str | None = None,
) -> tuple[bytes, bytes]:
    """A certificate signed by its own key (or by another CA name), as PEM bytes."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")])
    issuer = (
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]) if issuer_cn else subject
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=200))
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(tmp_path: Path, cert: bytes, key: bytes) -> tuple[Path, Path]:
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    return cert_file, key_file


def key_fragments(key_pem: bytes) -> list[str]:
    """Pieces of a key that must not appear anywhere: PEM lines and the base64 of it all."""
    lines = [ln for ln in key_pem.decode().splitlines() if ln and not ln.startswith("-----")]
    return [*lines, base64.b64encode(key_pem).decode()[:40]]


def assert_no_key(text: str, key_pem: bytes) -> None:
    assert "PRIVATE KEY" not in text
    for fragment in key_fragments(key_pem):
        assert fragment not in text
