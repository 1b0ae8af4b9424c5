"""A scripted HTTPS token service on loopback for the exchange tests: it records every request it
receives (time, path, headers, form) and answers with replies the test scripts, or forwards them to a
real peer (a fault proxy in front of Dex, OpenBao or MinIO). It stands in for services that have no
local build (GCP STS) and injects the faults real peers cannot be asked to produce (5xx, 429 with
Retry-After, malformed and slow replies, redirects)."""

from __future__ import annotations

import itertools
import json
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import requests


@dataclass
class Recorded:
    """One request as the service saw it."""

    at: float
    method: str
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode()))

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Handler = Callable[[Recorded], Reply]


class Recorder:
    """`with Recorder(cert, key) as service:` serves https://127.0.0.1:<port>/ until the block ends."""

    def __init__(self, cert: Path, key: Path, handler: Handler | None = None, upstream: str | None = None,
                 upstream_ca: Path | None = None) -> None:
        self.requests: list[Recorded] = []
        self.handler = handler or (lambda _: Reply(404, {"error": "unscripted"}))
        self.upstream = upstream
        self.upstream_ca = upstream_ca
        self._lock = threading.Lock()
        recorder = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                seen = Recorded(time.time(), "POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                self.rfile.read(length))
                with recorder._lock:
                    recorder.requests.append(seen)
                reply = recorder._answer(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if isinstance(body, dict):
                    body = json.dumps(body)
                if isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _answer(self, seen: Recorded) -> Reply:
        if self.upstream is None:
            return self.handler(seen)
        scripted = self.handler(seen)
        if scripted.status != 0:
            return scripted
        # Status 0 means "forward this one to the real peer".
        headers = {k: v for k, v in seen.headers.items() if k.lower() in ("content-type", "authorization", "x-vault-namespace", "accept")}
        answer = requests.post(f"{self.upstream}{seen.path}", data=seen.body, headers=headers,
                               verify=str(self.upstream_ca) if self.upstream_ca else True, timeout=30)
        return Reply(answer.status_code, answer.content, {"Content-Type": answer.headers.get("Content-Type", "")})

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> "Recorder":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def forward(_: Recorded) -> Reply:
    """The handler of a transparent proxy."""
    return Reply(status=0)


def oauth2_token_endpoint() -> Callable[[Recorded], Reply]:
    """The handler of a minimal OAuth 2.0 token endpoint: each request gets a new access token
    (`at-1`, `at-2`, ...) valid 600 s, except at a path ending in `/reject`, which answers
    `invalid_grant`."""
    issued = itertools.count(1)

    def answer(seen: Recorded) -> Reply:
        if seen.path.endswith("/reject"):
            return Reply(400, {"error": "invalid_grant", "error_description": "the subject is not allowed"})
        return Reply(200, {"access_token": f"at-{next(issued)}", "token_type": "Bearer", "expires_in": 600})

    return answer
