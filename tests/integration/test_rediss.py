"""``rediss://``: a TLS-only Redis (the suite's ACL users) serves a real worker and client, and a
plain or unverified connection to it fails."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral.client.client import Client
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.conftest import TEST_HOST_IDENTITY, free_port, missing, suite_fleet
from tests.harness import REPO, remove_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server listening on TLS only (server cert from a throwaway CA); yields (port, CA file)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("corral-test-ca", ca_key, None)
    _write(tmp_path / "ca", ca, ca_key)
    _write(tmp_path / "server", _cert("127.0.0.1", server_key, ("corral-test-ca", ca_key)), server_key)
    port = free_port()
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    argv += ["--tls-cert-file", str(tmp_path / "server.crt"), "--tls-key-file", str(tmp_path / "server.key")]
    argv += ["--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no"]
    argv += ["--aclfile", str(suite_fleet().acl_file), "--databases", "16"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = admin_client(port, tmp_path / "ca.crt")
    deadline = time.monotonic() + 10
    while True:
        try:
            admin.ping()
            break
        except (redis.ConnectionError, OSError) as exc:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait(10)
                missing(f"redis-server with TLS ({exc})")
            time.sleep(0.1)
    yield port, tmp_path / "ca.crt"
    proc.terminate()
    proc.wait(10)


def admin_client(port: int, ca: Path, db: int = 3) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        db=db,
        username="admin",
        password=suite_fleet().password("admin"),
        ssl=True,
        ssl_ca_certs=str(ca),
    )


def test_plain_or_unverified_connections_to_a_tls_redis_fail(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    password = suite_fleet().password("client")
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, username="client", password=password, socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):  # the system store does not know our CA
        redis.Redis(
            host="127.0.0.1", port=port, username="client", password=password, ssl=True, ssl_cert_reqs=ssl.CERT_REQUIRED
        ).ping()
    settings = Settings(redis={"url": f"rediss://127.0.0.1:{port}", "tls_ca_file": str(ca)})
    assert settings.redis_url(3).startswith("rediss://client:")
    assert settings.redis_tls() == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca)}


def test_a_job_runs_end_to_end_over_rediss(
    tls_redis: tuple[int, Path], corral_env: dict[str, str], tmp_path: Path, docker_client, busybox_image: str
) -> None:
    port, ca = tls_redis
    host = f"it-tls-{port}"
    url = f"rediss://127.0.0.1:{port}"
    env = {
        **corral_env,
        **suite_fleet().role_env("worker", TEST_HOST_IDENTITY),
        "CORRAL_REDIS__URL": url,
        "CORRAL_REDIS__TLS_CA_FILE": str(ca),
        "CORRAL_HOST__ID": host,
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.main", "worker", "--host", host, "--concurrency", "2"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = Client(Settings(redis={"url": url, "tls_ca_file": str(ca)}, celery={"task_timeout_s": 60}))
    try:
        deadline = time.monotonic() + 60
        while not admin_client(port, ca).exists(f"corral:host:{host}"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        chunks: list[bytes] = []
        outcome = client.run(
            JobSpec(image=busybox_image, argv=["echo", "over tls"]), host=host, on_output=lambda _, b: chunks.append(b)
        )
        assert (outcome.exit_code, b"".join(chunks)) == (0, b"over tls\n")
    finally:
        client.close()
        worker.terminate()
        worker.wait(30)
        remove_labeled(docker_client, host)
