"""The hot-read RESP2 client (authproxy/sessions/resp.py) against a REAL redis-server.

What must hold: many concurrent requests share one pipelined connection and each caller gets its own
reply (also when others give up or get an error reply); binary values and missing keys; AUTH (password,
ACL user), SELECT, unix socket, TLS; a stopped Redis fails every pending and new call fast, a hung one
within timeout + one watchdog interval, a dead one is not hammered; the same client recovers when Redis
is back; no error message or log line ever carries the password.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authproxy.errors import ConfigError, StoreError
from authproxy.sessions.resp import ConnectionLost, Endpoint, RedisReplyError, RespClient, pack, redact_url
from tests.support.procs import ManagedProcess, free_port, wait_for_port
from tests.support.redis_server import RedisServer, redis_binary

PASSWORD = "s3cr3t:p@ss/word"
SECRET_BITS = (PASSWORD, quote(PASSWORD, safe=""), "s3cr3t")

Factory = Callable[..., RedisServer]
Open = Callable[..., RespClient]


@pytest.fixture
async def open_client() -> AsyncIterator[Open]:
    """`open_client(url, timeout=...)` -> a RespClient closed at teardown."""
    clients: list[RespClient] = []

    def open_(url: str, *, timeout: float = 2.0) -> RespClient:
        client = RespClient.from_url(url, timeout=timeout)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


def assert_no_secret(text: str) -> None:
    for bit in SECRET_BITS:
        assert bit not in text, text


def described(exc: BaseException) -> str:
    return f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"


def connections_received(server: RedisServer) -> int:
    """Redis's own count of accepted connections (INFO stats), read over a fresh socket."""
    with socket.create_connection((server.host, server.port), timeout=2) as sock:
        sock.sendall((pack("AUTH", server.password) if server.password else b"") + pack("INFO", "stats"))
        data = b""
        while b"total_connections_received:" not in data or not data.endswith(b"\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    line = next(x for x in data.split(b"\r\n") if x.startswith(b"total_connections_received:"))
    return int(line.split(b":")[1])


# -- replies -------------------------------------------------------------------------------------


async def test_pipelined_gets_each_caller_gets_its_own_value(redis_url: str, redis_server: RedisServer,
                                                            open_client: Open) -> None:
    client = open_client(redis_url)
    values = {f"k{i}".encode(): os.urandom(i % 300) + b"\r\n$3\r\n" + b"%d" % i for i in range(400)}
    await asyncio.gather(*(client.execute("SET", k, v) for k, v in values.items()))
    before = connections_received(redis_server)
    keys = [k for k in values for _ in range(2)] + [b"missing-%d" % i for i in range(100)]
    replies = await asyncio.gather(*(client.get(k) for k in keys))
    assert replies == [values.get(k) for k in keys]
    assert connections_received(redis_server) - before == 1  # only the INFO probe: one shared connection


async def test_binary_empty_large_and_missing_values(redis_url: str, open_client: Open) -> None:
    client = open_client(redis_url)
    cases = {b"all-bytes": bytes(range(256)) * 4, b"empty": b"", b"crlf": b"\r\n\r\n-ERR\r\n",
             b"big": os.urandom(3 * 1024 * 1024), "k\u00e9y".encode(): "v\u00e4lue".encode()}
    for key, value in cases.items():
        assert await client.execute("SET", key, value) == b"OK"
    got = await asyncio.gather(*(client.get(k) for k in cases), client.get(b"nope"))
    assert got == [*cases.values(), None]


async def test_pexpire_and_pttl(redis_url: str, open_client: Open) -> None:
    client = open_client(redis_url)
    await client.execute("SET", "k", "v")
    assert await client.pttl(b"k") == -1
    assert await client.pexpire(b"k", 5000) == 1
    assert 4000 < await client.pttl(b"k") <= 5000
    assert await client.pexpire(b"missing", 5000) == 0
    assert await client.pttl(b"missing") == -2
    assert await client.pexpire(b"k", 1) == 1
    await asyncio.sleep(0.05)
    assert await client.get(b"k") is None


async def test_error_reply_fails_only_its_caller(redis_url: str, open_client: Open) -> None:
    client = open_client(redis_url)
    await client.execute("SADD", "a-set", "m")
    await client.execute("SET", "s", "str")
    results = await asyncio.gather(client.get(b"s"), client.get(b"a-set"), client.get(b"s"),
                                   return_exceptions=True)
    assert results[0] == results[2] == b"str"
    assert isinstance(results[1], RedisReplyError) and isinstance(results[1], StoreError)
    assert "WRONGTYPE" in str(results[1])
    assert await client.get(b"s") == b"str"


async def test_callers_that_give_up_do_not_shift_replies(redis_url: str, open_client: Open) -> None:
    client = open_client(redis_url)
    await asyncio.gather(*(client.execute("SET", f"c{i}", f"v{i}") for i in range(200)))
    tasks = [asyncio.ensure_future(client.get(b"c%d" % i)) for i in range(200)]
    await asyncio.sleep(0)  # requests are queued, not answered yet
    for task in tasks[::3]:
        task.cancel()
    for i, task in enumerate(tasks):
        if i % 3:
            assert await task == b"v%d" % i
    assert await client.get(b"c7") == b"v7"


# -- connecting: AUTH, SELECT, unix socket, TLS -------------------------------------------------------


async def test_auth_with_password_and_acl_user(redis_server_factory: Factory, open_client: Open) -> None:
    server = redis_server_factory(password=PASSWORD)
    client = open_client(server.url)
    assert await client.execute("SET", "k", "v") == b"OK"
    assert await client.get(b"k") == b"v"

    assert server.command("ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all") == b"+OK"
    user = open_client(f"redis://app:app-pw@{server.host}:{server.port}/0")
    assert await user.get(b"k") == b"v"

    for url, why in (
        (f"redis://:wrong-{quote(PASSWORD, safe='')}@{server.host}:{server.port}/0", "WRONGPASS"),
        (f"redis://{server.host}:{server.port}/0", "NOAUTH"),
    ):
        with pytest.raises(StoreError) as caught:
            await open_client(url).get(b"k")
        assert why in str(caught.value)
        assert_no_secret(described(caught.value))


async def test_db_selection(redis_url: str, open_client: Open) -> None:
    db0, db3 = open_client(redis_url), open_client(redis_url.rsplit("/", 1)[0] + "/3")
    await db3.execute("SET", "where", "three")
    assert await db0.get(b"where") is None
    assert await db3.get(b"where") == b"three"
    assert await db3.execute("DBSIZE") == 1
    assert await db0.execute("DBSIZE") == 0


async def test_unix_socket_with_password_and_db(redis_server_factory: Factory, open_client: Open) -> None:
    server = redis_server_factory(password=PASSWORD)
    client = open_client(server.unix_url.replace("?db=0", "?db=2"))
    assert Endpoint.from_url(server.unix_url).path == str(server.socket_path)
    await client.execute("SET", "k", b"\x00unix\xff")
    assert await client.get(b"k") == b"\x00unix\xff"
    assert await open_client(server.url.replace("/0", "/2")).get(b"k") == b"\x00unix\xff"


def _tls_files(dir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files: ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
             *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = dir / "ca.pem", dir / "cert.pem", dir / "key.pem"
    files[0].write_bytes(
        cert("test ca", ca_key, "test ca", ca_key, ca=True).public_bytes(serialization.Encoding.PEM)
    )
    files[1].write_bytes(
        cert("redis", key, "test ca", ca_key, ca=False).public_bytes(serialization.Encoding.PEM)
    )
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


async def test_tls_rediss_url(tmp_path: Path, open_client: Open) -> None:
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    proc = ManagedProcess(
        [
            redis_binary(),
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        name="redis-tls",
        log_path=tmp_path / "redis.log",
    ).start()
    try:
        wait_for_port("127.0.0.1", port, timeout=10, process=proc)
        base = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/1"
        client = open_client(f"{base}?ssl_ca_certs={ca}")
        assert await client.execute("SET", "k", "over tls") == b"OK"
        assert await client.get(b"k") == b"over tls"
        with pytest.raises(StoreError) as caught:  # the system CAs do not know our test CA
            await open_client(base).get(b"k")
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert_no_secret(described(caught.value))
    finally:
        proc.stop()


def test_endpoint_from_url_and_redaction() -> None:
    ep = Endpoint.from_url(f"redis://user:{quote(PASSWORD, safe='')}@example.org:6380/4")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.tls) == ("example.org", 6380, 4, "user",
                                                                           PASSWORD, None)
    assert [name for name, _ in ep.handshake()] == ["AUTH", "SELECT"]
    assert Endpoint.from_url("redis://h").handshake() == [("PING", pack("PING"))]
    ep = Endpoint.from_url("unix://:pw@/run/redis.sock?db=2")
    assert (ep.path, ep.db, ep.password) == ("/run/redis.sock", 2, "pw")
    assert Endpoint.from_url("rediss://h:1/0").tls is not None
    assert_no_secret(repr(Endpoint.from_url(f"redis://:{quote(PASSWORD, safe='')}@h/0")))
    assert_no_secret(repr(RespClient.from_url(f"redis://:{quote(PASSWORD, safe='')}@h/0")))
    assert redact_url("redis://u:pw@h:1/0?sentinel_password=x") == "redis://u:***@h:1/0?sentinel_password=***"
    with pytest.raises(ConfigError):
        Endpoint.from_url("http://h")


# -- failures --------------------------------------------------------------------------------------


async def test_stopped_redis_fails_pending_and_new_calls_fast_then_recovers(
        redis_server_factory: Factory, open_client: Open, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="authproxy")
    server = redis_server_factory(password=PASSWORD)
    client = open_client(server.url, timeout=5.0)
    await client.execute("SET", "k", "v")
    # A blocked BLPOP keeps the GETs pipelined behind it pending inside Redis.
    blocked = asyncio.ensure_future(client.execute("BLPOP", "never", 0))
    pending = [asyncio.ensure_future(client.get(b"k")) for _ in range(20)]
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in [blocked, *pending])
    server.stop()
    started = time.monotonic()
    errors = await asyncio.gather(blocked, *pending, return_exceptions=True)
    for _ in range(20):
        try:
            await client.get(b"k")
        except StoreError as exc:
            errors.append(exc)
    assert time.monotonic() - started < 1.0  # far below the 5 s timeout: nothing waited for it
    assert all(isinstance(e, StoreError) for e in errors) and len(errors) == 41
    assert isinstance(errors[0], ConnectionLost)
    assert any("next connect attempt" in str(e) for e in errors)  # backing off, not reconnecting each time
    for error in errors:
        assert isinstance(error, BaseException)
        assert_no_secret(described(error))

    server.start()
    async with asyncio.timeout(3):  # the backoff is at most 1 s
        while True:
            try:
                assert await client.get(b"k") is None  # in-memory Redis: restarted empty
                break
            except StoreError:
                await asyncio.sleep(0.05)
    await client.execute("SET", "k", "again")
    assert await client.get(b"k") == b"again"
    assert "hot-read connection dropped" in caplog.text
    assert "re-established" in caplog.text
    assert_no_secret(caplog.text)


async def test_restart_while_idle_is_healed_by_one_retry(redis_server_factory: Factory,
                                                         open_client: Open) -> None:
    server = redis_server_factory(appendonly=True)
    client = open_client(server.url)
    await client.execute("SET", "k", "kept")
    server.stop()  # the loop does not run meanwhile: the client still holds the dead connection
    server.start()
    assert await client.get(b"k") == b"kept"


async def test_hung_redis_times_out_then_recovers(redis_server_factory: Factory, open_client: Open) -> None:
    server = redis_server_factory(password=PASSWORD)
    assert server.process is not None
    timeout = 0.4
    client = open_client(server.url, timeout=timeout)
    assert client.watchdog_interval <= 0.25
    await client.execute("SET", "k", "v")
    server.process.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get(b"k") for _ in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, StoreError) for r in results), results
        assert "no reply within 0.4 s" in str(results[0])
        assert timeout - 0.05 <= elapsed < timeout + client.watchdog_interval + 0.3
        # A client that first connects while Redis hangs: the connect deadline applies.
        fresh = open_client(server.url, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await fresh.get(b"k")
        assert time.monotonic() - started < timeout + 0.3
        assert "no answer to AUTH" in str(caught.value)
        for error in [*results, caught.value]:
            assert isinstance(error, BaseException)
            assert_no_secret(described(error))
    finally:
        server.process.signal(signal.SIGCONT)
    await client.execute("SET", "other", "mine")
    assert await client.get(b"other") == b"mine"  # a fresh connection: no stale reply from the old one
    assert await client.get(b"k") == b"v"
    await asyncio.sleep(0.1)  # past `fresh`'s first backoff
    assert await fresh.get(b"k") == b"v"


async def test_dead_redis_is_not_hammered(redis_server_factory: Factory, open_client: Open) -> None:
    server = redis_server_factory(password=PASSWORD)
    before = connections_received(server)
    client = open_client(f"redis://:wrong@{server.host}:{server.port}/0")  # every connect is refused
    deadline = time.monotonic() + 0.6
    calls = 0
    while time.monotonic() < deadline:
        with pytest.raises(StoreError):
            await client.get(b"k")
        calls += 1
        await asyncio.sleep(0.002)
    attempts = connections_received(server) - before - 1  # minus this INFO probe
    assert calls > 100
    assert 2 <= attempts <= 6  # 0, 0.05, 0.15, 0.35 s (backoff doubling), not one per call


async def test_protocol_errors_drop_the_connection(open_client: Open) -> None:
    """A server that breaks the protocol (a real Redis never does: this is a small fake)."""
    per_connection = [[b"+PONG\r\n", b"@not-resp\r\n"],            # garbage
                      [b"+PONG\r\n", b"$2\r\nok\r\n:1\r\n"],       # one reply too many
                      [b"+PONG\r\n", b"$5\r\nfresh\r\n"]]
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        replies = per_connection[accepted]
        accepted += 1
        while replies and await reader.read(65536):
            writer.write(replies.pop(0))
        await reader.read()  # until the client drops us
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = open_client(f"redis://127.0.0.1:{port}")
        with pytest.raises(StoreError, match="protocol error"):
            await client.get(b"x")
        assert await client.get(b"y") == b"ok"  # answered before the extra reply arrived...
        assert await client.get(b"z") == b"fresh"  # ...which dropped that connection: a new one
        assert accepted == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_close_fails_pending_and_later_calls(redis_url: str, open_client: Open) -> None:
    client = open_client(redis_url)
    blocked = asyncio.ensure_future(client.execute("BLPOP", "never", 0))
    await asyncio.sleep(0.05)
    await client.close()
    with pytest.raises(StoreError):
        await blocked
    with pytest.raises(StoreError, match="closed"):
        await client.get(b"k")
    await client.close()


def test_under_uvloop(redis_server_factory: Factory) -> None:
    """authproxy runs on uvloop when installed: same client, its transports."""
    server = redis_server_factory(password=PASSWORD)

    async def scenario() -> None:
        client = RespClient.from_url(server.unix_url, timeout=1.0)
        try:
            await asyncio.gather(*(client.execute("SET", f"u{i}", f"{i}") for i in range(50)))
            assert await asyncio.gather(*(client.get(b"u%d" % i) for i in range(50))) == \
                [b"%d" % i for i in range(50)]
            assert server.command("CLIENT", "KILL", "TYPE", "normal").startswith(b":")
            assert await client.get(b"u1") == b"1"  # connection killed under it: one retry heals it
        finally:
            await client.close()

    uvloop.run(scenario())
