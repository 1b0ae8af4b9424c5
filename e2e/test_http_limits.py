"""Hostile clients of the issuer endpoint (discovery, JWKS, metrics), over TLS on loopback: slow
headers (slowloris) and idle kept-alive connections are cut after the 10 s header timeout, an
oversized request head is refused with 431, a malformed one with 400, and while 200 slow clients
hold connections the endpoint keeps answering and the operator's memory stays bounded.
"""

from __future__ import annotations

import socket
import ssl
import time
from contextlib import closing
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Cluster, wait_for
from fedid_harness import Operator, chart_operator

HEADER_READ_TIMEOUT = 10  # operator/src/serve/http.rs
SLOW_CLIENTS = 200


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    with chart_operator(cluster, "fedid-http-limits", []) as running:
        yield running


def connect(operator: Operator) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(operator.ca))
    raw = socket.create_connection(("127.0.0.1", operator.port), timeout=30)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def read_all(sock: ssl.SSLSocket, limit: float) -> tuple[bytes, float]:
    """Reads until the server closes (or `limit` seconds pass); returns the bytes and when it closed."""
    sock.settimeout(limit)
    started, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout):
        pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data, time.monotonic() - started


def rss_kib(operator: Operator) -> int:
    assert operator.process is not None
    for line in Path(f"/proc/{operator.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_slow_header_is_cut_after_the_timeout(operator: Operator) -> None:
    with closing(connect(operator)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        # One more header line every 2 s, never the blank line that ends the head.
        for n in range(int(HEADER_READ_TIMEOUT * 2)):
            time.sleep(2)
            try:
                sock.sendall(f"X-Slow-{n}: x\r\n".encode())
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                break
        data, _ = read_all(sock, 5)
        elapsed = time.monotonic() - started
    assert HEADER_READ_TIMEOUT - 1 <= elapsed <= HEADER_READ_TIMEOUT + 8, elapsed
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]


def test_an_idle_kept_alive_connection_is_closed(operator: Operator) -> None:
    with closing(connect(operator)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:80]
        data, closed_after = read_all(sock, HEADER_READ_TIMEOUT + 10)
    assert closed_after <= HEADER_READ_TIMEOUT + 5, closed_after
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]


def test_an_oversized_or_malformed_request_is_refused(operator: Operator) -> None:
    with closing(connect(operator)) as sock:
        # Above the 16 KiB limit, small enough to be sent before the answer comes.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 24 * 1024 + b"\r\n\r\n")
        data, _ = read_all(sock, 10)
    assert data.startswith(b"HTTP/1.1 431"), data[:80]
    with closing(connect(operator)) as sock:
        sock.sendall(b"NOT A REQUEST\x00\x01\r\n\r\n")
        data, _ = read_all(sock, 10)
    assert data.startswith(b"HTTP/1.1 400"), data[:80]
    # Still serving.
    assert operator.get("/healthz").status_code == 200


def test_slow_clients_hold_neither_the_endpoint_nor_memory(operator: Operator) -> None:
    operator.get("/metrics")
    before = rss_kib(operator)
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = connect(operator)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        held = rss_kib(operator)
        # The endpoint answers while they hang.
        started = time.monotonic()
        for _ in range(20):
            assert operator.get("/healthz").status_code == 200
        per_request = (time.monotonic() - started) / 20
        grown = held - before
        print(f"\n{SLOW_CLIENTS} slow TLS clients: RSS {before} KiB -> {held} KiB "
              f"(+{grown / SLOW_CLIENTS:.1f} KiB each); a request meanwhile took {per_request * 1000:.1f} ms")
        assert grown < 64 * 1024, f"{SLOW_CLIENTS} slow clients grew the operator by {grown} KiB"
        assert per_request < 1.0

        # All of them are cut once the header timeout has passed.
        def all_closed() -> bool:
            for sock in slow:
                sock.settimeout(0.2)
                try:
                    if sock.recv(1) != b"":
                        continue
                except (TimeoutError, socket.timeout):
                    return False
                except (ConnectionResetError, ssl.SSLError):
                    pass
            return True
        wait_for("the server to close every slow connection", all_closed, timeout=HEADER_READ_TIMEOUT + 20)
    finally:
        for sock in slow:
            sock.close()
