"""TLS to the broker: ``amqps://`` with a CA, a client certificate and its key, as URL query
parameters (``cafile``, ``certfile``, ``keyfile``, which aiormq reads), against a private node
with a TLS listener and certificates made here with openssl. And the broker password never shows:
not in logs, errors, ``atasks inspect``, ``atasks events`` or ``atasks settings``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, broker_root

import atasks
from atasks import atask
from atasks.errors import TransportError
from atasks.testing.rabbitnode import RabbitNode

PASSWORD = "Pw-never-shown-7f3a"
USER = "app"
BOUND = 20.0  # no connection attempt here may take longer: a hang fails the test

pytestmark = pytest.mark.timeout(120)


@atask(namespace="tls")
async def square(x: int) -> int:
    return x * x


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str) -> None:
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2"),
        *("-subj", f"/CN=atasks test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=folder,
    )


def make_cert(folder: Path, name: str, ca: str, extensions: str) -> None:
    openssl(
        *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=atasks test {name}"),
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text(extensions)
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-CAcreateserial", "-out", f"{name}.pem", "-days", "2"),
        *("-extfile", f"{name}.ext"),
        cwd=folder,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by
    it, and another CA that signed neither."""
    folder = tmp_path_factory.mktemp("tls")
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(
        folder,
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    make_cert(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    return folder


@pytest.fixture(scope="module")
def tls_node(
    broker: str, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RabbitNode]:
    node = RabbitNode(
        tmp_path_factory.mktemp("tls-node"),
        root=broker_root(broker),
        tls=(certs / "ca.pem", certs / "server.pem", certs / "server.key"),
    )
    try:
        node.start()
        node.ctl("add_user", USER, PASSWORD)
        node.ctl("set_permissions", USER, ".*", ".*", ".*")
        yield node
    finally:
        node.close()


def client_files(certs: Path, ca: str = "ca", cert: bool = True) -> str:
    query = f"cafile={certs / f'{ca}.pem'}"
    if cert:
        query += f"&certfile={certs / 'client.pem'}&keyfile={certs / 'client.key'}"
    return query


async def test_a_call_over_tls_with_a_client_certificate(
    tls_node: RabbitNode, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = tls_node.tls_url(client_files(certs), USER, PASSWORD)
    router = await atasks.setup("amqp", url=url, namespace="tls", serve=True)
    assert await square(12) == 144
    shown = [repr(router), repr(router.serving), str(router.statistics()), caplog.text]
    assert not [text for text in shown if PASSWORD in text]
    assert "amqps://app:***@127.0.0.1" in repr(router.serving)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("wrong CA", "certificate verify failed"),
        ("no client certificate", "cannot connect"),
        ("wrong password", "access refused (wrong user or password?)"),
        ("missing CA file", "a TLS file named in the URL (cafile, certfile, keyfile) is missing"),
    ],
)
async def test_a_refused_tls_connection_is_a_clear_error_not_a_hang(
    tls_node: RabbitNode, certs: Path, caplog: pytest.LogCaptureFixture, case: str, words: str
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Wrong-" + PASSWORD if case == "wrong password" else PASSWORD
    ca = {"wrong CA": "other-ca", "missing CA file": "no-such-ca"}.get(case, "ca")
    query = client_files(certs, ca=ca, cert=case != "no client certificate")
    url = tls_node.tls_url(query, USER, password)
    async with asyncio.timeout(BOUND):
        with pytest.raises(TransportError) as failed:
            await atasks.setup("amqp", url=url, namespace="tls", connect_timeout=5)
    message = str(failed.value)
    assert words in message
    assert "amqps://app:***@127.0.0.1" in message
    assert PASSWORD not in message
    assert PASSWORD not in caplog.text


def atasks_command(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ATASKS_URL": url},
    )


async def test_the_password_never_shows_in_the_commands(tls_node: RabbitNode, certs: Path) -> None:
    url = tls_node.tls_url(client_files(certs), USER, PASSWORD)
    await atasks.setup("amqp", url=url, namespace="tls", serve=True, events=True)
    assert await square(3) == 9
    for args in (
        ("settings",),
        ("inspect", "--namespace", "tls", "--wait", "2", "--json"),
        ("inspect", "--namespace", "tls", "--wait", "2"),
        ("ping", "--namespace", "tls", "--timeout", "5"),
    ):
        done = await asyncio.to_thread(atasks_command, *args, url=url)
        assert PASSWORD not in done.stdout + done.stderr, args
    wrong = tls_node.tls_url(client_files(certs, ca="other-ca"), USER, PASSWORD)
    for args in (
        ("inspect", "--namespace", "tls", "--wait", "2"),
        ("events", "--namespace", "tls"),
        ("ping", "--namespace", "tls", "--timeout", "5"),
    ):
        done = await asyncio.to_thread(atasks_command, *args, url=wrong)
        assert done.returncode != 0, args
        assert "certificate verify failed" in done.stderr, (args, done.stderr)
        assert PASSWORD not in done.stdout + done.stderr, args


def test_a_server_does_not_wait_for_a_tls_set_up_that_cannot_work(
    tls_node: RabbitNode, certs: Path
) -> None:
    """A server waits up to 60s for a broker that is not there yet, but not when its CA did
    not sign the broker's certificate: that will not mend."""
    wrong = tls_node.tls_url(client_files(certs, ca="other-ca"), USER, PASSWORD)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "atasks", "run", "examples/scenarios.py", "--mode", "server"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BOUND,
        env={**os.environ, "ATASKS_URL": wrong},
    )
    assert done.returncode == 1
    assert time.monotonic() - started < BOUND
    last = done.stderr.strip().splitlines()[-1]
    assert "certificate verify failed" in last
    assert "waiting for the broker" not in done.stderr
    assert PASSWORD not in done.stderr
