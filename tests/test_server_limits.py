"""`kamiwaza serve` against raw sockets: requests aiohttp's parser refuses are
answered in the OpenAI JSON error shape and echo nothing; slow headers, slow
bodies and idle keep-alive connections are closed; connections past the cap are
shed with 503 while the others are served (gateway/server.py)."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.auth import KeyStore
from gateway.server import LINGERING_TIME_S
from tests.gateway_harness import ROOT
from tests.processes import start_on_free_port, stop_process

pytestmark = pytest.mark.integration

CANARY = b"CANARY-7f3a9c"  # in every malformed request: never in an answer or the log
LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keepalive_timeout_s": 2.0}
MAX_CONNECTIONS = 30


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    key: str
    log: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(5)
        return sock


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, opa_bin: str) -> Iterator[Serve]:
    workdir = tmp_path_factory.mktemp("serve")
    _, key = KeyStore.load(workdir / "keys.json", missing_ok=True).create(tenant="acme")
    config = workdir / "gateway.yaml"
    config.write_text(
        f"policy: {ROOT / 'policies' / 'routing.yaml'}\nkeys: {workdir / 'keys.json'}\n"
        f"audit_dir: {workdir / 'audit'}\n"
        f"rego_dir: {ROOT / 'rego'}\nopa_bin: {opa_bin}\nallow_unconfigured_endpoints: true\n"
        + "".join(f"{name}: {value}\n" for name, value in LIMITS.items())
        + f"max_connections: {MAX_CONNECTIONS}\n"
    )
    log = workdir / "serve.log"
    kamiwaza = str(Path(sys.executable).parent / "kamiwaza")
    proc, port = start_on_free_port(
        lambda port, _: [kamiwaza, "serve", "--config", str(config), "--port", str(port)],
        ready_path="/readyz",
        log_path=log,
        failure="kamiwaza serve did not start",
        timeout=30,
    )
    yield Serve(proc, port, key, log)
    stop_process(proc)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or 5 s pass)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def exchange(serve: Serve, raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    with serve.connect() as sock:
        sock.sendall(raw)
        status, headers, body = answer(read_all(sock))
    return status, headers, json.loads(body)


GET = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n"
MALFORMED = [
    ("long header", GET + b"X-Canary: " + CANARY * 1000 + b"\r\n\r\n", 431, "header_too_large"),
    (
        "too many headers",
        GET + b"".join(b"X-%d: " % i + CANARY + b"\r\n" for i in range(200)) + b"\r\n",
        431,
        "header_too_large",
    ),
    ("long request line", b"GET /" + CANARY * 1000 + b" HTTP/1.1\r\n\r\n", 431, "header_too_large"),
    (
        "bad Content-Length",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 1"
        + CANARY
        + b"\r\n\r\n",
        400,
        "bad_content_length",
    ),
    (
        "Content-Length with Transfer-Encoding",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\nX-C: " + CANARY + b"\r\n\r\n0\r\n\r\n",
        400,
        "bad_content_length",
    ),
    (
        "bad chunk size",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz" + CANARY + b"\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_transfer_encoding",
    ),
    ("bad method", b"G\x01T /healthz HTTP/1.1\r\nX: " + CANARY + b"\r\n\r\n", 400, "bad_method"),
    (
        "TLS to a plain port",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + CANARY,
        400,
        "bad_method",
    ),
    (
        "bad version",
        b"GET /healthz HTTP/7.1\r\nX: " + CANARY + b"\r\n\r\n",
        400,
        "bad_request_line",
    ),
    ("header without colon", GET + CANARY + b"\r\n\r\n", 400, "bad_header"),
]


@pytest.mark.parametrize(
    ("name", "raw", "status", "code"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_parser_errors_are_json_and_echo_nothing(
    serve: Serve, name: str, raw: bytes, status: int, code: str
) -> None:
    with serve.connect() as sock:
        sock.sendall(raw)
        reply = read_all(sock)
    got, headers, body = answer(reply)
    assert CANARY not in reply
    assert (got, headers["content-type"]) == (status, "application/json; charset=utf-8")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code"}
    assert (error["code"], error["type"]) == (code, "invalid_request_error")
    assert CANARY not in serve.log.read_bytes()
    assert b"Traceback" not in serve.log.read_bytes()


def test_a_body_broken_while_it_is_read_is_a_400_in_the_requests_shape(serve: Serve) -> None:
    with serve.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: Bearer " + serve.key.encode() + b'\r\n\r\n5\r\n{"mes\r\n'
        )
        time.sleep(0.2)  # the handler is reading the body by now
        sock.sendall(b"zz" + CANARY + b"\r\n0\r\n\r\n")
        reply = read_all(sock)
    status, headers, body = answer(reply)
    assert CANARY not in reply
    assert status == 400 and headers["x-request-id"].startswith("req-")
    assert json.loads(body)["error"]["code"] == "bad_transfer_encoding"


def test_slow_headers_are_closed_with_408(serve: Serve) -> None:
    """Fifty clients sending their headers a byte at a time are all cut off at the
    header timeout, while a normal client is served meanwhile."""
    results: list[tuple[float, bytes]] = []

    def slowloris() -> None:
        with serve.connect() as sock:
            started = time.monotonic()
            reply = b""
            for byte in GET + b"X-Slow: " + b"a" * 100:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.1)[0]:  # an answer, or the close
                    reply = read_all(sock)
                    break
            results.append((time.monotonic() - started, reply))

    threads = [threading.Thread(target=slowloris) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    status, _, body = exchange(serve, GET + b"Connection: close\r\n\r\n")
    for thread in threads:
        thread.join()
    assert (status, body) == (200, {"status": "ok"})
    assert len(results) == 20
    for elapsed, reply in results:
        assert elapsed < LIMITS["header_timeout_s"] * 3  # not the 12 s the client wanted
        got, headers, error = answer(reply)
        assert (got, headers["connection"]) == (408, "close")
        assert json.loads(error)["error"]["code"] == "header_timeout"


def test_a_slow_body_is_a_408(serve: Serve) -> None:
    with serve.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n"
            b"Content-Type: application/json\r\n"
            b"Authorization: Bearer " + serve.key.encode() + b'\r\n\r\n{"messages"'
        )
        started = time.monotonic()
        reply = read_all(sock)
        elapsed = time.monotonic() - started
    status, _, body = answer(reply)
    assert (status, json.loads(body)["error"]["code"]) == (408, "body_timeout")
    assert (
        elapsed < LIMITS["body_timeout_s"] * 2 + LINGERING_TIME_S
    )  # the timeout, then the lingering close


def test_an_idle_keep_alive_connection_is_closed(serve: Serve) -> None:
    with serve.connect() as sock:
        sock.sendall(GET + b"\r\n")
        first = sock.recv(65536)
        started = time.monotonic()
        rest = read_all(sock)  # returns when the gateway closes the idle connection
        idle = time.monotonic() - started
    assert answer(first)[0] == 200 and rest == b""
    assert LIMITS["keepalive_timeout_s"] * 0.5 <= idle < LIMITS["keepalive_timeout_s"] * 4


def test_connections_past_the_cap_are_shed_with_503(serve: Serve) -> None:
    held: list[socket.socket] = []
    try:
        # Kept-alive clients, each with a request answered: within the cap, served.
        for _ in range(MAX_CONNECTIONS):
            sock = serve.connect()
            sock.sendall(GET + b"\r\n")
            assert answer(sock.recv(65536))[0] == 200
            held.append(sock)
        status, headers, body = exchange(serve, GET + b"\r\n")
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        assert body == {
            "error": {
                "message": "the gateway is at its connection limit; retry shortly",
                "type": "server_error",
                "code": "too_many_connections",
            }
        }
        # The connections within the cap are still served.
        held[0].sendall(GET + b"\r\n")
        assert answer(held[0].recv(65536))[0] == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:
        status, _, _ = exchange(serve, GET + b"Connection: close\r\n\r\n")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # the gateway sees the closes shortly
    assert status == 200
