"""`shipway serve` over HTTPS (server.ssl_certfile / ssl_keyfile), with a certificate the test
makes itself, used by the official `openai` client."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.servers import Server, fake_upstream, shipway_server


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    upstream = fake_upstream()
    model = {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": "echo"}
    config = {
        "server": {"ssl_certfile": str(cert), "ssl_keyfile": str(key)},
        "embedded_models": False,
        "models": {"up": model},
    }
    try:
        gateway = shipway_server(config, ca_file=str(cert))
        yield gateway, cert
        gateway.stop()
    finally:
        upstream.stop()


def test_the_openai_client_talks_https(tls_gateway: tuple[Server, Path]) -> None:
    gateway, cert = tls_gateway
    assert gateway.base.startswith("https://")
    client = openai.OpenAI(
        base_url=gateway.base + "/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))),
    )
    reply = client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "over tls"}]
    )
    assert reply.choices[0].message.content == "echo: over tls"
    chunks = client.chat.completions.create(
        model="up", messages=[{"role": "user", "content": "streamed too"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "echo: streamed too"
    )


def test_plain_http_and_an_unknown_certificate_are_refused(
    tls_gateway: tuple[Server, Path],
) -> None:
    gateway, _ = tls_gateway
    with pytest.raises(httpx.HTTPError):
        httpx.get(gateway.base.replace("https://", "http://") + "/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # verified against the system's CAs: not ours
        httpx.get(gateway.base + "/healthz", timeout=5)
