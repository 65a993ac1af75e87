"""A self-signed certificate for serving the token endpoints over https.

MSAL requires an https authority, so ``--tls`` serves the whole emulator on a second, TLS port
with a certificate made here for ``localhost`` and ``127.0.0.1``. Clients trust it by pointing
``verify`` (or ``REQUESTS_CA_BUNDLE``) at the certificate file.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


def write_self_signed(
    directory: Path,
    stem: str,
    key: CertificateIssuerPrivateKeyTypes,
    common_name: str,
    *,
    days: int = 30,
    server: bool = False,
) -> tuple[Path, Path]:
    """Write ``<stem>-cert.pem`` and ``<stem>-key.pem`` for a self-signed certificate of
    ``key``; ``server`` adds the loopback names and makes it its own trust anchor."""
    directory.mkdir(parents=True, exist_ok=True)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    certificate = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write ``emulator-cert.pem`` and ``emulator-key.pem`` into ``directory``; return both."""
    return write_self_signed(
        directory, "emulator", ec.generate_private_key(ec.SECP256R1()), "localhost", server=True
    )


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """An SSL context that serves the certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context
