"""`mirrord certs`: the cluster's CA and one certificate per node, for mutual TLS.

    mirrord certs ca   --dir DIR                          -> DIR/ca.crt, DIR/ca.key
    mirrord certs node --dir DIR --name N --host H [...]  -> DIR/N.crt, DIR/N.key (signed by DIR/ca.key)

A node's certificate names the hosts of its endpoint (and client port) as
subject alternative names: a peer is who its verified certificate says, and a
node checks that the endpoint a peer claims (`from_endpoint`) is on a host its
certificate covers. Keys are EC P-256, written 0600 and never overwritten
(a refusal says which file is in the way): replacing a CA by accident would
lock every node out.

Rotation: `ca.crt` may hold several CA certificates (PEM concatenated); all
are trusted. To rotate, make a new CA in another directory, append its
`ca.crt` to every node's `ca.crt`, restart the nodes one at a time, reissue
each node's certificate from the new CA (`certs node` signs with the CA whose
certificate matches `ca.key`), and finally drop the old CA from the bundles.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 825
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class CertError(Exception):
    """A certs command cannot do what was asked; the message says why and what would."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create path with mode; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertError(f"{path} exists; remove it first, or use another --dir") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(directory: Path, name: str = "mirrord cluster CA", days: int = CA_DAYS) -> tuple[Path, Path]:
    """Create DIR/ca.crt and DIR/ca.key; return their paths."""
    if not 1 <= len(name.encode()) <= 64:
        raise CertError("a CA name is 1-64 bytes (it is the certificate's common name)")
    directory.mkdir(parents=True, exist_ok=True)
    crt, keyfile = directory / "ca.crt", directory / "ca.key"
    for path in (crt, keyfile):
        if path.exists():
            raise CertError(f"{path} exists; a CA is made once per directory (to rotate, make the new CA in another --dir)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(keyfile, _key_pem(key), 0o600)
    _write_new(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt, keyfile


def san_of(host: str) -> x509.GeneralName:
    """The subject alternative name for a host: an IP address or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or len(host) > 253 or not all(label and set(label) <= _NAME_CHARS for label in host.split(".")):
        raise CertError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def _signing_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA key and the certificate in ca.crt that belongs to it."""
    try:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        certs = x509.load_pem_x509_certificates((directory / "ca.crt").read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"{exc.filename} is missing; run 'mirrord certs ca --dir {directory}' first") from None
    except ValueError as exc:
        raise CertError(f"the CA in {directory} cannot be read: {exc}") from None
    mine = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for cert in certs:
        if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == mine:
            return cert, key
    raise CertError(f"no certificate in {directory / 'ca.crt'} matches {directory / 'ca.key'}")


def check_node_name(name: str) -> None:
    """A node name becomes a file name: letters, digits, '_', '-', '.', not starting with '.'."""
    if not name or len(name) > 64 or name.startswith(".") or not set(name) <= _NAME_CHARS:
        raise CertError(f"--name {name!r} must be 1-64 letters, digits, '_', '-' or '.', not starting with '.'")


def make_node(directory: Path, name: str, hosts: list[str], days: int = NODE_DAYS) -> tuple[Path, Path]:
    """Create DIR/<name>.crt and DIR/<name>.key for hosts, signed by DIR's CA; return their paths."""
    check_node_name(name)
    if not hosts:
        raise CertError("give at least one --host (the address or DNS name peers dial this node at)")
    sans = [san_of(h) for h in hosts]
    ca_cert, ca_key = _signing_ca(directory)
    crt, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    for path in (crt, keyfile):
        if path.exists():
            raise CertError(f"{path} exists; remove it first to reissue (peers trust any certificate the CA signed)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_new(keyfile, _key_pem(key), 0o600)
    _write_new(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt, keyfile


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mirrord certs", description="make the cluster CA and node certificates")
    sub = p.add_subparsers(dest="what", required=True)
    ca = sub.add_parser("ca", help="make DIR/ca.crt and DIR/ca.key")
    ca.add_argument("--dir", required=True, type=Path)
    ca.add_argument("--days", type=int, default=CA_DAYS)
    node = sub.add_parser("node", help="make DIR/N.crt and DIR/N.key signed by DIR's CA")
    node.add_argument("--dir", required=True, type=Path)
    node.add_argument("--name", required=True)
    node.add_argument("--host", action="append", required=True, help="an IP address or DNS name of the node (repeat)")
    node.add_argument("--days", type=int, default=NODE_DAYS)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    """`mirrord certs …`: 0 on success, 1 if refused (message on stderr), 2 on usage errors."""
    args = parse_args(argv)
    if args.days < 1:
        print("mirrord certs: --days must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.what == "ca":
            paths = make_ca(args.dir, days=args.days)
        else:
            paths = make_node(args.dir, args.name, args.host, days=args.days)
    except (CertError, OSError) as exc:
        print(f"mirrord certs: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths))
    return 0
