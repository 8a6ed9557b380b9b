"""The guest door's certificate: made once, kept in the home, remade when the address changes.

Browsers accept ECDSA P-256 everywhere (older Safari too), so that is the key. The
certificate is self-signed: there is no authority on a LAN without internet, so the
phone's browser warns once. What makes that warning safe to pass is comparing the
fingerprint (and, once in, the safety code): the node signs the certificate's
SHA-256 with its Ed25519 key by writing it into the replicated store
(``door/NODE``), so every other node and the host's own page can show it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lannode.files import write_private

VALIDITY_DAYS = 397  # what browsers accept at most for a certificate's lifetime


@dataclass(frozen=True, slots=True)
class DoorCertificate:
    cert_path: Path
    key_path: Path
    fingerprint: str  # SHA-256 of the DER, hex, colon-separated pairs as browsers show it

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.replace(":", "").lower()


def fingerprint_of(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def door_certificate(directory: Path, address: str, name: str) -> DoorCertificate:
    """The certificate for a door at ``address`` (an IPv4 address), made if there is none
    that names it or the one there expires within a month. The key is kept across
    remakes; only the certificate changes."""
    directory.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = directory / "door.crt", directory / "door.key"
    key: ec.EllipticCurvePrivateKey | None = None
    try:
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        key = loaded if isinstance(loaded, ec.EllipticCurvePrivateKey) else None
    except (OSError, ValueError, TypeError):
        key = None
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cert_path.unlink(missing_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
        usable = ipaddress.ip_address(address) in names and cert.not_valid_after_utc - now > datetime.timedelta(days=30) and cert.public_key() == key.public_key()
    except (OSError, ValueError, x509.ExtensionNotFound):
        usable = False
    if not usable:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lannode guest door of {name}"[:64])])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return DoorCertificate(cert_path, key_path, fingerprint_of(cert.public_bytes(serialization.Encoding.DER)))
