"""mirrord certs and the TLS identity rule, without a network (except one loopback handshake)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import stat

import pytest
from cryptography import x509

from mirrord import certs
from mirrord.net.tls import TlsContexts, TlsSetupError, cert_hosts, peer_covers
from mirrord.node import main as mirrord_main


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_and_node_files_are_made_signed_and_private(tmp_path):
    assert mirrord_main(["certs", "ca", "--dir", str(tmp_path)]) == 0
    assert mirrord_main(["certs", "node", "--dir", str(tmp_path), "--name", "a", "--host", "127.0.0.81", "--host", "node-a"]) == 0
    ca, node = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "a.crt")
    assert node.issuer == ca.subject
    node.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.81")]
    assert sans.get_values_for_type(x509.DNSName) == ["node-a"]
    for key in ("ca.key", "a.key"):
        assert stat.S_IMODE(os.stat(tmp_path / key).st_mode) == 0o600


def test_nothing_is_overwritten(tmp_path, capsys):
    certs.make_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    assert mirrord_main(["certs", "ca", "--dir", str(tmp_path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "ca.key").read_bytes() == before
    certs.make_node(tmp_path, "a", ["127.0.0.81"])
    with pytest.raises(certs.CertError, match="exists"):
        certs.make_node(tmp_path, "a", ["127.0.0.81"])


@pytest.mark.parametrize("name, hosts, why", [
    ("../x", ["h"], "--name"), (".hidden", ["h"], "--name"), ("a/b", ["h"], "--name"), ("", ["h"], "--name"),
    ("a", [], "--host"), ("a", ["bad host"], "neither"), ("a", ["x..y"], "neither"),
])
def test_bad_names_and_hosts_are_refused_before_any_file(tmp_path, name, hosts, why):
    certs.make_ca(tmp_path)
    with pytest.raises(certs.CertError, match=why):
        certs.make_node(tmp_path, name, hosts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_node_without_ca_says_how_to_make_one(tmp_path):
    with pytest.raises(certs.CertError, match="certs ca --dir"):
        certs.make_node(tmp_path, "a", ["h"])


def test_rotation_bundle_signs_with_the_ca_matching_the_key(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    certs.make_ca(old)
    certs.make_ca(new)
    # the node directory trusts both CAs and signs with the new key
    (new / "ca.crt").write_bytes((old / "ca.crt").read_bytes() + (new / "ca.crt").read_bytes())
    certs.make_node(new, "a", ["127.0.0.81"])
    _cert(new / "a.crt").verify_directly_issued_by(x509.load_pem_x509_certificates((new / "ca.crt").read_bytes())[1])
    TlsContexts.load(new, "a")  # a bundle of two CAs loads


def test_tls_setup_names_the_missing_file(tmp_path):
    certs.make_ca(tmp_path)
    with pytest.raises(TlsSetupError, match="a.crt is missing"):
        TlsContexts.load(tmp_path, "a")


@pytest.mark.parametrize("sans, host, covered", [
    ((("IP Address", "127.0.0.81"),), "127.0.0.81", True),
    ((("IP Address", "127.0.0.81"),), "127.0.0.82", False),
    ((("DNS", "Node-A"),), "node-a", True),
    ((("DNS", "node-a"),), "node-b", False),
    ((("DNS", "127.0.0.81"),), "127.0.0.81", False),  # an IP is matched only by an IP entry
    ((("IP Address", "0:0:0:0:0:0:0:1"),), "::1", True),
    ((("email", "a@x"),), "a@x", False),
    ((), "127.0.0.81", False),
])
def test_peer_covers(sans, host, covered):
    assert peer_covers({"subjectAltName": sans}, host) is covered


def test_no_certificate_covers_nothing():
    assert not peer_covers(None, "127.0.0.81") and not peer_covers({}, "x") and cert_hosts(None) == []


def test_mutual_handshake_and_a_foreign_ca_is_refused(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d in (ours, theirs):
        certs.make_ca(d)
    certs.make_node(ours, "a", ["127.0.0.81"])
    certs.make_node(ours, "b", ["127.0.0.82"])
    certs.make_node(theirs, "b", ["127.0.0.82"])
    a, b, forged = TlsContexts.load(ours, "a"), TlsContexts.load(ours, "b"), TlsContexts.load(theirs, "b")

    async def run():
        seen = []

        async def handler(reader, writer):
            seen.append(cert_hosts(writer.get_extra_info("peercert")))
            writer.close()

        from mirrord.net.tls import Listener
        listener = await Listener.start("127.0.0.81", 0, a.endpoint_server, handler, "endpoint")
        port = listener._sock.getsockname()[1]
        try:
            _, w = await asyncio.open_connection("127.0.0.81", port, ssl=b.endpoint_client, server_hostname="127.0.0.81")
            w.close()
            with pytest.raises(ssl.SSLCertVerificationError):  # we do not trust their CA's server
                await asyncio.open_connection("127.0.0.81", port, ssl=forged.endpoint_client, server_hostname="127.0.0.81")
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
        finally:
            listener.close()
        return seen

    assert asyncio.run(run()) == [["127.0.0.82"]]


def _run_node(argv, monkeypatch, capsys):
    monkeypatch.delenv("MIRRORD_TLS_DIR", raising=False)
    code = mirrord_main(argv)
    return code, capsys.readouterr().err


BASE = ["--name", "a", "--data-dir", "unused", "--endpoint", "127.0.0.81:1", "--listen", "127.0.0.81:2"]


def test_a_node_without_tls_dir_refuses_to_start_unless_insecure(monkeypatch, capsys):
    code, err = _run_node(BASE, monkeypatch, capsys)
    assert code == 2 and "--tls-dir DIR" in err and "--insecure" in err
    code, err = _run_node([*BASE, "--insecure", "--tls-dir", "x"], monkeypatch, capsys)
    assert code == 2 and "contradict" in err


def test_a_node_names_the_missing_tls_file(tmp_path, monkeypatch, capsys):
    certs.make_ca(tmp_path)
    code, err = _run_node([*BASE, "--tls-dir", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "a.crt is missing" in err and "certs node" in err
    monkeypatch.setenv("MIRRORD_TLS_DIR", str(tmp_path))  # the environment counts as --tls-dir
    code = mirrord_main(BASE)
    assert code == 2 and "a.crt is missing" in capsys.readouterr().err


@pytest.mark.parametrize("sql, auth, enc", [
    ("ALTER ENDPOINT mirroring FOR DATABASE_MIRRORING (AUTHENTICATION = CERTIFICATE node_cert, ENCRYPTION = REQUIRED ALGORITHM AES)",
     "CERTIFICATE", "REQUIRED"),
    ("alter endpoint Mirroring for database_mirroring (encryption = disabled)", None, "DISABLED"),
    ("ALTER ENDPOINT m FOR DATABASE_MIRRORING (ENCRYPTION = SUPPORTED, AUTHENTICATION = WINDOWS);", "WINDOWS", "SUPPORTED"),
])
def test_endpoint_security_options_parse(sql, auth, enc):
    from mirrord.core import statements as st

    stmt = st.parse(sql)
    assert (type(stmt), stmt.authentication, stmt.encryption) == (st.EndpointSecurity, auth, enc)
    assert st.parse(stmt.to_sql()) == stmt


@pytest.mark.parametrize("sql, why", [
    ("ALTER ENDPOINT m FOR DATABASE_MIRRORING (ENCRYPTION = REQUIRED, ENCRYPTION = DISABLED)", "twice"),
    ("ALTER ENDPOINT m FOR DATABASE_MIRRORING (ENCRYPTION = OPTIONAL)", "REQUIRED, SUPPORTED or DISABLED"),
    ("ALTER ENDPOINT m FOR DATABASE_MIRRORING ENCRYPTION = REQUIRED", "expected \\("),
    ("ALTER ENDPOINT m FOR DATABASE_MIRRORING (ENCRYPTION = REQUIRED", ", or \\)"),
])
def test_endpoint_security_syntax_errors(sql, why):
    from mirrord.core import statements as st
    from mirrord.core.types import StatementSyntaxError

    with pytest.raises(StatementSyntaxError, match=why):
        st.parse(sql)
